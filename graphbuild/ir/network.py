"""``Network``: the IR container. It owns nodes in topological order, named inputs, outputs and
constants, and the namespaces that keep node and value names unique.

Ops find their network through their input tensors; ``with net:`` makes ``net`` current for
creating inputs and constants (kept in a ``ContextVar`` so threads and nested ``with`` blocks are
safe).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.errors import GraphConstructionError, NetworkContextError
from graphbuild.ir.names import Namespace
from graphbuild.ir.node import Node, user_frame
from graphbuild.ir.value import Shape, Value

if TYPE_CHECKING:
    from graphbuild.dtypes import DType

#: An op's shape/dtype rule as the IR calls it: ``(dtype, shape)`` per output of the node.
TypeRule = Callable[[Node], Sequence[tuple["DType", Shape]]]

_CURRENT: contextvars.ContextVar[Optional["Network"]] = contextvars.ContextVar("graphbuild_network", default=None)


def current_network() -> "Network":
    """The network made current by the innermost ``with net:`` block.

    Raises:
        NetworkContextError: no network is current.
    """
    net = _CURRENT.get()
    if net is None:
        raise NetworkContextError(
            "no current network: create inputs and constants inside 'with net:' "
            "(for example: net = gb.Network('emb'); with net: ids = net.add_input(...))"
        )
    return net


def _check_shape(shape: Iterable[Any], what: str) -> Shape:
    dims = []
    for dim in shape:
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer, str)):
            raise GraphConstructionError(f"{what}: dim {dim!r} must be a non-negative int or a symbolic name (str)")
        if isinstance(dim, str):
            if not dim.isidentifier():
                raise GraphConstructionError(f"{what}: symbolic dim {dim!r} must be an identifier such as 'batch'")
            dims.append(dim)
        else:
            if dim < 0:
                raise GraphConstructionError(f"{what}: dim {dim} is negative")
            dims.append(int(dim))
    return tuple(dims)


def _check_name(name: Any, what: str, network: str) -> None:
    """Names are non-empty strings (ONNX refuses an empty tensor name)."""
    if not isinstance(name, str) or not name:
        raise GraphConstructionError(f"network '{network}': {what} name must be a non-empty string, got {name!r}")


class Network:
    """A symbolic network: what users build and passes transform.

    Args:
        name: the network's name, used for engines and messages.
    """

    def __init__(self, name: str = "network") -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: dict[str, Value] = {}
        self.outputs: dict[str, Value] = {}
        self.constants: dict[str, Value] = {}
        self.meta: dict[str, Any] = {}
        self.node_names = Namespace()
        self.value_names = Namespace()
        self._scopes: list[str] = []
        self._tokens: list[contextvars.Token] = []
        self._next_instance_id = 0
        self._instance_scan: tuple[int, Optional[Node], set[Any]] = (0, None, set())

    # ----------------------------------------------------------------------------- context
    def __enter__(self) -> "Network":
        self._tokens.append(_CURRENT.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _CURRENT.reset(self._tokens.pop())

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefixes the names of nodes created inside the block with ``name/``."""
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    @property
    def scope_prefix(self) -> str:
        return "/".join(self._scopes)

    def _scoped(self, name: str) -> str:
        prefix = self.scope_prefix
        return f"{prefix}/{name}" if prefix else name

    def new_instance_id(self) -> int:
        """A collective identity that is unique within this network."""
        used = self._used_instance_ids()
        while self._next_instance_id in used:
            self._next_instance_id += 1
        self._next_instance_id += 1
        return self._next_instance_id - 1

    def uses_instance_id(self, instance_id: int) -> bool:
        """Whether a node of this network already carries ``instance_id``."""
        return instance_id in self._used_instance_ids()

    def _used_instance_ids(self) -> set[Any]:
        """The instance_ids of all nodes, scanning only the nodes appended since the last call.

        Building a network calls ``new_instance_id`` once per collective; a full scan each time
        made building quadratic. The cache is rebuilt when the node list changed other than by
        appending (its last scanned node moved).
        """
        scanned, last, used = self._instance_scan
        if scanned > len(self.nodes) or (scanned and self.nodes[scanned - 1] is not last):
            scanned, used = 0, set()
        for node in self.nodes[scanned:]:
            used.add(node.attrs.get("instance_id"))
        self._instance_scan = (len(self.nodes), self.nodes[-1] if self.nodes else None, used)
        return used

    # ----------------------------------------------------------------------------- building
    def add_input(self, name: str, dtype: dtypes.DTypeLike, shape: Sequence[int | str]) -> Any:
        """Declares a graph input; dims are ints or symbolic names such as ``"batch"``.

        Raises:
            GraphConstructionError: the name is taken or the shape is malformed.
        """
        _check_name(name, "input", self.name)
        if name in self.value_names:
            raise GraphConstructionError(f"network '{self.name}': input name '{name}' is already used")
        value = Value(self, self.value_names.claim(name), dtypes.as_dtype(dtype), _check_shape(shape, f"input '{name}'"))
        self.inputs[value.name] = value
        return value.tensor()

    def add_constant(self, array: Any, name: Optional[str] = None, dtype: Optional[dtypes.DTypeLike] = None) -> Any:
        """Adds a constant (an initializer in ONNX terms) holding a copy-free view of ``array``.

        Args:
            array: array-like; a numpy array's dtype must be one of graphbuild's dtypes unless
                ``dtype`` is given (graphbuild has no float64: a float64 array is refused rather
                than computed in float32 behind the user's back). Python numbers and lists of them
                become float32 (floats) or int64 (ints).
            name: a hierarchical name such as ``"wte.weight"``; generated when omitted.
            dtype: converts the array to this dtype first.

        Raises:
            GraphConstructionError: a float64 numpy array without ``dtype``, a dtype graphbuild
                does not have, or a bad or taken name.
        """
        data = np.asarray(array)
        if dtype is not None:
            data = data.astype(dtypes.as_dtype(dtype).numpy, copy=False)
        elif data.dtype == np.float64:
            if isinstance(array, (np.ndarray, np.generic)):
                what = f"constant '{name}'" if name else "a constant"
                raise GraphConstructionError(
                    f"network '{self.name}': {what} is a float64 array of shape {data.shape}; graphbuild computes in "
                    "float32, float16 or bfloat16 and does not narrow float64 silently: convert it "
                    "(array.astype(np.float32)) or pass dtype='float32'"
                )
            data = data.astype(np.float32)
        dt = dtypes.as_dtype(data.dtype)
        if name is not None:
            _check_name(name, "constant", self.name)
        if name is not None and name in self.value_names:
            raise GraphConstructionError(f"network '{self.name}': constant name '{name}' is already used")
        vname = self.value_names.claim(name) if name is not None else self.value_names.numbered(self._scoped("const"))
        value = Value(self, vname, dt, data.shape, const=data)
        self.constants[vname] = value
        return value.tensor()

    def mark_output(self, tensor: Any, name: Optional[str] = None) -> None:
        """Makes ``tensor`` a graph output under ``name`` (defaults to the value's name)."""
        value = as_value(tensor)
        if value.network is not self:
            raise GraphConstructionError(
                f"network '{self.name}': cannot mark {value.describe()} as output, it belongs to network '{value.network.name}'"
            )
        if name is not None:
            _check_name(name, "output", self.name)
        out_name = name or value.name
        if out_name in self.outputs:
            raise GraphConstructionError(f"network '{self.name}': output name '{out_name}' is already used")
        if out_name in self.inputs and self.inputs[out_name] is not value:
            raise GraphConstructionError(f"network '{self.name}': output name '{out_name}' is an input's name")
        self.outputs[out_name] = value

    def add_node(
        self,
        op: str,
        inputs: Sequence[Optional[Value]],
        attrs: Optional[dict[str, Any]] = None,
        *,
        infer: TypeRule,
        domain: str = "",
        name: Optional[str] = None,
        index: Optional[int] = None,
        origin: Optional[tuple[str, int, str]] = None,
    ) -> Node:
        """Creates a node and its typed outputs.

        The IR does not know ops: ``infer`` (the op's shape/dtype rule, which the op registry
        supplies; see ``graphbuild.ops.create_node``) runs on the new node at once, so a bad call
        fails here, at the user's line, before the node joins the network.

        Args:
            op: the op's name.
            inputs: values of this network (``None`` for an omitted optional input).
            attrs: plain-data attributes.
            infer: ``infer(node) -> [(dtype, shape), ...]``, one entry per output.
            domain: the op's domain.
            name: requested node name (scoped and made unique).
            index: insert at this position of ``nodes`` instead of appending (passes use this).
            origin: creation site; by default the innermost frame outside graphbuild.
        """
        for i, value in enumerate(inputs):
            if value is not None and value.network is not self:
                raise GraphConstructionError(
                    f"{op}: input {i} {value.describe()} belongs to network '{value.network.name}', not '{self.name}'"
                )
        node_name = self.node_names.claim(self._scoped(name)) if name else self.node_names.numbered(self._scoped(op))
        node = Node(self, op, domain, node_name, tuple(inputs), dict(attrs or {}), origin or user_frame())
        types = infer(node)
        node.outputs = tuple(
            Value(
                self,
                self.value_names.claim(node_name if len(types) == 1 else f"{node_name}:{i}"),
                dtype,
                shape,
                producer=node,
                index=i,
            )
            for i, (dtype, shape) in enumerate(types)
        )
        node._link_inputs()
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        return node

    # ----------------------------------------------------------------------------- editing
    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Redirects every reader of ``old`` (nodes and graph outputs) to ``new``.

        Raises:
            GraphConstructionError: ``new`` belongs to another network, or is computed from
                ``old`` (the readers of ``old`` on the way to ``new`` would read their own results:
                a cycle). Nothing is changed then.
        """
        if new.network is not self or old.network is not self:
            other = new if new.network is not self else old
            raise GraphConstructionError(f"network '{self.name}': cannot replace with {other.describe()}, it belongs to network '{other.network.name}'")
        path = _dependency_path(new, old)
        if path is not None:
            chain = " -> ".join(node.describe() for node in path)
            raise GraphConstructionError(
                f"network '{self.name}': replacing {old.describe()} by {new.describe()} would make a cycle: {new.describe()} is "
                f"computed from {old.describe()} through {chain}; redirect only the readers that are not on that path "
                f"(node.replace_input(index, value)){path[-1].where()}"
            )
        for node, index in list(old._uses):
            node.replace_input(index, new)
        for out_name, value in self.outputs.items():
            if value is old:
                self.outputs[out_name] = new

    def remove_nodes(self, doomed: Iterable[Node]) -> int:
        """Removes nodes whose outputs nobody reads any more; returns how many were removed.

        Raises:
            GraphConstructionError: an output of a removed node is still used or is a graph output.
        """
        doomed = set(doomed)
        if not doomed:
            return 0
        graph_outputs = {id(v) for v in self.outputs.values()}
        for node in doomed:
            for value in node.outputs:
                live = [u for u, _ in value._uses if u not in doomed]
                if live or id(value) in graph_outputs:
                    reader = live[0].describe() if live else "a graph output"
                    raise GraphConstructionError(f"cannot remove {node.describe()}: {value.describe()} is still read by {reader}")
        # Unlink per input value with one filter each: list.remove per use is quadratic when one
        # value (a shared weight, say) feeds many removed nodes.
        inputs = {id(v): v for node in doomed for v in node.inputs if v is not None}
        for value in inputs.values():
            value._uses = [(user, i) for user, i in value._uses if user not in doomed]
        for node in doomed:
            self.node_names.release(node.name)
            for value in node.outputs:
                self.value_names.release(value.name)
        self.nodes = [n for n in self.nodes if n not in doomed]
        return len(doomed)

    def remove_constant(self, value: Value) -> None:
        """Drops an unused constant."""
        if value._uses or any(v is value for v in self.outputs.values()):
            raise GraphConstructionError(f"constant {value.describe()} is still used")
        del self.constants[value.name]
        self.value_names.release(value.name)

    def copy(self, name: Optional[str] = None) -> "Network":
        """A structural copy with the same names; constant payloads are shared, not copied."""
        twin = Network(name or self.name)
        twin.meta = dict(self.meta)
        twin._next_instance_id = self._next_instance_id
        mapping: dict[int, Value] = {}
        for value in self.inputs.values():
            mapping[id(value)] = twin.inputs[value.name] = Value(twin, twin.value_names.claim(value.name), value.dtype, value.shape)
        for value in self.constants.values():
            clone = Value(twin, twin.value_names.claim(value.name), value.dtype, value.shape, const=value.const)
            mapping[id(value)] = twin.constants[value.name] = clone
        for node in self.nodes:
            missing = [v for v in node.inputs if v is not None and id(v) not in mapping]
            if missing:
                raise GraphConstructionError(
                    f"network '{self.name}': cannot copy {node.describe()}: it reads {missing[0].describe()} before it is defined "
                    f"(misordered nodes or a cycle; graphbuild.passes.verify_network lists the problems){node.where()}"
                )
            inputs = tuple(None if v is None else mapping[id(v)] for v in node.inputs)
            clone_node = Node(twin, node.op, node.domain, twin.node_names.claim(node.name), inputs, dict(node.attrs), node.origin)
            clone_node.meta = dict(node.meta)
            clone_node.outputs = tuple(
                Value(twin, twin.value_names.claim(v.name), v.dtype, v.shape, producer=clone_node, index=v.index) for v in node.outputs
            )
            for old, new in zip(node.outputs, clone_node.outputs):
                mapping[id(old)] = new
            clone_node._link_inputs()
            twin.nodes.append(clone_node)
        twin.outputs = {name: mapping[id(value)] for name, value in self.outputs.items()}
        return twin

    # ----------------------------------------------------------------------------- queries
    def values(self) -> Iterator[Value]:
        """Every value: inputs, constants, then node outputs in order."""
        yield from self.inputs.values()
        yield from self.constants.values()
        for node in self.nodes:
            yield from node.outputs

    def find_node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"network '{self.name}' has no node named '{name}'")

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts

    def to_networkx(self):
        """This network as a ``networkx.MultiDiGraph`` of values and ops (see ``graphbuild.ir.graph``).

        Every attribute is a string, int, float or bool, so ``networkx.write_graphml`` and
        ``write_gexf`` write the graph as it is: an op's attributes become ``attr.NAME`` entries
        (``None`` left out; tuples and other values as text, and so is a name whose values differ
        in type between nodes), and a graph output's names one comma-separated ``outputs`` string.
        """
        from graphbuild.ir.graph import to_networkx

        graph = to_networkx(self)
        types: dict[str, set[type]] = {}
        for _, data in graph.nodes(data=True):
            for key, value in data.pop("attrs", {}).items():
                if value is not None:
                    data[f"attr.{key}"] = value if isinstance(value, (bool, int, float, str)) else str(list(value) if isinstance(value, tuple) else value)
                    types.setdefault(f"attr.{key}", set()).add(type(data[f"attr.{key}"]))
            if "outputs" in data:
                data["outputs"] = ",".join(data["outputs"])
        mixed = {key for key, kinds in types.items() if len(kinds) > 1}
        for _, data in graph.nodes(data=True):
            for key in mixed & data.keys():
                data[key] = str(data[key])
        return graph

    def __repr__(self) -> str:
        return (
            f"<Network '{self.name}': {len(self.inputs)} inputs, {len(self.constants)} constants, "
            f"{len(self.nodes)} nodes, {len(self.outputs)} outputs>"
        )

    def __str__(self) -> str:
        from graphbuild.ir.printer import format_network

        return format_network(self)


def _dependency_path(value: Value, ancestor: Value) -> Optional[list[Node]]:
    """The nodes through which ``value`` is computed from ``ancestor`` (first reader of ``ancestor``
    first), or None when it is not."""
    if value is ancestor:
        return None
    came_from: dict[int, Optional[Node]] = {}
    todo: list[tuple[Value, Optional[Node]]] = [(value, None)]
    seen: set[int] = set()
    while todo:
        current, reader = todo.pop()
        producer = current.producer
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        came_from[id(producer)] = reader
        for source in producer.inputs:
            if source is ancestor:
                path = [producer]
                while came_from[id(path[-1])] is not None:
                    path.append(came_from[id(path[-1])])
                return path
            if source is not None:
                todo.append((source, producer))
    return None


def is_value_like(x: Any) -> bool:
    """Whether ``as_value`` accepts ``x`` (a ``Value``, or a handle such as a ``Tensor``)."""
    return isinstance(x, Value) or isinstance(getattr(x, "value", None), Value)


def as_value(x: Any) -> Value:
    """The IR value behind a handle (any object whose ``value`` is a ``Value``, as a ``Tensor``),
    or a ``Value`` itself."""
    if isinstance(x, Value):
        return x
    value = getattr(x, "value", None)
    if isinstance(value, Value):
        return value
    raise GraphConstructionError(
        f"expected a graphbuild Tensor, got {type(x).__name__}; wrap arrays with gb.constant(...)"
    )
