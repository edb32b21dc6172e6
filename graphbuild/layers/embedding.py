"""``Embedding``: the layer form of ``functional.embedding`` (tch-rs ``nn::embedding``,
``torch.nn.Embedding``), tensor parallel in both of graphbuild's modes.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.errors import GraphConstructionError
from graphbuild.functional.embedding import check_tp_group, embedding
from graphbuild.functional.shape import arange_like, unsqueeze
from graphbuild.ir.network import as_value
from graphbuild.layers.module import Module, Parameter
from graphbuild.layers.parallel import init_skipped
from graphbuild.ops.schema import is_int
from graphbuild.sharding import hidden_split_sizes, shard_table, vocab_shard_rows
from graphbuild.tensor import Tensor

_INIT_CHUNK_ROWS = 2048


def _normal_rows(seed: Optional[int], num_rows: int, dim: int, start: int, stop: int) -> Iterator[np.ndarray]:
    """Rows ``[start, stop)`` of a ``N(0, 1)`` float32 ``[num_rows, dim]`` table drawn from ``seed``,
    in chunks, so a shard costs the memory of the shard only (and equals the full table's slice)."""
    rng = np.random.default_rng(seed)
    row = 0
    while row < min(stop, num_rows):
        count = min(_INIT_CHUNK_ROWS, num_rows - row)
        chunk = rng.standard_normal((count, dim), dtype=np.float32)
        lo, hi = max(start - row, 0), min(stop - row, count)
        if lo < hi:
            yield chunk[lo:hi]
        row += count


class Embedding(Module):
    """A lookup table ``[num_embeddings, embedding_dim]`` that maps ids to rows.

    The weight is registered as ``weight`` (``"wte.weight"`` when the layer is the ``wte``
    attribute of the called module, or is called on its own with ``name="wte"``) and initialised
    ``N(0, 1)`` from ``seed``, like ``torch.nn.Embedding`` and tch-rs ``nn::embedding``. Its
    ``full_shape`` is ``[V, D]`` and ``weight.load(table)`` keeps this rank's shard of a checkpoint
    table (``Parameter.load``).

    Tensor parallelism follows ``functional.embedding``:

    * **Logical** (``tp_rank=None``): the layer holds the full table; ``gb.build`` partitions the
      network and slices the table per rank.
    * **Rank-local** (``tp_rank`` given): the layer holds only this rank's shard (``sharding_dim=0``:
      ``ceil(V / tp_size)`` rows, the last shard zero-padded; ``sharding_dim=1``: a column slice),
      and the network is one rank's view. With the same ``seed``, the shards of all ranks together
      equal the logical table.

    Args:
        num_embeddings: vocabulary size ``V``.
        embedding_dim: hidden size ``D``.
        padding_idx: a row zeroed at initialisation (PyTorch semantics; a negative index counts from
            the end). A ``weight`` given by the caller is used as is.
        dtype: float32, float16 or bfloat16.
        tp_size: number of ranks the table is split over.
        tp_group: ranks taking part; defaults to ``range(tp_size)``.
        sharding_dim: 0 splits the vocabulary, 1 the hidden dimension.
        tp_rank: this rank, for rank-local mode; None for logical mode.
        sparse: recorded only; it affects gradients, which inference does not compute.
        scale_grad_by_freq: recorded only, for the same reason.
        weight: an initial table, ``[V, D]`` (sliced in rank-local mode) or, in rank-local mode,
            this rank's shard; replaces the random initialisation.
        seed: seed of the random initialisation (None draws fresh entropy).
        name: this layer's name when it is called on its own (see ``Module``).

    Raises:
        GraphConstructionError: sizes, padding_idx, dtype, TP arguments or ``weight`` are invalid.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        padding_idx: Optional[int] = None,
        dtype: dtypes.DTypeLike = "float32",
        tp_size: int = 1,
        tp_group: Optional[Sequence[int]] = None,
        sharding_dim: int = 0,
        tp_rank: Optional[int] = None,
        sparse: bool = False,
        scale_grad_by_freq: bool = False,
        weight: Any = None,
        seed: Optional[int] = None,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(name=name)
        what = f"Embedding '{name}'" if name else "Embedding"
        for label, size in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
                raise GraphConstructionError(f"{what}: {label} must be a positive int, got {size!r}")
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        try:
            self.dtype = dtypes.as_dtype(dtype)
        except GraphConstructionError as exc:
            raise GraphConstructionError(f"{what}: {exc}") from None
        if not self.dtype.is_float:
            raise GraphConstructionError(f"{what}: dtype must be float32, float16 or bfloat16, got {self.dtype}")
        if padding_idx is not None:
            if not is_int(padding_idx):
                raise GraphConstructionError(f"{what}: padding_idx must be an int, got {padding_idx!r} ({type(padding_idx).__name__})")
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise GraphConstructionError(
                    f"{what}: padding_idx={padding_idx} must be within num_embeddings "
                    f"(in [{-self.num_embeddings}, {self.num_embeddings}))"
                )
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        if not is_int(sharding_dim) or sharding_dim not in (0, 1):
            raise GraphConstructionError(f"{what}: sharding_dim must be 0 (vocab) or 1 (hidden), got {sharding_dim!r}")
        self.tp_group = check_tp_group(what, tp_size, tp_group, tp_rank)
        self.tp_size = int(tp_size)
        self.sharding_dim = int(sharding_dim)
        self.tp_rank = tp_rank
        self.sparse = bool(sparse)
        self.scale_grad_by_freq = bool(scale_grad_by_freq)
        self.seed = seed
        table = self._initial_table(what) if weight is None else self._given_table(what, weight)
        self.weight = Parameter(table, self.dtype, name="weight", full_shape=(self.num_embeddings, self.embedding_dim), weight_loader=self._shard_of)

    def _shard_of(self, full: np.ndarray) -> np.ndarray:
        """This layer's part of the checkpoint table ``[V, D]`` (``weight_loader``): the table itself
        in logical mode, this rank's shard in rank-local mode (a vocab shard zero-padded)."""
        if not self.is_rank_local:
            return full
        return shard_table(full, self.tp_size, self.tp_group.index(self.tp_rank), self.sharding_dim)

    # ------------------------------------------------------------------------- shards
    @property
    def is_rank_local(self) -> bool:
        return self.tp_rank is not None

    def _shard_bounds(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Rows and columns of the logical table this layer holds: ``((r0, r1), (c0, c1))``."""
        vocab, dim = self.num_embeddings, self.embedding_dim
        if not self.is_rank_local:
            return (0, vocab), (0, dim)
        shard = self.tp_group.index(self.tp_rank)
        if self.sharding_dim == 0:
            rows = vocab_shard_rows(vocab, self.tp_size)
            return (shard * rows, (shard + 1) * rows), (0, dim)
        sizes = hidden_split_sizes(dim, self.tp_size)
        start = sum(sizes[:shard])
        return (0, vocab), (start, start + sizes[shard])

    def shard_shape(self) -> tuple[int, int]:
        """Shape of the table this layer holds: ``[V, D]``, or this rank's shard."""
        (r0, r1), (c0, c1) = self._shard_bounds()
        return r1 - r0, c1 - c0

    def _initial_table(self, what: str) -> np.ndarray:
        (r0, r1), (c0, c1) = self._shard_bounds()
        if self.sharding_dim == 1 and self.is_rank_local and c1 <= c0:
            raise GraphConstructionError(f"{what}: embedding_dim={self.embedding_dim} gives rank {self.tp_rank} no column (tp_size={self.tp_size})")
        table = np.zeros((r1 - r0, c1 - c0), dtype=self.dtype.numpy)
        if init_skipped():  # inside layers.no_init(): weights come from a checkpoint next
            return table
        filled = 0
        for chunk in _normal_rows(self.seed, self.num_embeddings, self.embedding_dim, r0, r1):
            table[filled : filled + len(chunk)] = chunk[:, c0:c1]
            filled += len(chunk)
        if self.padding_idx is not None and r0 <= self.padding_idx < r1:
            table[self.padding_idx - r0] = 0
        return table

    def _given_table(self, what: str, weight: Any) -> np.ndarray:
        array = np.asarray(weight)
        full = (self.num_embeddings, self.embedding_dim)
        if array.shape == full:
            if self.is_rank_local:
                shard = self.tp_group.index(self.tp_rank)
                return shard_table(array, self.tp_size, shard, self.sharding_dim)
            return array
        if self.is_rank_local and array.shape == self.shard_shape():
            return array
        expected = f"{list(full)}" + (f" or this rank's shard {list(self.shard_shape())}" if self.is_rank_local else "")
        raise GraphConstructionError(f"{what}: weight has shape {list(array.shape)}, expected {expected}")

    # ------------------------------------------------------------------------- forward
    def forward(self, ids: Tensor) -> Tensor:
        """Looks up ``ids`` (int32 or int64, any shape); returns a tensor of shape ``ids.shape + (D,)``."""
        net = as_value(ids).network
        return embedding(
            ids,
            self.weight.tensor(net),
            tp_size=self.tp_size,
            tp_group=self.tp_group,
            sharding_dim=self.sharding_dim,
            tp_rank=self.tp_rank,
            vocab_size=self.num_embeddings,
            embedding_dim=self.embedding_dim,
            name=self.path,
        )

    def extra_repr(self) -> str:
        parts = [f"{self.num_embeddings}, {self.embedding_dim}"]
        if self.padding_idx is not None:
            parts.append(f"padding_idx={self.padding_idx}")
        if self.dtype != dtypes.float32:
            parts.append(f"dtype={self.dtype}")
        if self.tp_size != 1:
            parts.append(f"tp_size={self.tp_size}, sharding_dim={self.sharding_dim}")
        if self.tp_rank is not None:
            parts.append(f"tp_rank={self.tp_rank}")
        if self.sparse:
            parts.append("sparse=True")
        if self.scale_grad_by_freq:
            parts.append("scale_grad_by_freq=True")
        return ", ".join(parts)


class PositionEmbedding(Embedding):
    """Learned absolute position embeddings (BERT's ``position_embeddings``, GPT-2's ``wpe``).

    An ``Embedding`` of ``max_positions`` rows; it takes the same TP arguments, and in a
    tensor-parallel network it must carry them like every embedding there (the partition pass
    needs every op of a network to agree on ``tp_size``).

    ``forward(input_ids, position_ids=None)``: with ``position_ids`` (int32/int64, any shape, as
    TensorRT-LLM models take them) those are looked up, giving ``position_ids.shape + (D,)``.
    Without, the positions ``0 .. seq-1`` are derived from the last axis of ``input_ids``
    (``functional.arange_like``) and the result has shape ``(1, seq, D)``, which broadcasts against
    token embeddings ``[batch, seq, D]``. Derived positions start at 0 (no past key/value offset);
    a sequence longer than ``max_positions`` is an out-of-range id error when the network runs.

    Args:
        max_positions: number of positions (rows).
        embedding_dim: hidden size ``D``.
        **kwargs: as ``Embedding`` (dtype, tp_size, tp_group, sharding_dim, tp_rank, weight, seed, name).
    """

    def __init__(self, max_positions: int, embedding_dim: int, **kwargs: Any) -> None:
        super().__init__(max_positions, embedding_dim, **kwargs)

    @property
    def max_positions(self) -> int:
        return self.num_embeddings

    def forward(self, input_ids: Tensor, position_ids: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        """Looks up ``position_ids``, or the positions of ``input_ids``' last axis (see the class docstring)."""
        if position_ids is not None:
            return super().forward(position_ids)
        path = self.path
        positions = arange_like(input_ids, -1, dtype="int64", name=f"{path}/positions" if path else None)
        return unsqueeze(super().forward(positions), 0)
