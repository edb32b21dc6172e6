"""``renameat2(2)`` through ctypes: renames that refuse to replace, and atomic exchanges.

``os.rename`` replaces an existing empty directory (and fails on a full one), so it cannot say
"only if the target does not exist"; ``RENAME_NOREPLACE`` can. ``RENAME_EXCHANGE`` swaps two
directories in one step. Both need Linux 3.15+ with glibc 2.28+ and a file system that supports
them; elsewhere ``NoRenameat2`` is raised and callers fall back to plain renames.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Any, Optional

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class NoRenameat2(Exception):
    """``renameat2`` (or the asked flag) is not available for these paths."""


def _libc_renameat2() -> Optional[Any]:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


_RENAMEAT2 = _libc_renameat2()


def renameat2(source: Path, target: Path, flags: int) -> None:
    """Renames ``source`` to ``target`` with ``RENAME_NOREPLACE`` or ``RENAME_EXCHANGE``.

    Raises:
        FileExistsError: NOREPLACE found ``target``.
        OSError: any other failure.
        NoRenameat2: the C library, kernel or file system does not support it.
    """
    if _RENAMEAT2 is None:
        raise NoRenameat2()
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), ctypes.c_uint(flags)) != 0:
        code = ctypes.get_errno()
        if code in _UNSUPPORTED:
            raise NoRenameat2()
        raise OSError(code, os.strerror(code), str(source), None, str(target))


def rename_noreplace(source: Path, target: Path) -> None:
    """Renames unless ``target`` exists (``FileExistsError``); without renameat2, checks first
    (which leaves a small window for another writer)."""
    try:
        renameat2(source, target, RENAME_NOREPLACE)
    except NoRenameat2:
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        os.rename(source, target)
