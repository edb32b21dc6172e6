"""Op definitions, one family per module; importing this package imports every module of it, so
an op registers itself by living here (see ``docs/adding-an-op.md``)."""

import importlib
import pkgutil

from graphbuild.ops.registry import LoweringContext, OpDef, RankContext, TensorType, TPClaim, create_node, get_op, register, registered_ops

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["LoweringContext", "OpDef", "RankContext", "TPClaim", "TensorType", "create_node", "get_op", "register", "registered_ops"]
