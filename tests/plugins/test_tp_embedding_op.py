"""Tests of graphbuild's TPEmbedding custom op (plugins/) loaded into ONNX Runtime.

Each test builds a one-node ONNX model with ``onnx.helper``, runs it on the CPU execution provider
and compares the result bit for bit with an independent numpy reference. The library comes from
``$GRAPHBUILD_PLUGIN_LIB`` when that is set (a development build, for example
``build/plugin-dev/libgraphbuild_ortops.so``), else from the installed package via
``graphbuild.plugin.library_path()``. The CUDA tests run only where a GPU and the CUDA execution
provider are usable.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper

ort = pytest.importorskip("onnxruntime")

NODE = "emb"
CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider"]

TABLE_DTYPES = {
    "float32": (np.float32, TensorProto.FLOAT),
    "float16": (np.float16, TensorProto.FLOAT16),
    "bfloat16": (ml_dtypes.bfloat16, TensorProto.BFLOAT16),
}
ID_DTYPES = {"int32": (np.int32, TensorProto.INT32), "int64": (np.int64, TensorProto.INT64)}
ID_SHAPES = [(), (7,), (3, 5), (2, 3, 4), (0,), (2, 0)]

# --- The library under test. ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_lib() -> Path:
    override = os.environ.get("GRAPHBUILD_PLUGIN_LIB")
    if override:
        path = Path(override)
        assert path.is_file(), f"GRAPHBUILD_PLUGIN_LIB={override} is not a file"
        return path
    try:
        from graphbuild.plugin import library_path
    except ImportError as error:
        pytest.skip(
            f"graphbuild is not importable ({error}); install it, or set GRAPHBUILD_PLUGIN_LIB "
            "to a build of plugins/ (cmake -S plugins -B build/plugin-dev && "
            "cmake --build build/plugin-dev)"
        )
    return library_path()


def build_facts(lib: Path) -> dict:
    """plugin_info.json written by CMake beside the library."""
    info = lib.parent / "plugin_info.json"
    return json.loads(info.read_text()) if info.is_file() else {}


# --- Models, sessions, runs. ---------------------------------------------------------------------


def make_model(
    id_type: int = TensorProto.INT64, table_type: int = TensorProto.FLOAT, **attributes
) -> bytes:
    node = helper.make_node(
        "TPEmbedding", ["ids", "table"], ["out"], name=NODE, domain="graphbuild", **attributes
    )
    graph = helper.make_graph(
        [node],
        "tp_embedding",
        [
            helper.make_tensor_value_info("ids", id_type, None),
            helper.make_tensor_value_info("table", table_type, None),
        ],
        [helper.make_tensor_value_info("out", table_type, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("graphbuild", 1)]
    )
    model.ir_version = 10  # onnxruntime 1.31 rejects onnx 1.23's default IR version.
    return model.SerializeToString()


def make_session(lib: Path, model: bytes, threads: int = 1, providers=CPU):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.register_custom_ops_library(str(lib))
    return ort.InferenceSession(model, options, providers=providers)


def lookup_session(lib, ids_dtype, table_dtype, threads=1, providers=CPU, **attributes):
    model = make_model(ID_DTYPES[ids_dtype][1], TABLE_DTYPES[table_dtype][1], **attributes)
    return make_session(lib, model, threads, providers)


def run(session, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Runs the model; bfloat16 goes through OrtValues, which the numpy binding cannot take."""
    if table.dtype != ml_dtypes.bfloat16:
        return session.run(None, {"ids": ids, "table": table})[0]
    feeds = {
        "ids": ort.OrtValue.ortvalue_from_numpy(ids),
        "table": ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            table.view(np.uint16), TensorProto.BFLOAT16
        ),
    }
    (out,) = session.run_with_ort_values(["out"], feeds)
    shape = tuple(out.shape())
    count = int(np.prod(shape))
    bits = np.empty(shape, np.uint16)
    if count:
        buffer = (ctypes.c_uint16 * count).from_address(out.data_ptr())
        bits = np.frombuffer(buffer, np.uint16).copy().reshape(shape)
    return bits.view(ml_dtypes.bfloat16)


# --- Independent numpy reference. ----------------------------------------------------------------


class ReferenceOutOfRange(ValueError):
    def __init__(self, id_value: int, position: int):
        super().__init__(f"id {id_value} at flat position {position}")
        self.id_value, self.position = id_value, position


def reference(ids, table, vocab_size, vocab_start=0, zero_out_of_range=False):
    flat = ids.reshape(-1).astype(np.int64)
    in_vocab = (flat >= 0) & (flat < vocab_size)
    if not zero_out_of_range and not in_vocab.all():
        position = int(np.flatnonzero(~in_vocab)[0])
        raise ReferenceOutOfRange(int(flat[position]), position)
    local = flat - vocab_start
    on_shard = in_vocab & (local >= 0) & (local < table.shape[0])
    out = np.zeros((flat.size, table.shape[1]), table.dtype)
    out[on_shard] = table[local[on_shard]]
    return out.reshape(ids.shape + (table.shape[1],))


def out_of_range_message(id_value, position, vocab_size, node=NODE) -> str:
    return (
        f"TPEmbedding '{node}': id {id_value} at flat position {position} "
        f"is outside the vocabulary [0, {vocab_size})"
    )


def assert_bitwise_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    unsigned = np.uint16 if expected.dtype.itemsize == 2 else np.uint32
    np.testing.assert_array_equal(actual.view(unsigned), expected.view(unsigned))


def random_table(rng, rows, dim, table_dtype) -> np.ndarray:
    """Standard-normal values pushed away from zero, so zero rows are unambiguous."""
    values = rng.standard_normal((rows, dim))
    values += np.where(values < 0, -0.25, 0.25)
    return values.astype(TABLE_DTYPES[table_dtype][0])


# --- Numerics. -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ID_SHAPES, ids=lambda s: "x".join(map(str, s)) or "scalar")
@pytest.mark.parametrize("ids_dtype", ID_DTYPES)
@pytest.mark.parametrize("table_dtype", TABLE_DTYPES)
@pytest.mark.parametrize("shard", ["full", "middle"])
def test_lookup_matches_reference(plugin_lib, rng, table_dtype, ids_dtype, shape, shard):
    vocab_size, dim = 50, 6
    vocab_start, rows = (0, vocab_size) if shard == "full" else (15, 20)
    session = lookup_session(
        plugin_lib, ids_dtype, table_dtype, vocab_size=vocab_size, vocab_start=vocab_start
    )
    table = random_table(rng, rows, dim, table_dtype)
    ids = rng.integers(0, vocab_size, size=shape).astype(ID_DTYPES[ids_dtype][0])
    out = run(session, ids, table)
    assert out.shape == shape + (dim,)
    assert_bitwise_equal(out, reference(ids, table, vocab_size, vocab_start))


def test_other_shards_give_zero_rows(plugin_lib, rng):
    # Rank 1 of 3 over V=10 with ceil(10/3)=4 rows: global ids 4..7 live here.
    session = lookup_session(plugin_lib, "int64", "float32", vocab_size=10, vocab_start=4)
    table = random_table(rng, 4, 3, "float32")
    ids = np.arange(10, dtype=np.int64)
    out = run(session, ids, table)
    np.testing.assert_array_equal(out[4:8], table)
    assert not out[:4].any() and not out[8:].any()


def test_padded_last_shard(plugin_lib, rng):
    # Rank 2 of 3 over V=10: rows 8..11, of which 10 and 11 are padding no valid id reaches.
    session = lookup_session(plugin_lib, "int32", "float16", vocab_size=10, vocab_start=8)
    table = random_table(rng, 4, 5, "float16")
    ids = np.array([[9, 8, 0], [7, 9, 3]], np.int32)
    assert_bitwise_equal(run(session, ids, table), reference(ids, table, 10, 8))


@pytest.mark.parametrize("table_dtype", TABLE_DTYPES)
@pytest.mark.parametrize("ids_dtype", ID_DTYPES)
def test_large_lookup_on_thread_pool(plugin_lib, rng, table_dtype, ids_dtype):
    # ~5-10 MB of output: dozens of thread-pool tasks under intra_op_num_threads=2.
    vocab_size, rows, dim, vocab_start = 10_000, 5_000, 300, 2_500
    session = lookup_session(
        plugin_lib, ids_dtype, table_dtype, threads=2, vocab_size=vocab_size,
        vocab_start=vocab_start,
    )
    table = random_table(rng, rows, dim, table_dtype)
    ids = rng.integers(0, vocab_size, size=(8, 1_031)).astype(ID_DTYPES[ids_dtype][0])
    assert_bitwise_equal(run(session, ids, table), reference(ids, table, vocab_size, vocab_start))


def test_wide_rows_one_token_per_task(plugin_lib, rng):
    # Rows larger than a task's byte budget: each token becomes its own task.
    session = lookup_session(plugin_lib, "int64", "float32", threads=2, vocab_size=40)
    table = random_table(rng, 40, 70_000, "float32")
    ids = rng.integers(0, 40, size=(5,))
    assert_bitwise_equal(run(session, ids, table), reference(ids, table, 40))


def test_empty_table_dimensions(plugin_lib, rng):
    session = lookup_session(plugin_lib, "int64", "float32", vocab_size=8, vocab_start=2)
    ids = np.array([[3, 1], [7, 0]], np.int64)
    no_columns = np.empty((5, 0), np.float32)
    assert run(session, ids, no_columns).shape == (2, 2, 0)
    no_rows = np.empty((0, 4), np.float32)  # An empty shard: every id is someone else's.
    out = run(session, ids, no_rows)
    assert out.shape == (2, 2, 4) and not out.any()


# --- Out-of-vocabulary ids. ----------------------------------------------------------------------


@pytest.mark.parametrize("ids_dtype", ID_DTYPES)
@pytest.mark.parametrize(
    "bad", [50, 51, -1, 2**31 - 1, -(2**31)], ids=["V", "V+1", "-1", "int32max", "int32min"]
)
def test_out_of_range_id_raises_with_first_position(plugin_lib, rng, ids_dtype, bad):
    vocab_size = 50
    session = lookup_session(plugin_lib, ids_dtype, "float32", vocab_size=vocab_size)
    table = random_table(rng, vocab_size, 4, "float32")
    ids = rng.integers(0, vocab_size, size=(3, 4)).astype(ID_DTYPES[ids_dtype][0])
    ids[1, 2] = bad  # flat position 6: the first offender
    ids[2, 0] = -7
    ids[2, 3] = vocab_size + 100
    with pytest.raises(ReferenceOutOfRange) as expected:
        reference(ids, table, vocab_size)
    assert (expected.value.id_value, expected.value.position) == (bad, 6)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as raised:
        run(session, ids, table)
    assert out_of_range_message(bad, 6, vocab_size) in str(raised.value)


def test_large_int64_id_is_reported_exactly(plugin_lib, rng):
    session = lookup_session(plugin_lib, "int64", "bfloat16", vocab_size=20)
    table = random_table(rng, 20, 8, "bfloat16")
    ids = np.array([[1, 2], [3, -(2**62) - 5]], np.int64)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as raised:
        run(session, ids, table)
    assert out_of_range_message(-(2**62) - 5, 3, 20) in str(raised.value)


def test_out_of_range_in_scalar_ids(plugin_lib, rng):
    session = lookup_session(plugin_lib, "int32", "float16", vocab_size=4)
    table = random_table(rng, 4, 3, "float16")
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as raised:
        run(session, np.array(4, np.int32), table)
    assert out_of_range_message(4, 0, 4) in str(raised.value)


def test_error_message_is_parseable(plugin_lib, rng):
    session = lookup_session(plugin_lib, "int64", "float32", vocab_size=9)
    table = random_table(rng, 9, 2, "float32")
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as raised:
        run(session, np.array([0, 8, 9, -1], np.int64), table)
    pattern = (
        r"TPEmbedding '(?P<node>[^']*)': id (?P<id>-?\d+) at flat position (?P<pos>\d+) "
        r"is outside the vocabulary \[0, (?P<vocab>\d+)\)"
    )
    match = re.search(pattern, str(raised.value))
    assert match is not None, str(raised.value)
    assert match.groupdict() == {"node": NODE, "id": "9", "pos": "2", "vocab": "9"}


def test_session_stays_usable_after_error(plugin_lib, rng):
    session = lookup_session(plugin_lib, "int64", "float32", vocab_size=30, vocab_start=10)
    table = random_table(rng, 10, 5, "float32")
    bad = np.array([1, 30, 2], np.int64)
    good = rng.integers(0, 30, size=(4, 6))
    for _ in range(2):
        with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):
            run(session, bad, table)
        assert_bitwise_equal(run(session, good, table), reference(good, table, 30, 10))


@pytest.mark.parametrize("table_dtype", TABLE_DTYPES)
def test_zero_out_of_range_gives_zero_rows(plugin_lib, rng, table_dtype):
    vocab_size, vocab_start, rows = 40, 20, 20
    session = lookup_session(
        plugin_lib, "int64", table_dtype, threads=2, vocab_size=vocab_size,
        vocab_start=vocab_start, zero_out_of_range=1,
    )
    table = random_table(rng, rows, 7, table_dtype)
    ids = rng.integers(-(2**40), 2**40, size=(6, 9))
    ids[0, :4] = [-1, 40, 25, 39]
    ids[1, :3] = [20, 0, -(2**63)]
    expected = reference(ids, table, vocab_size, vocab_start, zero_out_of_range=True)
    out = run(session, ids, table)
    assert_bitwise_equal(out, expected)
    assert out[0, 2].any() and out[0, 3].any() and out[1, 0].any()


# --- Invalid inputs and attributes. --------------------------------------------------------------


@pytest.mark.parametrize(
    ("table_shape", "shape_text"), [((12,), "[12]"), ((4, 3, 2), "[4, 3, 2]"), ((), "[]")]
)
def test_table_must_be_2d(plugin_lib, table_shape, shape_text):
    session = lookup_session(plugin_lib, "int64", "float32", vocab_size=4)
    table = np.full(table_shape, 1.5, np.float32)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as raised:
        run(session, np.array([1, 2], np.int64), table)
    expected = (
        f"TPEmbedding '{NODE}': input 1 'table' must be 2-D [rows, D], "
        f"got rank {len(table_shape)} with shape {shape_text}"
    )
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("np_dtype", "onnx_type", "name"),
    [(np.float32, TensorProto.FLOAT, "float32"), (np.int16, TensorProto.INT16, "int16"),
     (np.uint64, TensorProto.UINT64, "uint64")],
)
def test_ids_must_be_int32_or_int64(plugin_lib, np_dtype, onnx_type, name):
    session = make_session(plugin_lib, make_model(onnx_type, TensorProto.FLOAT, vocab_size=4))
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as raised:
        session.run(None, {"ids": np.array([1, 2], np_dtype), "table": np.ones((4, 2), np.float32)})
    assert f"TPEmbedding '{NODE}': input 0 'ids' must be int32 or int64, got {name}" in str(
        raised.value
    )


@pytest.mark.parametrize("table_type", [TensorProto.DOUBLE, TensorProto.INT64])
def test_unsupported_table_type_is_rejected_at_load(plugin_lib, table_type):
    with pytest.raises(Exception, match=r"input parameter \(table\).*TPEmbedding.*\(emb\)"):
        make_session(plugin_lib, make_model(TensorProto.INT64, table_type, vocab_size=4))


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        pytest.param({}, "required int attribute 'vocab_size' is missing", id="missing"),
        pytest.param(
            {"vocab_size": -1}, "attribute 'vocab_size' must be >= 0, got -1", id="negative-vocab"
        ),
        pytest.param(
            {"vocab_size": 8, "vocab_start": -3},
            "attribute 'vocab_start' must be >= 0, got -3",
            id="negative-start",
        ),
        pytest.param(
            {"vocab_size": 8, "zero_out_of_range": 2},
            "attribute 'zero_out_of_range' must be 0 or 1, got 2",
            id="bad-flag",
        ),
        pytest.param(
            {"vocab_size": 8.0}, "attribute 'vocab_size' must be an int, got a float", id="float"
        ),
        pytest.param(
            {"vocab_size": 8, "vocab_start": "4"},
            "attribute 'vocab_start' must be an int, got a string",
            id="string",
        ),
        pytest.param(
            {"vocab_size": [8, 9]}, "attribute 'vocab_size' must be an int, got a list of ints",
            id="int-list",
        ),
        # ONNX Runtime's array getters succeed for an attribute of any type, so only the element
        # count tells a list of ints from a list of floats or anything else.
        pytest.param(
            {"vocab_size": 8, "vocab_start": [1.0, 2.0]},
            "attribute 'vocab_start' must be an int, got a list of floats",
            id="float-list",
        ),
        pytest.param(
            {"vocab_size": 8, "zero_out_of_range": ["a", "b"]},
            "attribute 'zero_out_of_range' must be an int, got an attribute of another type",
            id="string-list",
        ),
    ],
)
def test_invalid_attributes_fail_session_creation(plugin_lib, attributes, message):
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.RuntimeException) as raised:
        make_session(plugin_lib, make_model(**attributes))
    assert f"TPEmbedding '{NODE}': {message}" in str(raised.value)


def test_several_sessions_share_the_library(plugin_lib, rng):
    table = random_table(rng, 12, 3, "float16")
    ids = rng.integers(0, 12, size=(5,)).astype(np.int32)
    sessions = [lookup_session(plugin_lib, "int32", "float16", vocab_size=12) for _ in range(3)]
    for session in sessions:
        assert_bitwise_equal(run(session, ids, table), reference(ids, table, 12))


# --- The built artefact. -------------------------------------------------------------------------


def test_library_exports_only_its_entry_points(plugin_lib):
    library = ctypes.CDLL(str(plugin_lib))
    # ONNX Runtime's entry point, and the two functions `graphbuild bench` reads through ctypes.
    entry_points = {"RegisterCustomOps", "GraphBuildCpuStrategy", "GraphBuildCopyBytes"}
    assert all(hasattr(library, name) for name in entry_points)
    # Internal code, and the statically linked CUDA runtime, stay hidden; dlsym also searches the
    # library's dependencies, so this fails if libcudart.so were needed too.
    parse_config = (  # graphbuild::plugins::ParseConfig(const ort::Api&, ...), fully mangled.
        "_ZN10graphbuild7plugins11ParseConfigERKNS_3ort3ApiEPK13OrtKernelInfo"
        "PNS0_17TPEmbeddingConfigE"
    )
    for hidden in ("cudaMalloc", "cudaStreamSynchronize", parse_config):
        assert not hasattr(library, hidden), hidden
    nm = shutil.which("nm")
    if nm is not None:
        command = [nm, "-D", "--defined-only", str(plugin_lib)]
        listing = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        exported = {line.split()[-1] for line in listing.splitlines() if line.strip()}
        assert exported == entry_points


def test_build_facts(plugin_lib):
    facts = build_facts(plugin_lib)
    if not facts:
        pytest.skip(f"no plugin_info.json beside {plugin_lib}")
    assert isinstance(facts["cuda"], bool)
    assert facts["version"]
    if facts["cuda"]:
        assert facts["cuda_architectures"]


# --- RegisterCustomOps against a scripted OrtApi table. ------------------------------------------
#
# Each test loads a private copy of the library (a separate file is a separate dlopen, with its own
# statics), hands it a fake OrtApiBase built with ctypes and checks what the library does with it.

_CREATE_STATUS = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)
_STATUS_CODE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_STATUS_MESSAGE = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
_RELEASE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_CREATE_DOMAIN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p))
_DOMAIN_ADD = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
_GET_API = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)
_GET_VERSION = ctypes.CFUNCTYPE(ctypes.c_void_p)


class _ApiBase(ctypes.Structure):
    _fields_ = [("GetApi", _GET_API), ("GetVersionString", _GET_VERSION)]


class FakeRuntime:
    """An OrtApi table whose slots are Python callbacks; records what the library calls."""

    DOMAIN = 0xD0D0

    def __init__(
        self,
        api_version: int,
        version: bytes | None = None,
        null_messages: bool = False,
        failing_domain_add: bool = False,
    ):
        self.statuses: dict[int, tuple[int, bytes]] = {}
        self.released_statuses: list[int] = []
        self.released_domains: list[int] = []
        self._buffers = {}
        self.requested: list[int] = []  # the API versions asked of GetApi, in order
        self._version = ctypes.create_string_buffer(f"1.{api_version}.0".encode() if version is None else version)
        self._table = (ctypes.c_void_p * 300)()

        def create_status(code, message):
            handle = 0x1000 + 16 * len(self.statuses)
            self.statuses[handle] = (code, message)
            self._buffers[handle] = ctypes.create_string_buffer(message)
            return handle

        def message_of(handle):
            return None if null_messages else ctypes.addressof(self._buffers[handle])

        def create_domain(name, out):
            out[0] = self.DOMAIN
            return None

        def domain_add(domain, op):
            if not failing_domain_add:
                return None
            return create_status(1, b"scripted CustomOpDomain_Add failure")

        self._callbacks = {
            0: _CREATE_STATUS(create_status),
            1: _STATUS_CODE(lambda handle: self.statuses[handle][0]),
            2: _STATUS_MESSAGE(message_of),
            26: _CREATE_DOMAIN(create_domain),
            27: _DOMAIN_ADD(domain_add),
            28: _DOMAIN_ADD(lambda options, domain: None),
            93: _RELEASE(self.released_statuses.append),
            101: _RELEASE(self.released_domains.append),
        }
        for slot, callback in self._callbacks.items():
            self._table[slot] = ctypes.cast(callback, ctypes.c_void_p).value
        table_address = ctypes.addressof(self._table)

        def get_api(wanted):
            self.requested.append(wanted)
            return table_address if wanted <= api_version else None

        self._get_api = _GET_API(get_api)
        self._get_version = _GET_VERSION(lambda: ctypes.addressof(self._version))
        self.base = _ApiBase(self._get_api, self._get_version)

    def register(self, library: ctypes.CDLL) -> tuple[int, bytes] | None:
        """Calls RegisterCustomOps; returns the (code, message) of the status it hands back."""
        entry = library.RegisterCustomOps
        entry.restype = ctypes.c_void_p
        entry.argtypes = [ctypes.c_void_p, ctypes.POINTER(_ApiBase)]
        handle = entry(None, ctypes.byref(self.base))
        return None if handle is None else self.statuses[handle]


@pytest.fixture
def private_lib(plugin_lib, tmp_path) -> ctypes.CDLL:
    copy = tmp_path / plugin_lib.name
    shutil.copyfile(plugin_lib, copy)
    return ctypes.CDLL(str(copy))


def test_older_runtime_is_refused_with_the_release_it_needs(private_lib):
    status = FakeRuntime(api_version=16, version=b"1.16.3").register(private_lib)
    assert status is not None
    code, message = status
    assert code == 1  # ORT_FAIL
    assert message.decode() == (
        "graphbuild's custom-op library needs ONNX Runtime C API version 17 "
        "(ONNX Runtime 1.17 or newer); this runtime is 1.16.3"
    )


@pytest.mark.parametrize(
    "api_version,version,requested,refused",
    [
        (16, b"1.16.3", [1], True),  # refused through the version-1 table, 17 is never asked for
        (17, b"1.17.0", [17], False),  # the oldest release it takes
        (23, b"1.23.2", [17], False),  # 24 (the optional slot 414) is not asked of a 1.23
        (31, b"1.31.1", [17, 24], False),  # a newer runtime: the optional slot is used
        (40, b"2.0.0", [17, 24], False),
        (31, b"custom-build", [17], False),  # an unreadable version: only what is needed
        (16, b"1.20.1", [17, 1], True),  # a version string that promises more than GetApi gives
    ],
)
def test_runtime_is_asked_only_for_api_versions_it_offers(private_lib, api_version, version, requested, refused):
    # ONNX Runtime prints an error on stderr for every GetApi(version) it lacks: the library reads
    # GetVersionString first (release 1.N offers API 1..N) and asks only for what is there.
    runtime = FakeRuntime(api_version=api_version, version=version)
    status = runtime.register(private_lib)
    assert runtime.requested == requested
    if refused:
        assert status == (1, f"graphbuild's custom-op library needs ONNX Runtime C API version 17 (ONNX Runtime 1.17 or newer); this runtime is {version.decode()}".encode())
    else:
        assert status is None


def test_domain_that_cannot_be_filled_is_released(private_lib):
    runtime = FakeRuntime(api_version=31, failing_domain_add=True)
    status = runtime.register(private_lib)
    assert status == (1, b"scripted CustomOpDomain_Add failure")
    assert runtime.released_domains == [FakeRuntime.DOMAIN]


def test_registration_adds_one_unreleased_domain(private_lib):
    runtime = FakeRuntime(api_version=31)
    assert runtime.register(private_lib) is None
    assert runtime.released_domains == []
    # The self-check's probe status was released; nothing else was created.
    assert list(runtime.statuses) == runtime.released_statuses


def test_status_self_check_survives_a_null_message(private_lib):
    # A mismatched table may hand back a null message: the self-check reports the mismatch rather
    # than building a std::string from null.
    status = FakeRuntime(api_version=31, null_messages=True).register(private_lib)
    assert status is not None
    assert status[0] == 1 and b"status round trip failed" in status[1], status


# --- CUDA execution provider (needs a GPU). ------------------------------------------------------


def _gpu_count() -> int:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@pytest.fixture(scope="module")
def cuda_lib(plugin_lib) -> Path:
    if not build_facts(plugin_lib).get("cuda"):
        pytest.skip("the plugin library was built without CUDA")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA execution provider")
    if _gpu_count() == 0:
        pytest.skip("no CUDA device")
    probe = lookup_session(plugin_lib, "int64", "float32", providers=CUDA, vocab_size=2)
    if probe.get_providers()[0] != "CUDAExecutionProvider":
        pytest.skip(f"the CUDA execution provider could not start: {probe.get_providers()}")
    return plugin_lib


@pytest.mark.gpu
@pytest.mark.parametrize("dim", [8, 6, 5, 3])  # 16-, 8-, 4- and 2-byte copy units
@pytest.mark.parametrize("ids_dtype", ID_DTYPES)
@pytest.mark.parametrize("table_dtype", TABLE_DTYPES)
def test_cuda_lookup_matches_reference(cuda_lib, rng, table_dtype, ids_dtype, dim):
    session = lookup_session(
        cuda_lib, ids_dtype, table_dtype, providers=CUDA, vocab_size=3_000, vocab_start=1_000
    )
    table = random_table(rng, 1_500, dim, table_dtype)
    for shape in [(), (0,), (4, 777)]:
        ids = rng.integers(0, 3_000, size=shape).astype(ID_DTYPES[ids_dtype][0])
        assert_bitwise_equal(run(session, ids, table), reference(ids, table, 3_000, 1_000))


@pytest.mark.gpu
@pytest.mark.parametrize("ids_dtype", ID_DTYPES)
def test_cuda_reports_first_out_of_range_id(cuda_lib, rng, ids_dtype):
    session = lookup_session(cuda_lib, ids_dtype, "float16", providers=CUDA, vocab_size=100)
    table = random_table(rng, 100, 64, "float16")
    ids = rng.integers(0, 100, size=(64, 512)).astype(ID_DTYPES[ids_dtype][0])
    flat = ids.reshape(-1)
    flat[rng.choice(flat.size, size=300, replace=False)] = -5  # many offenders, racing on device
    flat[1_234] = 100
    flat[:1_234][flat[:1_234] < 0] = 3
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as raised:
        run(session, ids, table)
    assert out_of_range_message(100, 1_234, 100) in str(raised.value)
    good = rng.integers(0, 100, size=(9, 33)).astype(ID_DTYPES[ids_dtype][0])
    assert_bitwise_equal(run(session, good, table), reference(good, table, 100))


@pytest.mark.gpu
def test_cuda_zero_out_of_range(cuda_lib, rng):
    session = lookup_session(
        cuda_lib, "int64", "bfloat16", providers=CUDA, vocab_size=64, vocab_start=32,
        zero_out_of_range=1,
    )
    table = random_table(rng, 32, 128, "bfloat16")
    ids = rng.integers(-100, 200, size=(16, 40))
    expected = reference(ids, table, 64, 32, zero_out_of_range=True)
    assert_bitwise_equal(run(session, ids, table), expected)
