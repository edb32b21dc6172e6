"""Leftovers of interrupted builds beside an engine directory: naming, cleanup and recovery.

A build of ``out/NAME`` works in ``out/.NAME.building-HOST.PID.RANDOM``; a replace that cannot swap
directories atomically moves the old engine to ``out/.NAME.replaced-HOST.PID.RANDOM/NAME`` for a
moment. A build killed at the wrong time leaves these behind. ``clean_leftovers`` (run by every
build and load of ``NAME``) removes those whose writer process is gone (same host, PID no longer
running) and, when ``NAME`` itself is missing, puts the old engine back from a ``.replaced-``
folder. Leftovers of other hosts, or of writers still running, are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from pathlib import Path
from typing import Optional

from graphbuild.engine.renames import rename_noreplace

BUILDING = "building"
REPLACED = "replaced"


def _host() -> str:
    return socket.gethostname().replace(".", "_").replace("/", "_") or "localhost"


def leftover_prefix(target: Path, kind: str) -> str:
    """``.NAME.KIND-HOST.PID.`` for this process: the prefix of its temporary folders."""
    return f".{target.name}.{kind}-{_host()}.{os.getpid()}."


def _writer(name: str, target: Path, kind: str) -> Optional[tuple[str, int]]:
    """(host, pid) of a leftover folder's writer, or None when ``name`` is not one of ``target``'s."""
    head = f".{target.name}.{kind}-"
    if not name.startswith(head):
        return None
    host, _, rest = name[len(head) :].partition(".")
    pid, _, _ = rest.partition(".")
    return (host, int(pid)) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_leftovers(target: Path, kind: str) -> list[Path]:
    """``target``'s leftover folders of ``kind`` whose writer ran on this host and is gone."""
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    stale = []
    for name in sorted(names):
        writer = _writer(name, target, kind)
        if writer is not None and writer[0] == _host() and not _alive(writer[1]):
            stale.append(target.parent / name)
    return stale


def clean_leftovers(target: Path) -> None:
    """Recovers an engine a killed replace left aside, then removes stale leftovers (best effort)."""
    for folder in stale_leftovers(target, REPLACED):
        old = folder / target.name
        if old.is_dir():
            with contextlib.suppress(OSError):
                rename_noreplace(old, target)
        shutil.rmtree(folder, ignore_errors=True)
    for folder in stale_leftovers(target, BUILDING):
        shutil.rmtree(folder, ignore_errors=True)
