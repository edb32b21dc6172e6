"""Multi-head self-attention, tensor parallel over heads (Megatron/TensorRT-LLM style), and
``padding_mask_bias`` to turn a 0/1 padding mask into the additive mask it takes.

Rank ``r`` holds ``num_heads / tp_size`` heads: the fused ``qkv`` projection is a
``QKVColumnLinear`` (no gather), each rank attends with its heads, and the ``dense`` output
projection is a ``RowLinear`` whose all-reduce joins the heads. One all-reduce per layer.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from graphbuild import dtypes
from graphbuild import functional as F
from graphbuild.errors import GraphConstructionError
from graphbuild.ir.network import as_value
from graphbuild.layers.linear import QKVColumnLinear, RowLinear, check_heads
from graphbuild.layers.module import Module
from graphbuild.layers.parallel import check_features, child_seed, layer_label, lowest
from graphbuild.tensor import Tensor


def padding_mask_bias(mask: Tensor, dtype: dtypes.DTypeLike = "float32", *, name: Optional[str] = None) -> Tensor:
    """An additive attention mask from a padding mask (HuggingFace's "extended attention mask").

    Args:
        mask: ``[batch, seq]`` of 1 (attend) and 0 (padding), any numeric or bool dtype.
        dtype: the attention scores' dtype.
        name: prefix of the nodes' names.

    Returns:
        ``[batch, 1, 1, seq]``: 0 where ``mask`` is 1 and the lowest finite value of ``dtype`` where
        it is 0, to add to scores ``[batch, heads, q, k]``.
    """
    target = dtypes.as_dtype(dtype)
    value = as_value(mask)
    if value.rank != 2:
        raise GraphConstructionError(f"padding_mask_bias: mask must be [batch, seq], got shape {value.shape}")
    keep = F.cast(mask, target, name=f"{name}/cast" if name else None)
    blocked = F.mul(F.sub(1.0, keep), lowest(target), name=f"{name}/bias" if name else None)
    return F.unsqueeze(blocked, [1, 2], name=f"{name}/expand" if name else None)


class Attention(Module):
    """Multi-head self-attention: ``dense(softmax(q k^T / sqrt(head_size) + mask) v)``.

    Args:
        hidden_size: input and output size.
        num_heads: number of heads; must divide by ``tp_size``.
        head_size: size of each head (default ``hidden_size / num_heads``, which must divide).
        causal: mask out keys after each query (decoder self-attention, GPT-2); False attends in
            both directions (encoder, BERT).
        bias: whether ``qkv`` and ``dense`` have biases.
        dtype, tp_size, tp_group, tp_rank: as ``ColumnLinear``.
        seed: seeds ``qkv`` and ``dense`` (distinct seeds derived from it).
        name: the layer's name when called on its own.

    Parameters: ``qkv.weight [3 * local_heads * head_size, hidden]`` (load the fused full
    ``[q; k; v]``, see ``QKVColumnLinear``), ``qkv.bias``, ``dense.weight [hidden, local_heads * head_size]``,
    ``dense.bias [hidden]``.

    Raises:
        GraphConstructionError: ``num_heads % tp_size != 0`` (naming both), a ``hidden_size`` that
            does not divide into ``num_heads`` without ``head_size``, or as ``ColumnLinear``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        head_size: Optional[int] = None,
        causal: bool = False,
        bias: bool = True,
        dtype: dtypes.DTypeLike = "float32",
        tp_size: int = 1,
        tp_group: Optional[Sequence[int]] = None,
        tp_rank: Optional[int] = None,
        seed: Optional[int] = 0,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(name=name)
        what = layer_label("Attention", name)
        check_features(what, hidden_size=hidden_size, num_heads=num_heads)
        check_heads(what, num_heads, tp_size)
        if head_size is None:
            if hidden_size % num_heads:
                raise GraphConstructionError(f"{what}: hidden_size={hidden_size} is not divisible by num_heads={num_heads}; give head_size")
            head_size = hidden_size // num_heads
        check_features(what, head_size=head_size)
        self.hidden_size, self.num_heads, self.head_size = int(hidden_size), int(num_heads), int(head_size)
        self.local_heads = self.num_heads // tp_size
        self.causal = bool(causal)
        self.what = what
        tp = {"tp_size": tp_size, "tp_group": tp_group, "tp_rank": tp_rank, "dtype": dtype, "bias": bias}
        self.qkv = QKVColumnLinear(hidden_size, num_heads, head_size, seed=child_seed(seed, 0), name=f"{name}.qkv" if name else "qkv", **tp)
        self.dense = RowLinear(num_heads * head_size, hidden_size, seed=child_seed(seed, 1), name=f"{name}.dense" if name else "dense", **tp)

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Attends over ``hidden_states [batch, seq, hidden_size]``; returns the same shape.

        Args:
            hidden_states: the input sequence.
            attention_mask: optional ADDITIVE mask of the input's dtype, broadcastable to
                ``[batch, local_heads, seq, seq]`` (``[batch, 1, 1, seq]`` from
                ``padding_mask_bias``; keep the head axis 1 under tensor parallelism).
        """
        x = as_value(hidden_states)
        if x.rank != 3:
            raise GraphConstructionError(f"{self.what}: hidden_states must be [batch, seq, hidden], got shape {x.shape}")
        path = self.path
        label = (lambda s: f"{path}/{s}") if path else (lambda s: None)
        heads, size = self.local_heads, self.head_size
        q, k, v = F.split(self.qkv(hidden_states), 3, axis=-1, name=label("split_qkv"))

        def by_head(t: Tensor, what: str) -> Tensor:  # [b, s, h * d] -> [b, h, s, d]
            lead = as_value(t).shape[:-1]
            return F.transpose(F.reshape(t, (*lead, heads, size), name=label(f"{what}_heads")), (0, 2, 1, 3), name=label(f"{what}_bhsd"))

        q, k, v = by_head(q, "q"), by_head(k, "k"), by_head(v, "v")
        scores = F.matmul(q, k, transpose_b=True, name=label("scores"))
        scores = F.mul(scores, 1.0 / math.sqrt(size), name=label("scaled"))
        if attention_mask is not None:
            scores = F.add(scores, attention_mask, name=label("masked"))
        if self.causal:
            rows = F.unsqueeze(F.arange_like(scores, -2, name=label("query_pos")), 1)
            cols = F.unsqueeze(F.arange_like(scores, -1, name=label("key_pos")), 0)
            future = F.less(rows, cols, name=label("future"))
            scores = F.where(future, lowest(x.dtype), scores, name=label("causal"))
        probs = F.softmax(scores, -1, name=label("probs"))
        context = F.transpose(F.matmul(probs, v, name=label("context")), (0, 2, 1, 3), name=label("context_bshd"))
        context = F.reshape(context, (*x.shape[:-1], heads * size), name=label("context_merged"))
        return self.dense(context)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, num_heads={self.num_heads}, head_size={self.head_size}, causal={self.causal}"
