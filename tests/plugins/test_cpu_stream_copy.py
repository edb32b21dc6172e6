"""The TPEmbedding CPU kernel's row copies, each output compared bit for bit with numpy.

Five copies: memcpy row by row, and eight rows in lockstep 256 bytes at a time with streaming
(non-temporal) or ordinary stores, each of those also with the next group's rows prefetched into L2;
each in three vector widths (SSE2, AVX, AVX-512F). Per process
the kernel copies outputs below about 24 MiB with memcpy and larger ones with the copy a calibration
chose; ``GRAPHBUILD_CPU_STRATEGY`` (one of those copies' names) forces one copy for every output size and
``GRAPHBUILD_CPU_ISA`` caps the vector width, both read once per process, so each combination runs
in a subprocess (this file run as a script). The cases cover whole 256-byte steps and rests, zero
rows for ids of other shards in the middle of a lockstep group, rows that are a multiple of 16 bytes
but not of a cache line (one at a time), odd rows (memcpy), an output not aligned to a cache line,
and the thread pool; the large cases (26-27 MiB, above the size where the calibrated copy takes
over) run with each vector width. The library's two bench functions are tested here too: the
strategy it describes, and its byte copies.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphbuild import dtypes
from graphbuild.plugin import DOMAIN, DOMAIN_VERSION, TP_EMBEDDING
from graphbuild.runtime.ortvalues import aligned_empty, to_ortvalue
from graphbuild.runtime.session import session_options
from graphbuild.tools.bench_copy import plugin_library

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
# The same rows in small outputs, for the forced copies (which apply at every size): 37 rows (4
# groups of 8 and a rest), one row, and 300 rows of 16 KiB (several 1 MiB tasks on 2 threads).
SMALL_CASES = [
    ("float32", 4096, 37, TensorProto.INT64),
    ("float32", 4096, 1, TensorProto.INT32),
    ("float32", 4096, 300, TensorProto.INT64),
    ("bfloat16", 4096, 37, TensorProto.INT32),
    ("float32", 4112, 37, TensorProto.INT64),
    ("float32", 4100, 37, TensorProto.INT64),
    ("float16", 4093, 37, TensorProto.INT64),
    ("float32", 64, 37, TensorProto.INT64),  # 256-byte rows: exactly one step
    ("float16", 40, 37, TensorProto.INT64),  # 80-byte rows: no whole step, a 16-byte multiple
]
STRATEGIES = ["memcpy", "stream", "lockstep", "stream-prefetch", "lockstep-prefetch"]
ISAS = ["sse2", "avx", "avx512"]


def _session(rows: int, hidden: int, dtype: dtypes.DType, id_type: int, **attrs: int) -> ort.InferenceSession:
    ids = helper.make_tensor_value_info("ids", id_type, ["n"])
    table = helper.make_tensor_value_info("table", dtype.onnx, [rows, hidden])
    out = helper.make_tensor_value_info("out", dtype.onnx, ["n", hidden])
    node = helper.make_node(TP_EMBEDDING, ["ids", "table"], ["out"], domain=DOMAIN, **attrs)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]
    model = helper.make_model(helper.make_graph([node], "t", [ids, table], [out]), opset_imports=opsets, ir_version=10)
    options = session_options(needs_plugin=True, intra_op_threads=2)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def check_case(dtype_name: str, hidden: int, tokens: int, id_type: int, *, shard: bool, offset: int = 0, seed: int = 0) -> None:
    """Runs one lookup of ``tokens`` ids (over the full table, or shard 0 of 2) into an output
    ``offset`` bytes past a 64-byte boundary and asserts it equals numpy's rows, zeros for the
    other shard's ids, bit for bit."""
    rng = np.random.default_rng(seed)
    dtype = dtypes.as_dtype(dtype_name)
    table = rng.standard_normal((VOCAB, hidden), dtype=np.float32).astype(dtype.numpy)
    ids = rng.integers(0, VOCAB, size=tokens).astype(np.int64 if id_type == TensorProto.INT64 else np.int32)
    ids[-1] = VOCAB - 1  # the table's last row, read to its last byte
    ids[0] = SHARD_ROWS - 1  # the shard's last row
    if tokens > 12:
        ids[9:12] = [VOCAB - 2, 0, SHARD_ROWS]  # the other shard's rows inside the second group of 8
    rows = SHARD_ROWS if shard else VOCAB
    attrs = {"vocab_size": VOCAB, "vocab_start": 0} if shard else {"vocab_size": VOCAB}
    session = _session(rows, hidden, dtype, id_type, **attrs)
    # The output is 64-byte aligned, as ONNX Runtime allocates it, and starts as 0xA5 bytes rather
    # than the zeros of fresh memory, so a row or part of a row left unwritten shows.
    row_bytes = hidden * dtype.itemsize
    space = aligned_empty((tokens * row_bytes + offset + 64,), np.uint8)  # 64 guard bytes after it
    space[...] = 0xA5
    binding = session.io_binding()
    binding.bind_ortvalue_input("ids", to_ortvalue(ids))
    binding.bind_ortvalue_input("table", to_ortvalue(np.ascontiguousarray(table[:rows])))
    binding.bind_output("out", "cpu", 0, dtype.onnx, [tokens, hidden], space.ctypes.data + offset)
    session.run_with_iobinding(binding)
    data = space[offset : offset + tokens * row_bytes].view(dtype.numpy).reshape(tokens, hidden)
    assert (space[:offset] == 0xA5).all() and (space[offset + tokens * row_bytes :] == 0xA5).all(), "wrote outside the output"
    expected = np.where((ids < rows)[:, None], table[np.minimum(ids, rows - 1)], np.zeros((), dtype.numpy))
    bits = np.uint32 if dtype.itemsize == 4 else np.uint16
    assert data.dtype == expected.dtype and data.shape == (tokens, hidden)
    assert np.array_equal(data.view(bits), expected.view(bits)), f"{dtype_name} x {hidden}, {tokens} tokens, shard={shard}"


@pytest.mark.parametrize("dtype_name, hidden, tokens, id_type", CASES)
@pytest.mark.parametrize("shard", [False, True], ids=["full", "shard"])
def test_large_outputs_match_numpy(dtype_name, hidden, tokens, id_type, shard):
    check_case(dtype_name, hidden, tokens, id_type, shard=shard)


def _run_as_script(mode: str, isa: str = "", strategy: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "GRAPHBUILD_CPU_ISA": isa, "GRAPHBUILD_CPU_STRATEGY": strategy}
    return subprocess.run([sys.executable, __file__, mode], env=env, capture_output=True, text=True, timeout=300)


def _skip_without(isa: str, result: subprocess.CompletedProcess) -> None:
    if result.returncode != 0 and f"GRAPHBUILD_CPU_ISA={isa}, but this CPU" in result.stderr:
        pytest.skip(f"this CPU has no {isa}: {result.stderr.strip().splitlines()[-1][:200]}")


@pytest.mark.parametrize("isa", ISAS)
def test_every_vector_width_matches_numpy(isa):
    result = _run_as_script("large", isa)
    _skip_without(isa, result)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"{4 * len(CASES)} lookups match numpy"


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("isa", ISAS)
def test_every_copy_matches_numpy(isa, strategy):
    result = _run_as_script("small", isa, strategy)
    _skip_without(isa, result)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"{6 * len(SMALL_CASES)} lookups match numpy"


def test_an_unknown_vector_width_is_a_clear_error():
    result = _run_as_script("small", "avx9000")
    assert result.returncode != 0
    assert "GRAPHBUILD_CPU_ISA must be 'sse2', 'avx', 'avx512' or unset, got 'avx9000'" in result.stderr


def test_an_unknown_strategy_is_a_clear_error():
    result = _run_as_script("small", "", "fastest")
    assert result.returncode != 0
    assert "GRAPHBUILD_CPU_STRATEGY must be 'auto', 'memcpy', 'stream', 'lockstep', 'stream-prefetch', 'lockstep-prefetch' or unset, got 'fastest'" in result.stderr




def describe_strategy() -> dict:
    """The strategy of this process, as the library describes it."""
    library = plugin_library()
    size = library.GraphBuildCpuStrategy(None, 0)
    buffer = ctypes.create_string_buffer(size + 1)
    assert library.GraphBuildCpuStrategy(buffer, size + 1) == size
    return json.loads(buffer.value.decode())


def _sys_l3_bytes() -> int:
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        if (index / "level").read_text().strip() == "3":
            text = (index / "size").read_text().strip()
            return int(text[:-1]) * {"K": 1024, "M": 1 << 20}[text[-1]] if text[-1] in "KM" else int(text)
    return 0


def test_the_calibrated_strategy_is_described():
    result = _run_as_script("describe")
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)
    assert found["error"] == "" and found["chosen_by"] == "calibration" and found["small"] == "memcpy"
    assert found["isa"] in ISAS and found["vector_bytes"] == {"sse2": 16, "avx": 32, "avx512": 64}[found["isa"]]
    l3 = _sys_l3_bytes()
    if l3:
        assert found["l3_from"] == "/sys" and found["l3_bytes"] == l3
        assert found["large_min_bytes"] == min(24 << 20, max(1 << 20, l3 // 4 * 3))
    times = found["calibration"]
    assert times["bytes"] >= 2 * found["large_min_bytes"] - 8192
    # The chosen copy is the fastest, a copy later in the order memcpy, stream, lockstep,
    # stream-prefetch, lockstep-prefetch taking the place of an earlier one only when at least 3% faster.
    assert [key.removesuffix("_ms") for key in times if key.endswith("_ms") and key not in ("total_ms", "setup_ms")] == STRATEGIES
    best = "memcpy"
    for name in STRATEGIES[1:]:
        if times[f"{name}_ms"] < 0.97 * times[f"{best}_ms"]:
            best = name
    assert found["large"] == best
    # Large outputs use the widest vectors, but 32-byte ones on AMD Zen 4 (family 0x19, AVX-512F).
    zen4 = found["vendor"] == "AuthenticAMD" and found["family"] == 0x19 and found["vector_bytes"] == 64
    assert found["large_vector_bytes"] == (32 if zen4 else found["vector_bytes"])


@pytest.mark.parametrize("isa, strategy", [("sse2", "stream"), ("avx", "lockstep"), ("", "memcpy"), ("avx", "stream-prefetch")])
def test_a_forced_strategy_is_described(isa, strategy):
    result = _run_as_script("describe", isa, strategy)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)
    if "but this CPU" in found["error"]:
        pytest.skip(f"this CPU has no {isa}: {found['error']}")
    assert found["chosen_by"] == "GRAPHBUILD_CPU_STRATEGY" and "calibration" not in found
    assert found["small"] == found["large"] == strategy and found["large_min_bytes"] == 0
    if isa:
        assert found["isa"] == isa


@pytest.mark.parametrize("width", [0, 16, 32, 64])
@pytest.mark.parametrize("method", [0, 1, 2], ids=STRATEGIES[:3])
def test_byte_copies_are_exact(method, width, rng):
    library = plugin_library()
    if method and width > describe_strategy()["vector_bytes"]:
        assert library.GraphBuildCopyBytes(0, 0, 0, method, width) == -1  # wider than the kernel's: refused
        pytest.skip(f"this CPU (or GRAPHBUILD_CPU_ISA) has no {width}-byte vector copy")
    source = rng.integers(0, 256, size=300_000, dtype=np.uint8)
    for size, src_at, dst_at in [(0, 0, 0), (1, 3, 5), (63, 1, 0), (4096, 0, 0), (299_000, 7, 13), (200_001, 64, 17)]:
        target = np.full(size + 64, 0xA5, np.uint8)
        assert library.GraphBuildCopyBytes(target.ctypes.data + dst_at, source.ctypes.data + src_at, size, method, width) == 0
        assert np.array_equal(target[dst_at : dst_at + size], source[src_at : src_at + size]), (size, src_at, dst_at)
        assert (target[:dst_at] == 0xA5).all() and (target[dst_at + size :] == 0xA5).all()


def test_an_unknown_byte_copy_is_refused():
    library = plugin_library()
    buffer = np.zeros(64, np.uint8)
    assert library.GraphBuildCopyBytes(buffer.ctypes.data, buffer.ctypes.data + 32, 16, 3, 0) == -1  # stream-prefetch: rows only
    assert library.GraphBuildCopyBytes(buffer.ctypes.data, buffer.ctypes.data + 32, 16, -1, 0) == -1
    assert library.GraphBuildCopyBytes(buffer.ctypes.data, buffer.ctypes.data + 32, 16, 1, 24) == -1  # no such width


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "describe":
        print(json.dumps(describe_strategy()))
    else:
        cases = CASES if mode == "large" else SMALL_CASES
        # 16 and 48 bytes past a cache line (numpy's arrays start 16 past one): each row's first
        # 48 or 16 bytes, and its last 16 or 48, are copied apart from its aligned middle.
        offsets = (0, 16) if mode == "large" else (0, 16, 48)
        for case in cases:
            for shard in (False, True):
                for offset in offsets:
                    check_case(*case, shard=shard, offset=offset)
        print(f"{len(cases) * 2 * len(offsets)} lookups match numpy")
