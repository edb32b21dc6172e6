"""The ``graphbuild`` command line end to end: ``build``, ``run`` and ``inspect`` through ``main([...])``
and through ``python -m graphbuild.tools``, including every error exit (one line on stderr, no
traceback unless ``--verbose``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from graphbuild.tools.cli import main
from graphbuild.tools.common import CLIError
from graphbuild.tools.loader import parse_settings, parse_value

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embedding_tp.py"
VOCAB, HIDDEN = 50, 8
SMALL = ["--set", f"vocab_size={VOCAB}", "--set", f"hidden_size={HIDDEN}"]

USER_FILE = '''
import graphbuild as gb
from graphbuild import layers


def rank_local(tp_size=2, vocab_size=10, hidden_size=4):
    nets = []
    for rank in range(tp_size):
        emb = layers.Embedding(vocab_size, hidden_size, seed=0, tp_size=tp_size, tp_rank=rank, name="wte")
        net = gb.Network("ranked")
        with net:
            ids = net.add_input("input_ids", dtype="int64", shape=("n",))
            net.mark_output(emb(ids), "embeddings")
        nets.append(net)
    return nets


def returns_int():
    return 42


def returns_list_of_str():
    return ["a"]


def needs_size(size):
    raise AssertionError("not called")


def raises():
    raise ZeroDivisionError("boom in user code")


def flexible(**kwargs):
    return rank_local(**kwargs)


not_callable = 3
'''


def _table(seed: int = 0, vocab: int = VOCAB, hidden: int = HIDDEN) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((vocab, hidden), dtype=np.float32)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("graphbuild: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "emb"
    assert main(["build", f"{EXAMPLE}:make_network", "-o", str(path), "--tp-size", "2", *SMALL]) == 0
    return path


@pytest.fixture
def user_file(tmp_path) -> Path:
    path = tmp_path / "user_nets.py"
    path.write_text(USER_FILE)
    return path


@pytest.fixture
def tampered(engine_dir, tmp_path) -> tuple[Path, str]:
    """A copy of the engine with one byte of an ONNX file flipped."""
    copy = tmp_path / "tampered"
    shutil.copytree(engine_dir, copy)
    relpath = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*.onnx"))[-1]
    data = bytearray((copy / relpath).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / relpath).write_bytes(bytes(data))
    return copy, relpath


# ----------------------------------------------------------------------------- build
def test_build_prints_a_summary_and_writes_an_engine(engine_dir, tmp_path, capsys):
    out_dir = tmp_path / "emb1"
    assert main(["build", f"{EXAMPLE}:make_network", "-o", str(out_dir), "--tp-size", "4", "--set", "sharding_dim=1", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "built engine 'embedding_tp'" in out
    assert str(out_dir) in out and "tp_size" in out and "4 (ranks [0, 1, 2, 3])" in out
    assert "1 collective(s)" in out and "graphbuild::TPEmbedding" in out
    manifest = json.loads((out_dir / "config.json").read_text())
    assert manifest["tp_size"] == 4
    assert [s["op"] for s in manifest["ranks"][0]["steps"] if s["kind"] == "collective"] == ["allgather"]


def test_build_no_plugin_and_overwrite(engine_dir, tmp_path, capsys):
    out_dir = tmp_path / "lowered"
    args = ["build", str(EXAMPLE), "-o", str(out_dir), "--no-plugin", *SMALL]  # FUNCTION defaults to make_network
    assert main(args) == 0
    assert json.loads((out_dir / "config.json").read_text())["custom_ops"] == []
    assert "none (standard ONNX only)" in capsys.readouterr().out
    assert main(args) == 1
    line = _error_line(capsys)
    assert "already exists" in line and "--overwrite" in line
    assert main(args + ["--overwrite"]) == 0


def test_build_accepts_a_list_of_rank_local_networks(user_file, tmp_path, capsys):
    out_dir = tmp_path / "ranked"
    assert main(["build", f"{user_file}:rank_local", "-o", str(out_dir), "--tp-size", "2"]) == 0
    assert "built engine 'ranked'" in capsys.readouterr().out
    assert main(["run", str(out_dir), "--input", "input_ids=0,9,4"]) == 0
    assert "embeddings: float32(3, 4)" in capsys.readouterr().out


def test_build_from_a_module_spec(tmp_path, monkeypatch, capsys):
    package = tmp_path / "cli_user_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_FILE)
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["build", "cli_user_pkg.nets:flexible", "-o", "out", "--set", "hidden_size=3"]) == 0
    finally:
        for name in [m for m in sys.modules if m.startswith("cli_user_pkg")]:
            del sys.modules[name]
    manifest = json.loads((tmp_path / "out" / "config.json").read_text())
    assert manifest["outputs"][0]["shape"] == ["n", 3]


@pytest.mark.parametrize(
    "spec, extra, message",
    [
        ("missing_file.py:make_network", [], "file '.*missing_file.py' does not exist"),
        ("{user}:nope", [], "has no function 'nope' \\(it defines: .*rank_local"),
        ("{user}:not_callable", [], "is a int, not a function"),
        ("{user}:", [], "bad function spec"),
        ("no_such_module_xyz:make", [], "no Python file or module named 'no_such_module_xyz'"),
        ("{user}:returns_int", [], "returned int; it must return a gb.Network or a list"),
        ("{user}:returns_list_of_str", [], "returned a list of str; it must return a gb.Network"),
        ("{user}:needs_size", [], "needs 'size'; give it with --set NAME=VALUE"),
        ("{user}:returns_int", ["--set", "vocab=3"], "takes no parameter 'vocab'"),
        ("{user}:returns_int", ["--tp-size", "2"], "takes no parameter 'tp_size'"),
        ("{user}:raises", [], "raised ZeroDivisionError: boom in user code"),
        ("{user}:rank_local", ["--set", "novalue"], "bad --set 'novalue': expected KEY=VALUE"),
        ("{user}:rank_local", ["--tp-size", "0"], "--tp-size must be at least 1"),
        ("{user}:rank_local", ["--set", "tp_size=3", "--set", "vocab_size=-1"], "num_embeddings must be a positive int"),
        ("{user}:rank_local", ["--opset", "5"], "opset 5 is not supported: graphbuild exports standard ONNX opsets 17 to \\d+ \\(default 21\\)"),
    ],
)
def test_build_errors_are_one_line(user_file, tmp_path, capsys, spec, extra, message):
    code = main(["build", spec.format(user=user_file), "-o", str(tmp_path / "never"), *extra])
    assert code == 1
    assert re.search(message, _error_line(capsys))
    assert not (tmp_path / "never").exists()


def test_build_syntax_error_in_user_file_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def make_network(:\n    pass\n")
    assert main(["build", str(bad), "-o", str(tmp_path / "x")]) == 1
    assert f"{bad}, line 1: syntax error" in _error_line(capsys)


def test_verbose_shows_the_traceback(user_file, tmp_path, capsys):
    assert main(["--verbose", "build", f"{user_file}:raises", "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1].startswith("graphbuild: error: ")
    assert main(["build", f"{user_file}:raises", "-o", str(tmp_path / "x"), "-v"]) == 1  # after the command too
    assert "Traceback" in capsys.readouterr().err


# ----------------------------------------------------------------------------- run
def test_run_literal_input_prints_outputs_and_writes_npz(engine_dir, tmp_path, capsys):
    npz = tmp_path / "out.npz"
    assert main(["run", str(engine_dir), "--input", "input_ids=1,2,3", "--output", str(npz)]) == 0
    out = capsys.readouterr().out
    assert f"embeddings: float32(1, 3, {HIDDEN})" in out
    assert "min " in out and "max " in out and "mean " in out and "std " in out and ", ...]" in out
    assert f"wrote {npz}" in out
    with np.load(npz) as saved:
        np.testing.assert_array_equal(saved["embeddings"], _table()[[[1, 2, 3]]])
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]  # no temporary file left behind


@pytest.mark.parametrize(
    "source, ids",
    [
        ("[[1,2],[3,4]]", [[1, 2], [3, 4]]),
        ("7", [[7]]),
        ("[5, 6]", [[5, 6]]),
        ("4.0,0", [[4, 0]]),
    ],
)
def test_run_literal_forms(engine_dir, tmp_path, source, ids, capsys):
    npz = tmp_path / "o.npz"
    assert main(["run", str(engine_dir), "-i", f"input_ids={source}", "-o", str(npz)]) == 0
    with np.load(npz) as saved:
        np.testing.assert_array_equal(saved["embeddings"], _table()[np.array(ids)])


def test_run_npy_and_npz_inputs(engine_dir, tmp_path, rng, capsys):
    ids = rng.integers(0, VOCAB, size=(2, 5))
    np.save(tmp_path / "ids.npy", ids)
    np.savez(tmp_path / "batch.npz", input_ids=ids, other=ids[:1])
    expected = _table()[ids]
    for source, want in [("ids.npy", ids), ("@ids.npy", ids), ("batch.npz", ids), ("batch.npz:other", ids[:1])]:
        path_source = f"@{tmp_path / source[1:]}" if source.startswith("@") else str(tmp_path / source)
        npz = tmp_path / "o.npz"
        assert main(["run", str(engine_dir), "--input", f"input_ids={path_source}", "--output", str(npz)]) == 0, source
        with np.load(npz) as saved:
            np.testing.assert_array_equal(saved["embeddings"], _table()[want])
    assert expected.shape == (2, 5, HIDDEN)


@pytest.mark.parametrize(
    "inputs, message",
    [
        (["input_ids"], "bad --input 'input_ids': expected NAME=SOURCE"),
        (["input_ids="], "bad --input 'input_ids=': expected NAME=SOURCE"),
        (["input_ids=1,,2"], "not a list of numbers"),
        (["input_ids=a,b"], "not a list of numbers"),
        (["input_ids=[[1,2],[3]]"], "nested lists must be rectangular"),
        (["input_ids=1.5,2"], "is int64, but the values are not all integers"),
        (["input_ids=[[[1]]]"], "3-D values for an input of rank 2"),
        (["tokens=1,2"], "engine 'embedding_tp' has no input 'tokens' \\(its inputs: input_ids: int64\\(batch, seq\\)\\)"),
        (["input_ids=1", "input_ids=2"], "--input input_ids is given twice"),
        ([], "needs input\\(s\\) \\['input_ids'\\]"),
        (["input_ids=missing.npy"], "file 'missing.npy' does not exist"),
        (["input_ids=1,2,99"], "id 99 at flat position 2 is outside the vocabulary \\[0, 50\\)"),
    ],
)
def test_run_input_errors_are_one_line(engine_dir, capsys, inputs, message):
    args = ["run", str(engine_dir)]
    for item in inputs:
        args += ["--input", item]
    assert main(args) == 1
    assert re.search(message, _error_line(capsys))


def test_run_key_on_an_npy_file_is_named(engine_dir, tmp_path, capsys):
    np.save(tmp_path / "ids.npy", np.array([[1, 2]]))
    for prefix in ("", "@"):
        assert main(["run", str(engine_dir), "--input", f"input_ids={prefix}{tmp_path / 'ids.npy'}:key"]) == 1
        assert f"'{tmp_path / 'ids.npy'}' is a single array; drop ':key'" in _error_line(capsys)


def test_run_output_that_is_a_directory_fails_before_running(engine_dir, tmp_path, capsys):
    assert main(["run", str(engine_dir), "--input", "input_ids=1", "--output", str(tmp_path)]) == 1
    assert f"--output {tmp_path}: is a directory" in _error_line(capsys)
    assert capsys.readouterr().out == ""
    assert list(tmp_path.iterdir()) == []


def test_module_spec_whose_import_fails_is_not_reported_missing(tmp_path, monkeypatch, capsys):
    # The missing module's name is a prefix of the spec's: the spec's module exists, its import fails.
    (tmp_path / "cli_prefix_user.py").write_text("import cli_prefix\n")
    monkeypatch.chdir(tmp_path)
    assert main(["build", "cli_prefix_user:make_network", "-o", "out"]) == 1
    line = _error_line(capsys)
    assert "importing 'cli_prefix_user' failed: No module named 'cli_prefix'" in line
    sys.modules.pop("cli_prefix_user", None)


def test_run_wrong_dtype_file_is_an_error(engine_dir, tmp_path, capsys):
    np.save(tmp_path / "ids32.npy", np.array([[1, 2]], dtype=np.int32))
    assert main(["run", str(engine_dir), "--input", f"input_ids={tmp_path / 'ids32.npy'}"]) == 1
    line = _error_line(capsys)
    assert "input 'input_ids' must be int64, got int32" in line


def test_run_missing_engine_and_not_an_npy_file(tmp_path, engine_dir, capsys):
    assert main(["run", str(tmp_path / "nowhere"), "--input", "input_ids=1"]) == 1
    assert "nowhere' does not exist" in _error_line(capsys)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    assert main(["run", str(engine_dir), "--input", f"input_ids={tmp_path / 'junk.npy'}"]) == 1
    assert "is not a readable .npy/.npz file" in _error_line(capsys)


def test_run_tampered_engine_fails_naming_the_file(tampered, capsys):
    path, relpath = tampered
    assert main(["run", str(path), "--input", "input_ids=1,2"]) == 1
    line = _error_line(capsys)
    assert relpath in line and "checksum mismatch" in line


# ----------------------------------------------------------------------------- inspect
def test_inspect_prints_engine_ranks_and_checksums(engine_dir, capsys):
    assert main(["inspect", str(engine_dir)]) == 0
    out = capsys.readouterr().out
    assert "engine 'embedding_tp'" in out and "graphbuild-engine v1" in out
    assert "tp_size     2, tp_group [0, 1]" in out
    assert "graphbuild::TPEmbedding" in out
    assert "input_ids" in out and "int64" in out and "(batch, seq)" in out
    assert f"(batch, seq, {HIDDEN})" in out
    assert "ranks 0, 1 steps (the same up to the rank index" in out and "allreduce" in out
    assert "nodes by op" in out and "weight bytes" in out
    manifest = json.loads((engine_dir / "config.json").read_text())
    assert f"checksums: all {len(manifest['files'])} files OK" in out


def test_inspect_json(engine_dir, capsys):
    assert main(["inspect", str(engine_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["manifest"]["tp_size"] == 2 and set(report["files"].values()) == {"ok"}


def test_inspect_tampered_engine_reports_the_file_and_fails(tampered, capsys):
    path, relpath = tampered
    assert main(["inspect", str(path)]) == 1
    captured = capsys.readouterr()
    assert "CHECKSUM MISMATCH" in captured.out and "FAILED" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graphbuild: error: ") and f"{relpath} (checksum mismatch)" in err[0]


def test_inspect_missing_file_and_corrupt_manifest(engine_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(engine_dir, copy)
    victim = sorted(copy.rglob("*.onnx"))[0]
    victim.unlink()
    assert main(["inspect", str(copy)]) == 1
    assert "(missing)" in capsys.readouterr().err
    (copy / "config.json").write_text("{not json")
    assert main(["inspect", str(copy)]) == 1
    assert "config.json: not valid JSON" in _error_line(capsys)
    assert main(["inspect", str(tmp_path / "absent")]) == 1
    assert "does not exist" in _error_line(capsys)


# ----------------------------------------------------------------------------- process level
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphbuild.tools", *args], capture_output=True, text=True, timeout=120)


def test_python_dash_m_exit_codes(engine_dir, tmp_path):
    done = _cli("inspect", str(engine_dir))
    assert done.returncode == 0, done.stderr
    assert "checksums: all" in done.stdout
    missing = _cli("run", str(tmp_path / "nowhere"), "--input", "input_ids=1")
    assert missing.returncode == 1
    assert missing.stderr.startswith("graphbuild: error: ") and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    usage = _cli("run")
    assert usage.returncode == 2 and "usage: graphbuild run" in usage.stderr


def test_kernel_errors_are_one_line_on_stderr(engine_dir):
    """ONNX Runtime's own log of the failed kernel call must not reach the user's terminal."""
    for extra in ([], ["--no-verify"]):
        done = _cli("run", str(engine_dir), "--input", "input_ids=1,-3", *extra)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == ["graphbuild: error: embedding 'wte': id -3 at flat position 1 is outside the vocabulary [0, 50)"]


def test_help_and_usage_errors(capsys):
    assert main(["--help"]) == 0
    assert "build" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["build", "x.py"]) == 2  # -o is required
    assert "required: -o/--output" in capsys.readouterr().err
    assert main(["run", "e", "--tp-size", "2"]) == 2


def test_user_file_can_import_its_neighbours(tmp_path, capsys):
    (tmp_path / "helper_for_cli_test.py").write_text("SIZE = 6\n")
    (tmp_path / "net_with_import.py").write_text(
        textwrap.dedent(
            """
            import graphbuild as gb
            from graphbuild import layers
            import helper_for_cli_test


            def make_network():
                net = gb.Network("neighbour")
                with net:
                    ids = net.add_input("input_ids", dtype="int32", shape=(2,))
                    emb = layers.Embedding(helper_for_cli_test.SIZE, 2, seed=0, name="wte")
                    net.mark_output(emb(ids), "embeddings")
                return net
            """
        )
    )
    assert main(["build", str(tmp_path / "net_with_import.py"), "-o", str(tmp_path / "e")]) == 0
    assert main(["run", str(tmp_path / "e"), "--input", "input_ids=5,0"]) == 0
    assert "embeddings: float32(2, 2)" in capsys.readouterr().out
    sys.modules.pop("helper_for_cli_test", None)


def test_bfloat16_outputs_are_saved_as_float32_and_output_dir_is_checked_first(tmp_path, capsys):
    engine = tmp_path / "bf16"
    args = ["build", str(EXAMPLE), "-o", str(engine), "--set", "dtype=bfloat16", "--set", "vocab-size=20", "--set", "hidden_size=4", "--tp-size", "2"]
    assert main(args) == 0
    npz = tmp_path / "bf.npz"
    assert main(["run", str(engine), "-i", "input_ids=3,4", "-o", str(npz)]) == 0
    out = capsys.readouterr().out
    assert "embeddings: bfloat16(1, 2, 4)" in out and "(embeddings saved as float32)" in out
    expected = _table(0, 20, 4).astype(ml_dtypes.bfloat16)[[[3, 4]]].astype(np.float32)
    with np.load(npz) as saved:
        np.testing.assert_array_equal(saved["embeddings"], expected)
    assert main(["run", str(engine), "-i", "input_ids=1", "-o", str(tmp_path / "no" / "dir.npz")]) == 1
    line = _error_line(capsys)
    assert "--output" in line and "does not exist" in line


def test_scalar_and_int32_inputs(tmp_path, capsys):
    (tmp_path / "scalar_net.py").write_text(
        textwrap.dedent(
            """
            import graphbuild as gb
            from graphbuild import layers


            def make_network(tp_size=1):
                net = gb.Network("scalar")
                with net:
                    ids = net.add_input("token", dtype="int32", shape=())
                    net.mark_output(layers.Embedding(5, 3, seed=0, tp_size=tp_size, name="wte")(ids), "row")
                return net
            """
        )
    )
    assert main(["build", str(tmp_path / "scalar_net.py"), "-o", str(tmp_path / "e"), "--tp-size", "2"]) == 0
    npz = tmp_path / "row.npz"
    assert main(["run", str(tmp_path / "e"), "-i", "token=4", "-o", str(npz)]) == 0
    assert "row: float32(3,)" in capsys.readouterr().out
    with np.load(npz) as saved:
        np.testing.assert_array_equal(saved["row"], _table(0, 5, 3)[4])
    assert main(["run", str(tmp_path / "e"), "-i", "token=1,2"]) == 1
    assert "1-D values for an input of rank 0" in _error_line(capsys)
    assert main(["run", str(tmp_path / "e"), "-i", "token=3000000000"]) == 1
    assert "do not fit int32" in _error_line(capsys)


@pytest.mark.parametrize(
    "text, value",
    [("true", True), ("False", False), ("none", None), ("12", 12), ("-3", -3), ("0.5", 0.5), ("1e3", 1000.0), ("float16", "float16"), ("", "")],
)
def test_set_values_are_typed(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_set_keys_accept_dashes_and_reject_repeats():
    assert parse_settings(["vocab-size=10", "dtype=float16"]) == {"vocab_size": "10", "dtype": "float16"}  # typed later, by annotation
    with pytest.raises(CLIError, match="given twice"):
        parse_settings(["a=1", "a=2"])
    with pytest.raises(CLIError, match="bad --set '1x=2'"):
        parse_settings(["1x=2"])
