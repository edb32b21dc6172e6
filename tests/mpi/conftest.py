"""Fixtures for the MPI tests: ``mpiexec`` (skipped only when it is genuinely absent), a runner that
starts it with a timeout, and small engines built once per session.

``mpiexec`` is looked up next to this Python first (the ``mpich`` wheel of ``make install`` puts it
in ``.venv/bin``), then on PATH. Runs on a host with fewer cores than ranks work because
graphbuild turns MPICH's busy-polling down when ranks outnumber cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import layers
from graphbuild.runtime.mpi_env import find_mpiexec

WORKER = Path(__file__).with_name("worker.py")
#: Seconds any one mpiexec run may take before the test fails (a hang, not a slow machine).
TIMEOUT = 120
VOCAB, HIDDEN = 101, 7  # uneven: 101 rows over 2 or 3 ranks, 7 columns over 2 or 3 ranks


@pytest.fixture(scope="session")
def mpiexec() -> Path:
    found = find_mpiexec()
    if found is None:
        pytest.skip("mpiexec not found next to the Python executable or on PATH (make install provides it)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (make install provides it)")
    return found


def _env(extra: Optional[dict[str, str]]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL"))}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


@pytest.fixture
def run_mpi(mpiexec: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``run_mpi(n, args, env=None, timeout=TIMEOUT)``: ``mpiexec -n n ARGS`` (ARGS after the
    program: a ``graphbuild`` command line, or ``["worker", TASK, spec]``)."""

    def run(n: int, args: Sequence[str], env: Optional[dict[str, str]] = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        if args[0] == "worker":
            program = [sys.executable, "-m", "mpi4py", str(WORKER), *args[1:]]
        else:
            program = [str(Path(sys.executable).with_name("graphbuild")), *args]
        command = [str(mpiexec), "-n", str(n), *program]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(env))

    return run


@pytest.fixture
def spec(tmp_path: Path) -> Callable[[dict[str, Any]], str]:
    """``spec(data)``: writes ``data`` as JSON for the worker; returns the path."""
    counter = iter(range(1000))

    def write(data: dict[str, Any]) -> str:
        path = tmp_path / f"spec{next(counter)}.json"
        path.write_text(json.dumps(data))
        return str(path)

    return write


def save_feeds(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def embedding_network(tp_size: int, sharding_dim: int, table: np.ndarray, *, tp_group: Optional[list[int]] = None, dtype: str = "float32") -> gb.Network:
    wte = layers.Embedding(table.shape[0], table.shape[1], dtype=dtype, tp_size=tp_size, tp_group=tp_group, sharding_dim=sharding_dim, weight=table, name="wte")
    net = gb.Network(f"emb_tp{tp_size}_dim{sharding_dim}")
    with net:
        ids = net.add_input("input_ids", dtype="int64", shape=("batch", "seq"))
        net.mark_output(wte(ids), "embeddings")
    return net


def workspace_network(table: np.ndarray) -> gb.Network:
    """tp 2, vocab split, with a ``workspace`` input the all-reduce writes its result into."""
    from graphbuild import functional as F

    net = gb.Network("emb_workspace")
    with net:
        ids = net.add_input("input_ids", dtype="int64", shape=("batch", "seq"))
        workspace = net.add_input("workspace", "float32", (256,))
        net.mark_output(F.embedding(ids, gb.constant(table), tp_size=2, workspace=workspace, name="wte"), "embeddings")
    return net


class Block(layers.Module):
    """A pre-norm transformer block: x + attn(ln1(x)), then + mlp(ln2(.)) (two all-reduces of partial sums)."""

    def __init__(self, hidden: int, heads: int, mapping: layers.Mapping) -> None:
        super().__init__()
        tp = mapping.tp_kwargs()
        self.ln1 = layers.LayerNorm(hidden)
        self.attn = layers.Attention(hidden, heads, causal=True, **tp)
        self.ln2 = layers.LayerNorm(hidden)
        self.mlp = layers.MLP(hidden, 4 * hidden, hidden_act="gelu", **tp)

    def forward(self, x: Any) -> Any:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def block_engine(path: Path, tp_size: int, weights: dict[str, np.ndarray], hidden: int, heads: int) -> gb.Engine:
    def make(mapping: layers.Mapping) -> gb.Network:
        block = Block(hidden, heads, mapping)
        for name, param in block.named_parameters():
            param.load(weights[name], what=name)
        net = gb.Network(f"block.rank{mapping.tp_rank}")
        with net:
            x = net.add_input("x", "float32", ("batch", "seq", hidden))
            net.mark_output(block(x), "y")
        return net

    return gb.build(layers.build_rank_networks(make, tp_size), path, overwrite=True)


@pytest.fixture(scope="session")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Engines (paths) and their tables/weights, built once: embeddings at tp 2 and 3 over both
    sharding dims (uneven vocab and hidden), a bfloat16 one, one without the plugin, one with
    ``tp_group=[2, 3]``, and a transformer block at tp 2 and 3."""
    root = tmp_path_factory.mktemp("mpi_engines")
    rng = np.random.default_rng(12)
    table = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    made: dict[str, Any] = {"table": table, "root": root}
    for tp_size in (2, 3):
        for dim in (0, 1):
            gb.build(embedding_network(tp_size, dim, table), root / f"emb{tp_size}_{dim}", overwrite=True)
    gb.build(embedding_network(3, 0, table, dtype="bfloat16"), root / "emb3_bf16", overwrite=True)
    gb.build(embedding_network(2, 0, table), root / "emb2_noplugin", use_plugin=False, overwrite=True)
    gb.build(embedding_network(3, 0, table), root / "emb3_noplugin", use_plugin=False, overwrite=True)
    gb.build(embedding_network(2, 1, table, tp_group=[2, 3]), root / "emb2_group23", overwrite=True)
    gb.build(workspace_network(table), root / "emb2_workspace", overwrite=True)
    hidden, heads = 12, 6
    probe = Block(hidden, heads, layers.Mapping())
    made["block_weights"] = weights = {name: (rng.standard_normal(p.full_shape) * 0.3).astype(np.float32) for name, p in probe.named_parameters()}
    made["block_hidden"] = hidden
    for tp_size in (2, 3):
        block_engine(root / f"block{tp_size}", tp_size, weights, hidden, heads)
    return made
