"""Faults under ``mpiexec``: every rank stops with the failing rank's message, nobody hangs.

Each run has a timeout (``conftest.TIMEOUT``): a hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import graphbuild as gb

GOOD_IDS = np.array([[1, 2, 3]], dtype=np.int64)


def _recovered(out: Path, table: np.ndarray, ranks: int) -> None:
    """After an agreed error the engine still runs: the next call's outputs are right on every rank."""
    for rank in range(ranks):
        with np.load(f"{out}.rank{rank}.npz") as saved:
            np.testing.assert_array_equal(saved["embeddings"], table[GOOD_IDS])


def test_world_size_that_does_not_fit_is_one_line_on_every_rank(run_mpi, engines):
    done = run_mpi(3, ["run", str(engines["root"] / "emb2_0"), "--input", "input_ids=1,2"])
    assert done.returncode == 1
    # one line per rank (the ranks' stderr may interleave mid-line, so count the messages)
    message = "graphbuild: error: engine 'emb_tp2_dim0' (tp_size 2): mpiexec started 3 processes but the engine has 2 ranks; run it with mpiexec -n 2"
    assert done.stderr.count(message) == 3 and done.stderr.count("graphbuild: error:") == 3, done.stderr
    assert "Traceback" not in done.stderr


def test_an_error_on_one_rank_is_raised_on_every_rank(run_mpi, spec, engines, tmp_path):
    """Three processes, one mpiexec, three faults that only one rank meets, each followed by a
    good call: the last rank alone gets id 500 (with the plugin its kernel fails; without it, the
    range check output reports it), and rank 1 alone gets int32 ids (a bad feed). Every rank raises
    the failing rank's error, of its class, and the engine keeps working."""
    root, table = engines["root"], engines["table"]
    bad_id = np.array([[1, 500, 3]], dtype=np.int64)
    cases = {
        "failing-kernel": ("emb3_0", [GOOD_IDS, GOOD_IDS, bad_id]),
        "range-check": ("emb3_noplugin", [GOOD_IDS, bad_id, GOOD_IDS]),
        "bad-feed": ("emb3_1", [GOOD_IDS, GOOD_IDS.astype(np.int32), GOOD_IDS]),
    }
    jobs = []
    for case, (engine, feeds) in cases.items():
        paths = [str(tmp_path / f"{case}{rank}.npz") for rank in range(3)]
        for path, ids in zip(paths, feeds):
            np.savez(path, input_ids=ids)
        jobs.append({"path": str(root / engine), "feeds_by_rank": paths, "out": str(tmp_path / case)})
    np.savez(tmp_path / "good.npz", input_ids=GOOD_IDS)
    done = run_mpi(3, ["worker", "fault", spec({"jobs": jobs, "then": str(tmp_path / "good.npz")})])
    assert done.returncode == 0, done.stderr
    expected = {
        "failing-kernel": ("OutOfRangeIdError", "rank 2: embedding 'wte': id 500 at flat position 1 is outside the vocabulary [0, 101)"),
        "range-check": ("OutOfRangeIdError", "rank 1: embedding 'wte': id 500 at flat position 1 is outside the vocabulary [0, 101)"),
    }
    for case in cases:
        for rank in range(3):
            name, message = json.loads(Path(f"{tmp_path / case}.rank{rank}.json").read_text())
            if case == "bad-feed":
                assert name == "InputError" and message.startswith("rank 1: engine 'emb_tp3_dim1': input 'input_ids'") and "int32" in message, message
            else:
                assert (name, message) == expected[case]
        _recovered(tmp_path / case, table, 3)


@pytest.mark.parametrize("damage", ["corrupt", "missing", "corrupt-unverified"])
def test_a_damaged_rank_file_stops_every_rank_with_its_message(run_mpi, engines, tmp_path, damage):
    engine = tmp_path / "engine"
    shutil.copytree(engines["root"] / "emb2_1", engine)
    target = engine / "rank1" / "segment0.onnx"
    if damage == "missing":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[:64] = b"\xff" * 64  # the protobuf header: not a model any more
        target.write_bytes(bytes(data))
    extra = ["--no-verify"] if damage == "corrupt-unverified" else []
    done = run_mpi(2, ["run", str(engine), "--input", "input_ids=1,2", *extra])
    assert done.returncode == 1, done.stderr
    # both ranks print rank 1's message (their stderr may interleave mid-line: count, then read one)
    assert done.stderr.count("graphbuild: error: rank 1: ") == 2 and done.stderr.count("graphbuild: error:") == 2, done.stderr
    message = done.stderr[done.stderr.index("graphbuild: error: rank 1: ") :].split("graphbuild: error:")[1]
    assert "rank1/segment0.onnx" in message
    assert {"corrupt": "checksum mismatch", "missing": "missing", "corrupt-unverified": "ONNX"}[damage] in message
    assert "Traceback" not in done.stderr


def test_ranks_that_load_different_engines_fail_on_every_rank(run_mpi, spec, engines):
    root = engines["root"]
    done = run_mpi(2, ["worker", "load", spec({"paths": [str(root / "emb2_0"), str(root / "emb2_1")]})])
    assert done.returncode != 0
    assert done.stderr.count("rank(s) [1] loaded an engine whose config.json differs from rank 0's") == 2, done.stderr


def test_a_killed_rank_ends_the_job(run_mpi, spec, engines, tmp_path):
    np.savez(tmp_path / "ids.npz", input_ids=GOOD_IDS)
    done = run_mpi(2, ["worker", "kill", spec({"path": str(engines["root"] / "emb2_0"), "feeds": str(tmp_path / "ids.npz")})])
    assert done.returncode != 0  # mpiexec (hydra) ends the job when a rank dies; the timeout catches a hang
    assert "signal 9" in done.stdout + done.stderr or "Killed" in done.stdout + done.stderr


def test_a_rank_that_stops_answering_is_aborted_by_the_watchdog(run_mpi, spec, engines, tmp_path):
    np.savez(tmp_path / "ids.npz", input_ids=GOOD_IDS)
    task = spec({"path": str(engines["root"] / "emb2_0"), "feeds": str(tmp_path / "ids.npz"), "seconds": 300})
    done = run_mpi(2, ["worker", "hang", task], env={"GRAPHBUILD_MPI_TIMEOUT": "2"})
    assert done.returncode != 0
    assert "graphbuild: error: rank 0: sharing the feeds waited more than 2 s for the other ranks (GRAPHBUILD_MPI_TIMEOUT); aborting the job" in done.stderr


def test_missing_mpi4py_says_how_to_install_it(engines, tmp_path):
    import subprocess
    import sys

    fake = tmp_path / "fake" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named mpi4py')\n")
    env = {"PYTHONPATH": str(tmp_path / "fake"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(Path(sys.executable).with_name("graphbuild")), "run", str(engines["root"] / "emb2_0"), "--input", "input_ids=1", "--executor", "mpi"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1
    assert "the MPI executor needs mpi4py" in done.stderr and "pip install 'graphbuild[mpi]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_mpiexec_says_how_to_install_it(engines, monkeypatch, capsys):
    from graphbuild.runtime import mpi_cli
    from graphbuild.tools import cli

    monkeypatch.setattr(mpi_cli, "find_mpiexec", lambda: None)
    for name in ("PMI_RANK", "PMI_SIZE", "PMI_FD", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["run", str(engines["root"] / "emb2_0"), "--input", "input_ids=1", "--executor", "mpi"]) == 1
    err = capsys.readouterr().err
    assert "--executor mpi: no mpiexec next to" in err and "pip install 'graphbuild[mpi]'" in err


def test_without_mpiexec_run_keeps_the_local_executor(engines, monkeypatch, capsys):
    from graphbuild.tools import cli

    for name in ("PMI_RANK", "PMI_SIZE", "PMI_FD", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["run", str(engines["root"] / "emb2_0"), "--input", "input_ids=4,5"]) == 0
    out = capsys.readouterr().out
    assert "(tp_size 2):" in out and "MPI" not in out
    local = gb.Engine.load(engines["root"] / "emb2_0").run({"input_ids": np.array([[4, 5]])})
    np.testing.assert_array_equal(local["embeddings"], engines["table"][[[4, 5]]])
