"""Turning user arguments into node attributes, which hold plain data only."""

from __future__ import annotations

from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """Lists and tuples as tuples, numpy scalars as Python scalars; anything else unchanged (the
    op's shape rule rejects what it cannot use, with a message naming the node)."""
    if isinstance(value, (list, tuple)):
        return tuple(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value
