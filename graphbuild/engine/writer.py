"""Writes an engine directory atomically.

Everything goes into a hidden temporary directory beside the target; the manifest is written last,
after every file's checksum; then the directory is renamed into place. An interrupted build leaves
no directory that looks like an engine, and an existing engine is replaced only when the new one is
complete (and only when ``overwrite`` is given).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from graphbuild.engine.files import sha256_file
from graphbuild.engine.manifest import MANIFEST, FileEntry, Manifest
from graphbuild.errors import EngineError


def _prepare_target(target: Path, overwrite: bool) -> None:
    if not target.exists():
        return
    if not overwrite:
        raise EngineError(f"'{target}' already exists; pass overwrite=True (or --overwrite) to replace it")
    if not target.is_dir() or not ((target / MANIFEST).is_file() or not any(target.iterdir())):
        raise EngineError(f"'{target}' exists and is not a graphbuild engine; refusing to replace it")


def write_engine(target: Path, manifest: Manifest, write_files: Callable[[Path], list[Path]], *, overwrite: bool = False) -> Path:
    """Creates the engine directory ``target``.

    Args:
        target: the engine directory to create.
        manifest: the manifest without its ``files`` table (added here).
        write_files: writes the rank files into the directory it is given; returns their paths.
        overwrite: replace an existing engine at ``target``.

    Returns:
        ``target``.
    """
    target = Path(target)
    _prepare_target(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
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
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
            os.rename(target, retired / target.name)
            try:
                os.rename(staging, target)
            except OSError:
                # The old engine goes back in place; if even that fails it stays in `retired`.
                os.rename(retired / target.name, target)
                retired.rmdir()
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise EngineError(f"writing the engine '{target}' failed, nothing was written: {error}") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
