"""A LLaMA-sized token embedding, tensor parallel, built at tp_size 1, 2 and 4 and checked against numpy.

The embedding layer of LLaMA (vocabulary 32000, hidden size 4096; in tch-rs
``nn::embedding(vs.root() / "wte", 32000, 4096, Default::default())``), looking up ``[[1, 2, 3]]``
to get a ``[1, 3, 4096]`` tensor. Here it is a graphbuild ``layers.Embedding`` named ``wte`` (weight
``wte.weight``), compiled at tp_size 1, 2 and 4 with the vocabulary split (sharding_dim 0: per-rank
lookup + all-reduce) and the hidden split (sharding_dim 1: per-rank lookup + all-gather), run with
ONNX Runtime, and checked against numpy's ``table[ids]``.

    python examples/embedding_tp.py                 # LLaMA sizes (a 500 MB table), temporary engines
    python examples/embedding_tp.py --quick         # small sizes, seconds
    python examples/embedding_tp.py --out out/demo  # keep the engines
    graphbuild build examples/embedding_tp.py:make_network -o out/emb --tp-size 2 --set sharding_dim=1
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

import graphbuild as gb
from graphbuild import layers

VOCAB_SIZE = 32000  # LLaMA
HIDDEN_SIZE = 4096
QUICK_VOCAB_SIZE = 1000
QUICK_HIDDEN_SIZE = 64
TP_SIZES = (1, 2, 4)
SHARDING_DIMS = (0, 1)
IDS = np.array([[1, 2, 3]], dtype=np.int64)


def make_network(
    tp_size: int = 2,
    sharding_dim: int = 0,
    dtype: str = "float32",
    vocab_size: int = VOCAB_SIZE,
    hidden_size: int = HIDDEN_SIZE,
    seed: int = 0,
    weight: Optional[np.ndarray] = None,
) -> gb.Network:
    """The embedding network: ``input_ids [batch, seq]`` -> ``embeddings [batch, seq, hidden]``.

    Args:
        tp_size: number of tensor-parallel ranks.
        sharding_dim: 0 splits the vocabulary, 1 the hidden dimension.
        dtype: the table's dtype (float32, float16 or bfloat16).
        vocab_size: rows of the table.
        hidden_size: columns of the table.
        seed: seed of the ``N(0, 1)`` table when ``weight`` is not given.
        weight: a ``[vocab_size, hidden_size]`` table to use instead of a random one.

    Returns:
        A logical network; ``gb.build`` partitions it into ``tp_size`` ranks.
    """
    wte = layers.Embedding(
        vocab_size,
        hidden_size,
        dtype=dtype,
        tp_size=tp_size,
        sharding_dim=sharding_dim,
        weight=weight,
        seed=seed,
        name="wte",
    )
    net = gb.Network("embedding_tp")
    with net:
        ids = net.add_input("input_ids", dtype="int64", shape=("batch", "seq"))
        net.mark_output(wte(ids), "embeddings")
    return net


def check_config(table: np.ndarray, tp_size: int, sharding_dim: int, engine_dir: Path, *, use_plugin: bool) -> dict[str, Any]:
    """Builds one configuration into ``engine_dir``, runs ``IDS`` and compares with ``table[IDS]``."""
    net = make_network(tp_size, sharding_dim, vocab_size=table.shape[0], hidden_size=table.shape[1], weight=table)
    start = time.perf_counter()
    engine = gb.build(net, engine_dir, use_plugin=use_plugin, overwrite=True)
    built = time.perf_counter()
    out = engine.run({"input_ids": IDS})["embeddings"]
    ran = time.perf_counter()
    expected = table[IDS]
    diff = float(np.max(np.abs(out.astype(np.float64) - expected.astype(np.float64)))) if out.shape == expected.shape else float("inf")
    # Bitwise for gathers (tp_size 1, hidden split); the vocab split's all-reduce adds exact zeros,
    # but sums are only promised within float tolerance.
    exact = tp_size == 1 or sharding_dim == 1
    ok = out.shape == expected.shape and (np.array_equal(out, expected) if exact else np.allclose(out, expected, rtol=1e-6, atol=1e-6))
    del engine
    gc.collect()
    return {
        "tp_size": tp_size,
        "sharding_dim": sharding_dim,
        "shape": tuple(out.shape),
        "max_abs_diff": diff,
        "build_ms": 1000 * (built - start),
        "run_ms": 1000 * (ran - built),
        "ok": ok,
    }


def format_results(results: Sequence[dict[str, Any]]) -> str:
    """The summary table ``main`` prints."""
    header = f"{'tp_size':>7}  {'sharding_dim':>12}  {'output shape':<16}  {'max abs diff':>12}  {'build ms':>9}  {'run ms':>8}  check"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['tp_size']:>7}  {r['sharding_dim']:>12}  {str(list(r['shape'])):<16}  {r['max_abs_diff']:>12.3g}  "
            f"{r['build_ms']:>9.0f}  {r['run_ms']:>8.1f}  {'ok' if r['ok'] else 'MISMATCH'}"
        )
    return "\n".join(lines)


def run_demo(out_dir: Optional[Path], *, vocab_size: int, hidden_size: int, use_plugin: bool, seed: int = 0) -> list[dict[str, Any]]:
    """Builds and checks every (tp_size, sharding_dim) configuration, one engine at a time.

    Engines go to ``out_dir/tp{N}_sd{D}`` (kept), or to a temporary directory removed afterwards.
    """
    table = np.random.default_rng(seed).standard_normal((vocab_size, hidden_size), dtype=np.float32)
    temp = None if out_dir is not None else Path(tempfile.mkdtemp(prefix="graphbuild-embedding-tp-"))
    root = out_dir if out_dir is not None else temp
    results = []
    try:
        for tp_size in TP_SIZES:
            for sharding_dim in SHARDING_DIMS:
                engine_dir = root / f"tp{tp_size}_sd{sharding_dim}"
                results.append(check_config(table, tp_size, sharding_dim, engine_dir, use_plugin=use_plugin))
                if temp is not None:
                    shutil.rmtree(engine_dir, ignore_errors=True)  # one engine's weights on disk at a time
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns 0 when every configuration matches numpy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, metavar="DIR", help="keep the engines under DIR (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help=f"small sizes ({QUICK_VOCAB_SIZE} x {QUICK_HIDDEN_SIZE}) instead of LLaMA's")
    parser.add_argument("--no-plugin", action="store_true", help="standard ONNX ops instead of the TPEmbedding custom op")
    parser.add_argument("--vocab-size", type=int, help="rows of the table (overrides --quick)")
    parser.add_argument("--hidden-size", type=int, help="columns of the table (overrides --quick)")
    args = parser.parse_args(argv)
    vocab = args.vocab_size if args.vocab_size is not None else (QUICK_VOCAB_SIZE if args.quick else VOCAB_SIZE)
    hidden = args.hidden_size if args.hidden_size is not None else (QUICK_HIDDEN_SIZE if args.quick else HIDDEN_SIZE)
    path = "standard ONNX ops" if args.no_plugin else "TPEmbedding plugin"
    print(f"embedding {vocab} x {hidden} float32, ids {IDS.tolist()}, {path}")
    try:
        results = run_demo(args.out, vocab_size=vocab, hidden_size=hidden, use_plugin=not args.no_plugin)
    except gb.GraphBuildError as exc:
        print(f"embedding_tp: error: {exc}", file=sys.stderr)
        return 1
    print(format_results(results))
    if all(r["ok"] for r in results):
        print("OK")
        return 0
    print("MISMATCH: some configurations differ from numpy", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
