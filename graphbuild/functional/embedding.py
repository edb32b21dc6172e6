"""``embedding``: TensorRT-LLM's tensor-parallel embedding lookup, recorded as one node."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from graphbuild.errors import GraphConstructionError
from graphbuild.functional.attrs import add_op, claim_instance_id
from graphbuild.ir.network import as_value
from graphbuild.sharding import hidden_split_sizes, vocab_shard_rows

if TYPE_CHECKING:
    from graphbuild.tensor import Tensor

OUT_OF_RANGE_MODES = ("error", "zero")


def check_tp_group(what: str, tp_size: int, tp_group: Optional[Sequence[int]], tp_rank: Optional[int]) -> tuple[int, ...]:
    """The ranks taking part (``tp_group``, default ``range(tp_size)``) after checking the TP arguments.

    Raises:
        GraphConstructionError: ``tp_size`` is not a positive int, ``tp_group`` does not list
            ``tp_size`` distinct non-negative ranks, or ``tp_rank`` is not one of them.
    """
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
        raise GraphConstructionError(f"{what}: tp_size must be a positive int, got {tp_size!r}")
    group = tuple(range(tp_size)) if tp_group is None else tuple(tp_group)
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in group):
        raise GraphConstructionError(f"{what}: tp_group must list non-negative int ranks, got {list(group)}")
    if len(group) != tp_size:
        raise GraphConstructionError(f"{what}: tp_group {list(group)} has {len(group)} ranks but tp_size={tp_size}")
    if len(set(group)) != len(group):
        raise GraphConstructionError(f"{what}: tp_group {list(group)} names a rank twice")
    if tp_rank is not None and tp_rank not in group:
        raise GraphConstructionError(f"{what}: tp_rank={tp_rank} is outside tp_group {list(group)} (tp_size={tp_size})")
    return group


def embedding(
    input: Tensor,
    weight: Tensor,
    tp_size: int = 1,
    tp_group: Optional[Sequence[int]] = None,
    sharding_dim: int = 0,
    tp_rank: Optional[int] = None,
    workspace: Optional[Tensor] = None,
    instance_id: Optional[int] = None,
    *,
    vocab_size: Optional[int] = None,
    embedding_dim: Optional[int] = None,
    out_of_range: str = "error",
    name: Optional[str] = None,
) -> Tensor:
    """Looks up rows of an embedding table, optionally split over ``tp_size`` ranks.

    Two modes share this signature:

    * **Logical** (``tp_rank=None``): ``weight`` is the full ``[V, D]`` table. The network describes
      the whole computation; the partition pass produces every rank's network and slices the table.
    * **Rank-local** (``tp_rank`` given, TensorRT-LLM compatible): ``weight`` is already this rank's
      shard and the network is one rank's view; the partition pass checks the shard instead.

    Sharding:

    * ``sharding_dim=0`` (vocab split): each rank holds ``ceil(V / tp_size)`` rows (the last shard
      zero-padded). Rank ``r`` looks up ``id - r * rows``, ids of other shards give zero rows, and an
      all-reduce (sum) over ``tp_group`` produces the full embedding.
    * ``sharding_dim=1`` (hidden split): each rank holds a column slice of ``D`` (uneven ``D`` allowed:
      the first ``D % tp_size`` ranks hold one extra column); it gathers full rows and an all-gather
      on the last axis concatenates them.

    Ids outside ``[0, V)`` (negative, or in the padded tail) are an error naming the id and its flat
    position; ``out_of_range="zero"`` opts into zero rows instead.

    Args:
        input: int32 or int64 ids of any shape.
        weight: float32, float16 or bfloat16 table ``[V, D]`` (logical) or this rank's shard.
        tp_size: number of ranks the table is split over.
        tp_group: ranks taking part, in rank order; defaults to ``range(tp_size)``.
        sharding_dim: 0 to split the vocabulary, 1 to split the hidden dimension.
        tp_rank: this network's rank (a member of ``tp_group``) in rank-local mode; None for logical.
        workspace: optional preallocated buffer the collective writes its result into when it is
            large enough and of the embedding's dtype (instead of allocating per call).
        instance_id: the collective's identity, unique within the network and matched across
            ranks; assigned when omitted.
        vocab_size: the global vocabulary size ``V``. Logical mode: defaults to the table's rows
            (smaller values mark trailing rows as padding). Rank-local, vocab split: defaults to
            ``rows * tp_size``.
        embedding_dim: the global hidden size ``D`` for a rank-local hidden split (defaults to
            ``cols * tp_size``; give it when ``D`` does not divide evenly).
        out_of_range: ``"error"`` (default) or ``"zero"``.
        name: the node's name, e.g. ``"wte"``; used in errors and engines.

    Returns:
        A tensor of shape ``input.shape + (D,)`` and the table's dtype.

    Raises:
        GraphConstructionError: inconsistent TP arguments or shapes, with the offending values.
    """
    ids, table = as_value(input), as_value(weight)
    net = ids.network
    what = f"embedding '{name}'" if name else "embedding"
    if sharding_dim not in (0, 1):
        raise GraphConstructionError(f"{what}: sharding_dim must be 0 (vocab) or 1 (hidden), got {sharding_dim!r}")
    if out_of_range not in OUT_OF_RANGE_MODES:
        raise GraphConstructionError(f"{what}: out_of_range must be 'error' or 'zero', got {out_of_range!r}")
    group = check_tp_group(what, tp_size, tp_group, tp_rank)
    if table.rank != 2:
        raise GraphConstructionError(f"{what}: weight must be 2-D [vocab, hidden], got shape {table.shape}")
    rows, cols = table.shape
    if not isinstance(rows, int) or not isinstance(cols, int):
        raise GraphConstructionError(f"{what}: weight shape {table.shape} must be static")

    if tp_rank is None:
        vocab = rows if vocab_size is None else vocab_size
        if not 0 < vocab <= rows:
            raise GraphConstructionError(f"{what}: vocab_size={vocab} must be in [1, {rows}] for a table of {rows} rows")
        dim = cols if embedding_dim is None else embedding_dim
        if dim != cols:
            raise GraphConstructionError(f"{what}: embedding_dim={dim} disagrees with the table's {cols} columns")
        if sharding_dim == 1 and cols < tp_size:
            raise GraphConstructionError(f"{what}: hidden size {cols} is smaller than tp_size={tp_size}; every rank needs a column")
    elif sharding_dim == 0:
        vocab = rows * tp_size if vocab_size is None else vocab_size
        if vocab_shard_rows(vocab, tp_size) != rows:
            raise GraphConstructionError(
                f"{what}: a vocab shard of {rows} rows does not fit vocab_size={vocab} over tp_size={tp_size} "
                f"(expected ceil({vocab}/{tp_size}) = {vocab_shard_rows(vocab, tp_size)} rows)"
            )
        dim = cols if embedding_dim is None else embedding_dim
        if dim != cols:
            raise GraphConstructionError(f"{what}: embedding_dim={dim} disagrees with the shard's {cols} columns")
    else:
        vocab = rows if vocab_size is None else vocab_size
        if not 0 < vocab <= rows:
            raise GraphConstructionError(f"{what}: vocab_size={vocab} must be in [1, {rows}] for a shard of {rows} rows")
        dim = cols * tp_size if embedding_dim is None else embedding_dim
        expected = hidden_split_sizes(dim, tp_size)[group.index(tp_rank)]
        if expected != cols:
            raise GraphConstructionError(
                f"{what}: rank {tp_rank} of a hidden split of {dim} over tp_size={tp_size} holds {expected} columns, "
                f"but the shard has {cols}"
            )

    inputs = [ids, table] + ([workspace] if workspace is not None else [])
    attrs = {
        "tp_size": tp_size,
        "tp_group": group,
        "sharding_dim": sharding_dim,
        "tp_rank": tp_rank,
        "instance_id": claim_instance_id(what, net, instance_id),
        "vocab_size": int(vocab),
        "embedding_dim": int(dim),
        "out_of_range": out_of_range,
    }
    return add_op("embedding", inputs, attrs, name=name).output.tensor()
