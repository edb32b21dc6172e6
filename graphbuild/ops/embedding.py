"""Embedding ops: the user-level ``embedding`` node and the per-rank ``tp_embedding`` lookup.

``embedding`` records TensorRT-LLM's TP arguments on one node; the partition pass turns it into
``tp_embedding`` (this rank's shard lookup) followed by an ``allreduce`` (vocab split) or an
``allgather`` (hidden split). ``tp_embedding`` lowers to graphbuild's ``TPEmbedding`` custom op, or,
with ``use_plugin=False``, to standard ONNX ops that compute the same bits and report the same
out-of-range error through a check output.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from graphbuild.errors import OutOfRangeIdError, ShapeInferenceError
from graphbuild.ops.registry import LoweringContext, OpDef, TensorType, register
from graphbuild.plugin import DOMAIN, TP_EMBEDDING, format_out_of_range


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
def _infer_embedding(node: Any) -> Sequence[TensorType]:
    ids, table = node.inputs[0], node.inputs[1]
    _check_ids_and_table(ids, table)
    return [TensorType(table.dtype, ids.shape + (node.attrs["embedding_dim"],))]


def _evaluate_embedding(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    attrs = node.attrs
    if attrs["tp_rank"] is not None and attrs["tp_size"] > 1:
        raise ShapeInferenceError(
            f"embedding '{node.name}' is rank-local (tp_rank={attrs['tp_rank']}): evaluating it needs every "
            "rank; use gb.reference.run_ranks([...]) with one network per rank"
        )
    ids, table = inputs[0], inputs[1]
    zero = attrs["out_of_range"] == "zero"
    return [lookup(ids, table, 0, attrs["vocab_size"], zero, node.name)]


register(
    OpDef(
        "embedding",
        infer=_infer_embedding,
        evaluate=_evaluate_embedding,
        domain=DOMAIN,
        foldable=False,
        doc="tensor-parallel embedding lookup (TensorRT-LLM signature); split by the partition pass",
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
        ctx.emit(
            TP_EMBEDDING,
            [ctx.name(ids), ctx.name(table)],
            [out],
            domain=DOMAIN,
            name=attrs["name"],
            vocab_size=int(attrs["vocab_size"]),
            vocab_start=int(attrs["vocab_start"]),
            zero_out_of_range=int(zero),
        )
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
    rows = table.shape[0]
    tag = attrs["name"]

    def const(value: Any, hint: str, dtype: Any = np.int64) -> str:
        return ctx.constant(np.asarray(value, dtype=dtype), f"{tag}/{hint}")

    if table.is_constant:
        padded = np.concatenate([table.const, np.zeros((1, table.shape[1]), table.const.dtype)])
        table_name = ctx.constant(padded, f"{table.name}.zero_row_padded")
    else:
        zero_row = ctx.constant(np.zeros((1, table.shape[1]), table.dtype.numpy), f"{tag}/zero_row")
        (table_name,) = ctx.emit("Concat", [ctx.name(table), zero_row], [ctx.fresh(f"{tag}/padded_table")], axis=0)
    (ids64,) = ctx.emit("Cast", [ctx.name(ids)], [ctx.fresh(f"{tag}/ids64")], to=7)
    (local,) = ctx.emit("Sub", [ids64, const(attrs["vocab_start"], "vocab_start")], [ctx.fresh(f"{tag}/local")])
    (ge0,) = ctx.emit("GreaterOrEqual", [local, const(0, "zero")], [ctx.fresh(f"{tag}/ge0")])
    (lt_rows,) = ctx.emit("Less", [local, const(rows, "rows")], [ctx.fresh(f"{tag}/lt_rows")])
    (in_shard,) = ctx.emit("And", [ge0, lt_rows], [ctx.fresh(f"{tag}/in_shard")])
    (in_vocab_lo,) = ctx.emit("GreaterOrEqual", [ids64, const(0, "zero_id")], [ctx.fresh(f"{tag}/id_ge0")])
    (in_vocab_hi,) = ctx.emit("Less", [ids64, const(attrs["vocab_size"], "vocab_size")], [ctx.fresh(f"{tag}/id_lt_vocab")])
    (in_vocab,) = ctx.emit("And", [in_vocab_lo, in_vocab_hi], [ctx.fresh(f"{tag}/in_vocab")])
    (take,) = ctx.emit("And", [in_shard, in_vocab], [ctx.fresh(f"{tag}/take")])
    (index,) = ctx.emit("Where", [take, local, const(rows, "zero_row_index")], [ctx.fresh(f"{tag}/index")])
    ctx.emit("Gather", [table_name, index], [out], name=tag, axis=0)
    if zero:
        return
    # check = [first bad flat position (== size when none), the id there, size]
    (flat_ids,) = ctx.emit("Reshape", [ids64, const([-1], "flat")], [ctx.fresh(f"{tag}/flat_ids")])
    (flat_ok,) = ctx.emit("Reshape", [in_vocab, const([-1], "flat_ok")], [ctx.fresh(f"{tag}/flat_ok")])
    (bad,) = ctx.emit("Not", [flat_ok], [ctx.fresh(f"{tag}/bad")])
    (bad_i,) = ctx.emit("Cast", [bad], [ctx.fresh(f"{tag}/bad_i32")], to=6)
    (bad_ext,) = ctx.emit("Concat", [bad_i, const([1], "sentinel", np.int32)], [ctx.fresh(f"{tag}/bad_ext")], axis=0)
    (pos,) = ctx.emit("ArgMax", [bad_ext], [ctx.fresh(f"{tag}/first_bad")], axis=0, keepdims=1)
    (ids_ext,) = ctx.emit("Concat", [flat_ids, const([0], "pad_id")], [ctx.fresh(f"{tag}/ids_ext")], axis=0)
    (bad_id,) = ctx.emit("Gather", [ids_ext, pos], [ctx.fresh(f"{tag}/bad_id")], axis=0)
    (size,) = ctx.emit("Size", [ids64], [ctx.fresh(f"{tag}/size")])
    (size1,) = ctx.emit("Reshape", [size, const([1], "one")], [ctx.fresh(f"{tag}/size1")])
    (check,) = ctx.emit("Concat", [pos, bad_id, size1], [ctx.fresh(f"{tag}/check")], axis=0)
    ctx.add_check(check, {"kind": "ids_in_vocab", "node": tag, "vocab_size": int(attrs["vocab_size"])})


register(
    OpDef(
        "tp_embedding",
        infer=_infer_tp_embedding,
        evaluate=_evaluate_tp_embedding,
        lower=_lower_tp_embedding,
        domain=DOMAIN,
        foldable=False,
        doc="one rank's embedding lookup: rows of the shard, zeros for ids owned by other ranks",
    )
)
