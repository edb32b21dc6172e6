"""The IR verifier: ``verify_network`` and the analysis pass ``VerifyPass``.

Like FX's ``Graph.lint`` it checks the invariants every pass may rely on, but it collects every
problem before raising, and each problem comes with a hint on how to fix it:

- ownership: every node and value belongs to the network; dict keys match value names; inputs,
  constants and node outputs are the right kind of value;
- order: nodes are topologically ordered (an input is a graph input, a constant, or an output of
  an earlier node);
- names: node names and value names are unique and registered in the network's namespaces;
- use lists: ``value.uses`` lists exactly the ``(node, index)`` pairs that read the value;
- outputs: graph outputs are values of this network;
- ops: every op is registered, with the registry's domain; attributes are plain data;
- cycles: when some node reads a value produced later, whether the nodes form a cycle (named);
- collectives: ``instance_id`` is an int, unique among the network's collectives and the ops whose
  schema has an ``instance_id`` (embeddings).

It runs in time linear in the size of the network.
"""

from __future__ import annotations

from typing import Any, Iterator

from graphbuild.errors import GraphBuildError, VerificationError
from graphbuild.ir import Network, Node, Value
from graphbuild.ops.registry import get_op
from graphbuild.passes.infra import Pass, PassResult

_PLAIN_SCALARS = (bool, int, float, str, type(None))


def _plain_data_problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` is not plain data (None when it is)."""
    if isinstance(value, _PLAIN_SCALARS) and type(value).__module__ == "builtins":
        return None
    if isinstance(value, (tuple, list)) and depth < 8:
        for item in value:
            problem = _plain_data_problem(item, depth + 1)
            if problem:
                return problem
        return None
    return f"{type(value).__module__}.{type(value).__name__} {value!r:.60}"


class _Checker:
    def __init__(self, net: Network) -> None:
        self.net = net
        self.problems: list[str] = []
        self._listed: set[int] | None = None  # ids of net.nodes, built on the first undefined value

    def report(self, what: str, hint: str) -> None:
        self.problems.append(f"{what}; hint: {hint}")

    # ------------------------------------------------------------------------------- values
    def check_graph_values(self) -> dict[int, Value]:
        """Checks inputs and constants; returns every value defined so far, by id."""
        net = self.net
        defined: dict[int, Value] = {}
        for kind, table in (("input", net.inputs), ("constant", net.constants)):
            for key, value in table.items():
                if not isinstance(value, Value):
                    self.report(f"{kind} '{key}' is a {type(value).__name__}, not a Value", f"register {kind}s with net.add_{kind}(...)")
                    continue
                if value.network is not net:
                    self.report(f"{kind} {value.describe()} belongs to network '{value.network.name}'", f"create it with net.add_{kind}(...) on '{net.name}'")
                if key != value.name:
                    self.report(f"{kind} registered under '{key}' is named '{value.name}'", f"key net.{kind}s by value name, or rename through the network")
                if value.producer is not None:
                    self.report(f"{kind} {value.describe()} has producer {value.producer.describe()}", f"a {kind} is not computed by a node")
                if kind == "input" and value.const is not None:
                    self.report(f"input {value.describe()} carries a constant payload", "make it a constant with net.add_constant(...)")
                if kind == "constant" and value.const is None:
                    self.report(f"constant {value.describe()} has no payload", "declare run-time data with net.add_input(...)")
                if id(value) in defined:
                    self.report(f"value {value.describe()} is registered as an input and as a constant", "keep it in one of net.inputs, net.constants")
                defined[id(value)] = value
        return defined

    # -------------------------------------------------------------------------------- nodes
    def check_nodes(self, defined: dict[int, Value]) -> dict[int, Node]:
        net = self.net
        seen_nodes: dict[int, Node] = {}
        for position, node in enumerate(net.nodes):
            if not isinstance(node, Node):
                self.report(f"net.nodes[{position}] is a {type(node).__name__}, not a Node", "add nodes with net.add_node(...)")
                continue
            where = f"{node.describe()} (position {position})"
            if id(node) in seen_nodes:
                self.report(f"{where} appears twice in net.nodes", "insert each node once")
                continue
            seen_nodes[id(node)] = node
            if node.network is not net:
                self.report(f"{where} belongs to network '{node.network.name}'", f"create it with net.add_node(...) on '{net.name}'")
            self.check_op(node, where)
            for index, value in enumerate(node.inputs):
                if value is None:
                    continue
                if not isinstance(value, Value):
                    self.report(f"{where}: input {index} is a {type(value).__name__}, not a Value", "pass IR values (tensor.value) as inputs")
                    continue
                if id(value) not in defined:
                    self.report(
                        f"{where}: input {index} {value.describe()} {self.undefined_reason(value)}",
                        "nodes must come after the producers of their inputs (insert at a later index), "
                        "and inputs must be graph inputs, constants or node outputs of this network",
                    )
            for index, value in enumerate(node.outputs):
                if not isinstance(value, Value):
                    self.report(f"{where}: output {index} is a {type(value).__name__}, not a Value", "let net.add_node create outputs")
                    continue
                if value.producer is not node or value.index != index:
                    owner = "no producer" if value.producer is None else f"producer {value.producer.describe()} index {value.index}"
                    self.report(f"{where}: output {index} {value.describe()} records {owner}", "outputs must point back at their node and position")
                if value.network is not net:
                    self.report(f"{where}: output {value.describe()} belongs to network '{value.network.name}'", "let net.add_node create outputs")
                if value.const is not None:
                    self.report(f"{where}: output {value.describe()} carries a constant payload", "replace folded values with net.add_constant(...)")
                if id(value) in defined:
                    self.report(f"{where}: output {value.describe()} is defined twice", "each value has one producer")
                defined[id(value)] = value
        return seen_nodes

    def undefined_reason(self, value: Value) -> str:
        if value.network is not self.net:
            return f"belongs to network '{value.network.name}'"
        producer = value.producer
        if producer is None:
            return "is neither a graph input nor a constant of this network"
        if self._listed is None:
            self._listed = {id(n) for n in self.net.nodes}
        if id(producer) in self._listed:
            return f"is produced by {producer.describe()}, which comes later in net.nodes"
        return f"is produced by {producer.describe()}, which is not in net.nodes (removed?)"

    def check_op(self, node: Node, where: str) -> None:
        try:
            opdef = get_op(node.op)
        except GraphBuildError as exc:
            self.report(f"{where}: {exc}", "register the op with graphbuild.ops.register(OpDef(...)) before building")
            return
        if node.domain != opdef.domain:
            self.report(f"{where}: domain '{node.domain}' differs from the registry's '{opdef.domain}'", "let net.add_node set the domain")
        if not isinstance(node.attrs, dict):
            self.report(f"{where}: attrs is a {type(node.attrs).__name__}, not a dict", "attrs map names to plain data")
            return
        for key, value in node.attrs.items():
            problem = _plain_data_problem(value)
            if problem is not None or not isinstance(key, str):
                self.report(
                    f"{where}: attribute {key!r} is not plain data ({problem or 'non-string key'})",
                    "use int, float, str, bool, None or tuples of them (convert numpy scalars with int()/float(), arrays to constants)",
                )

    # ----------------------------------------------------------------------------- names
    def check_names(self, defined: dict[int, Value], nodes: dict[int, Node]) -> None:
        net = self.net
        for kind, items, namespace, describe in (
            ("node", nodes.values(), net.node_names, lambda n: n.describe()),
            ("value", defined.values(), net.value_names, repr),
        ):
            seen: dict[str, Any] = {}
            for item in items:
                if item.name in seen:
                    self.report(f"{kind} name '{item.name}' is used by {describe(seen[item.name])} and {describe(item)}", f"claim names through net.{kind}_names")
                seen[item.name] = item
                if item.name not in namespace:
                    self.report(
                        f"{kind} name '{item.name}' is not registered in net.{kind}_names",
                        f"claim it with net.{kind}_names.claim(name) so later names do not collide",
                    )

    # ------------------------------------------------------------------------------ uses
    def check_uses(self, defined: dict[int, Value], nodes: dict[int, Node]) -> None:
        recorded: set[tuple[int, int, int]] = set()  # (value, user, index) from the use lists
        values = dict(defined)  # plus values read but not defined here (already reported)
        for node in nodes.values():
            for value in node.inputs:
                if isinstance(value, Value):
                    values.setdefault(id(value), value)
        for value in values.values():
            for user, index in value._uses:
                key = (id(value), id(user), index)
                if key in recorded:
                    self.report(f"value {value.describe()} lists the use ({user.describe()}, {index}) twice", "edit inputs with node.replace_input(...)")
                    continue
                recorded.add(key)
                if id(user) not in nodes:
                    self.report(f"value {value.describe()} lists a use by {user.describe()}, which is not in net.nodes", "remove nodes with net.remove_nodes(...)")
                elif index >= len(user.inputs) or user.inputs[index] is not value:
                    self.report(f"value {value.describe()} lists a use by {user.describe()} input {index}, which reads another value", "edit inputs with node.replace_input(...)")
        for node in nodes.values():
            for index, value in enumerate(node.inputs):
                if isinstance(value, Value) and (id(value), id(node), index) not in recorded:
                    self.report(f"{node.describe()} reads {value.describe()} as input {index}, but the value's use list misses it", "edit inputs with node.replace_input(...)")

    # ----------------------------------------------------------------------------- cycles
    def check_cycles(self, nodes: dict[int, Node]) -> None:
        """Reports one cycle among the nodes, if any (a node computed from its own output)."""
        cycle = _find_cycle(list(nodes.values()))
        if cycle:
            chain = " -> ".join(n.describe() for n in cycle + [cycle[0]])
            self.report(
                f"nodes form a cycle: {chain} (each reads the next one's output){cycle[0].where()}",
                "a rewrite redirected a value to one computed from it; undo it (net.replace_all_uses refuses such rewrites)",
            )

    # ---------------------------------------------------------------------------- outputs
    def check_outputs(self, defined: dict[int, Value]) -> None:
        for name, value in self.net.outputs.items():
            if not isinstance(value, Value):
                self.report(f"output '{name}' is a {type(value).__name__}, not a Value", "mark outputs with net.mark_output(tensor, name)")
            elif id(value) not in defined:
                self.report(f"output '{name}' is {value.describe()}, {self.undefined_reason(value)}", "redirect outputs with net.replace_all_uses(old, new)")

    # ------------------------------------------------------------------------- collectives
    def check_collectives(self, nodes: dict[int, Node]) -> None:
        owners: dict[int, Node] = {}
        for node in nodes.values():
            try:
                opdef = get_op(node.op)
            except GraphBuildError:
                continue
            if not opdef.collective and not (opdef.attrs is not None and "instance_id" in opdef.attrs):
                continue
            instance_id = node.attrs.get("instance_id") if isinstance(node.attrs, dict) else None
            if isinstance(instance_id, bool) or not isinstance(instance_id, int):
                self.report(f"{node.describe()}: instance_id is {instance_id!r}, not an int", "give every collective an int instance_id (net.new_instance_id())")
                continue
            if instance_id in owners:
                self.report(
                    f"{node.describe()} and {owners[instance_id].describe()} share instance_id={instance_id}",
                    "instance_ids identify collectives across ranks; take a fresh one from net.new_instance_id()",
                )
            else:
                owners[instance_id] = node


def _find_cycle(nodes: list[Node]) -> list[Node]:
    """A cycle of ``nodes`` (each reads an output of the next), or an empty list; linear time."""
    members = {id(n) for n in nodes}
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for start in nodes:
        if id(start) in state:
            continue
        path: list[Node] = []
        stack: list[tuple[Node, Iterator[Any]]] = [(start, iter(start.inputs))]
        state[id(start)] = 1
        path.append(start)
        while stack:
            node, inputs = stack[-1]
            for value in inputs:
                producer = value.producer if isinstance(value, Value) else None
                if producer is None or id(producer) not in members:
                    continue
                if state.get(id(producer)) == 1:
                    return path[path.index(producer):]
                if id(producer) not in state:
                    state[id(producer)] = 1
                    path.append(producer)
                    stack.append((producer, iter(producer.inputs)))
                    break
            else:
                state[id(node)] = 2
                stack.pop()
                path.pop()
    return []


def verify_network(net: Network) -> None:
    """Checks every IR invariant of ``net`` (see the module docstring).

    Raises:
        VerificationError: listing every problem found, each with a hint.
    """
    checker = _Checker(net)
    defined = checker.check_graph_values()
    nodes = checker.check_nodes(defined)
    checker.check_names(defined, nodes)
    checker.check_uses(defined, nodes)
    checker.check_outputs(defined)
    checker.check_collectives(nodes)
    if any("comes later in net.nodes" in p for p in checker.problems):
        checker.check_cycles(nodes)
    if checker.problems:
        count = len(checker.problems)
        listing = "\n".join(f"  - {p}" for p in checker.problems)
        raise VerificationError(f"network '{net.name}' fails verification ({count} problem{'s' if count > 1 else ''}):\n{listing}")


class VerifyPass(Pass):
    """Runs ``verify_network``; an analysis pass (never modifies the network)."""

    name = "verify"

    def call(self, net: Network) -> PassResult:
        verify_network(net)
        return PassResult(net, False, {"nodes": len(net.nodes)})
