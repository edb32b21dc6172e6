"""Validation of feeds against an engine's or network's declared inputs, before anything runs."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from graphbuild.errors import InputError
from graphbuild.ir.value import format_shape


def validate_feeds(specs: Sequence[Any], feeds: Mapping[str, Any], owner: str) -> dict[str, np.ndarray]:
    """Checks names, dtypes, ranks, fixed dims and symbolic-dim consistency of ``feeds``.

    ``specs`` are objects with ``name``, ``dtype`` (a graphbuild DType) and ``shape``. Plain Python
    lists are converted to the declared dtype; numpy arrays must already have it.

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
        if isinstance(raw, np.ndarray):
            array = raw
        else:
            try:
                array = np.asarray(raw, dtype=spec.dtype.numpy)
            except (TypeError, ValueError, OverflowError) as exc:
                raise InputError(f"{owner}: input '{spec.name}' cannot be converted to {spec.dtype}: {exc}") from None
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
