"""Writes an engine directory atomically, and replaces only what graphbuild wrote.

Everything goes into a hidden folder beside the target (``.NAME.building-HOST.PID.RANDOM``); the
manifest is written last, after every file's checksum; then the folder takes the target's place
in one step:

- no target: ``renameat2(RENAME_NOREPLACE)``, so a target that appeared meanwhile (another build)
  makes this build fail instead of being replaced, unless ``overwrite`` is given;
- ``overwrite`` and an existing engine: ``renameat2(RENAME_EXCHANGE)`` swaps the two folders, so
  there is never a moment without a complete engine at the target; the old one is then removed.

Where ``renameat2`` is missing (not Linux, or a file system without it), the same steps run with
plain renames while holding an ``flock`` on the parent folder (which serializes graphbuild writers
only), and a replace moves the old engine aside for a moment (``.NAME.replaced-...``).

``overwrite`` replaces only a directory graphbuild wrote: its ``config.json`` declares the engine
format in a version this graphbuild knows, and it holds nothing but the files that manifest lists
(or it is empty). Leftovers of killed builds are cleaned by the next build or load
(``graphbuild.engine.leftovers``). The engine folder gets the mode the user's umask gives.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

from graphbuild.engine.files import sha256_file
from graphbuild.engine.leftovers import BUILDING, REPLACED, clean_leftovers, leftover_prefix
from graphbuild.engine.manifest import FORMAT, FORMAT_VERSION, MANIFEST, FileEntry, Manifest
from graphbuild.engine.path_limits import check_engine_target
from graphbuild.engine.renames import RENAME_EXCHANGE, NoRenameat2, rename_noreplace, renameat2
from graphbuild.errors import EngineError

def current_umask() -> int:
    """The process umask (read from ``/proc`` where possible, so it is never changed even briefly)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _parent_lock(parent: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the parent folder (best effort: some file systems have none)."""
    try:
        import fcntl

        fd = os.open(parent, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _not_replaceable(target: Path) -> Optional[str]:
    """Why ``target`` may not be replaced, or None when graphbuild wrote it (or it is empty)."""
    if target.is_symlink() or not target.is_dir():
        return "it is not a directory" if not target.is_symlink() else "it is a symbolic link"
    entries = os.listdir(target)
    if not entries:
        return None
    manifest = target / MANIFEST
    if MANIFEST not in entries or manifest.is_symlink() or not manifest.is_file() or manifest.stat().st_size > (64 << 20):
        return f"it has no graphbuild manifest ({MANIFEST})"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return f"its {MANIFEST} is not a graphbuild manifest"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return f"its {MANIFEST} does not declare \"format\": \"{FORMAT}\""
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        return f"its format version {version!r} is not one this graphbuild knows (1 to {FORMAT_VERSION})"
    listed = set(data.get("files", {})) if isinstance(data.get("files"), dict) else set()
    for folder, dirs, files in os.walk(target):
        for name in files:
            relpath = Path(folder, name).relative_to(target).as_posix()
            if relpath != MANIFEST and relpath not in listed:
                return f"it holds '{relpath}', which graphbuild did not write"
        for name in dirs:
            relpath = Path(folder, name).relative_to(target).as_posix()
            if Path(folder, name).is_symlink() or not any(entry.startswith(relpath + "/") for entry in listed):
                return f"it holds '{relpath}/', which graphbuild did not write"
    return None


def _refuse_unless_replaceable(target: Path) -> None:
    reason = _not_replaceable(target)
    if reason is not None:
        raise EngineError(
            f"'{target}' exists and is not an engine graphbuild wrote ({reason}); refusing to replace it. "
            "Choose another output directory, or remove it yourself if it is really disposable"
        )


def _already_exists(target: Path, meanwhile: bool = False) -> EngineError:
    when = " while this build was writing (another build?)" if meanwhile else ""
    return EngineError(f"'{target}' already exists{when}; pass overwrite=True (or --overwrite) to replace it")


def _prepare_target(target: Path, overwrite: bool) -> None:
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise _already_exists(target)
    _refuse_unless_replaceable(target)


def _move_into_place(staging: Path, target: Path, overwrite: bool) -> None:
    """Makes ``staging`` the engine at ``target`` (see the module docstring)."""
    with _parent_lock(target.parent):
        try:
            rename_noreplace(staging, target)
            return
        except FileExistsError:
            pass
        if not overwrite:
            raise _already_exists(target, meanwhile=True)
        _refuse_unless_replaceable(target)
        try:
            renameat2(staging, target, RENAME_EXCHANGE)
            shutil.rmtree(staging, ignore_errors=True)  # now the old engine
            return
        except NoRenameat2:
            pass
        retired = Path(tempfile.mkdtemp(prefix=leftover_prefix(target, REPLACED), dir=target.parent))
        os.rename(target, retired / target.name)
        try:
            os.rename(staging, target)
        except OSError:
            # The old engine goes back in place; if even that fails the next build or load does it.
            os.rename(retired / target.name, target)
            retired.rmdir()
            raise
        shutil.rmtree(retired, ignore_errors=True)


def write_engine(target: Path, manifest: Manifest, write_files: Callable[[Path], list[Path]], *, overwrite: bool = False) -> Path:
    """Creates the engine directory ``target``.

    Args:
        target: the engine directory to create.
        manifest: the manifest without its ``files`` table (added here).
        write_files: writes the rank files into the directory it is given; returns their paths.
        overwrite: replace an existing engine at ``target`` (never a directory graphbuild did not
            write).

    Returns:
        ``target``.

    Raises:
        EngineError: ``target`` exists (or appeared while writing) without ``overwrite``; it is
            not a graphbuild engine; or writing failed (nothing is left behind).
    """
    target = Path(target)
    check_engine_target(target)
    clean_leftovers(target)
    _prepare_target(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=leftover_prefix(target, BUILDING), dir=target.parent))
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it 0700
    except OSError as error:
        raise EngineError(f"cannot create the engine directory '{target}': {error}") from None
    try:
        written = write_files(staging)
        files = {}
        for path in sorted(written):
            relpath = path.relative_to(staging).as_posix()
            files[relpath] = FileEntry(path.stat().st_size, sha256_file(path))
        manifest = manifest.with_files(files)
        with open(staging / MANIFEST, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(manifest.to_json(), indent=2) + "\n")  # one write, not one per token
            handle.flush()
            os.fsync(handle.fileno())
        _move_into_place(staging, target, overwrite)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise EngineError(f"writing the engine '{target}' failed, nothing was written: {error}") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
