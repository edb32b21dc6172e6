"""Collective ops for rank-local networks: ``allreduce`` and ``allgather``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from graphbuild.errors import GraphConstructionError
from graphbuild.functional.attrs import add_op, claim_instance_id
from graphbuild.ir.network import as_value

if TYPE_CHECKING:
    from graphbuild.tensor import Tensor


def _collective(op: str, tensor: Tensor, group: Sequence[int], instance_id: Optional[int], workspace: Optional[Tensor], attrs: dict, name: Optional[str]) -> Tensor:
    net = as_value(tensor).network
    group = tuple(group)
    if not group or len(set(group)) != len(group):
        raise GraphConstructionError(f"{op}: group {list(group)} must list distinct ranks")
    instance_id = claim_instance_id(op, net, instance_id)
    inputs = [tensor] + ([workspace] if workspace is not None else [])
    return add_op(op, inputs, {"group": group, "instance_id": instance_id, "rank": None, **attrs}, name=name).output.tensor()


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
    attrs = {"axis": axis, "sizes": None if sizes is None else tuple(int(s) for s in sizes)}
    return _collective("allgather", tensor, group, instance_id, workspace, attrs, name)
