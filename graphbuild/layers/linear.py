"""Tensor-parallel linear layers: ``ColumnLinear``, ``QKVColumnLinear``, ``RowLinear`` and the
vocab-parallel ``LMHead`` (TensorRT-LLM's ``ColumnLinear``/``RowLinear`` and LM head).

Weights are in PyTorch layout ``[out_features, in_features]``; ``y = x @ weight.T + bias``. Every
parameter has ``full_shape`` (the checkpoint tensor) and a ``weight_loader`` that cuts this rank's
part out of it (``Parameter.load``). Initialisation draws the full tensor ``N(0, 0.02^2)`` from
``seed`` and loads it, so with one seed the ranks' slices together are the one logical weight;
biases start at zero. Uneven splits follow ``numpy.array_split`` (the first ``n % tp_size`` ranks
hold one more feature); every rank needs at least one.

All of them need ``tp_rank`` when ``tp_size > 1`` (see ``graphbuild.layers.parallel``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild import functional as F
from graphbuild.errors import GraphConstructionError
from graphbuild.ir.network import as_value
from graphbuild.layers.module import Module, Parameter
from graphbuild.layers.parallel import (
    check_features,
    float_dtype,
    init_normal,
    layer_label,
    mark_rank_local,
    split_range,
    tp_group_for_layer,
)
from graphbuild.sharding import hidden_split_sizes, shard_table, vocab_shard_rows
from graphbuild.tensor import Tensor

if TYPE_CHECKING:
    from graphbuild.layers.embedding import Embedding

INIT_STD = 0.02


def _suffixed(path: Optional[str], suffix: str) -> Optional[str]:
    return f"{path}/{suffix}" if path else None


class _ParallelLinear(Module):
    """What the linear layers share: sizes, dtype, TP arguments, and sliced parameters."""

    kind = "Linear"

    def __init__(self, in_features: int, out_features: int, *, dtype: dtypes.DTypeLike, tp_size: int, tp_group: Optional[Sequence[int]], tp_rank: Optional[int], seed: Optional[int], name: Optional[str]) -> None:
        super().__init__(name=name)
        self.what = layer_label(self.kind, name)
        check_features(self.what, in_features=in_features, out_features=out_features)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.dtype = float_dtype(self.what, dtype)
        self.tp_group = tp_group_for_layer(self.what, tp_size, tp_group, tp_rank)
        self.tp_size = tp_size
        self.tp_rank = tp_rank
        self.position = self.tp_group.index(tp_rank) if tp_rank is not None else 0
        self.seed = seed

    def _parameter(self, full_shape: tuple[int, ...], loader, init: Optional[np.ndarray]) -> Parameter:
        """A parameter of ``full_shape`` sliced by ``loader``, initialised from ``init`` (zeros if None)."""
        full = np.zeros(full_shape, np.float32) if init is None else init
        # A contiguous copy, so the parameter does not keep the whole initial tensor alive.
        return Parameter(np.ascontiguousarray(loader(full)), self.dtype, full_shape=full_shape, weight_loader=loader)

    def _mark(self, x: Tensor) -> None:
        mark_rank_local(self.what, as_value(x).network, self.tp_size, self.tp_group, self.tp_rank)

    def extra_repr(self) -> str:
        parts = [f"{self.in_features}, {self.out_features}", f"bias={self.bias is not None}"]
        if self.dtype != dtypes.float32:
            parts.append(f"dtype={self.dtype}")
        if self.tp_size != 1:
            parts.append(f"tp_size={self.tp_size}, tp_rank={self.tp_rank}")
        return ", ".join(parts)


class _ColumnParallel(_ParallelLinear):
    """Output rows ``rows`` (indices into the full ``out_features``) live on this rank."""

    def _setup(self, rows: np.ndarray, bias: bool) -> None:
        self.rows = rows
        take = lambda full: full[rows]  # noqa: E731  (rows of [out, in] or of [out])
        self.weight = self._parameter((self.out_features, self.in_features), take, init_normal(self.seed, (self.out_features, self.in_features), INIT_STD))
        self.bias = self._parameter((self.out_features,), take, None) if bias else None

    @property
    def local_out_features(self) -> int:
        return int(len(self.rows))

    def _local(self, x: Tensor) -> Tensor:
        self._mark(x)  # this rank's features: the network is rank-local even without a collective
        net = as_value(x).network
        bias = self.bias.tensor(net) if self.bias is not None else None
        return F.linear(x, self.weight.tensor(net), bias, name=self.path)


class ColumnLinear(_ColumnParallel):
    """A linear layer whose output features are split over the ranks.

    Rank ``r`` holds rows ``[start_r, stop_r)`` of the ``[out_features, in_features]`` weight (and of
    the bias) and computes those output features; ``gather_output`` all-gathers them along the last
    axis into the full output.

    Args:
        in_features: input size.
        out_features: output size (split over the ranks; need not divide by ``tp_size``).
        bias: add a bias (split like the output).
        dtype: float32, float16 or bfloat16.
        tp_size: number of ranks.
        tp_group: ranks taking part (default ``range(tp_size)``).
        tp_rank: this rank (required when ``tp_size > 1``).
        gather_output: return the full ``[..., out_features]`` (an all-gather) instead of this rank's
            ``[..., local_out_features]``.
        seed: seed of the weight's initialisation (give layers distinct seeds, or load weights).
        name: the layer's name when called on its own.

    Raises:
        GraphConstructionError: bad sizes, dtype or TP arguments, naming the layer.
    """

    kind = "ColumnLinear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        dtype: dtypes.DTypeLike = "float32",
        tp_size: int = 1,
        tp_group: Optional[Sequence[int]] = None,
        tp_rank: Optional[int] = None,
        gather_output: bool = True,
        seed: Optional[int] = 0,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(in_features, out_features, dtype=dtype, tp_size=tp_size, tp_group=tp_group, tp_rank=tp_rank, seed=seed, name=name)
        start, stop = split_range(self.what, self.out_features, "out_features", tp_size, self.position)
        self.gather_output = bool(gather_output)
        self._setup(np.arange(start, stop), bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., in_features]`` -> ``[..., out_features]`` (gathered) or this rank's features."""
        y = self._local(x)
        if not self.gather_output or self.tp_size == 1:
            return y
        sizes = hidden_split_sizes(self.out_features, self.tp_size)
        uneven = len(set(sizes)) > 1
        return F.allgather(y, self.tp_group, axis=-1, sizes=sizes if uneven else None, name=_suffixed(self.path, "allgather"))


class QKVColumnLinear(_ColumnParallel):
    """The fused query/key/value projection of multi-head attention, split by heads.

    The full weight is ``[3 * num_heads * head_size, in_features]``: all query heads, then all key
    heads, then all value heads (PyTorch's ``in_proj_weight``, GPT-2's ``c_attn`` transposed; for
    separate q/k/v checkpoints, ``np.concatenate([wq, wk, wv])``). Rank ``r`` holds heads
    ``[r * h, (r + 1) * h)`` of each of q, k and v, ``h = num_heads / tp_size``, stacked
    ``[q_r; k_r; v_r]``; ``weight.load`` takes the fused full tensor. The output is never gathered.

    Args:
        in_features: input (hidden) size.
        num_heads: number of attention heads; must divide by ``tp_size``.
        head_size: size of each head.
        bias, dtype, tp_size, tp_group, tp_rank, seed, name: as ``ColumnLinear``.

    Raises:
        GraphConstructionError: ``num_heads % tp_size != 0`` (naming both), or as ``ColumnLinear``.
    """

    kind = "QKVColumnLinear"

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        head_size: int,
        *,
        bias: bool = True,
        dtype: dtypes.DTypeLike = "float32",
        tp_size: int = 1,
        tp_group: Optional[Sequence[int]] = None,
        tp_rank: Optional[int] = None,
        seed: Optional[int] = 0,
        name: Optional[str] = None,
    ) -> None:
        check_features(layer_label(self.kind, name), num_heads=num_heads, head_size=head_size)
        super().__init__(in_features, 3 * num_heads * head_size, dtype=dtype, tp_size=tp_size, tp_group=tp_group, tp_rank=tp_rank, seed=seed, name=name)
        check_heads(self.what, num_heads, tp_size)
        self.num_heads, self.head_size = int(num_heads), int(head_size)
        self.local_heads = self.num_heads // tp_size
        width = self.local_heads * self.head_size
        block = self.num_heads * self.head_size
        start = self.position * width
        self._setup(np.concatenate([np.arange(j * block + start, j * block + start + width) for j in range(3)]), bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., in_features]`` -> ``[..., 3 * local_heads * head_size]`` (``[q; k; v]`` of this rank's heads)."""
        return self._local(x)


def check_heads(what: str, num_heads: int, tp_size: int) -> None:
    """Heads are split whole: ``num_heads`` must divide by ``tp_size``."""
    if num_heads % tp_size:
        raise GraphConstructionError(f"{what}: num_heads={num_heads} is not divisible by tp_size={tp_size}; each rank needs a whole number of heads")


class RowLinear(_ParallelLinear):
    """A linear layer whose input features are split over the ranks.

    Rank ``r`` holds columns ``[start_r, stop_r)`` of the ``[out_features, in_features]`` weight, reads
    the matching slice of the input (``[..., local_in_features]``, what a ``ColumnLinear`` without
    gather produces) and computes a partial sum; an all-reduce adds the partial sums, and the bias
    (replicated, full) is added once, after the all-reduce.

    Args:
        in_features: full input size (split over the ranks).
        out_features: output size.
        bias, dtype, tp_size, tp_group, tp_rank, seed, name: as ``ColumnLinear``.
    """

    kind = "RowLinear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        dtype: dtypes.DTypeLike = "float32",
        tp_size: int = 1,
        tp_group: Optional[Sequence[int]] = None,
        tp_rank: Optional[int] = None,
        seed: Optional[int] = 0,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(in_features, out_features, dtype=dtype, tp_size=tp_size, tp_group=tp_group, tp_rank=tp_rank, seed=seed, name=name)
        start, stop = split_range(self.what, self.in_features, "in_features", tp_size, self.position)
        self.columns = (start, stop)
        shape = (self.out_features, self.in_features)
        self.weight = self._parameter(shape, lambda full: full[:, start:stop], init_normal(seed, shape, INIT_STD))
        self.bias = self._parameter((self.out_features,), lambda full: full, None) if bias else None

    @property
    def local_in_features(self) -> int:
        return self.columns[1] - self.columns[0]

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., local_in_features]`` -> ``[..., out_features]``."""
        net = as_value(x).network
        y = F.linear(x, self.weight.tensor(net), name=self.path)
        if self.tp_size > 1:
            self._mark(x)
            y = F.allreduce(y, self.tp_group, name=_suffixed(self.path, "allreduce"))
        if self.bias is not None:
            y = F.add(y, self.bias.tensor(net), name=_suffixed(self.path, "bias"))
        return y


class LMHead(_ParallelLinear):
    """The vocab-parallel output projection: hidden states -> logits over the vocabulary.

    The weight ``[vocab_size, hidden_size]`` is split like an ``Embedding`` with ``sharding_dim=0``:
    each rank holds ``ceil(V / tp_size)`` rows, the last shard zero-padded
    (``graphbuild.sharding``). Each rank computes its logits, an all-gather joins them, and the
    padded tail is sliced off: the output is always ``[..., vocab_size]``.

    Args:
        hidden_size: input size.
        vocab_size: ``V``.
        bias: add a bias (split and padded like the rows).
        dtype, tp_size, tp_group, tp_rank, seed, name: as ``ColumnLinear``.
        tied_embedding: an ``Embedding`` whose weight this head shares (the same ``Parameter``, so
            one constant serves both). It must have ``num_embeddings == vocab_size``,
            ``embedding_dim == hidden_size``, this dtype and these TP arguments, and, when
            ``tp_size > 1``, ``sharding_dim=0``.

    Raises:
        GraphConstructionError: as ``ColumnLinear``, or a tied embedding that does not match,
            naming what differs.
    """

    kind = "LMHead"

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        *,
        bias: bool = False,
        dtype: dtypes.DTypeLike = "float32",
        tp_size: int = 1,
        tp_group: Optional[Sequence[int]] = None,
        tp_rank: Optional[int] = None,
        tied_embedding: Optional["Embedding"] = None,
        seed: Optional[int] = 0,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(hidden_size, vocab_size, dtype=dtype, tp_size=tp_size, tp_group=tp_group, tp_rank=tp_rank, seed=seed, name=name)
        self.vocab_size, self.hidden_size = self.out_features, self.in_features
        self.shard_rows = vocab_shard_rows(vocab_size, tp_size) if tp_size > 1 else self.vocab_size
        self.tied = tied_embedding is not None
        loader = lambda full: shard_table(full.reshape(full.shape[0], -1), tp_size, self.position, 0).reshape((-1,) + full.shape[1:])  # noqa: E731
        if tied_embedding is not None:
            self._check_tied(tied_embedding)
            self.weight = tied_embedding.weight
        else:
            shape = (self.vocab_size, self.hidden_size)
            self.weight = self._parameter(shape, loader, init_normal(seed, shape, INIT_STD))
        self.bias = self._parameter((self.vocab_size,), loader, None) if bias else None

    def _check_tied(self, emb: "Embedding") -> None:
        ours = {
            "num_embeddings": self.vocab_size, "embedding_dim": self.hidden_size, "dtype": self.dtype,
            "tp_size": self.tp_size, "tp_group": self.tp_group, "tp_rank": self.tp_rank,
        }
        for attr, value in ours.items():
            theirs = getattr(emb, attr)
            if theirs != value:
                raise GraphConstructionError(f"{self.what}: cannot tie to an embedding with {attr}={theirs!r}; this head has {value!r}")
        if self.tp_size > 1 and emb.sharding_dim != 0:
            raise GraphConstructionError(
                f"{self.what}: a tied embedding must be split over the vocabulary (sharding_dim=0) to serve as a vocab-parallel "
                f"LM head, got sharding_dim={emb.sharding_dim}"
            )
        if tuple(emb.weight.shape) != (self.shard_rows, self.hidden_size):
            raise GraphConstructionError(f"{self.what}: the tied embedding holds {list(emb.weight.shape)}, expected {[self.shard_rows, self.hidden_size]}")

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., hidden_size]`` -> logits ``[..., vocab_size]`` (never the padded tail)."""
        net = as_value(x).network
        bias = self.bias.tensor(net) if self.bias is not None else None
        logits = F.linear(x, self.weight.tensor(net), bias, name=self.path)
        if self.tp_size == 1:
            return logits
        self._mark(x)
        logits = F.allgather(logits, self.tp_group, axis=-1, name=_suffixed(self.path, "allgather"))
        if self.shard_rows * self.tp_size == self.vocab_size:
            return logits
        last = as_value(logits).rank - 1
        return F.slice_tensor(logits, [0], [self.vocab_size], axes=[last], name=_suffixed(self.path, "unpad"))

    def extra_repr(self) -> str:
        return super().extra_repr() + (", tied" if self.tied else "")
