"""What the command line takes in: ``build --set`` converted by the function's annotations, user
files that exit instead of defining a network, ``run`` literals and files that must be refused,
``run --random-inputs`` / ``--input-shapes`` / ``--seed``, and ``run --providers``."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import pytest

from graphbuild.tools.cli import main
from graphbuild.tools.common import CLIError
from graphbuild.tools.loader import convert_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embedding_tp.py"
VOCAB, HIDDEN = 50, 8


def _table(vocab: int = VOCAB, hidden: int = HIDDEN) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((vocab, hidden), dtype=np.float32)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphbuild: error: ") and "unexpected" not in lines[0], err
    return lines[0]


@pytest.fixture(scope="module", params=[True, False], ids=["plugin", "lowered"])
def engine_dir(request, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "emb"
    args = ["build", str(EXAMPLE), "-o", str(path), "--tp-size", "2", "--set", f"vocab_size={VOCAB}", "--set", f"hidden_size={HIDDEN}"]
    assert main(args + ([] if request.param else ["--no-plugin"])) == 0
    return path


# ----------------------------------------------------------------------------- --set by annotation
def annotated(
    tp_size: int = 1,
    dtype: str = "float32",
    scale: float = 1.0,
    flag: bool = False,
    maybe: Optional[int] = None,
    mode: Literal["fast", "exact", 3] = "fast",
    either: Union[int, str] = 0,
    plain=None,
    **extra,
):
    raise AssertionError("not called")


@pytest.mark.parametrize(
    "key, text, value",
    [
        ("dtype", "16", "16"),
        ("dtype", "none", "none"),
        ("tp_size", "4", 4),
        ("scale", "2", 2.0),
        ("flag", "true", True),
        ("flag", "0", False),
        ("maybe", "none", None),
        ("maybe", "7", 7),
        ("mode", "exact", "exact"),
        ("mode", "3", 3),
        ("either", "5", 5),
        ("either", "x", "x"),
        ("plain", "16", 16),  # unannotated: the guess
        ("plain", "true", True),
        ("extra_key", "0.5", 0.5),  # through **kwargs: the guess
    ],
)
def test_set_values_follow_the_annotations(key, text, value):
    converted = convert_settings(annotated, {key: text})[key]
    assert converted == value and type(converted) is type(value)


@pytest.mark.parametrize(
    "key, text, message",
    [
        ("tp_size", "two", "parameter 'tp_size' of annotated is int: expected an int"),
        ("scale", "fast", "parameter 'scale' of annotated is float: expected a float"),
        ("flag", "maybe", "parameter 'flag' of annotated is bool: expected a bool \\(true or false\\)"),
        ("maybe", "1.5", "parameter 'maybe' of annotated is Optional\\[int\\]: expected Optional\\[int\\]"),
        ("mode", "slow", "parameter 'mode' of annotated is Literal\\['fast', 'exact', 3\\]: expected one of fast, exact, 3"),
    ],
)
def test_set_values_of_the_wrong_type_are_named(key, text, message):
    with pytest.raises(CLIError, match=rf"--set {key}={re.escape(text)}: {message}"):
        convert_settings(annotated, {key: text})


def test_set_on_the_command_line_keeps_a_str_parameter_a_string(tmp_path, capsys):
    """``--set dtype=16`` for ``dtype: str`` arrives as "16" (string annotations of
    ``from __future__ import annotations`` resolve too)."""
    user = tmp_path / "typed_net.py"
    user.write_text(
        textwrap.dedent(
            """
            from __future__ import annotations
            from typing import Optional
            import graphbuild as gb
            from graphbuild import layers


            def make_network(label: str = "x", size: int = 5, note: Optional[str] = None):
                net = gb.Network(f"{type(label).__name__}_{label}_{type(size).__name__}_{note}")
                with net:
                    ids = net.add_input("ids", dtype="int64", shape=("n",))
                    net.mark_output(layers.Embedding(size, 2, seed=0, name="wte")(ids), "out")
                return net
            """
        )
    )
    assert main(["build", str(user), "-o", str(tmp_path / "e"), "--set", "label=16", "--set", "size=6", "--set", "note=none"]) == 0
    assert "built engine 'str_16_int_None'" in capsys.readouterr().out
    assert main(["build", str(user), "-o", str(tmp_path / "f"), "--set", "size=six"]) == 1
    assert "--set size=six: parameter 'size' of make_network is int: expected an int" in _error_line(capsys)


# ----------------------------------------------------------------------------- user code that exits
@pytest.mark.parametrize("where", ["import", "call"])
def test_a_user_file_that_exits_is_an_error_not_a_build(tmp_path, where, capsys):
    user = tmp_path / "exits.py"
    body = "import sys\nsys.exit(0)\n" if where == "import" else "import sys\n\ndef make_network():\n    sys.exit(0)\n"
    user.write_text(body)
    assert main(["build", str(user), "-o", str(tmp_path / "e")]) == 1
    line = _error_line(capsys)
    assert "sys.exit(0)" in line and ("nothing was built" in line or "must return a network" in line)
    assert not (tmp_path / "e").exists()


def test_a_module_that_exits_at_import_is_an_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "cli_exiting_module.py").write_text("raise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path)
    assert main(["build", "cli_exiting_module:make_network", "-o", "e"]) == 1
    assert "importing 'cli_exiting_module' called sys.exit(3)" in _error_line(capsys)
    monkeypatch.delitem(__import__("sys").modules, "cli_exiting_module", raising=False)


# ----------------------------------------------------------------------------- literals and files
@pytest.mark.parametrize("source", ["true,false", "[[1, true]]", "[false]"])
def test_booleans_are_not_ids(engine_dir, source, capsys):
    assert main(["run", str(engine_dir), "--input", f"input_ids={source}"]) == 1
    assert "input 'input_ids' is int64; true/false are for bool inputs" in _error_line(capsys)


@pytest.mark.parametrize("content", [b"PK\x03\x04 not really a zip", b"PK\x05\x06" + b"\0" * 18])
def test_a_broken_npz_file_is_named(engine_dir, tmp_path, content, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    assert main(["run", str(engine_dir), "--input", f"input_ids={bad}"]) == 1
    line = _error_line(capsys)
    assert f"--input input_ids: '{bad}' is not a readable .npy/.npz file" in line or f"'{bad}' has no array" in line


# ----------------------------------------------------------------------------- --random-inputs
def _ids_of(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The table row index of every output row (each row must be exactly one table row)."""
    flat = rows.reshape(-1, table.shape[1])
    matches = (flat[:, None, :] == table[None, :, :]).all(axis=2)
    assert (matches.sum(axis=1) == 1).all(), "an output row is not a table row"
    return matches.argmax(axis=1).reshape(rows.shape[:-1])


def test_random_ids_are_drawn_inside_the_vocabulary_and_seeded(engine_dir, tmp_path, capsys):
    runs = {}
    for seed in (3, 3, 4):
        npz = tmp_path / f"out{len(runs)}.npz"
        args = ["run", str(engine_dir), "--random-inputs", "--input-shapes", "input_ids:[4,25]", "--seed", str(seed), "--output", str(npz)]
        assert main(args) == 0, capsys.readouterr().err
        with np.load(npz) as saved:
            runs[len(runs)] = saved["embeddings"]
    assert runs[0].shape == (4, 25, HIDDEN)
    ids = _ids_of(runs[0], _table())  # 100 ids; [0, 100) would have put about half outside [0, 50)
    assert ids.min() >= 0 and ids.max() < VOCAB and len(np.unique(ids)) > 20
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_random_inputs_default_symbolic_dims_to_one_with_a_warning(engine_dir, capsys):
    assert main(["run", str(engine_dir), "--random-inputs", "--json"]) == 0
    captured = capsys.readouterr()
    assert '"shape": [\n        1,\n        1,\n        8\n      ]' in captured.out
    assert "batch, seq set to 1; choose sizes with --input-shapes" in captured.err


def test_random_inputs_follow_given_inputs(tmp_path, capsys):
    user = tmp_path / "two_inputs.py"
    user.write_text(
        textwrap.dedent(
            """
            import graphbuild as gb
            from graphbuild import functional as F, layers


            def make_network():
                net = gb.Network("two")
                with net:
                    ids = net.add_input("ids", dtype="int32", shape=("batch", "seq"))
                    weight = net.add_input("weight", dtype="float32", shape=("batch", "seq"))
                    emb = layers.Embedding(7, 3, seed=0, name="wte")(ids)
                    net.mark_output(emb * F.unsqueeze(weight, -1), "out")
                return net
            """
        )
    )
    assert main(["build", str(user), "-o", str(tmp_path / "e")]) == 0
    npz = tmp_path / "o.npz"
    assert main(["run", str(tmp_path / "e"), "--input", "ids=[[1,2,6]]", "--random-inputs", "--seed", "1", "-o", str(npz)]) == 0
    with np.load(npz) as saved:
        out = saved["out"]
    table = np.random.default_rng(0).standard_normal((7, 3), dtype=np.float32)
    weight = out[..., 0] / table[[[1, 2, 6]], 0]  # the random weight, recovered
    np.testing.assert_allclose(out, table[[[1, 2, 6]]] * weight[..., None], rtol=1e-6)
    assert out.shape == (1, 3, 3) and np.all(weight != 0)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--input-shapes", "input_ids:[2,5]"], "--input-shapes sets the shapes of generated inputs; add --random-inputs"),
        (["--random-inputs", "--input-shapes", "input_ids:2,five"], "bad --input-shapes 'input_ids:2,five'"),
        (["--random-inputs", "--input-shapes", "input_ids:[2,5,1]"], "--input-shapes input_ids: 3 dim\\(s\\) for an input of rank 2 \\(batch, seq\\)"),
        (["--random-inputs", "--input-shapes", "tokens:[2]"], "--input-shapes tokens: the engine has no input 'tokens'"),
        (["--random-inputs", "--input-shapes", "input_ids:[1]", "input_ids:[2]"], "--input-shapes input_ids is given twice"),
    ],
)
def test_input_shape_errors_are_one_line(engine_dir, extra, message, capsys):
    assert main(["run", str(engine_dir), *extra]) == 1
    assert re.search(message, _error_line(capsys))


def test_input_shapes_accept_polygraphy_and_x_forms(engine_dir, tmp_path, capsys):
    for spec in ("input_ids:[2,3]", "input_ids:2x3", "input_ids:2,3"):
        assert main(["run", str(engine_dir), "--random-inputs", "--input-shapes", spec, "-o", str(tmp_path / "o.npz")]) == 0
        with np.load(tmp_path / "o.npz") as saved:
            assert saved["embeddings"].shape == (2, 3, HIDDEN), spec


# ----------------------------------------------------------------------------- --providers
def test_providers_choose_onnx_runtimes_execution_providers(engine_dir, tmp_path, capsys):
    npz = tmp_path / "o.npz"
    assert main(["run", str(engine_dir), "--providers", "cpu", "--input", "input_ids=4,9", "-o", str(npz)]) == 0
    with np.load(npz) as saved:
        np.testing.assert_array_equal(saved["embeddings"], _table()[[[4, 9]]])
    assert main(["run", str(engine_dir), "--providers", "NoSuchExecutionProvider", "--input", "input_ids=1"]) == 1
    line = _error_line(capsys)
    assert "'NoSuchExecutionProvider'" in line and "CPUExecutionProvider" in line  # the runtime names what it has
    assert main(["run", str(engine_dir), "--providers", "cpu,", "--input", "input_ids=1"]) == 1
    assert "bad --providers 'cpu,'" in _error_line(capsys)
