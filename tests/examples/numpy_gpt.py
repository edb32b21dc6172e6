"""An independent numpy GPT-2 decoder, the reference the GPT example's engines are compared with.

It uses nothing of graphbuild: weights come as a dict of numpy arrays under GPT-2's names
(``wte.weight``, ``wpe.weight``, ``h.0.ln_1.weight``, ``h.0.attn.c_attn.weight``, ...,
``ln_f.weight``) in GPT-2's Conv1D layout ``[in, out]``; the LM head is tied to ``wte``. Computed
in float64.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GPT-2's ``gelu_new``: ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))``."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def gpt_logits(weights: Mapping[str, np.ndarray], input_ids: np.ndarray, *, num_heads: int, eps: float = 1e-5) -> np.ndarray:
    """Logits ``[batch, seq, vocab]`` of a GPT-2 decoder for ``input_ids`` ``[batch, seq]``."""
    w = {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}
    batch, seq = input_ids.shape
    x = w["wte.weight"][input_ids] + w["wpe.weight"][:seq][None]
    hidden = x.shape[-1]
    head = hidden // num_heads
    causal = np.triu(np.full((seq, seq), -np.inf), k=1)

    def conv1d(t: np.ndarray, name: str) -> np.ndarray:
        return t @ w[f"{name}.weight"] + w[f"{name}.bias"]

    def heads(t: np.ndarray) -> np.ndarray:  # [b, s, h*d] -> [b, h, s, d]
        return t.reshape(batch, seq, num_heads, head).transpose(0, 2, 1, 3)

    layer = 0
    while f"h.{layer}.attn.c_attn.weight" in w:
        p = f"h.{layer}"
        a = layer_norm(x, w[f"{p}.ln_1.weight"], w[f"{p}.ln_1.bias"], eps)
        q, k, v = (heads(t) for t in np.split(conv1d(a, f"{p}.attn.c_attn"), 3, axis=-1))
        probs = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + causal)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        x = x + conv1d(context, f"{p}.attn.c_proj")
        m = layer_norm(x, w[f"{p}.ln_2.weight"], w[f"{p}.ln_2.bias"], eps)
        x = x + conv1d(gelu_tanh(conv1d(m, f"{p}.mlp.c_fc")), f"{p}.mlp.c_proj")
        layer += 1
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
    return x @ w["wte.weight"].T


def greedy_generate(weights: Mapping[str, np.ndarray], prompt: np.ndarray, steps: int, *, num_heads: int) -> np.ndarray:
    """Appends ``steps`` argmax tokens to ``prompt`` ``[batch, seq]``, re-running the whole sequence each step."""
    ids = np.asarray(prompt, dtype=np.int64)
    for _ in range(steps):
        nxt = gpt_logits(weights, ids, num_heads=num_heads)[:, -1].argmax(axis=-1)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
    return ids
