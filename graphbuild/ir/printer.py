"""Text rendering of a network, one line per node (what ``print(net)`` shows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphbuild.ir.value import format_shape

if TYPE_CHECKING:
    from graphbuild.ir.network import Network


def _format_attr(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def format_network(net: "Network") -> str:
    lines = [f"network {net.name} {{"]
    for value in net.inputs.values():
        lines.append(f"  input  %{value.name}: {value.dtype}{format_shape(value.shape)}")
    for value in net.constants.values():
        lines.append(f"  const  %{value.name}: {value.dtype}{format_shape(value.shape)}")
    for node in net.nodes:
        outs = ", ".join(f"%{v.name}: {v.dtype}{format_shape(v.shape)}" for v in node.outputs)
        ins = ", ".join("_" if v is None else f"%{v.name}" for v in node.inputs)
        attrs = ", ".join(f"{k}={_format_attr(v)}" for k, v in node.attrs.items() if v is not None)
        attrs = f" {{{attrs}}}" if attrs else ""
        lines.append(f"  {outs} = {node.op}({ins}){attrs}")
    for name, value in net.outputs.items():
        lines.append(f"  output %{name} = %{value.name}")
    lines.append("}")
    return "\n".join(lines)
