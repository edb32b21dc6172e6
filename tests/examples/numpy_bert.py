"""An independent numpy BERT encoder with mean pooling and L2 normalisation (sentence-transformers'
all-MiniLM-L6-v2 pipeline), the reference the BERT example's engines are compared with.

It uses nothing of graphbuild: weights come as a dict of numpy arrays under Hugging Face BERT
names (``embeddings.word_embeddings.weight``, ``encoder.layer.0.attention.self.query.weight``,
...; PyTorch ``Linear`` layout ``[out, in]``), and it computes in float64.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np

_ERF = np.frompyfunc(math.erf, 1, 1)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``0.5 * x * (1 + erf(x / sqrt(2)))`` (BERT's ``hidden_act="gelu"``)."""
    return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def bert_hidden_states(
    weights: Mapping[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: Optional[np.ndarray] = None,
    *,
    num_heads: int,
    eps: float = 1e-12,
) -> np.ndarray:
    """The last layer's hidden states ``[batch, seq, hidden]`` of a BERT encoder.

    Args:
        weights: Hugging Face BERT tensors by name (float16, bfloat16 and float32 are upcast).
        input_ids: ``[batch, seq]`` token ids.
        attention_mask: ``[batch, seq]``, 1 for tokens and 0 for padding.
        token_type_ids: ``[batch, seq]`` segment ids (default all 0).
        num_heads: attention heads per layer.
        eps: LayerNorm epsilon.
    """
    # tables are indexed before the upcast, so only the rows used are converted
    w = {name: np.asarray(value, dtype=np.float64) for name, value in weights.items() if not name.startswith("embeddings.") or "LayerNorm" in name}
    batch, seq = input_ids.shape
    if token_type_ids is None:
        token_type_ids = np.zeros_like(input_ids)
    x = np.asarray(weights["embeddings.word_embeddings.weight"][input_ids], dtype=np.float64)
    x = x + np.asarray(weights["embeddings.position_embeddings.weight"][:seq], dtype=np.float64)[None]
    x = x + np.asarray(weights["embeddings.token_type_embeddings.weight"][token_type_ids], dtype=np.float64)
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    hidden = x.shape[-1]
    head = hidden // num_heads
    # additive mask: padded keys get a very negative score
    bias = np.where(attention_mask[:, None, None, :] > 0, 0.0, np.finfo(np.float64).min / 2)

    def dense(t: np.ndarray, name: str) -> np.ndarray:
        return t @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def heads(t: np.ndarray) -> np.ndarray:  # [b, s, h*d] -> [b, h, s, d]
        return t.reshape(batch, seq, num_heads, head).transpose(0, 2, 1, 3)

    layer = 0
    while f"encoder.layer.{layer}.attention.self.query.weight" in w:
        p = f"encoder.layer.{layer}"
        q = heads(dense(x, f"{p}.attention.self.query"))
        k = heads(dense(x, f"{p}.attention.self.key"))
        v = heads(dense(x, f"{p}.attention.self.value"))
        probs = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + bias)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        x = layer_norm(x + dense(context, f"{p}.attention.output.dense"),
                       w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"], eps)  # fmt: skip
        ffn = dense(gelu(dense(x, f"{p}.intermediate.dense")), f"{p}.output.dense")
        x = layer_norm(x + ffn, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], eps)
        layer += 1
    return x


def mean_pool_normalize(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean of the token vectors over the unpadded positions, scaled to unit L2 norm."""
    mask = attention_mask[..., None].astype(np.float64)
    pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def sentence_embeddings(
    weights: Mapping[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: Optional[np.ndarray] = None,
    *,
    num_heads: int,
    eps: float = 1e-12,
) -> np.ndarray:
    """sentence-transformers' embedding ``[batch, hidden]``: BERT, mean pooling, L2 normalisation."""
    hidden = bert_hidden_states(weights, input_ids, attention_mask, token_type_ids, num_heads=num_heads, eps=eps)
    return mean_pool_normalize(hidden, attention_mask)
