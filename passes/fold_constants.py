"""``ConstantFoldingPass``: evaluates nodes whose inputs are all constants and replaces them.

One forward sweep folds whole constant subgraphs: a node is folded when its op is ``foldable``, has
a numpy evaluator, and every input is a constant or the output of a node folded earlier in the
sweep (``None`` inputs are omitted optional inputs and are passed on as ``None``). Folded values
that something else still reads (a node that is not folded, or a graph output) become constants
named like the value they replace; then every folded node is removed in one batch.

Nodes are left alone, and counted, when an output would exceed ``max_elements`` elements or when
the evaluator fails (the same failure then surfaces when the network runs; the reason is kept in
``node.meta["fold_skipped"]``). An evaluator whose result disagrees with the op's shape rule is a
bug in the op and raises.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from graphbuild.errors import GraphBuildError, ShapeInferenceError
from graphbuild.ir import Network, Node, Value, format_shape
from graphbuild.ops.registry import OpDef, get_op
from graphbuild.passes.infra import Pass, PassResult


def _static_size(value: Value) -> Optional[int]:
    if not value.is_static:
        return None
    return int(np.prod(value.shape, dtype=np.int64))


def _rename_constant(net: Network, value: Value, name: str) -> None:
    """Gives the constant ``value`` the free name ``name``."""
    del net.constants[value.name]
    net.value_names.release(value.name)
    value.name = net.value_names.claim(name)
    net.constants[value.name] = value


class ConstantFoldingPass(Pass):
    """Replaces all-constant subgraphs by their values.

    Args:
        max_elements: outputs larger than this are not folded (they would bloat the engine).

    Stats: ``folded`` (nodes removed), ``constants_added``, ``skipped_large`` and
    ``evaluation_failed``.
    """

    name = "fold_constants"

    def __init__(self, max_elements: int = 1 << 22) -> None:
        self.max_elements = max_elements

    def call(self, net: Network) -> PassResult:
        env: dict[int, np.ndarray] = {}  # id(value) -> array, for outputs of folded nodes
        folded: list[Node] = []
        skipped_large = failed = 0
        for node in net.nodes:
            opdef = get_op(node.op)
            if not opdef.foldable or opdef.evaluate is None:
                continue
            if not all(v is None or v.is_constant or id(v) in env for v in node.inputs):
                continue
            if any((_static_size(v) or 0) > self.max_elements for v in node.outputs):
                skipped_large += 1
                continue
            results = self._evaluate(opdef, node, env)
            if results is None:
                failed += 1
                continue
            if any(r.size > self.max_elements for r in results):
                skipped_large += 1
                continue
            for value, array in zip(node.outputs, results):
                env[id(value)] = array
            folded.append(node)
        added = self._materialize(net, folded, env)
        stats = {"folded": len(folded), "constants_added": added, "skipped_large": skipped_large, "evaluation_failed": failed}
        return PassResult(net, bool(folded), stats)

    @staticmethod
    def _evaluate(opdef: OpDef, node: Node, env: dict[int, np.ndarray]) -> Optional[list[np.ndarray]]:
        inputs = [None if v is None else (v.const if v.is_constant else env[id(v)]) for v in node.inputs]
        try:
            results = [np.asarray(r) for r in opdef.evaluate(node, inputs)]
        except (GraphBuildError, ArithmeticError, ValueError, TypeError, IndexError) as exc:
            node.meta["fold_skipped"] = f"{type(exc).__name__}: {exc}"
            return None
        _check_results(node, results)
        return results

    @staticmethod
    def _materialize(net: Network, folded: Sequence[Node], env: dict[int, np.ndarray]) -> int:
        """Turns folded values that are still read into constants, then removes the folded nodes."""
        doomed = {id(n) for n in folded}
        graph_outputs = {id(v) for v in net.outputs.values()}
        renames: list[tuple[Value, str]] = []
        for node in folded:
            for value in node.outputs:
                read_outside = any(id(user) not in doomed for user, _ in value.uses)
                if not read_outside and id(value) not in graph_outputs:
                    continue
                constant = net.add_constant(env[id(value)], dtype=value.dtype).value
                net.replace_all_uses(value, constant)
                renames.append((constant, value.name))
        net.remove_nodes(folded)
        for constant, name in renames:
            _rename_constant(net, constant, name)
        return len(renames)


def _check_results(node: Node, results: Sequence[np.ndarray]) -> None:
    if len(results) != len(node.outputs):
        raise ShapeInferenceError(f"{node.describe()}: the evaluator returned {len(results)} arrays for {len(node.outputs)} outputs{node.where()}")
    for value, array in zip(node.outputs, results):
        static_ok = len(array.shape) == value.rank and all(not isinstance(d, int) or d == s for d, s in zip(value.shape, array.shape))
        if array.dtype != value.dtype.numpy or not static_ok:
            raise ShapeInferenceError(
                f"{node.describe()}: the evaluator returned {array.dtype}{format_shape(array.shape)} for {value.describe()}; "
                f"the op's evaluator disagrees with its shape rule{node.where()}"
            )
