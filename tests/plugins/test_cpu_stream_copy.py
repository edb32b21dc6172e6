"""The TPEmbedding CPU kernel's large-output paths, which only outputs of 24 MiB or more reach:
streaming stores, eight rows copied in lockstep 256 bytes at a time, the rest of rows that are not
whole 256-byte steps, zero rows for ids of other shards in the middle of a lockstep group, rows
that are a multiple of 16 bytes but not of a cache line (streamed one at a time), odd rows
(copied with memcpy), and the thread pool. Each output is compared bit for bit with numpy.

The copy comes in three vector widths (SSE2, AVX, AVX-512F), chosen from the CPU;
``GRAPHBUILD_CPU_ISA`` caps the choice once per process, so the widths run in subprocesses
(this file run as a script).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphbuild import dtypes
from graphbuild.plugin import DOMAIN, DOMAIN_VERSION, TP_EMBEDDING
from graphbuild.runtime.ortvalues import aligned_empty, to_ortvalue
from graphbuild.runtime.session import session_options

VOCAB = 900
SHARD_ROWS = 450
# (dtype, hidden, tokens, id type): every output is 26-27 MiB, over the 24 MiB streaming threshold.
CASES = [
    ("float32", 4096, 1700, TensorProto.INT64),  # 16 KiB rows: 64 whole steps; 1700 = 212 groups of 8 + 4
    ("bfloat16", 4096, 3300, TensorProto.INT32),  # 8 KiB rows; int32 ids
    ("float32", 4112, 1700, TensorProto.INT64),  # 64 steps plus a 64-byte rest per row
    ("float32", 4100, 1700, TensorProto.INT64),  # rows a multiple of 16 bytes, not 64: one row at a time
    ("float16", 4093, 3300, TensorProto.INT64),  # 8186-byte rows: too odd to stream, memcpy
]


def _session(rows: int, hidden: int, dtype: dtypes.DType, id_type: int, **attrs: int) -> ort.InferenceSession:
    ids = helper.make_tensor_value_info("ids", id_type, ["n"])
    table = helper.make_tensor_value_info("table", dtype.onnx, [rows, hidden])
    out = helper.make_tensor_value_info("out", dtype.onnx, ["n", hidden])
    node = helper.make_node(TP_EMBEDDING, ["ids", "table"], ["out"], domain=DOMAIN, **attrs)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]
    model = helper.make_model(helper.make_graph([node], "t", [ids, table], [out]), opset_imports=opsets, ir_version=10)
    options = session_options(needs_plugin=True, intra_op_threads=2)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def check_case(dtype_name: str, hidden: int, tokens: int, id_type: int, *, shard: bool, seed: int = 0) -> None:
    """Runs one lookup of ``tokens`` ids (over the full table, or shard 0 of 2) and asserts it
    equals numpy's rows, zeros for the other shard's ids, bit for bit."""
    rng = np.random.default_rng(seed)
    dtype = dtypes.as_dtype(dtype_name)
    table = rng.standard_normal((VOCAB, hidden), dtype=np.float32).astype(dtype.numpy)
    ids = rng.integers(0, VOCAB, size=tokens).astype(np.int64 if id_type == TensorProto.INT64 else np.int32)
    ids[-1] = VOCAB - 1  # the table's last row, read to its last byte
    ids[0] = SHARD_ROWS - 1  # the shard's last row
    rows = SHARD_ROWS if shard else VOCAB
    attrs = {"vocab_size": VOCAB, "vocab_start": 0} if shard else {"vocab_size": VOCAB}
    session = _session(rows, hidden, dtype, id_type, **attrs)
    # The output is 64-byte aligned, as ONNX Runtime allocates it, and starts as 0xA5 bytes rather
    # than the zeros of fresh memory, so a row or part of a row left unwritten shows.
    out = aligned_empty((tokens, hidden * dtype.itemsize), np.uint8)
    out[...] = 0xA5
    binding = session.io_binding()
    binding.bind_ortvalue_input("ids", to_ortvalue(ids))
    binding.bind_ortvalue_input("table", to_ortvalue(np.ascontiguousarray(table[:rows])))
    binding.bind_output("out", "cpu", 0, dtype.onnx, [tokens, hidden], out.ctypes.data)
    session.run_with_iobinding(binding)
    data = out.view(dtype.numpy)
    expected = np.where((ids < rows)[:, None], table[np.minimum(ids, rows - 1)], np.zeros((), dtype.numpy))
    bits = np.uint32 if dtype.itemsize == 4 else np.uint16
    assert data.dtype == expected.dtype and data.shape == (tokens, hidden)
    assert np.array_equal(data.view(bits), expected.view(bits)), f"{dtype_name} x {hidden}, {tokens} tokens, shard={shard}"


@pytest.mark.parametrize("dtype_name, hidden, tokens, id_type", CASES)
@pytest.mark.parametrize("shard", [False, True], ids=["full", "shard"])
def test_large_outputs_match_numpy(dtype_name, hidden, tokens, id_type, shard):
    check_case(dtype_name, hidden, tokens, id_type, shard=shard)


def _run_as_script(isa: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRAPHBUILD_CPU_ISA": isa}
    return subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("isa", ["sse2", "avx", "avx512"])
def test_every_vector_width_matches_numpy(isa):
    result = _run_as_script(isa)
    if result.returncode != 0 and f"GRAPHBUILD_CPU_ISA={isa}, but this CPU" in result.stderr:
        pytest.skip(f"this CPU has no {isa}: {result.stderr.strip().splitlines()[-1][:200]}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"{2 * len(CASES)} lookups match numpy"


def test_an_unknown_vector_width_is_a_clear_error():
    result = _run_as_script("avx9000")
    assert result.returncode != 0
    assert "GRAPHBUILD_CPU_ISA must be 'sse2', 'avx', 'avx512' or unset, got 'avx9000'" in result.stderr


if __name__ == "__main__":
    for case in CASES:
        for shard in (False, True):
            check_case(*case, shard=shard)
    print(f"{2 * len(CASES)} lookups match numpy")
