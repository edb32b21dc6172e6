"""Tensor-parallel plumbing shared by the layers: ``Mapping``, ``build_rank_networks``, and the
checks and helpers every TP layer uses.

graphbuild's layers are tensor parallel the way TensorRT-LLM's are: each rank constructs the model
with its ``tp_rank``, holds only its slice of every split parameter, and builds its own
network; ``gb.build([net_rank0, net_rank1, ...], path)`` compiles them into one engine::

    def make(mapping: layers.Mapping) -> gb.Network:
        model = MyModel(**mapping.tp_kwargs())      # layers get tp_size, tp_group, tp_rank
        net = gb.Network(f"model.rank{mapping.tp_rank}")
        with net:
            x = net.add_input("x", "float32", ("batch", "seq", 64))
            net.mark_output(model(x), "y")
        return net

    engine = gb.build(layers.build_rank_networks(make, tp_size=2), "out/model")

With ``tp_size == 1`` no rank is needed. Layers that emit collectives (``ColumnLinear`` with
``gather_output``, ``RowLinear``, ``LMHead``) record the rank in the network's meta
(``tp_position`` = the position of ``tp_rank`` in ``tp_group``, ``tp_size``, ``tp_group``), which
is how the partition pass recognises a rank-local network that has no rank-local embedding.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Callable, Iterator, Optional, Sequence

import ml_dtypes
import numpy as np

from graphbuild import dtypes
from graphbuild.errors import GraphConstructionError
from graphbuild.functional.embedding import check_tp_group
from graphbuild.ir.network import Network
from graphbuild.sharding import hidden_split_sizes


@dataclasses.dataclass(frozen=True)
class Mapping:
    """Where one rank sits in the tensor-parallel group (TensorRT-LLM's ``Mapping``, TP only).

    Attributes:
        tp_size: number of ranks.
        tp_rank: this rank (a member of ``tp_group``), or None for a single-rank model.
        tp_group: the ranks taking part, in rank order (default ``range(tp_size)``).
    """

    tp_size: int = 1
    tp_rank: Optional[int] = None
    tp_group: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        group = check_tp_group("Mapping", self.tp_size, self.tp_group, self.tp_rank)
        object.__setattr__(self, "tp_group", group)

    def tp_kwargs(self) -> dict[str, Any]:
        """``{"tp_size": ..., "tp_group": ..., "tp_rank": ...}`` for a layer's constructor."""
        return {"tp_size": self.tp_size, "tp_group": self.tp_group, "tp_rank": self.tp_rank}

    @classmethod
    def ranks(cls, tp_size: int, tp_group: Optional[Sequence[int]] = None) -> list["Mapping"]:
        """One ``Mapping`` per rank of the group, in rank order."""
        group = check_tp_group("Mapping", tp_size, tp_group, None)
        return [cls(tp_size, rank, group) for rank in group]


def build_rank_networks(factory: Callable[[Mapping], Network], tp_size: int, tp_group: Optional[Sequence[int]] = None) -> list[Network]:
    """Calls ``factory(mapping)`` for every rank and returns the networks, in rank order.

    The list goes straight to ``gb.build(networks, path)`` or ``gb.reference.run_ranks``.

    Raises:
        GraphConstructionError: the factory returned something other than a ``Network``.
    """
    networks = []
    for mapping in Mapping.ranks(tp_size, tp_group):
        net = factory(mapping)
        if not isinstance(net, Network):
            raise GraphConstructionError(f"build_rank_networks: the factory returned {type(net).__name__} for rank {mapping.tp_rank}; it must return a gb.Network")
        networks.append(net)
    return networks


# ------------------------------------------------------------------------------------ layer helpers
def layer_label(kind: str, name: Optional[str]) -> str:
    """``"ColumnLinear 'fc'"`` or ``"ColumnLinear"``: how errors name a layer."""
    return f"{kind} '{name}'" if name else kind


def check_features(what: str, **sizes: Any) -> None:
    """Each size must be a positive int."""
    for label, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise GraphConstructionError(f"{what}: {label} must be a positive int, got {size!r}")


def float_dtype(what: str, dtype: dtypes.DTypeLike) -> dtypes.DType:
    """``dtype`` as a float DType (errors name the layer)."""
    try:
        result = dtypes.as_dtype(dtype)
    except GraphConstructionError as exc:
        raise GraphConstructionError(f"{what}: {exc}") from None
    if not result.is_float:
        raise GraphConstructionError(f"{what}: dtype must be float32, float16 or bfloat16, got {result}")
    return result


def tp_group_for_layer(what: str, tp_size: int, tp_group: Optional[Sequence[int]], tp_rank: Optional[int]) -> tuple[int, ...]:
    """Checks the TP arguments of a layer that only works rank-local (linear layers and up).

    Raises:
        GraphConstructionError: bad arguments, or ``tp_size > 1`` without ``tp_rank``: the logical-mode
            partitioner splits embeddings only, so such a layer would not be sharded.
    """
    group = check_tp_group(what, tp_size, tp_group, tp_rank)
    if tp_size > 1 and tp_rank is None:
        raise GraphConstructionError(
            f"{what}: tp_size={tp_size} needs tp_rank: tensor-parallel linear layers are built rank-local, one "
            "network per rank (each rank constructs the model with its tp_rank; see graphbuild.layers.build_rank_networks "
            "and Mapping); logical mode (tp_rank=None) only splits embeddings"
        )
    return group


def split_range(what: str, features: int, label: str, tp_size: int, position: int) -> tuple[int, int]:
    """This rank's ``[start, stop)`` of ``features`` split ``numpy.array_split`` style.

    Raises:
        GraphConstructionError: some rank would get no feature (``features < tp_size``).
    """
    if features < tp_size:
        raise GraphConstructionError(f"{what}: {label}={features} cannot be split over tp_size={tp_size}; every rank needs at least one")
    sizes = hidden_split_sizes(features, tp_size)
    start = sum(sizes[:position])
    return start, start + sizes[position]


def mark_rank_local(what: str, net: Network, tp_size: int, group: tuple[int, ...], tp_rank: Optional[int]) -> None:
    """Records in ``net.meta`` that ``net`` is rank ``tp_rank``'s network (see the module docstring).

    Raises:
        GraphConstructionError: the network already belongs to another rank or group.
    """
    if tp_rank is None or tp_size == 1:
        return
    position = group.index(tp_rank)
    mine = {"tp_position": position, "tp_size": tp_size, "tp_group": tuple(group)}
    for key, value in mine.items():
        have = net.meta.get(key)
        if have is not None and (tuple(have) if key == "tp_group" else have) != value:
            raise GraphConstructionError(
                f"{what}: network '{net.name}' is already marked {key}={have!r}, but this layer is rank {tp_rank} "
                f"(position {position}) of tp_group {list(group)}; build one network per rank, from layers of that rank"
            )
    net.meta.update(mine)


_SKIP_INIT: contextvars.ContextVar[bool] = contextvars.ContextVar("graphbuild_skip_init", default=False)


@contextlib.contextmanager
def no_init() -> Iterator[None]:
    """Layers constructed inside the block start with zero weights instead of random ones.

    For models whose weights are loaded from a checkpoint right after construction: drawing random
    full tensors on every rank only to overwrite them costs time. Given ``weight=`` tables are still
    used.
    """
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def init_skipped() -> bool:
    """Whether layers are being constructed inside ``no_init()``."""
    return _SKIP_INIT.get()


def init_normal(seed: Optional[int], shape: Sequence[int], std: float) -> np.ndarray:
    """A ``N(0, std^2)`` float32 array drawn from ``seed``: the same full tensor on every rank
    (zeros inside ``no_init()``)."""
    if init_skipped():
        return np.zeros(tuple(shape), np.float32)
    return (np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32) * np.float32(std)).astype(np.float32)


def child_seed(seed: Optional[int], index: int) -> Optional[int]:
    """A distinct, deterministic seed for the ``index``-th sublayer of a layer seeded ``seed``."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), index]).generate_state(1)[0])


def lowest(dtype: dtypes.DType) -> float:
    """The most negative finite value of a float dtype (masked attention scores)."""
    return float(ml_dtypes.finfo(dtype.numpy).min)
