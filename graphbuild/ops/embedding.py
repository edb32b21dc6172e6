"""Embedding ops: the user-level ``embedding`` node and the per-rank ``tp_embedding`` lookup.

``embedding`` records TensorRT-LLM's TP arguments on one node, checked by its attribute schema and
shape rule; its partition rule (``_partition_embedding``) turns it into ``tp_embedding`` (this
rank's shard lookup) followed by an ``allreduce`` (vocab split) or an ``allgather`` (hidden split);
with ``tp_size=1`` it is replicated: every rank looks up the whole table. ``tp_embedding`` lowers to graphbuild's ``TPEmbedding`` custom op, or,
with ``use_plugin=False``, to standard ONNX ops that compute the same bits and report the same
out-of-range error through a check output.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from onnx import TensorProto as onnx_types

from graphbuild.errors import GraphConstructionError, OutOfRangeIdError, PartitionError, ShapeInferenceError
from graphbuild.ir.value import format_shape
from graphbuild.ops.collectives import combine_allgather, combine_allreduce
from graphbuild.ops.registry import LoweringContext, OpDef, RankContext, TensorType, TPClaim, register
from graphbuild.ops.schema import Attr, AttrSchema
from graphbuild.plugin import DOMAIN, TP_EMBEDDING, format_out_of_range
from graphbuild.sharding import hidden_split_sizes, shard_table, vocab_shard_rows

OUT_OF_RANGE_MODES = ("error", "zero")


def check_ids(ids: np.ndarray, vocab_size: int, node_name: str) -> None:
    """Raises ``OutOfRangeIdError`` for the first id (by flat position) outside ``[0, vocab_size)``."""
    flat = ids.reshape(-1)
    bad = (flat < 0) | (flat >= vocab_size)
    if bad.any():
        position = int(np.argmax(bad))
        raise OutOfRangeIdError(format_out_of_range(node_name, int(flat[position]), position, vocab_size))


def lookup(ids: np.ndarray, table: np.ndarray, vocab_start: int, vocab_size: int, zero_out_of_range: bool, node_name: str) -> np.ndarray:
    """numpy semantics of one rank's lookup: rows of ids inside the shard, zeros elsewhere."""
    if not zero_out_of_range:
        check_ids(ids, vocab_size, node_name)
    local = ids.astype(np.int64) - vocab_start
    valid = (local >= 0) & (local < table.shape[0]) & (ids >= 0) & (ids < vocab_size)
    out = np.zeros(ids.shape + (table.shape[1],), dtype=table.dtype)
    out[valid] = table[local[valid]]
    return out


def _check_ids_and_table(ids: Any, table: Any) -> None:
    if not ids.dtype.is_int:
        raise ShapeInferenceError(f"ids must be int32 or int64, got {ids.dtype}")
    if not table.dtype.is_float:
        raise ShapeInferenceError(f"the table must be float32, float16 or bfloat16, got {table.dtype}")
    if table.rank != 2:
        raise ShapeInferenceError(f"the table must be 2-D [rows, hidden], got shape {table.shape}")


# ------------------------------------------------------------------------------------ embedding
EMBEDDING_ATTRS = AttrSchema(
    tp_size=Attr("int", default=1, minimum=1),
    tp_group=Attr("ints", default=None, optional=True, minimum=0),
    sharding_dim=Attr("int", default=0, choices=(0, 1)),
    tp_rank=Attr("int", default=None, optional=True),
    instance_id=Attr("int", default=None, optional=True),
    vocab_size=Attr("int", default=None, optional=True, minimum=1),
    embedding_dim=Attr("int", default=None, optional=True, minimum=1),
    out_of_range=Attr("str", default="error", choices=OUT_OF_RANGE_MODES),
)
"""``embedding``'s attributes: TensorRT-LLM's TP arguments plus the global sizes and the
out-of-range mode. ``tp_rank`` is a rank id (a member of ``tp_group``), not a position."""


def _complete(node: Any) -> dict[str, Any]:
    """The embedding's attributes with ``tp_group``, ``vocab_size`` and ``embedding_dim`` resolved,
    after checking that the TP arguments fit together and fit the table (logical: the full table;
    rank-local: this rank's shard)."""
    attrs = node.attrs
    n, tp_rank, split = attrs["tp_size"], attrs["tp_rank"], attrs["sharding_dim"]
    group = tuple(range(n)) if attrs["tp_group"] is None else tuple(attrs["tp_group"])
    if len(group) != n:
        raise GraphConstructionError(f"tp_group {list(group)} has {len(group)} ranks but tp_size={n}")
    if len(set(group)) != len(group):
        raise GraphConstructionError(f"tp_group {list(group)} names a rank twice")
    if tp_rank is not None and tp_rank not in group:
        raise GraphConstructionError(f"tp_rank={tp_rank} is outside tp_group {list(group)} (tp_size={n})")
    rows, cols = node.inputs[1].shape
    if not isinstance(rows, int) or not isinstance(cols, int):
        raise GraphConstructionError(f"weight shape {node.inputs[1].shape} must be static")
    vocab, dim = attrs["vocab_size"], attrs["embedding_dim"]
    if tp_rank is None or (split == 1 and n > 1):
        vocab = rows if vocab is None else vocab
        if not 0 < vocab <= rows:
            raise GraphConstructionError(f"vocab_size={vocab} must be in [1, {rows}] for a table of {rows} rows")
    if tp_rank is None:
        dim = cols if dim is None else dim
        if dim != cols:
            raise GraphConstructionError(f"embedding_dim={dim} disagrees with the table's {cols} columns")
        if split == 1 and cols < n:
            raise GraphConstructionError(f"hidden size {cols} is smaller than tp_size={n}; every rank needs a column")
    elif split == 0 or n == 1:
        vocab = rows * n if vocab is None else vocab
        if vocab_shard_rows(vocab, n) != rows:
            raise GraphConstructionError(
                f"a vocab shard of {rows} rows does not fit vocab_size={vocab} over tp_size={n} "
                f"(expected ceil({vocab}/{n}) = {vocab_shard_rows(vocab, n)} rows)"
            )
        dim = cols if dim is None else dim
        if dim != cols:
            raise GraphConstructionError(f"embedding_dim={dim} disagrees with the shard's {cols} columns")
    else:
        dim = cols * n if dim is None else dim
        expected = hidden_split_sizes(dim, n)[group.index(tp_rank)]
        if expected != cols:
            raise GraphConstructionError(
                f"rank {tp_rank} of a hidden split of {dim} over tp_size={n} holds {expected} columns, but the shard has {cols}"
            )
    return {**attrs, "tp_group": group, "vocab_size": int(vocab), "embedding_dim": int(dim)}


def _infer_embedding(node: Any) -> Sequence[TensorType]:
    ids, table = node.inputs[0], node.inputs[1]
    _check_ids_and_table(ids, table)
    node.attrs = _complete(node)
    return [TensorType(table.dtype, ids.shape + (node.attrs["embedding_dim"],))]


def _position(node: Any) -> int:
    return tuple(node.attrs["tp_group"]).index(node.attrs["tp_rank"])


def _claim_embedding(node: Any) -> Optional[TPClaim]:
    """tp_size 1 without tp_rank: replicated, no claim. Otherwise the split over tp_group,
    rank-local (with tp_rank) or logical."""
    attrs = node.attrs
    if attrs["tp_size"] == 1 and attrs["tp_rank"] is None:
        return None
    group = tuple(attrs["tp_group"])
    if attrs["tp_rank"] is None:
        return TPClaim(attrs["tp_size"], group, None, logical=True)
    return TPClaim(attrs["tp_size"], group, _position(node))


def _communicates(node: Any) -> bool:
    """A rank-local split embedding meets its peers (each rank holds one shard)."""
    return node.attrs["tp_size"] > 1 and node.attrs["tp_rank"] is not None


def _evaluate_embedding(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    attrs = node.attrs
    if _communicates(node):
        raise ShapeInferenceError(
            f"embedding '{node.name}' is rank-local (tp_rank={attrs['tp_rank']}): evaluating it needs every "
            "rank; use gb.reference.run_ranks([...]) with one network per rank"
        )
    ids, table = inputs[0], inputs[1]
    zero = attrs["out_of_range"] == "zero"
    return [lookup(ids, table, 0, attrs["vocab_size"], zero, node.name)]


def _vocab_start(node: Any, position: int, shard_rows: int) -> int:
    """Where this rank's rows start in the vocabulary (0 unless the vocabulary is split)."""
    return position * shard_rows if node.attrs["sharding_dim"] == 0 and node.attrs["tp_size"] > 1 else 0


def _contribute_embedding(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> np.ndarray:
    """A rank-local embedding's part: the lookup in this rank's shard."""
    ids, table = inputs[0], inputs[1]
    start = _vocab_start(node, _position(node), table.shape[0])
    return lookup(ids, table, start, node.attrs["vocab_size"], node.attrs["out_of_range"] == "zero", node.name)


def _combine_embedding(node: Any, arrays: Sequence[np.ndarray], out: Optional[np.ndarray] = None) -> np.ndarray:
    """The shards' parts joined as the partition's collective joins them: a sum for a vocab split,
    a concatenation of the columns for a hidden split."""
    if node.attrs["sharding_dim"] == 0:
        return combine_allreduce(node, arrays, out)
    return combine_allgather(node, arrays, out)


def _check_shard(node: Any, table: Any, position: int) -> None:
    """A rank-local table must have the shape ``functional.embedding`` derived for it."""
    attrs = node.attrs
    n, vocab, dim = attrs["tp_size"], attrs["vocab_size"], attrs["embedding_dim"]
    rows, cols = table.shape
    if attrs["sharding_dim"] == 0 or n == 1:
        expected = (vocab_shard_rows(vocab, n), dim)
        ok = (rows, cols) == expected
        split = f"a vocab split of vocab_size={vocab}"
    else:
        expected = (vocab, hidden_split_sizes(dim, n)[position])
        ok = isinstance(rows, int) and rows >= vocab and cols == expected[1]
        split = f"a hidden split of embedding_dim={dim}"
    if not ok:
        raise PartitionError(
            f"{node.describe()}: rank-local table {table.name!r} has shape {format_shape(table.shape)}, expected "
            f"{format_shape(expected)} for rank {attrs['tp_rank']} of {split} over tp_size={n}; "
            f"give this rank's shard (graphbuild.sharding.shard_table){node.where()}"
        )


def _runtime_shard(ctx: RankContext, node: Any, table: Any) -> Any:
    """This rank's shard of a table that is a network input, sliced at run time.

    Vocab split: rows ``[p * k, min((p + 1) * k, V))`` with ``k = ceil(V / tp_size)`` (the last
    shard may be shorter; ids past it are out of this rank's shard anyway). A rank whose rows lie
    past the vocabulary looks nothing up: it reads the first row, which no id maps to. Hidden
    split: the rank's columns (``hidden_split_sizes``).
    """
    attrs, p, n = node.attrs, ctx.position, ctx.tp_size
    if attrs["sharding_dim"] == 0:
        vocab = attrs["vocab_size"]
        rows = vocab_shard_rows(vocab, n)
        start, end = p * rows, min((p + 1) * rows, vocab)
        if start >= end:
            start, end = 0, 1
        axis = 0
    else:
        sizes = hidden_split_sizes(attrs["embedding_dim"], n)
        start = sum(sizes[:p])
        end, axis = start + sizes[p], 1
    slice_attrs = {"starts": (start,), "ends": (end,), "axes": (axis,), "steps": (1,)}
    return ctx.emit("slice", [table], slice_attrs, name=f"{node.name}/shard", origin=node.origin).output


def _partition_embedding(ctx: RankContext, node: Any) -> Sequence[Any]:
    """``embedding`` → ``tp_embedding`` on this rank's table, then, for ``tp_size > 1``, an
    ``allreduce`` (vocab split) or ``allgather`` (hidden split) over ``tp_group``.

    tp_size 1: every rank looks up the whole table (replicated, no collective), in logical and
    rank-local networks alike. A rank-local table is checked; a logical constant table is sliced
    once per rank; a logical table that is a network input is sliced at run time.
    """
    attrs = node.attrs
    ids, weight = node.inputs[0], node.inputs[1]
    workspace = node.inputs[2] if len(node.inputs) > 2 else None
    n, split, vocab = attrs["tp_size"], attrs["sharding_dim"], attrs["vocab_size"]
    position = ctx.position if n > 1 else 0
    if n == 1:
        table = ctx.value(weight)
    elif attrs["tp_rank"] is not None:
        table = ctx.value(weight)
        _check_shard(node, table, position)
    elif weight.is_constant:
        suffix = ("vocab", "hidden")[split] + "_shard"
        table = ctx.constant_shard(weight, (split, vocab), lambda full: shard_table(full[:vocab], n, position, split), suffix)
    else:
        table = _runtime_shard(ctx, node, ctx.value(weight))
    rows = vocab_shard_rows(vocab, n) if split == 0 else table.shape[0]
    lookup_attrs = {
        "name": node.name,
        "vocab_start": _vocab_start(node, position, rows),
        "vocab_size": vocab,
        "out_of_range": attrs["out_of_range"],
        "tp_position": position,
        "tp_size": n,
    }
    lookup_node = ctx.emit("tp_embedding", [ctx.value(ids), table], lookup_attrs, name=f"{node.name}/lookup", origin=node.origin)
    if n == 1:
        return lookup_node.outputs
    inputs = [lookup_node.output] + ([ctx.value(workspace)] if workspace is not None else [])
    common = {"group": tuple(attrs["tp_group"]), "instance_id": attrs["instance_id"], "tp_position": position}
    if split == 0:
        collective = ctx.emit("allreduce", inputs, {**common, "reduce": "sum"}, name=f"{node.name}/allreduce", origin=node.origin)
    else:
        sizes = hidden_split_sizes(attrs["embedding_dim"], n)
        gather = {**common, "axis": -1, "sizes": None if len(set(sizes)) == 1 else tuple(sizes)}
        collective = ctx.emit("allgather", inputs, gather, name=f"{node.name}/allgather", origin=node.origin)
    return collective.outputs


register(
    OpDef(
        "embedding",
        infer=_infer_embedding,
        evaluate=_evaluate_embedding,
        domain=DOMAIN,
        foldable=False,
        doc="tensor-parallel embedding lookup (TensorRT-LLM signature); split by the partition pass",
        attrs=EMBEDDING_ATTRS,
        tp_claim=_claim_embedding,
        partition=_partition_embedding,
        logical=True,
        communicates=_communicates,
        contribute=_contribute_embedding,
        combine=_combine_embedding,
        workspace_input=2,
    )
)


# --------------------------------------------------------------------------------- tp_embedding
def _infer_tp_embedding(node: Any) -> Sequence[TensorType]:
    ids, table = node.inputs
    _check_ids_and_table(ids, table)
    return [TensorType(table.dtype, ids.shape + (table.shape[1],))]


def _evaluate_tp_embedding(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    ids, table = inputs
    attrs = node.attrs
    zero = attrs["out_of_range"] == "zero"
    return [lookup(ids, table, attrs["vocab_start"], attrs["vocab_size"], zero, attrs["name"])]


def _lower_tp_embedding(ctx: LoweringContext, node: Any) -> None:
    ids, table = node.inputs
    attrs = node.attrs
    out = ctx.name(node.output)
    zero = attrs["out_of_range"] == "zero"
    if ctx.use_plugin:
        emit = getattr(ctx.op, TP_EMBEDDING)
        emit(ids, table, out=out, domain=DOMAIN, name=attrs["name"], vocab_size=int(attrs["vocab_size"]), vocab_start=int(attrs["vocab_start"]), zero_out_of_range=int(zero))
        return
    _lower_tp_embedding_standard(ctx, node, out, zero)


def _lower_tp_embedding_standard(ctx: LoweringContext, node: Any, out: str, zero: bool) -> None:
    """Standard ONNX ops, bit-identical to the plugin: Gather from a table with one extra zero row.

    Ids outside this rank's shard (or the vocabulary) are redirected to the zero row, so no float
    arithmetic touches the data. Unless out-of-range ids are opted into, a check tensor
    ``[first_bad_position, its_id, ids_size]`` is exposed for the executor, which raises the same
    error the plugin raises.
    """
    ids, table = node.inputs
    attrs = node.attrs
    rows, cols = table.shape
    op = ctx.op

    def i64(value: Any) -> np.ndarray:
        return np.asarray(value, dtype=np.int64)

    if table.is_constant:
        padded = ctx.constant(np.concatenate([table.const, np.zeros((1, cols), table.const.dtype)]), f"{table.name}.zero_row_padded")
    else:
        padded = op.Concat(table, np.zeros((1, cols), table.dtype.numpy), axis=0)
    ids64 = op.Cast(ids, to=onnx_types.INT64)
    local = op.Sub(ids64, i64(attrs["vocab_start"]))
    in_shard = op.And(op.GreaterOrEqual(local, i64(0)), op.Less(local, i64(rows)))
    in_vocab = op.And(op.GreaterOrEqual(ids64, i64(0)), op.Less(ids64, i64(attrs["vocab_size"])))
    index = op.Where(op.And(in_shard, in_vocab), local, i64(rows))
    op.Gather(padded, index, axis=0, out=out, name=attrs["name"])
    if zero:
        return
    # check = [first bad flat position (== size when none), the id there, size]
    bad = op.Cast(op.Not(op.Reshape(in_vocab, i64([-1]))), to=onnx_types.INT32)
    first_bad = op.ArgMax(op.Concat(bad, np.array([1], np.int32), axis=0), axis=0, keepdims=1)
    bad_id = op.Gather(op.Concat(op.Reshape(ids64, i64([-1])), i64([0]), axis=0), first_bad, axis=0)
    check = op.Concat(first_bad, bad_id, op.Reshape(op.Size(ids64), i64([1])), axis=0)
    ctx.add_check(check, {"kind": "ids_in_vocab", "node": attrs["name"], "vocab_size": int(attrs["vocab_size"])})


TP_EMBEDDING_ATTRS = AttrSchema(
    name=Attr("str"),
    vocab_start=Attr("int", minimum=0),
    vocab_size=Attr("int", minimum=1),
    out_of_range=Attr("str", default="error", choices=OUT_OF_RANGE_MODES),
    tp_position=Attr("int", default=0, minimum=0),
    tp_size=Attr("int", default=1, minimum=1),
)
"""``tp_embedding``'s attributes: the embedding's name (for errors), the first global id of this
shard, the global vocabulary, the out-of-range mode, and this rank's position in the group."""

register(
    OpDef(
        "tp_embedding",
        infer=_infer_tp_embedding,
        attrs=TP_EMBEDDING_ATTRS,
        evaluate=_evaluate_tp_embedding,
        lower=_lower_tp_embedding,
        domain=DOMAIN,
        foldable=False,
        doc="one rank's embedding lookup: rows of the shard, zeros for ids owned by other ranks",
    )
)
