"""Attribute schemas: the types, defaults and checks of an op's attributes, in one place.

One rule for integers everywhere: a Python ``int`` or a numpy integer, never a ``bool``, a float
(``7.5`` is not silently ``7``) or a string; anything else is a ``GraphConstructionError`` naming
the attribute and the value. Checked attributes are stored as plain Python data (ints, tuples).

Example::

    AttrSchema(
        axis=Attr("int", default=-1),
        sizes=Attr("ints", default=None, optional=True, minimum=0),
        reduce=Attr("str", default="sum", choices=("sum",)),
    )
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from graphbuild.errors import GraphConstructionError

REQUIRED: Any = object()
"""The default of an attribute that must be given."""

KINDS = ("int", "ints", "str", "float", "any")


def is_int(value: Any) -> bool:
    """The integer rule: a Python or numpy integer that is not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class Attr:
    """One attribute's type and checks.

    Attributes:
        kind: ``"int"``, ``"ints"`` (a sequence of ints, stored as a tuple), ``"str"``, ``"float"``
            (ints accepted) or ``"any"`` (plain data, unchecked).
        default: the value when the attribute is omitted (``REQUIRED``: it must be given).
        optional: whether ``None`` is accepted.
        choices: the accepted values, when only a few are.
        minimum: the smallest accepted int (for ``"ints"``: per entry).
    """

    kind: str
    default: Any = REQUIRED
    optional: bool = False
    choices: tuple[Any, ...] = ()
    minimum: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GraphConstructionError(f"attribute kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def check(self, name: str, value: Any) -> Any:
        """``value`` as plain data; raises ``GraphConstructionError`` (without the op's name)."""
        if value is None:
            if self.optional:
                return None
            raise GraphConstructionError(f"{name} must be given, got None")
        if self.kind == "int":
            if not is_int(value):
                raise GraphConstructionError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
            checked: Any = int(value)
            self._check_minimum(name, checked)
        elif self.kind == "ints":
            if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, range, np.ndarray)):
                raise GraphConstructionError(f"{name} must be a sequence of ints, got {value!r} ({type(value).__name__})")
            bad = [v for v in value if not is_int(v)]
            if bad:
                raise GraphConstructionError(f"{name} must list ints, got {list(value)!r} ({bad[0]!r} is a {type(bad[0]).__name__})")
            checked = tuple(int(v) for v in value)
            for entry in checked:
                self._check_minimum(name, entry)
        elif self.kind == "str":
            if not isinstance(value, str):
                raise GraphConstructionError(f"{name} must be a string, got {value!r} ({type(value).__name__})")
            checked = value
        elif self.kind == "float":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise GraphConstructionError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
            checked = float(value)
        else:
            checked = value
        if self.choices and checked not in self.choices:
            listed = " or ".join(repr(c) for c in self.choices)
            raise GraphConstructionError(f"{name} must be {listed}, got {value!r}")
        return checked

    def _check_minimum(self, name: str, value: int) -> None:
        if self.minimum is not None and value < self.minimum:
            raise GraphConstructionError(f"{name} must be at least {self.minimum}, got {value}")


class AttrSchema:
    """The attributes of one op, by name (see the module docstring)."""

    def __init__(self, **attrs: Attr) -> None:
        self.attrs = attrs

    def apply(self, given: Mapping[str, Any], what: str = "", where: str = "") -> dict[str, Any]:
        """The checked attributes, defaults filled in.

        Args:
            given: the attributes as passed.
            what: how to name the op in messages (``"embedding 'wte'"``); empty when the caller
                adds it.
            where: the creation site (``" (created at model.py:12 in build)"``), appended.

        Raises:
            GraphConstructionError: an unknown, missing or ill-typed attribute.
        """
        prefix = f"{what}: " if what else ""
        unknown = sorted(set(given) - set(self.attrs))
        if unknown:
            known = ", ".join(self.attrs)
            raise GraphConstructionError(f"{prefix}unknown attribute{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (known: {known}){where}")
        checked: dict[str, Any] = {}
        for name, attr in self.attrs.items():
            if name in given:
                value = given[name]
            elif attr.default is REQUIRED:
                raise GraphConstructionError(f"{prefix}attribute {name} is required{where}")
            else:
                value = attr.default
            try:
                checked[name] = attr.check(name, value)
            except GraphConstructionError as exc:
                raise GraphConstructionError(f"{prefix}{exc}{where}") from None
        return checked

    def __contains__(self, name: str) -> bool:
        return name in self.attrs
