"""Unique, readable names for nodes and values.

Rules (one ``Namespace`` for nodes and one for values in every network):
- A requested name is used as given when it is free.
- A taken name gets the smallest suffix ``_1``, ``_2``, ... that makes it free.
- Nodes without a requested name are named ``{op}_{n}``; inside ``with net.scope("s"):`` every node
  name is prefixed, giving ``s/{op}_{n}``. ``n`` counts per prefix and op, from 0.
- A node's single output value takes the node's name; outputs of multi-output nodes take
  ``{node}:{i}``.
"""

from __future__ import annotations

import collections


class Namespace:
    """Hands out names that are unique within one network, by the rules above."""

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self._counters: collections.Counter[str] = collections.Counter()

    def __contains__(self, name: str) -> bool:
        return name in self._taken

    def claim(self, name: str) -> str:
        """Returns ``name`` if free, else the first free ``name_{k}``; marks the result as taken."""
        candidate = name
        while candidate in self._taken:
            self._counters[name] += 1
            candidate = f"{name}_{self._counters[name]}"
        self._taken.add(candidate)
        return candidate

    def numbered(self, base: str) -> str:
        """Returns ``{base}_{n}`` with the per-base counter ``n``, skipping taken names."""
        while True:
            candidate = f"{base}_{self._counters[base]}"
            self._counters[base] += 1
            if candidate not in self._taken:
                self._taken.add(candidate)
                return candidate

    def release(self, name: str) -> None:
        """Frees a name (a removed node or value); counters keep counting so names stay stable."""
        self._taken.discard(name)
