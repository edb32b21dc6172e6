"""The MPI executor with the CUDA execution provider: NCCL on device buffers, or host staging.

Needs a CUDA device (``gpu`` marker: skipped with the reason otherwise) and, for the NCCL path,
CuPy with NCCL (``pip install cupy-cuda12x``; skipped with the reason when absent). Both paths must
give exactly the local executor's outputs on the same device (which itself keeps tensors on the
GPU), and numpy's ``table[ids]`` for the embeddings.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb

pytestmark = pytest.mark.gpu


def _check(out, engine_path, ids, table, ranks):
    local = gb.Engine.load(engine_path).run_all_ranks({"input_ids": ids})
    for rank in range(ranks):
        with np.load(f"{out}.rank{rank}.npz") as saved:
            assert str(saved["meta/device"]) == "cuda"
            for key in ("first/embeddings", "second/embeddings"):
                np.testing.assert_array_equal(saved[key], local[rank]["embeddings"])
                np.testing.assert_array_equal(saved[key], table[ids])
            nccl = bool(saved["meta/nccl"])
    return nccl


def _jobs(engines, tmp_path, names, ids):
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    return [{"path": str(engines["root"] / name), "feeds": str(tmp_path / "ids.npz"), "out": str(tmp_path / name)} for name in names]


@pytest.mark.parametrize("ranks", [2, 3])
def test_nccl_collectives_on_device_buffers(run_mpi, spec, engines, tmp_path, rng, ranks):
    """Each rank on its own GPU (the worker sets ``CUDA_VISIBLE_DEVICES`` from its local rank)."""
    pytest.importorskip("cupy.cuda.nccl", reason="CuPy with NCCL is not installed (pip install cupy-cuda12x)")
    from graphbuild.runtime.session import cuda_device_count

    if cuda_device_count() < ranks:
        pytest.skip(f"NCCL needs one GPU per rank: {ranks} ranks, {cuda_device_count()} CUDA device(s)")
    names = [f"emb{ranks}_0", f"emb{ranks}_1"]  # 3 ranks: broadcasts and the group-order sum model
    ids = rng.integers(0, engines["table"].shape[0], size=(2, 5)).astype(np.int64)
    done = run_mpi(ranks, ["worker", "run", spec({"jobs": _jobs(engines, tmp_path, names, ids), "gpu_per_rank": True})])
    assert done.returncode == 0, done.stderr
    for name in names:
        assert _check(tmp_path / name, engines["root"] / name, ids, engines["table"], ranks), "NCCL was not used"


def test_without_nccl_device_tensors_are_staged_through_the_host_with_a_warning(run_mpi, spec, engines, tmp_path, rng):
    """Two ranks on one GPU (as a one-GPU machine has them), NCCL turned off."""
    ids = rng.integers(0, engines["table"].shape[0], size=(1, 4)).astype(np.int64)
    done = run_mpi(2, ["worker", "run", spec({"jobs": _jobs(engines, tmp_path, ["emb2_0", "emb2_1"], ids)})], env={"GRAPHBUILD_NCCL": "0"})
    assert done.returncode == 0, done.stderr
    assert "copies CUDA tensors to host memory for every collective" in done.stderr
    for name in ("emb2_0", "emb2_1"):
        assert not _check(tmp_path / name, engines["root"] / name, ids, engines["table"], 2)
