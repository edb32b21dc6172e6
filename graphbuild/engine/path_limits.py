"""File-system name limits for engine paths, checked before anything is created or opened.

A name longer than the file system allows (255 bytes on most) otherwise surfaces as an ``OSError``
naming some temporary folder the user never chose; ``check_path_limits`` names the engine path, the
offending name and the limit instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from graphbuild.errors import EngineError

#: Limits used where the file system does not say (Linux's NAME_MAX and PATH_MAX).
DEFAULT_NAME_MAX = 255
DEFAULT_PATH_MAX = 4096


def _limit(path: Path, name: str, default: int) -> int:
    """``os.pathconf`` of the nearest existing folder at or above ``path``, else ``default``."""
    for folder in (path, *path.parents):
        try:
            return int(os.pathconf(folder, name))
        except (OSError, ValueError, AttributeError):
            continue  # missing folder, or a platform without pathconf
    return default


def _shown(name: str) -> str:
    return name if len(name) <= 48 else f"{name[:32]}...{name[-12:]}"


def check_path_limits(path: Union[str, Path], what: str = "engine directory", sibling_extra: int = 0) -> None:
    """Checks that every name in ``path`` fits the file system's limits.

    Args:
        path: the path to check (it need not exist).
        what: what the path is, for the message.
        sibling_extra: bytes the writer adds to the last name for a temporary folder beside it
            (``.NAME.building-HOST.PID.XXXXXXXX``); that name must fit as well.

    Raises:
        EngineError: a name, or the whole path, is longer than allowed; the message names the
            path, the name, its length and the limit.
    """
    path = Path(os.path.abspath(path))
    name_max = _limit(path, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    shown = "/".join(_shown(part) for part in path.parts).replace("//", "/", 1)
    for index, part in enumerate(path.parts[1:], start=1):
        size = len(os.fsencode(part))
        extra = sibling_extra if index == len(path.parts) - 1 else 0
        if size + extra > name_max:
            if size > name_max:
                why = f"is {size} bytes long; this file system allows at most {name_max} for one name"
            else:
                why = (
                    f"is {size} bytes long; graphbuild first writes the {what} beside it under a temporary "
                    f"name {extra} bytes longer, and names may be at most {name_max} bytes here, so this one "
                    f"may be at most {name_max - extra}"
                )
            raise EngineError(f"{what} '{shown}': the name '{_shown(part)}' {why}; choose a shorter name")
    path_max = _limit(path, "PC_PATH_MAX", DEFAULT_PATH_MAX)
    size = len(os.fsencode(str(path))) + sibling_extra
    if size >= path_max:
        raise EngineError(f"{what} '{shown}': the path is {size} bytes long; this file system allows paths shorter than {path_max}; choose a shorter path")


def check_engine_target(target: Union[str, Path]) -> None:
    """``check_path_limits`` for a directory ``gb.build`` is about to write, with room for the
    temporary folders the writer makes beside it (see ``graphbuild.engine.leftovers``).

    Raises:
        EngineError: as ``check_path_limits``.
    """
    from graphbuild.engine.leftovers import BUILDING, REPLACED, leftover_prefix

    target = Path(target)
    prefix = max(len(os.fsencode(leftover_prefix(target, kind))) for kind in (BUILDING, REPLACED))
    check_path_limits(target, sibling_extra=prefix - len(os.fsencode(target.name)) + 8)  # mkdtemp adds 8
