"""Collective ops for rank-local networks: ``allreduce`` and ``allgather``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from graphbuild.errors import GraphConstructionError
from graphbuild.functional.attrs import add_op, claim_instance_id
from graphbuild.ir.network import as_value
from graphbuild.ir.node import format_origin, user_frame
from graphbuild.ops.registry import get_op

if TYPE_CHECKING:
    from graphbuild.tensor import Tensor


def _collective(op: str, tensor: Tensor, group: Sequence[int], instance_id: Optional[int], workspace: Optional[Tensor], attrs: dict, name: Optional[str]) -> Tensor:
    net = as_value(tensor).network
    what = f"{op} '{name}'" if name else op
    where = format_origin(user_frame())
    group = tuple(group) if isinstance(group, (list, tuple, range)) else group
    checked = get_op(op).check_attrs({"group": group, "instance_id": 0, **attrs}, what, where)
    group = checked["group"]
    if not group or len(set(group)) != len(group):
        raise GraphConstructionError(f"{what}: group {list(group)} must list distinct ranks{where}")
    checked["instance_id"] = claim_instance_id(what, net, instance_id, where)
    inputs = [tensor] + ([workspace] if workspace is not None else [])
    return add_op(op, inputs, checked, name=name).output.tensor()


def allreduce(tensor: Tensor, group: Sequence[int], *, instance_id: Optional[int] = None, workspace: Optional[Tensor] = None, name: Optional[str] = None) -> Tensor:
    """Sums ``tensor`` over the ranks of ``group``; every rank receives the sum.

    Args:
        tensor: this rank's contribution.
        group: ranks taking part, in rank order.
        instance_id: identity matched across ranks (assigned when omitted).
        workspace: optional preallocated buffer to write the result into.
        name: node name.
    """
    return _collective("allreduce", tensor, group, instance_id, workspace, {"reduce": "sum"}, name)


def allgather(
    tensor: Tensor,
    group: Sequence[int],
    *,
    axis: int = -1,
    sizes: Optional[Sequence[int]] = None,
    instance_id: Optional[int] = None,
    workspace: Optional[Tensor] = None,
    name: Optional[str] = None,
) -> Tensor:
    """Concatenates every rank's ``tensor`` along ``axis`` in group order.

    Args:
        tensor: this rank's piece.
        group: ranks taking part, in rank order.
        axis: the axis to concatenate along.
        sizes: each rank's extent along ``axis`` when they differ.
        instance_id: identity matched across ranks (assigned when omitted).
        workspace: optional preallocated buffer to write the result into.
        name: node name.
    """
    attrs = {"axis": axis, "sizes": None if sizes is None else tuple(sizes) if isinstance(sizes, (list, tuple, range)) else sizes}
    return _collective("allgather", tensor, group, instance_id, workspace, attrs, name)
