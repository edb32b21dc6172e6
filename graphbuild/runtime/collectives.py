"""In-process collectives as tiny ONNX models, run on the engine's own execution provider.

The local executor keeps every tensor in ONNX Runtime memory (``OrtValue``s on the device of the
first provider). A collective reads one tensor per rank and writes one result that every rank then
reads, so running it as an ONNX model through IO binding keeps the data where it is: on the GPU
with the CUDA provider, in host memory with the CPU provider, with the very same code.

- ``allreduce`` (sum) is a chain of binary ``Add`` nodes in group order, ``((x0 + x1) + x2) + ...``,
  which rounds exactly like the numpy reference (``schedule.combine_host``) does. float16 and bfloat16
  are added in float32 and rounded back after every step (what numpy and ``ml_dtypes`` do; the CPU
  provider has no bfloat16 ``Add`` and its float16 ``Add`` rounds differently); bool uses ``Or``
  (numpy's sum of bools).
- ``allgather`` is one ``Concat`` along the gathered axis.
- ``HostCopy`` brings a device tensor to a fresh host array with an ``Identity`` model whose output
  is bound to host memory (ONNX Runtime copies it); ``OrtValue.numpy()`` cannot read bfloat16.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from graphbuild import dtypes
from graphbuild.runtime.ortvalues import allocate, to_ortvalue
from graphbuild.runtime.schedule import CollectiveStep, result_shape
from graphbuild.runtime.session import binding_runner, session_options

_OPSET = 21
_IR_VERSION = 10

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


class CollectiveRun:
    """One collective of a plan: its session, its IO binding and its output buffer, bound once.

    Args:
        spec: the collective (one rank's step; every rank's agrees on op, group, axis, sizes).
        inputs: each rank's input tensor, in group order.
        sessions: the engine's helper sessions.
        device: where the result lives (``"cpu"`` or ``"cuda"``).

    Raises:
        ExecutionError: the ranks' shapes do not fit (naming the collective).
    """

    def __init__(self, spec: CollectiveStep, inputs: Sequence[ort.OrtValue], sessions: SessionCache, device: str) -> None:
        self.spec = spec
        self.inputs = list(inputs)
        shapes = [tuple(v.shape()) for v in inputs]
        dtype = dtypes.from_onnx(inputs[0].element_type())
        rank = len(shapes[0])
        shape = result_shape(spec, shapes)
        if spec.op == "allreduce":
            model = allreduce_model(dtype, len(inputs), rank)
        else:
            model = allgather_model(dtype, len(inputs), rank, spec.axis % rank)
        self.output = allocate(shape, dtype, device)
        self.session = sessions.get(model)
        self.binding = self.session.io_binding()
        for i, value in enumerate(inputs):
            self.binding.bind_ortvalue_input(f"x{i}", value)
        self.binding.bind_ortvalue_output("y", self.output)
        self.run: Callable[[], None] = binding_runner(self.session, self.binding)  # runs the collective


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
        self._run = binding_runner(self.session, self.binding)

    def run(self, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Returns the tensor's contents in ``out`` (C-contiguous, right shape and dtype) or a new array."""
        array = np.empty(self.shape, self.dtype.numpy) if out is None else out
        self.binding.bind_ortvalue_output("y", to_ortvalue(array))
        self._run()
        return array

