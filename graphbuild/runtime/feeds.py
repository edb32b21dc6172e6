"""Validation of feeds against an engine's or network's declared inputs, before anything runs.

``validate_feeds`` is the one check, shared by engines and the reference interpreter (``gb.reference``).
Numpy arrays must already have the declared dtype. Plain Python values (lists, scalars) are
converted only when nothing is lost: integer inputs take integers (not floats, bools or strings)
that fit the dtype, float inputs take integers and floats, bool inputs take bools. ``FeedValidator``
is the same check with the common case (arrays of the right dtype) precomputed, for ``engine.run``.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from graphbuild.errors import InputError
from graphbuild.ir.value import format_shape

#: numpy kinds a plain Python value may have for an input of each kind (integer, float, bool).
_ACCEPTED_KINDS = {"i": "iu", "u": "iu", "f": "iuf", "V": "iuf", "b": "b"}
_KIND_WORDS = {"i": "integers", "u": "integers", "f": "numbers", "V": "numbers", "b": "booleans"}


def _from_python(raw: Any, spec: Any, owner: str) -> np.ndarray:
    """``raw`` (a list, tuple or scalar) as an array of the spec's dtype, refusing lossy casts."""
    target = np.dtype(spec.dtype.numpy)
    try:
        array = np.asarray(raw)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"{owner}: input '{spec.name}' cannot be converted to {spec.dtype}: {exc}") from None
    accepted = _ACCEPTED_KINDS.get(target.kind, target.kind)
    if array.size and array.dtype.kind not in accepted:
        found = {"f": "floats", "b": "booleans", "U": "strings", "S": "bytes", "O": "mixed or oversized values"}.get(array.dtype.kind, str(array.dtype))
        raise InputError(
            f"{owner}: input '{spec.name}' is {spec.dtype} and takes {_KIND_WORDS.get(target.kind, str(target))}, "
            f"but the list holds {found} ({array.dtype}); convert it explicitly, e.g. np.asarray(values).astype(np.{target.name})"
        )
    if array.size and target.kind in "iu":
        info = np.iinfo(target)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InputError(f"{owner}: input '{spec.name}' is {spec.dtype}; the value {bad} does not fit in it")
    return array.astype(target, copy=False)


def validate_feeds(specs: Sequence[Any], feeds: Mapping[str, Any], owner: str) -> dict[str, np.ndarray]:
    """Checks names, dtypes, ranks, fixed dims and symbolic-dim consistency of ``feeds``.

    ``specs`` are objects with ``name``, ``dtype`` (a graphbuild DType) and ``shape``. Plain Python
    values are converted to the declared dtype when no value changes (see the module docstring);
    numpy arrays must already have it.

    Returns:
        name -> array, in the order of ``specs``.

    Raises:
        InputError: naming the input, what was expected and what came.
    """
    if not isinstance(feeds, Mapping):
        raise InputError(f"{owner}: feeds must be a dict of input name -> array, got {type(feeds).__name__}")
    expected = {spec.name for spec in specs}
    unknown = sorted(set(feeds) - expected)
    if unknown:
        raise InputError(f"{owner}: unknown input(s) {unknown}; its inputs are {sorted(expected)}")
    missing = [spec.name for spec in specs if spec.name not in feeds]
    if missing:
        raise InputError(f"{owner}: missing input(s) {missing}")
    bound: dict[str, tuple[int, str]] = {}
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        raw = feeds[spec.name]
        array = raw if isinstance(raw, np.ndarray) else _from_python(raw, spec, owner)
        if array.dtype != spec.dtype.numpy:
            raise InputError(
                f"{owner}: input '{spec.name}' must be {spec.dtype}, got {array.dtype} "
                f"(convert it with .astype(np.{spec.dtype.numpy.name}) if the values fit)"
            )
        if array.ndim != len(spec.shape):
            raise InputError(
                f"{owner}: input '{spec.name}' must have rank {len(spec.shape)} {format_shape(spec.shape)}, "
                f"got shape {array.shape}"
            )
        for axis, (dim, size) in enumerate(zip(spec.shape, array.shape)):
            if isinstance(dim, int):
                if dim != size:
                    raise InputError(f"{owner}: input '{spec.name}' dim {axis} must be {dim}, got {size} (shape {array.shape})")
            elif dim in bound and bound[dim][0] != size:
                first_size, first_where = bound[dim]
                raise InputError(
                    f"{owner}: symbolic dim '{dim}' is {first_size} in {first_where} but {size} in input '{spec.name}' dim {axis}"
                )
            else:
                bound.setdefault(dim, (size, f"input '{spec.name}' dim {axis}"))
        arrays[spec.name] = array
    return arrays


class FeedValidator:
    """``validate_feeds`` for one set of specs, with a fast path for a dict of well-formed arrays.

    Args:
        specs: the declared inputs (``name``, ``dtype``, ``shape``).
        owner: how messages name the engine or network.
    """

    def __init__(self, specs: Sequence[Any], owner: str) -> None:
        self.specs = list(specs)
        self.owner = owner
        # A symbolic dim named once (the usual "batch", "seq" of one input) takes any size: only
        # those named more than once are compared on the fast path.
        named = collections.Counter(dim for spec in self.specs for dim in spec.shape if not isinstance(dim, int))
        self._fast = tuple(
            (
                spec.name,
                np.dtype(spec.dtype.numpy),
                len(spec.shape),
                tuple((axis, dim) for axis, dim in enumerate(spec.shape) if isinstance(dim, int)),
                tuple((axis, dim) for axis, dim in enumerate(spec.shape) if not isinstance(dim, int) and named[dim] > 1),
            )
            for spec in self.specs
        )

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The validated feeds (name -> array, in the order of the specs).

        Raises:
            InputError: as ``validate_feeds``.
        """
        arrays = self._fast_path(feeds) if type(feeds) is dict and len(feeds) == len(self._fast) else None
        return arrays if arrays is not None else validate_feeds(self.specs, feeds, self.owner)

    def _fast_path(self, feeds: dict[str, Any]) -> Optional[dict[str, np.ndarray]]:
        arrays = {}
        bound: dict[str, int] = {}
        for name, dtype, ndim, fixed, symbolic in self._fast:
            array = feeds.get(name)
            # numpy's built-in dtypes are singletons: ``is`` finds the declared one; an equal
            # dtype that is another object (rare) takes the full check.
            if type(array) is not np.ndarray or array.dtype is not dtype or array.ndim != ndim:
                return None
            shape = array.shape
            for axis, dim in fixed:
                if shape[axis] != dim:
                    return None
            for axis, dim in symbolic:
                if bound.setdefault(dim, shape[axis]) != shape[axis]:
                    return None
            arrays[name] = array
        return arrays
