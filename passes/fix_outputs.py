"""``ConstantOutputsPass``: graph outputs that are constants get an ``identity`` node.

An engine's outputs are what its segments compute; a constant output would belong to no segment.
Each constant output ``name`` is routed through an ``identity`` node named ``output/{name}``.
"""

from __future__ import annotations

from graphbuild.ir import Network
from graphbuild.ops.registry import create_node
from graphbuild.passes.infra import Pass, PassResult


class ConstantOutputsPass(Pass):
    """Routes constant graph outputs through ``identity`` nodes. Stats: ``routed``."""

    name = "constant_outputs"

    def call(self, net: Network) -> PassResult:
        routed = 0
        for name, value in list(net.outputs.items()):
            if value.is_constant:
                net.outputs[name] = create_node(net, "identity", [value], name=f"output/{name}").output
                routed += 1
        return PassResult(net, routed > 0, {"routed": routed})
