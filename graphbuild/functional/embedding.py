"""``embedding``: TensorRT-LLM's tensor-parallel embedding lookup, recorded as one node."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

from graphbuild.errors import GraphConstructionError
from graphbuild.functional.attrs import add_op, claim_instance_id
from graphbuild.ir.network import as_value
from graphbuild.ir.node import format_origin, user_frame
from graphbuild.ops.registry import get_op
from graphbuild.ops.schema import is_int

if TYPE_CHECKING:
    from graphbuild.tensor import Tensor


def check_tp_group(what: str, tp_size: Any, tp_group: Optional[Sequence[int]], tp_rank: Any, where: str = "") -> tuple[int, ...]:
    """The ranks taking part (``tp_group``, default ``range(tp_size)``) after checking the TP arguments.

    Integers are Python or numpy ints, never bools or floats.

    Raises:
        GraphConstructionError: ``tp_size`` is not a positive int, ``tp_group`` does not list
            ``tp_size`` distinct non-negative ranks, or ``tp_rank`` is not one of them.
    """
    if not is_int(tp_size) or tp_size < 1:
        raise GraphConstructionError(f"{what}: tp_size must be a positive int, got {tp_size!r}{where}")
    tp_size = int(tp_size)
    group = tuple(range(tp_size)) if tp_group is None else tuple(tp_group)
    if any(not is_int(r) or r < 0 for r in group):
        raise GraphConstructionError(f"{what}: tp_group must list non-negative int ranks, got {list(group)}{where}")
    group = tuple(int(r) for r in group)
    if len(group) != tp_size:
        raise GraphConstructionError(f"{what}: tp_group {list(group)} has {len(group)} ranks but tp_size={tp_size}{where}")
    if len(set(group)) != len(group):
        raise GraphConstructionError(f"{what}: tp_group {list(group)} names a rank twice{where}")
    if tp_rank is not None and (not is_int(tp_rank) or tp_rank not in group):
        raise GraphConstructionError(f"{what}: tp_rank={tp_rank!r} is outside tp_group {list(group)} (tp_size={tp_size}){where}")
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
        GraphConstructionError: inconsistent TP arguments or shapes, with the offending values and
            the line that called ``embedding``. Integer arguments are Python or numpy ints
            (never bools, floats or strings).
    """
    ids, table = as_value(input), as_value(weight)
    what = f"embedding '{name}'" if name else "embedding"
    where = format_origin(user_frame())
    raw = {
        "tp_size": tp_size,
        "tp_group": None if tp_group is None else tuple(tp_group) if isinstance(tp_group, (list, tuple, range)) else tp_group,
        "sharding_dim": sharding_dim,
        "tp_rank": tp_rank,
        "instance_id": instance_id,
        "vocab_size": vocab_size,
        "embedding_dim": embedding_dim,
        "out_of_range": out_of_range,
    }
    attrs = get_op("embedding").check_attrs(raw, what, where)
    attrs["instance_id"] = claim_instance_id(what, ids.network, attrs["instance_id"], where)
    inputs = [ids, table] + ([workspace] if workspace is not None else [])
    return add_op("embedding", inputs, attrs, name=name).output.tensor()
