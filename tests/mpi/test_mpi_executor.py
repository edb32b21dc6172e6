"""The MPI executor against the local executor and numpy: real ``mpiexec -n 2/3/4`` runs.

Each test starts one ``mpiexec`` that runs several engines (the worker writes every rank's outputs),
then checks them here: bitwise equal to the local executor's outputs for the same rank (both calls:
the one that makes the plan and the one that reuses it, and ``run_all_ranks``), and equal (or
close, for the float32 transformer block) to a numpy reference written here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

import graphbuild as gb

erf = np.vectorize(math.erf, otypes=[np.float64])


def _saved(out: str, world_rank: int) -> dict[str, np.ndarray]:
    with np.load(f"{out}.rank{world_rank}.npz") as data:
        return {name: data[name] for name in data.files}


def _check_job(out: str, world_ranks: list[int], engine_path: Path, feeds: dict[str, np.ndarray], expected: Any, exact: bool = True) -> None:
    """Every world rank's outputs equal the local executor's for its engine rank, and ``expected``."""
    local = gb.Engine.load(engine_path).run_all_ranks(feeds)
    for engine_rank, world_rank in enumerate(world_ranks):
        saved = _saved(out, world_rank)
        for name, reference in local[engine_rank].items():
            reference = reference.astype(np.float32) if reference.dtype == ml_dtypes.bfloat16 else reference
            for key in (f"first/{name}", f"second/{name}", *(f"all{r}/{name}" for r in range(len(world_ranks)) if r == engine_rank)):
                np.testing.assert_array_equal(saved[key], reference, err_msg=f"{engine_path.name}, world rank {world_rank}, {key}")
            for r in range(len(world_ranks)):
                np.testing.assert_array_equal(saved[f"all{r}/{name}"], local[r][name].astype(np.float32) if local[r][name].dtype == ml_dtypes.bfloat16 else local[r][name])
            if exact:
                np.testing.assert_array_equal(saved[f"first/{name}"], expected)
            else:
                np.testing.assert_allclose(saved[f"first/{name}"], expected, rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------- numpy reference
def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * w + b


def _block_reference(x: np.ndarray, w: dict[str, np.ndarray], heads: int) -> np.ndarray:
    x = x.astype(np.float64)
    batch, seq, hidden = x.shape
    h = _layer_norm(x, w["ln1.weight"], w["ln1.bias"])
    q, k, v = np.split(h @ w["attn.qkv.weight"].T.astype(np.float64) + w["attn.qkv.bias"], 3, axis=-1)
    size = hidden // heads
    q, k, v = (t.reshape(batch, seq, heads, size).transpose(0, 2, 1, 3) for t in (q, k, v))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size)
    scores = np.where(np.triu(np.ones((seq, seq), bool), 1), -np.inf, scores)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    context = ((e / e.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
    x = x + context @ w["attn.dense.weight"].T + w["attn.dense.bias"]
    h = _layer_norm(x, w["ln2.weight"], w["ln2.bias"]) @ w["mlp.fc.weight"].T + w["mlp.fc.bias"]
    h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
    return x + h @ w["mlp.proj.weight"].T + w["mlp.proj.bias"]


# ------------------------------------------------------------------------------------- tests
def test_two_processes_match_the_local_executor(run_mpi, spec, engines, tmp_path, rng):
    """Both sharding dims with uneven vocab/hidden, the plugin-less lowering, a transformer block
    (attention + MLP: all-reduces of float32 partial sums) and a ``workspace``, feeds on rank 0
    only or on all; the second call writes into ``out=`` arrays."""
    root, table = engines["root"], engines["table"]
    ids = rng.integers(0, table.shape[0], size=(2, 5)).astype(np.int64)
    ids[0, :2] = [0, table.shape[0] - 1]  # both ends of the vocabulary (the last shard's padding edge)
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    x = rng.standard_normal((2, 4, engines["block_hidden"])).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    jobs = [
        {"path": str(root / "emb2_0"), "feeds": str(tmp_path / "ids.npz"), "out": str(tmp_path / "emb2_0")},
        {"path": str(root / "emb2_1"), "feeds": str(tmp_path / "ids.npz"), "out": str(tmp_path / "emb2_1"), "feeds_on": "all"},
        {"path": str(root / "emb2_noplugin"), "feeds": str(tmp_path / "ids.npz"), "out": str(tmp_path / "emb2_noplugin")},
        {"path": str(root / "block2"), "feeds": str(tmp_path / "x.npz"), "out": str(tmp_path / "block2")},
        {"path": str(root / "emb2_workspace"), "feeds": str(tmp_path / "ws.npz"), "out": str(tmp_path / "ws"), "feeds_on": "all"},
    ]
    workspace = np.full(256, np.nan, np.float32)
    np.savez(tmp_path / "ws.npz", input_ids=ids, workspace=workspace)
    done = run_mpi(2, ["worker", "run", spec({"jobs": jobs})])
    assert done.returncode == 0, done.stderr
    for rank in range(2):  # each rank's workspace feed received the all-reduce's result
        saved = _saved(str(tmp_path / "ws"), rank)
        np.testing.assert_array_equal(saved["feed/workspace"][: ids.size * table.shape[1]], table[ids].reshape(-1))
        np.testing.assert_array_equal(saved["first/embeddings"], table[ids])
        assert saved["meta/out_used"]
    for name in ("emb2_0", "emb2_1", "emb2_noplugin"):
        _check_job(str(tmp_path / name), [0, 1], root / name, {"input_ids": ids}, table[ids])
    expected = _block_reference(x, engines["block_weights"], heads=6)
    _check_job(str(tmp_path / "block2"), [0, 1], root / "block2", {"x": x}, expected, exact=False)


def test_three_processes_match_the_local_executor(run_mpi, spec, engines, tmp_path, rng):
    """tp 3: the group-order sum of gathered parts (float32 block, bfloat16 embedding) and an
    uneven all-gather along the last axis (7 columns over 3 ranks), through a scratch buffer and,
    for a single token, straight into the output (``Allgatherv``)."""
    root, table = engines["root"], engines["table"]
    ids = rng.integers(0, table.shape[0], size=(3, 4)).astype(np.int64)
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    x = rng.standard_normal((1, 6, engines["block_hidden"])).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    jobs = [{"path": str(root / name), "feeds": str(tmp_path / "ids.npz"), "out": str(tmp_path / name)} for name in ("emb3_0", "emb3_1", "emb3_bf16")]
    jobs.append({"path": str(root / "block3"), "feeds": str(tmp_path / "x.npz"), "out": str(tmp_path / "block3")})
    one = np.array([[42]], dtype=np.int64)  # one token: each rank's columns are one contiguous block of the result
    np.savez(tmp_path / "one.npz", input_ids=one)
    jobs.append({"path": str(root / "emb3_1"), "feeds": str(tmp_path / "one.npz"), "out": str(tmp_path / "emb3_1_direct")})
    done = run_mpi(3, ["worker", "run", spec({"jobs": jobs})])
    assert done.returncode == 0, done.stderr
    for name in ("emb3_0", "emb3_1"):
        _check_job(str(tmp_path / name), [0, 1, 2], root / name, {"input_ids": ids}, table[ids])
    _check_job(str(tmp_path / "emb3_1_direct"), [0, 1, 2], root / "emb3_1", {"input_ids": one}, table[one])
    bf16 = table.astype(ml_dtypes.bfloat16).astype(np.float32)[ids]
    _check_job(str(tmp_path / "emb3_bf16"), [0, 1, 2], root / "emb3_bf16", {"input_ids": ids}, bf16)
    expected = _block_reference(x, engines["block_weights"], heads=6)
    _check_job(str(tmp_path / "block3"), [0, 1, 2], root / "block3", {"x": x}, expected, exact=False)


def test_four_processes_hold_two_groups_and_two_replicas(run_mpi, spec, engines, tmp_path, rng):
    """A world of 4: engines placed by their tp_group ([0, 1] and [2, 3]) side by side, then one
    tp-2 engine as two data-parallel replicas, each with its own feeds."""
    root, table = engines["root"], engines["table"]
    ids = [rng.integers(0, table.shape[0], size=(1, 6)).astype(np.int64) for _ in range(2)]
    for i, array in enumerate(ids):
        np.savez(tmp_path / f"ids{i}.npz", input_ids=array)
    jobs = [
        {"path": str(root / "emb2_0"), "feeds": str(tmp_path / "ids0.npz"), "out": str(tmp_path / "group01"), "options": {"world_ranks": "tp_group"}, "world_ranks_of": [0, 1]},
        {"path": str(root / "emb2_group23"), "feeds": str(tmp_path / "ids1.npz"), "out": str(tmp_path / "group23"), "options": {"world_ranks": "tp_group"}, "world_ranks_of": [2, 3]},
        {"path": str(root / "emb2_1"), "feeds_by_replica": [str(tmp_path / "ids0.npz"), str(tmp_path / "ids1.npz")], "out": str(tmp_path / "replicas"), "options": {"replicas": 2}},
    ]
    done = run_mpi(4, ["worker", "run", spec({"jobs": jobs})])
    assert done.returncode == 0, done.stderr
    _check_job(str(tmp_path / "group01"), [0, 1], root / "emb2_0", {"input_ids": ids[0]}, table[ids[0]])
    _check_job(str(tmp_path / "group23"), [2, 3], root / "emb2_group23", {"input_ids": ids[1]}, table[ids[1]])
    for replica in range(2):
        _check_job(str(tmp_path / "replicas"), [2 * replica, 2 * replica + 1], root / "emb2_1", {"input_ids": ids[replica]}, table[ids[replica]])


def test_cli_under_mpiexec_prints_and_writes_what_the_local_run_does(run_mpi, engines, tmp_path):
    """``mpiexec -n 2 graphbuild run``: rank 0 writes the outputs (every rank's with --all-ranks);
    the same engine runs with the local executor without a rebuild."""
    root, table = engines["root"], engines["table"]
    engine = str(root / "emb2_1")
    done = run_mpi(2, ["run", engine, "--input", "input_ids=[[3,1,100]]", "-o", str(tmp_path / "mpi.npz")])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("embeddings: float32(1, 3, 7)") == 1  # rank 0 prints, once
    assert "2 MPI processes" in done.stdout
    with np.load(tmp_path / "mpi.npz") as saved:
        np.testing.assert_array_equal(saved["embeddings"], table[[[3, 1, 100]]])
    done = run_mpi(2, ["run", engine, "--input", "input_ids=5,6", "--all-ranks", "-o", str(tmp_path / "all.npz")])
    assert done.returncode == 0, done.stderr
    assert "rank 0:" in done.stdout and "rank 1:" in done.stdout
    for rank in range(2):
        with np.load(tmp_path / f"all.rank{rank}.npz") as saved:
            np.testing.assert_array_equal(saved["embeddings"], table[[[5, 6]]])
    local = gb.Engine.load(engine).run({"input_ids": np.array([[3, 1, 100]])})
    np.testing.assert_array_equal(local["embeddings"], table[[[3, 1, 100]]])
