"""How tensor parallelism splits an embedding table (one definition used everywhere).

- ``sharding_dim=0`` (vocab split): every rank holds ``ceil(V / tp_size)`` rows; rank ``r`` owns
  global ids ``[r * rows, (r + 1) * rows)``; the last shard is zero-padded to ``rows``.
- ``sharding_dim=1`` (hidden split): rank ``r`` holds a column slice of ``D``; sizes follow
  ``numpy.array_split`` (the first ``D % tp_size`` ranks hold one extra column).
"""

from __future__ import annotations

import numpy as np


def vocab_shard_rows(vocab_size: int, tp_size: int) -> int:
    """Rows per rank for a vocab split: ``ceil(V / tp_size)`` (at least 1)."""
    return max(1, -(-vocab_size // tp_size))


def hidden_split_sizes(embedding_dim: int, tp_size: int) -> list[int]:
    """Columns per rank for a hidden split, ``numpy.array_split`` style."""
    base, extra = divmod(embedding_dim, tp_size)
    return [base + (1 if r < extra else 0) for r in range(tp_size)]


def shard_table(table: np.ndarray, tp_size: int, shard: int, sharding_dim: int) -> np.ndarray:
    """This rank's slice of a full ``[V, D]`` table (a view where no padding is needed)."""
    vocab, dim = table.shape
    if sharding_dim == 0:
        rows = vocab_shard_rows(vocab, tp_size)
        start = shard * rows
        piece = table[start : start + rows]
        if piece.shape[0] == rows:
            return piece
        padded = np.zeros((rows, dim), dtype=table.dtype)
        padded[: piece.shape[0]] = piece
        return padded
    sizes = hidden_split_sizes(dim, tp_size)
    start = sum(sizes[:shard])
    return table[:, start : start + sizes[shard]]
