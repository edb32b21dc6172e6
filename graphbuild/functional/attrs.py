"""What the op families share: turning user arguments into node attributes (plain data only),
adding the node, and claiming a collective's ``instance_id``."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from graphbuild.errors import GraphConstructionError
from graphbuild.ir.network import Network, as_value
from graphbuild.ir.node import Node
from graphbuild.ops.registry import create_node
from graphbuild.ops.schema import is_int


def plain(value: Any) -> Any:
    """Lists and tuples as tuples, numpy scalars as Python scalars; anything else unchanged (the
    op's shape rule rejects what it cannot use, with a message naming the node)."""
    if isinstance(value, (list, tuple)):
        return tuple(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def add_op(op: str, inputs: Sequence[Any], attrs: Optional[dict[str, Any]] = None, *, name: Optional[str] = None) -> Node:
    """Adds an ``op`` node reading ``inputs`` (Tensors or Values) to the first input's network,
    with every attribute made ``plain``."""
    values = [as_value(x) for x in inputs]
    return create_node(values[0].network, op, values, {k: plain(v) for k, v in (attrs or {}).items()}, name=name)


def claim_instance_id(what: str, net: Network, instance_id: Any, where: str = "") -> int:
    """``instance_id`` after checking it is an int that no node of ``net`` uses yet, or a fresh one
    when None.

    Args:
        what: the op, for messages (``"embedding 'wte'"``).
        net: the network the node joins.
        instance_id: the requested id, or None.
        where: the creation site (`` (created at model.py:12 in build)``), appended to messages.

    Raises:
        GraphConstructionError: not an int (bools, floats and strings are refused), or another node
            of ``net`` already has this ``instance_id``.
    """
    if instance_id is None:
        return net.new_instance_id()
    if not is_int(instance_id):
        raise GraphConstructionError(f"{what}: instance_id must be an int, got {instance_id!r} ({type(instance_id).__name__}){where}")
    if net.uses_instance_id(int(instance_id)):
        raise GraphConstructionError(f"{what}: instance_id={instance_id} is already used in network '{net.name}'{where}")
    return int(instance_id)
