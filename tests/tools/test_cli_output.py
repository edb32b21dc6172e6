"""What the command line puts out: ``-v``/``-q``/``--log-level`` through the ``graphbuild`` logger
(phase lines with times during ``build``), the progress bar on a terminal, ``--json`` that
``json.loads`` accepts, ``--version``, quiet exits on a closed pipe, and names from engines with
control characters escaped."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import numpy as np
import pytest

import graphbuild
from graphbuild.tools.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embedding_tp.py"
VOCAB, HIDDEN = 50, 8
SMALL = ["--set", f"vocab_size={VOCAB}", "--set", f"hidden_size={HIDDEN}"]
CLI_PHASES = ["network", "write", "load"]  # the phases the command times itself; the compiler's come from compile_engine


def _table() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((VOCAB, HIDDEN), dtype=np.float32)


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphbuild.tools", *args], capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("output") / "emb"
    assert main(["build", str(EXAMPLE), "-o", str(path), "--tp-size", "2", *SMALL]) == 0
    return path


# ----------------------------------------------------------------------------- logging
def test_build_is_quiet_on_stderr_by_default_and_with_q(tmp_path, capsys):
    for extra in ([], ["-q"]):
        assert main(["build", str(EXAMPLE), "-o", str(tmp_path / f"e{len(extra)}"), *SMALL, *extra]) == 0
        captured = capsys.readouterr()
        assert captured.err == "" and "built engine 'embedding_tp'" in captured.out


@pytest.fixture(scope="module")
def compiler_phases(load_example) -> list[str]:
    """The phases ``compile_engine`` times, in order, for the example's network."""
    from graphbuild.build import compile_engine

    timings: dict[str, float] = {}
    compile_engine(load_example.make_network(vocab_size=VOCAB, hidden_size=HIDDEN), timings=timings)
    return list(timings)


@pytest.fixture(scope="module")
def load_example():
    import importlib.util

    spec = importlib.util.spec_from_file_location("graphbuild_tests_cli_output_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_v_logs_every_phase_with_its_time(tmp_path, capsys, compiler_phases):
    assert main(["build", str(EXAMPLE), "-o", str(tmp_path / "e"), *SMALL, "-v"]) == 0
    lines = capsys.readouterr().err.splitlines()
    phases = [line.split()[1] for line in lines if line.endswith(" ms")]
    assert len(compiler_phases) >= 5 and phases == ["network", *compiler_phases, "write", "load"], lines
    assert all(line.startswith("graphbuild: ") for line in lines)
    assert any(line.startswith("graphbuild: calling ") and "'vocab_size': 50" in line for line in lines)
    assert not any("wrote rank0/segment0.onnx" in line for line in lines)  # debug detail needs -vv


@pytest.mark.parametrize("flags", [["-vv"], ["-v", "build", "-v"], ["--log-level", "debug"], ["--log-level", "DEBUG", "-q"]])
def test_debug_level_from_either_side_of_the_subcommand(tmp_path, flags, capsys):
    if "build" in flags:
        args = [flags[0], "build", str(EXAMPLE), "-o", str(tmp_path / "e"), *SMALL, flags[2]]
    else:
        args = ["build", str(EXAMPLE), "-o", str(tmp_path / "e"), *SMALL, *flags]
    assert main(args) == 0
    assert "wrote rank0/segment0.onnx" in capsys.readouterr().err


def test_errors_stay_one_line_and_v_adds_the_traceback(tmp_path, capsys):
    (tmp_path / "bad.py").write_text("def make_network():\n    return 1 / 0\n")
    assert main(["build", str(tmp_path / "bad.py"), "-o", str(tmp_path / "e")]) == 1
    assert capsys.readouterr().err.splitlines() == ["graphbuild: error: make_network() raised ZeroDivisionError: division by zero"]
    assert main(["build", str(tmp_path / "bad.py"), "-o", str(tmp_path / "e"), "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("graphbuild: error: ")


def test_progress_bar_for_weights_on_a_terminal_only(tmp_path):
    args = [sys.executable, "-m", "graphbuild.tools", "build", str(EXAMPLE), "--set", "vocab_size=1000", "--set", "hidden_size=600"]
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    try:
        done = subprocess.run([*args, "-o", str(tmp_path / "tty")], stdout=subprocess.PIPE, stderr=secondary, timeout=120)
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the terminal has no writer left
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
    assert done.returncode == 0
    assert b"writing weights" in seen and f"/{1000 * 600 * 4 / 2**20:.2f}M".encode() in seen  # the table's bytes, over both shards
    piped = subprocess.run([*args, "-o", str(tmp_path / "pipe")], capture_output=True, timeout=120)
    assert piped.returncode == 0 and piped.stderr == b""


# ----------------------------------------------------------------------------- --json, --version
def test_build_json(tmp_path, capsys, compiler_phases):
    assert main(["build", str(EXAMPLE), "-o", str(tmp_path / "e"), "--tp-size", "4", "--set", "sharding_dim=1", *SMALL, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    manifest = json.loads((tmp_path / "e" / "config.json").read_text())
    assert report["engine"] == str(tmp_path / "e") and report["name"] == "embedding_tp"
    assert (report["tp_size"], report["tp_group"], report["segments_per_rank"], report["collectives_per_rank"]) == (4, [0, 1, 2, 3], 1, 1)
    assert report["custom_ops"] == ["graphbuild::TPEmbedding"] and report["opset"] == 21
    assert report["files"] == len(manifest["files"]) and report["bytes"] == sum(f["bytes"] for f in manifest["files"].values())
    assert set(compiler_phases + CLI_PHASES) | {"build"} == set(report["seconds"]) and all(v >= 0 for v in report["seconds"].values())


def test_run_json_summarizes_every_output(engine_dir, capsys):
    assert main(["run", str(engine_dir), "--input", "input_ids=[[1,2,3],[4,5,6]]", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = _table()[[[1, 2, 3], [4, 5, 6]]].astype(np.float64)
    out = report["outputs"]["embeddings"]
    assert (report["engine"], report["tp_size"], report["path"]) == ("embedding_tp", 2, str(engine_dir))
    assert report["inputs"] == {"input_ids": {"dtype": "int64", "shape": [2, 3]}}
    assert out["dtype"] == "float32" and out["shape"] == [2, 3, HIDDEN] and out["non_finite"] == 0
    for key, value in (("min", expected.min()), ("max", expected.max()), ("mean", expected.mean()), ("std", expected.std())):
        assert out[key] == pytest.approx(value, rel=1e-6), key
    assert out["first"] == pytest.approx(expected.reshape(-1)[:6].tolist())
    assert report["load_ms"] > 0 and report["run_ms"] > 0 and report["output_files"] == []


def test_run_json_is_strict_with_non_finite_outputs(tmp_path, capsys):
    (tmp_path / "nan_net.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            import graphbuild as gb
            from graphbuild import layers


            def make_network():
                table = np.array([[np.nan, 1.0], [np.inf, -np.inf]], np.float32)
                net = gb.Network("nan")
                with net:
                    ids = net.add_input("ids", dtype="int64", shape=("n",))
                    net.mark_output(layers.Embedding(2, 2, weight=table, name="wte")(ids), "out")
                return net
            """
        )
    )
    assert main(["build", str(tmp_path / "nan_net.py"), "-o", str(tmp_path / "e")]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "e"), "--input", "ids=0,1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))["outputs"]["out"]
    assert out["first"] == ["nan", 1.0, "inf", "-inf"] and out["non_finite"] == 3 and out["min"] == out["max"] == 1.0


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"graphbuild {graphbuild.__version__}"


# ----------------------------------------------------------------------------- pipes and terminals
def test_a_closed_pipe_ends_the_command_quietly(engine_dir):
    """``graphbuild inspect ENGINE | head -1``: the reader closes stdout before the output is written."""
    proc = subprocess.Popen([sys.executable, "-m", "graphbuild.tools", "inspect", str(engine_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child (still importing) writes anything
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert err == b"" and proc.returncode == 141
    shell = subprocess.run(["bash", "-c", f"'{sys.executable}' -m graphbuild.tools inspect '{engine_dir}' | head -1"], capture_output=True, text=True, timeout=120)
    assert shell.stdout == f"engine 'embedding_tp' at {engine_dir}\n" and shell.stderr == ""


EVIL = '''
import graphbuild as gb
from graphbuild import layers


def make_network():
    net = gb.Network("evil\\x1b[31m\\nfake line")
    with net:
        ids = net.add_input("ids\\x1b[2J", dtype="int64", shape=("n",))
        net.mark_output(layers.Embedding(10, 4, seed=0, name="wte")(ids), "out\\nput\\x1b[0m")
    return net
'''


def test_names_with_control_characters_are_escaped(tmp_path):
    (tmp_path / "evil.py").write_text(EVIL)
    engine = str(tmp_path / "e")
    runs = [
        _cli("build", str(tmp_path / "evil.py"), "-o", engine),
        _cli("run", engine, "--input", "ids\x1b[2J=1,2"),
        _cli("run", engine, "--random-inputs", "-v"),
        _cli("inspect", engine),
        _cli("run", engine, "--input", "ids\x1b[2J=1,20"),
    ]
    for done in runs:
        text = done.stdout + done.stderr
        assert "\x1b" not in text and ("\\x1b[" in text or done.returncode), text
        assert not any(line.startswith(("fake line", "put")) for line in text.splitlines()), text
    assert [done.returncode for done in runs] == [0, 0, 0, 0, 1]
    assert "engine 'evil\\x1b[31m\\nfake line'" in runs[1].stdout and "out\\nput\\x1b[0m: float32(2, 4)" in runs[1].stdout
    assert "  ids\\x1b[2J  int64  (n,)" in runs[3].stdout
