"""``DeadCodeEliminationPass``: removes nodes and constants that no graph output depends on.

One backward walk over the topologically ordered nodes marks what the graph outputs need; the
rest is removed in one batch, so the pass runs in time linear in the network's size. Graph inputs
are never removed (they are the engine's interface), even when nothing reads them.

Nodes that exchange data with other ranks (``OpDef.exchanges``: collectives, and rank-local
``embedding`` nodes that will become collectives) are kept even when their result is unused: every
rank of a group must reach the same collectives, and a rank cannot know whether the other ranks
use the result. Their inputs are kept with them.
"""

from __future__ import annotations

from graphbuild.ir import Network, Node
from graphbuild.ops.registry import get_op
from graphbuild.passes.infra import Pass, PassResult


def communicates(node: Node) -> bool:
    """Whether ``node`` takes part in a collective of several ranks (and so must not be dropped)."""
    return get_op(node.op).exchanges(node)


class DeadCodeEliminationPass(Pass):
    """Removes dead nodes and unused constants.

    Stats: ``removed_nodes`` and ``removed_constants``.
    """

    name = "eliminate_dead_code"

    def call(self, net: Network) -> PassResult:
        live_values = {id(v) for v in net.outputs.values()}
        dead: list[Node] = []
        for node in reversed(net.nodes):
            if communicates(node) or any(id(v) in live_values for v in node.outputs):
                live_values.update(id(v) for v in node.inputs if v is not None)
            else:
                dead.append(node)
        removed_nodes = net.remove_nodes(dead)
        unused = [v for v in net.constants.values() if not v.uses and id(v) not in live_values]
        for value in unused:
            net.remove_constant(value)
        stats = {"removed_nodes": removed_nodes, "removed_constants": len(unused)}
        return PassResult(net, bool(removed_nodes or unused), stats)
