"""Collective ops: ``allreduce`` (sum) and ``allgather`` (concatenate along an axis).

They appear in rank-local networks (the partition pass emits them; rank-local users may call them).
Segments of an engine are cut at every collective, and the executor performs them between
segments. ``combine`` gives their numpy semantics, shared by the reference interpreter and the
in-process executor.

Attributes: ``group`` (ranks taking part, in rank order), ``instance_id`` (identity matched across
ranks, unique within a network), ``tp_position`` (this network's position in ``group``, set by the
partition; None before), and for ``allgather`` ``axis`` and ``sizes`` (each rank's extent along
``axis``; None when equal).

Partition rule: a collective in a logical network is refused (the partition inserts the
collectives a logical network needs); in a rank-local network it is kept, with ``tp_position`` set.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from graphbuild.errors import ExecutionError, PartitionError, ShapeInferenceError
from graphbuild.ops.registry import OpDef, RankContext, TensorType, TPClaim, register
from graphbuild.ops.schema import Attr, AttrSchema

_COMMON = {
    "group": Attr("ints", minimum=0),
    "instance_id": Attr("int"),
    "tp_position": Attr("int", default=None, optional=True, minimum=0),
}
ALLREDUCE_ATTRS = AttrSchema(**_COMMON, reduce=Attr("str", default="sum"))
ALLGATHER_ATTRS = AttrSchema(**_COMMON, axis=Attr("int", default=-1), sizes=Attr("ints", default=None, optional=True, minimum=0))


def _single_rank(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    if len(node.attrs["group"]) != 1:
        raise ShapeInferenceError(
            f"{node.describe()} spans ranks {list(node.attrs['group'])}: evaluate it with every rank "
            "(gb.reference.run_ranks or an engine)"
        )
    return [inputs[0]]


def _claim(node: Any) -> TPClaim:
    group = tuple(node.attrs["group"])
    return TPClaim(len(group), group, node.attrs.get("tp_position"))


def _partition(ctx: RankContext, node: Any) -> Sequence[Any]:
    """Refused in a logical network; kept with ``tp_position`` in a rank-local one."""
    if ctx.logical:
        raise PartitionError(
            f"{node.describe()}: explicit collectives belong in rank-local networks, but network '{ctx.source.name}' is logical "
            "(no embedding carries tp_rank); remove it (the partition pass inserts collectives itself) or build rank-local "
            f"networks, one per rank (embeddings with tp_rank, or net.meta['tp_position'] = the position in the group){node.where()}"
        )
    return ctx.replicate(node, {**node.attrs, "tp_position": ctx.position})


_TP = {"tp_claim": _claim, "partition": _partition, "workspace_input": 1}


def _fits(out: Optional[np.ndarray], shape: tuple[int, ...], dtype: np.dtype) -> Optional[np.ndarray]:
    """A view of the workspace ``out`` with ``shape``, if it is large enough and of ``dtype``."""
    if out is None or out.dtype != dtype or out.size < int(np.prod(shape)):
        return None
    return out.reshape(-1)[: int(np.prod(shape))].reshape(shape)


# ------------------------------------------------------------------------------------ allreduce
def _infer_allreduce(node: Any) -> Sequence[TensorType]:
    x = node.inputs[0]
    if node.attrs.get("reduce", "sum") != "sum":
        raise ShapeInferenceError(f"reduce={node.attrs['reduce']!r} is not supported; only 'sum'")
    return [TensorType(x.dtype, x.shape)]


def combine_allreduce(node: Any, arrays: Sequence[np.ndarray], out: Optional[np.ndarray] = None) -> np.ndarray:
    """Elementwise sum of every rank's array, accumulated in rank order (deterministic)."""
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ExecutionError(f"{node.describe()}: ranks contributed different shapes {sorted(shapes)}")
    result = _fits(out, arrays[0].shape, arrays[0].dtype)
    if result is None:
        result = np.empty_like(arrays[0])
    np.copyto(result, arrays[0])
    for array in arrays[1:]:
        np.add(result, array, out=result)
    return result


register(
    OpDef(
        "allreduce",
        infer=_infer_allreduce,
        evaluate=_single_rank,
        collective=True,
        combine=combine_allreduce,
        domain="graphbuild",
        foldable=False,
        doc="sum over the ranks of tp_group",
        attrs=ALLREDUCE_ATTRS,
        **_TP,
    )
)


# ------------------------------------------------------------------------------------ allgather
def _infer_allgather(node: Any) -> Sequence[TensorType]:
    x = node.inputs[0]
    attrs = node.attrs
    group = attrs["group"]
    if x.rank == 0:
        raise ShapeInferenceError("cannot gather a 0-d tensor")
    axis = attrs.get("axis", -1) % x.rank
    sizes = attrs.get("sizes")
    dim = x.shape[axis]
    if sizes is not None:
        if len(sizes) != len(group):
            raise ShapeInferenceError(f"sizes {list(sizes)} must have one entry per rank of group {list(group)}")
        position = attrs.get("tp_position")
        if position is not None and isinstance(dim, int) and dim != sizes[position]:
            raise ShapeInferenceError(f"the rank at position {position} contributes {dim} along axis {axis}, but sizes says {sizes[position]}")
        total: Any = int(sum(sizes))
    elif isinstance(dim, int):
        total = dim * len(group)
    else:
        raise ShapeInferenceError(f"axis {axis} is symbolic ({dim!r}); gather along a static axis or give sizes")
    shape = x.shape[:axis] + (total,) + x.shape[axis + 1 :]
    return [TensorType(x.dtype, shape)]


def combine_allgather(node: Any, arrays: Sequence[np.ndarray], out: Optional[np.ndarray] = None) -> np.ndarray:
    """Concatenation of every rank's array along ``axis``, in group order (uneven sizes allowed)."""
    axis = node.attrs.get("axis", -1) % arrays[0].ndim
    sizes = node.attrs.get("sizes")
    if sizes is not None and [a.shape[axis] for a in arrays] != list(sizes):
        got = [a.shape[axis] for a in arrays]
        raise ExecutionError(f"{node.describe()}: ranks contributed sizes {got} along axis {axis}, expected {list(sizes)}")
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    result = _fits(out, tuple(shape), arrays[0].dtype)
    try:
        return np.concatenate(arrays, axis=axis, out=result)
    except ValueError as exc:
        raise ExecutionError(f"{node.describe()}: ranks contributed incompatible shapes: {exc}") from None


register(
    OpDef(
        "allgather",
        infer=_infer_allgather,
        evaluate=_single_rank,
        collective=True,
        combine=combine_allgather,
        domain="graphbuild",
        foldable=False,
        doc="concatenation over the ranks of tp_group along an axis",
        attrs=ALLGATHER_ATTRS,
        **_TP,
    )
)
