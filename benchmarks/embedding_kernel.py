"""Side-by-side timing of the TPEmbedding CPU kernel against a plain copy, numpy and ONNX Runtime.

    .venv/bin/python benchmarks/embedding_kernel.py [--vocab 32000] [--hidden 4096] [--tokens 16 4096]

For each token count and thread count it prints the median milliseconds of repeated runs (after a
warm-up, with the ids rotated between runs so one id set is not served from cache), the bandwidth
(table bytes read plus output bytes written) and two ratios: against the copy ceiling (a plain
single-threaded numpy copy of the same bytes, so with more threads a kernel can pass it) and against
ONNX Runtime's own ``Gather`` at the same thread count. Rows: the copy, ``numpy.take``, ORT
``Gather``, ``TPEmbedding`` over the full table and over one vocab shard of two (ids of the other
shard give zero rows, as in a tensor-parallel run).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from graphbuild import plugin
from graphbuild.plugin import DOMAIN, DOMAIN_VERSION, TP_EMBEDDING

ROTATIONS = 8


def _model(op: str, vocab_rows: int, hidden: int, **attrs) -> bytes:
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])
    table = helper.make_tensor_value_info("table", TensorProto.FLOAT, [vocab_rows, hidden])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", hidden])
    if op == "Gather":
        node = helper.make_node("Gather", ["table", "ids"], ["out"], axis=0)
    else:
        node = helper.make_node(TP_EMBEDDING, ["ids", "table"], ["out"], domain=DOMAIN, **attrs)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]
    graph = helper.make_graph([node], op, [ids, table], [out])
    return helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString()


def _session(model: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.register_custom_ops_library(str(plugin.library_path()))
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _median_ms(run: Callable[[int], object], repeats: int) -> float:
    for i in range(3):
        run(i)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 4096])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    vocab, hidden = args.vocab, args.hidden
    rng = np.random.default_rng(0)
    table = rng.standard_normal((vocab, hidden), dtype=np.float32)
    half = (vocab + 1) // 2
    shard = np.ascontiguousarray(table[:half])
    all_threads = os.cpu_count() or 1
    print(f"vocab {vocab}, hidden {hidden}, float32, {all_threads} cores; median of {args.repeats} runs")
    print(f"{'tokens':>6} {'threads':>7}  {'what':<26} {'ms':>9} {'GB/s':>7} {'vs copy':>8} {'vs Gather':>9}")
    for threads in sorted({1, all_threads}):
        gather = _session(_model("Gather", vocab, hidden), threads)
        full = _session(_model(TP_EMBEDDING, vocab, hidden, vocab_size=vocab), threads)
        one_shard = _session(_model(TP_EMBEDDING, half, hidden, vocab_size=vocab, vocab_start=0), threads)
        for tokens in args.tokens:
            id_sets = [rng.integers(0, vocab, size=tokens) for _ in range(ROTATIONS)]
            source = np.empty((tokens, hidden), np.float32)
            source[:] = table[id_sets[0] % vocab]
            target = np.empty_like(source)
            nbytes = 2 * source.nbytes  # rows read plus rows written
            rows = {
                "copy, 1 thread (ceiling)": lambda i: np.copyto(target, source),
                "numpy take": lambda i: np.take(table, id_sets[i % ROTATIONS], axis=0),
                "ORT Gather": lambda i: gather.run(None, {"ids": id_sets[i % ROTATIONS], "table": table}),
                "TPEmbedding full table": lambda i: full.run(None, {"ids": id_sets[i % ROTATIONS], "table": table}),
                "TPEmbedding 1 of 2 shards": lambda i: one_shard.run(None, {"ids": id_sets[i % ROTATIONS], "table": shard}),
            }
            times = {what: _median_ms(run, args.repeats) for what, run in rows.items()}
            for what, ms in times.items():
                print(
                    f"{tokens:>6} {threads:>7}  {what:<26} {ms:>9.3f} {nbytes / ms / 1e6:>7.2f} "
                    f"{times['copy, 1 thread (ceiling)'] / ms:>8.2f} {times['ORT Gather'] / ms:>9.2f}"
                )


if __name__ == "__main__":
    main()
