"""Op definitions, grouped by family; importing this package registers every op."""

from graphbuild.ops import collectives, elementwise, embedding, generate, math_ops, nn, reduce, shape  # noqa: F401
from graphbuild.ops.registry import LoweringContext, OpDef, TensorType, create_node, get_op, register, registered_ops

__all__ = ["LoweringContext", "OpDef", "TensorType", "create_node", "get_op", "register", "registered_ops"]
