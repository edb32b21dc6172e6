"""In-process collectives as tiny ONNX models, run on the engine's own execution provider.

The local executor keeps every tensor in ONNX Runtime memory (``OrtValue``s on the device of the
first provider). A collective reads one tensor per rank and writes one result that every rank then
reads, so running it as an ONNX model through IO binding keeps the data where it is: on the GPU
with the CUDA provider, in host memory with the CPU provider, with the very same code.

- ``allreduce`` (sum) is a chain of binary ``Add`` nodes in group order, ``((x0 + x1) + x2) + ...``,
  which rounds exactly like the numpy reference (``combine_allreduce``) does. float16 and bfloat16
  are added in float32 and rounded back after every step (what numpy and ``ml_dtypes`` do; the CPU
  provider has no bfloat16 ``Add`` and its float16 ``Add`` rounds differently); bool uses ``Or``
  (numpy's sum of bools).
- ``allgather`` is one ``Concat`` along the gathered axis.
- ``HostCopy`` brings a device tensor to a fresh host array with an ``Identity`` model whose output
  is bound to host memory (ONNX Runtime copies it); ``OrtValue.numpy()`` cannot read bfloat16.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from graphbuild import dtypes
from graphbuild.errors import ExecutionError
from graphbuild.runtime.ortvalues import allocate, to_ortvalue, write_into
from graphbuild.runtime.session import session_options

_OPSET = 21
_IR_VERSION = 10

#: Collectives that run as ONNX models here; others fall back to ``HostCollectiveRun``.
MODELLED_COLLECTIVES = ("allreduce", "allgather")


def _model(nodes: list[Any], inputs: list[Any], output: Any, name: str) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION).SerializeToString()


def _tensor(name: str, dtype: dtypes.DType, rank: int) -> Any:
    return helper.make_tensor_value_info(name, dtype.onnx, [f"{name}_d{i}" for i in range(rank)])


def allreduce_model(dtype: dtypes.DType, ranks: int, rank: int) -> bytes:
    """``y = ((x0 + x1) + x2) + ...`` over ``ranks`` inputs of ``dtype`` and tensor rank ``rank``."""
    inputs = [_tensor(f"x{i}", dtype, rank) for i in range(ranks)]
    output = helper.make_tensor_value_info("y", dtype.onnx, None)
    if ranks == 1:
        return _model([helper.make_node("Identity", ["x0"], ["y"])], inputs, output, "allreduce")
    widen = dtype in (dtypes.float16, dtypes.bfloat16)
    op = "Or" if dtype == dtypes.bool_ else "Add"
    nodes = []
    acc = "x0"
    for i in range(1, ranks):
        out = "y" if i == ranks - 1 else f"acc{i}"
        if widen:
            nodes += [
                helper.make_node("Cast", [acc], [f"{acc}_f"], to=TensorProto.FLOAT),
                helper.make_node("Cast", [f"x{i}"], [f"x{i}_f"], to=TensorProto.FLOAT),
                helper.make_node("Add", [f"{acc}_f", f"x{i}_f"], [f"sum{i}"]),
                helper.make_node("Cast", [f"sum{i}"], [out], to=dtype.onnx),
            ]
        else:
            nodes.append(helper.make_node(op, [acc, f"x{i}"], [out]))
        acc = out
    return _model(nodes, inputs, output, "allreduce")


def allgather_model(dtype: dtypes.DType, ranks: int, rank: int, axis: int) -> bytes:
    """``y = concat(x0, x1, ..., axis)``."""
    inputs = [_tensor(f"x{i}", dtype, rank) for i in range(ranks)]
    output = helper.make_tensor_value_info("y", dtype.onnx, None)
    node = helper.make_node("Concat", [f"x{i}" for i in range(ranks)], ["y"], axis=axis)
    return _model([node], inputs, output, "allgather")


def identity_model(dtype: dtypes.DType, rank: int) -> bytes:
    output = helper.make_tensor_value_info("y", dtype.onnx, None)
    return _model([helper.make_node("Identity", ["x"], ["y"])], [_tensor("x", dtype, rank)], output, "to_host")


class SessionCache:
    """ONNX Runtime sessions for the executor's helper models, one per distinct model.

    Args:
        providers: the engine's execution providers.
        intra_op_threads: threads per session (the engine's setting).
    """

    def __init__(self, providers: Sequence[str], intra_op_threads: Optional[int]) -> None:
        self.providers = list(providers)
        self.intra_op_threads = intra_op_threads
        self._sessions: dict[bytes, ort.InferenceSession] = {}

    def get(self, model: bytes) -> ort.InferenceSession:
        session = self._sessions.get(model)
        if session is None:
            options = session_options(needs_plugin=False, intra_op_threads=self.intra_op_threads)
            session = self._sessions[model] = ort.InferenceSession(model, sess_options=options, providers=self.providers)
        return session


def gathered_shape(what: str, shapes: Sequence[tuple[int, ...]], axis: int, sizes: Optional[Sequence[int]]) -> tuple[int, ...]:
    """The allgather result's shape, after checking the ranks' shapes fit together.

    Raises:
        ExecutionError: naming the collective and what each rank contributed.
    """
    if sizes is not None and [s[axis] for s in shapes] != list(sizes):
        raise ExecutionError(f"{what}: ranks contributed sizes {[s[axis] for s in shapes]} along axis {axis}, expected {list(sizes)}")
    others = {s[:axis] + s[axis + 1 :] for s in shapes}
    if len(others) != 1:
        raise ExecutionError(f"{what}: ranks contributed incompatible shapes {list(shapes)} (they may differ only along axis {axis})")
    first = shapes[0]
    return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1 :]


class CollectiveRun:
    """One collective of a plan: its session, its IO binding and its output buffer, bound once.

    Args:
        spec: the collective as the manifest records it (``op``, ``attrs``, ``describe()``).
        inputs: each rank's input tensor, in group order.
        sessions: the engine's helper sessions.
        device: where the result lives (``"cpu"`` or ``"cuda"``).
    """

    def __init__(self, spec: Any, inputs: Sequence[ort.OrtValue], sessions: SessionCache, device: str) -> None:
        self.spec = spec
        self.inputs = list(inputs)
        shapes = [tuple(v.shape()) for v in inputs]
        dtype = dtypes.from_onnx(inputs[0].element_type())
        rank = len(shapes[0])
        what = spec.describe()
        if spec.op == "allreduce":
            if len(set(shapes)) != 1:
                raise ExecutionError(f"{what}: ranks contributed different shapes {sorted(set(shapes))}")
            model, shape = allreduce_model(dtype, len(inputs), rank), shapes[0]
        elif spec.op == "allgather":
            if rank == 0:
                raise ExecutionError(f"{what}: cannot gather 0-d tensors")
            axis = spec.attrs.get("axis", -1) % rank
            shape = gathered_shape(what, shapes, axis, spec.attrs.get("sizes"))
            model = allgather_model(dtype, len(inputs), rank, axis)
        else:
            raise ExecutionError(f"{what}: the in-process executor does not implement collective '{spec.op}'")
        self.output = allocate(shape, dtype, device)
        self.session = sessions.get(model)
        self.binding = self.session.io_binding()
        for i, value in enumerate(inputs):
            self.binding.bind_ortvalue_input(f"x{i}", value)
        self.binding.bind_ortvalue_output("y", self.output)

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)


class HostCollectiveRun:
    """A collective without an ONNX model here, done by its registry ``combine`` on host copies.

    The fallback for collectives other than ``allreduce`` and ``allgather``: the inputs are copied
    to the host, combined with numpy, and the result copied into an engine-owned buffer on
    ``device`` (the same semantics as the reference interpreter, at the cost of the copies).
    """

    def __init__(self, spec: Any, inputs: Sequence[ort.OrtValue], sessions: SessionCache, device: str) -> None:
        from graphbuild.ops.registry import get_op

        self.spec = spec
        self.inputs = list(inputs)
        self._combine = get_op(spec.op).combine
        self._readers = [HostCopy(value, sessions) for value in inputs]
        result = self._compute()
        self.output = allocate(result.shape, dtypes.as_dtype(result.dtype), device)
        self._store(result)

    def _compute(self) -> np.ndarray:
        if self._combine is None:
            raise ExecutionError(f"{self.spec.describe()}: the op registry gives no combine rule for this collective")
        return np.ascontiguousarray(self._combine(self.spec, [reader.run() for reader in self._readers], None))

    def _store(self, result: np.ndarray) -> None:
        write_into(self.output, result)

    def run(self) -> None:
        result = self._compute()
        if tuple(result.shape) != tuple(self.output.shape()):
            raise ExecutionError(f"{self.spec.describe()}: result shape {result.shape} differs from {tuple(self.output.shape())} for the same input shapes")
        self._store(result)


class HostCopy:
    """Copies a tensor to a fresh host array through an ``Identity`` model bound to host memory.

    ``OrtValue.numpy()`` copies device memory too, but cannot produce bfloat16; this path handles
    every dtype the same way. The executor uses it for tensors on the GPU; it works (and is tested)
    on the CPU provider as well.
    """

    def __init__(self, value: ort.OrtValue, sessions: SessionCache) -> None:
        self.dtype = dtypes.from_onnx(value.element_type())
        self.shape = tuple(value.shape())
        self.session = sessions.get(identity_model(self.dtype, len(self.shape)))
        self.binding = self.session.io_binding()
        self.binding.bind_ortvalue_input("x", value)

    def run(self, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Returns the tensor's contents in ``out`` (C-contiguous, right shape and dtype) or a new array."""
        array = np.empty(self.shape, self.dtype.numpy) if out is None else out
        self.binding.bind_ortvalue_output("y", to_ortvalue(array))
        self.session.run_with_iobinding(self.binding)
        return array

