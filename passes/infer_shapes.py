"""``ShapeInferencePass``: re-runs every node's shape/dtype rule, in order, and updates its outputs.

Nodes are typed when they are created, but edits made after that (a pass replacing an input, a
user specialising an input's shape) can leave downstream types stale. This pass brings them up to
date from the graph inputs and constants down.

Pinned types: a node may carry ``node.meta["declared_types"]``, one ``(dtype, shape)`` pair (or
None) per output, for types its author insists on (a frontend importing a model with annotated
types, say). Inference that disagrees with a pinned type is an error naming the node, the output,
the pinned and the inferred type. Graph outputs are not pinned: they take whatever inference says,
and each change is reported in ``stats["outputs_changed"]``.
"""

from __future__ import annotations

from typing import Any, Optional

from graphbuild import dtypes
from graphbuild.errors import ShapeInferenceError
from graphbuild.ir import Network, Node, Value, format_shape
from graphbuild.ops.registry import TensorType, get_op
from graphbuild.passes.infra import Pass, PassResult


def _describe(dtype: Any, shape: Any) -> str:
    return f"{dtype}{format_shape(tuple(shape))}"


def _pinned(node: Node, index: int) -> Optional[TensorType]:
    declared = node.meta.get("declared_types")
    if declared is None or index >= len(declared) or declared[index] is None:
        return None
    dtype, shape = declared[index]
    return TensorType(dtypes.as_dtype(dtype), tuple(shape))


class ShapeInferencePass(Pass):
    """Recomputes output dtypes and shapes with each op's registered rule.

    Stats: ``nodes_checked``, ``types_changed`` (values whose type was updated) and
    ``outputs_changed`` (``"name: old -> new"`` for graph outputs among them).
    """

    name = "infer_shapes"

    def call(self, net: Network) -> PassResult:
        output_names: dict[int, list[str]] = {}
        for out_name, value in net.outputs.items():
            output_names.setdefault(id(value), []).append(out_name)
        changed = 0
        outputs_changed: list[str] = []
        for node in net.nodes:
            types = get_op(node.op).infer_types(node)
            if len(types) != len(node.outputs):
                raise ShapeInferenceError(
                    f"{node.describe()}: the shape rule now gives {len(types)} outputs but the node has "
                    f"{len(node.outputs)}; rebuild the node instead of editing its inputs{node.where()}"
                )
            for index, (value, inferred) in enumerate(zip(node.outputs, types)):
                self._check_pinned(node, index, value, inferred)
                if value.dtype == inferred.dtype and value.shape == tuple(inferred.shape):
                    continue
                old = _describe(value.dtype, value.shape)
                value.dtype, value.shape = inferred.dtype, tuple(inferred.shape)
                changed += 1
                for out_name in output_names.get(id(value), ()):
                    outputs_changed.append(f"{out_name}: {old} -> {_describe(value.dtype, value.shape)}")
        stats = {"nodes_checked": len(net.nodes), "types_changed": changed, "outputs_changed": outputs_changed}
        return PassResult(net, changed > 0, stats)

    @staticmethod
    def _check_pinned(node: Node, index: int, value: Value, inferred: TensorType) -> None:
        pinned = _pinned(node, index)
        if pinned is None:
            return
        if pinned.dtype != inferred.dtype or pinned.shape != tuple(inferred.shape):
            raise ShapeInferenceError(
                f"{node.describe()}: output {index} '{value.name}' is pinned to {_describe(*pinned)} "
                f"(node.meta['declared_types']) but its shape rule infers {_describe(inferred.dtype, inferred.shape)}; "
                f"fix the inputs or drop the pin{node.where()}"
            )
