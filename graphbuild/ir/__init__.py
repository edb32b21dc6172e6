"""graphbuild's intermediate representation: ``Value``, ``Node`` and ``Network``."""

from graphbuild.ir.names import Namespace
from graphbuild.ir.network import Network, as_value, current_network, is_value_like
from graphbuild.ir.node import Node
from graphbuild.ir.value import Dim, Shape, Value, format_shape

__all__ = ["Dim", "Namespace", "Network", "Node", "Shape", "Value", "as_value", "current_network", "is_value_like", "format_shape"]
