"""Runs graphbuild's TPEmbedding CUDA kernel through every code path, for compute-sanitizer.

tools/gpu_check.sh runs this under ``compute-sanitizer --tool memcheck`` and ``--tool racecheck``:

    compute-sanitizer --tool memcheck --error-exitcode 99 python tools/gpu_sanitize_driver.py

One-node TPEmbedding models run on ONNX Runtime's CUDA provider only (CPU fallback disabled) with
every table dtype and id dtype, row widths that take each copy unit (16, 8, 4 and 2 bytes), few and
many ids (both launch shapes), a vocab shard (zero rows for other shards' ids), zero_out_of_range,
empty rows and ids, and ids out of range (the error must name the first one and its position, and
the next run must be right). Every output is compared bit for bit with numpy. Exits 0 when all
checks pass, 1 (after printing what differed) otherwise, 2 when the CUDA provider is unusable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import ml_dtypes
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

CUDA = "CUDAExecutionProvider"
NODE = "emb"
TABLE_TYPES = {"float32": (np.float32, TensorProto.FLOAT), "float16": (np.float16, TensorProto.FLOAT16), "bfloat16": (ml_dtypes.bfloat16, TensorProto.BFLOAT16)}
ID_TYPES = {"int32": (np.int32, TensorProto.INT32), "int64": (np.int64, TensorProto.INT64)}
# 2-byte elements: 1 and 1001 -> 2-byte units, 2 -> 4, 4 -> 8, 1024 -> 16; float32: 1 -> 4, 2 -> 8, 1024 -> 16.
DIMS = (1, 2, 4, 1001, 1024)


def make_session(library: str, ids_type: str, table_type: str, **attributes: int) -> ort.InferenceSession:
    node = helper.make_node("TPEmbedding", ["ids", "table"], ["out"], name=NODE, domain="graphbuild", **attributes)
    graph = helper.make_graph(
        [node], "sanitize",
        [helper.make_tensor_value_info("ids", ID_TYPES[ids_type][1], None), helper.make_tensor_value_info("table", TABLE_TYPES[table_type][1], None)],
        [helper.make_tensor_value_info("out", TABLE_TYPES[table_type][1], None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("graphbuild", 1)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=[CUDA])
    if session.get_providers()[0] != CUDA:
        raise SystemExit(f"gpu_sanitize_driver: the CUDA provider did not start: {session.get_providers()}")
    return session


def run(session: ort.InferenceSession, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    from graphbuild.runtime.ortvalues import from_ortvalue, to_ortvalue

    (out,) = session.run_with_ort_values(["out"], {"ids": to_ortvalue(ids), "table": to_ortvalue(table)})
    return from_ortvalue(out)


def reference(ids: np.ndarray, table: np.ndarray, vocab_size: int, vocab_start: int) -> np.ndarray:
    local = ids.astype(np.int64) - vocab_start
    keep = (ids >= 0) & (ids < vocab_size) & (local >= 0) & (local < table.shape[0])
    rows = table[np.where(keep, local, 0)]
    return np.where(keep[..., None], rows, np.zeros((), table.dtype)).astype(table.dtype)


class Checker:
    """Counts checks and collects failures instead of stopping at the first."""

    def __init__(self) -> None:
        self.checks = 0
        self.failures: list[str] = []

    def same(self, what: str, actual: np.ndarray, expected: np.ndarray) -> None:
        self.checks += 1
        if actual.shape != expected.shape or actual.dtype != expected.dtype or actual.tobytes() != expected.tobytes():
            self.failures.append(f"{what}: output differs from numpy (shape {actual.shape} vs {expected.shape})")

    def raises(self, what: str, session: ort.InferenceSession, ids: np.ndarray, table: np.ndarray, text: str) -> None:
        self.checks += 1
        try:
            run(session, ids, table)
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as error:
            if text not in str(error):
                self.failures.append(f"{what}: expected '{text}', got '{error}'")
            return
        self.failures.append(f"{what}: no error for an out-of-range id")


def drive(library: str, many: int, checker: Checker) -> None:
    rng = np.random.default_rng(5)
    vocab, start, rows = 3000, 1000, 1200
    for table_type, (table_dtype, _) in TABLE_TYPES.items():
        for ids_type, (ids_dtype, _) in ID_TYPES.items():
            shard = make_session(library, ids_type, table_type, vocab_size=vocab, vocab_start=start)
            zeros = make_session(library, ids_type, table_type, vocab_size=vocab, vocab_start=start, zero_out_of_range=1)
            for dim in DIMS:
                table = (rng.standard_normal((rows, dim)) + 3).astype(table_dtype)
                label = f"{table_type} table, {ids_type} ids, D={dim}"
                for count in (0, 1, 16, many):
                    ids = rng.integers(0, vocab, size=(count,)).astype(ids_dtype)
                    checker.same(f"{label}, {count} ids", run(shard, ids, table), reference(ids, table, vocab, start))
                    wild = rng.integers(-50, vocab + 50, size=(count,)).astype(ids_dtype)
                    checker.same(f"{label}, {count} ids, zero_out_of_range", run(zeros, wild, table), reference(wild, table, vocab, start))
                    if count:
                        bad = ids.copy()
                        first = count // 3
                        bad[first] = vocab + 7
                        bad[first + 1 :: 5] = -2  # later offenders racing on the device
                        text = f"TPEmbedding '{NODE}': id {vocab + 7} at flat position {first} is outside the vocabulary [0, {vocab})"
                        checker.raises(f"{label}, {count} ids, out of range", shard, bad, table, text)
                        checker.same(f"{label}, {count} ids, run after the error", run(shard, ids, table), reference(ids, table, vocab, start))
            empty_rows = np.zeros((rows, 0), table_dtype)
            ids = rng.integers(0, vocab, size=(many,)).astype(ids_dtype)
            checker.same(f"{table_type}/{ids_type} empty rows", run(shard, ids, empty_rows), reference(ids, empty_rows, vocab, start))
            ids[-1] = -1
            checker.raises(f"{table_type}/{ids_type} empty rows, out of range", shard, ids, empty_rows, f"id -1 at flat position {many - 1}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", help="the custom-op library (default: the installed graphbuild's)")
    parser.add_argument("--many", type=int, default=2048, help="ids in the large runs (default 2048: warp-per-row launches)")
    args = parser.parse_args(argv)
    if CUDA not in ort.get_available_providers():
        print(f"gpu_sanitize_driver: this onnxruntime ({ort.__file__}) has no {CUDA}", file=sys.stderr)
        return 2
    library = args.library
    if library is None:
        from graphbuild import plugin

        library = str(plugin.library_path())
    checker = Checker()
    drive(library, args.many, checker)
    for failure in checker.failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"gpu_sanitize_driver: {checker.checks} checks, {len(checker.failures)} failed")
    return 1 if checker.failures else 0


if __name__ == "__main__":
    sys.exit(main())
