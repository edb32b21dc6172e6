"""Reading an engine directory's files safely: pinned, listed, regular and checksummed.

``PinnedEngineDir`` opens the engine directory once and reads every file through that directory
descriptor: a concurrent build that renames another engine into place meanwhile cannot make one
load mix files of two builds. On Linux, ``path_of`` gives ``/proc/self/fd/N/<relpath>`` paths that
other libraries (ONNX Runtime) can open and that keep pointing into the pinned directory. Every
file is checked with ``lstat`` before it is opened: a symlink, FIFO, device or directory where a
file should be is refused, so nothing blocks and nothing outside the engine is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Optional, TypeVar, Union

from graphbuild.engine.manifest import MANIFEST, Manifest
from graphbuild.errors import EngineError, GraphBuildError

_HASH_CHUNK = 1 << 22
#: A manifest larger than this is refused before it is parsed.
MAX_MANIFEST_BYTES = 64 << 20
_PROC_FD = Path("/proc/self/fd")
_T = TypeVar("_T")


def sha256_file(path: Union[str, Path]) -> str:
    """The sha256 (hex) of the file at ``path``."""
    with open(path, "rb") as handle:
        return _sha256(handle.fileno())


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    while chunk := os.read(fd, _HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


class PinnedEngineDir:
    """An engine directory held open by a descriptor; files are read relative to it.

    Args:
        path: the engine directory (a symlink to a directory is followed once, here).

    Raises:
        EngineError: ``path`` does not exist or is not a directory.

    Attributes:
        path: the directory as the user named it (used in messages).
        root: a path that names the pinned directory itself (``/proc/self/fd/N`` on Linux,
            ``path`` elsewhere, where no pinning is possible).
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd: Optional[int] = os.open(self.path, flags)
        except FileNotFoundError:
            raise EngineError(f"engine directory '{self.path}' does not exist (build one with gb.build or 'graphbuild build')") from None
        except NotADirectoryError:
            raise EngineError(f"'{self.path}' is not a directory; an engine is a directory written by gb.build") from None
        except OSError as exc:
            raise EngineError(f"engine directory '{self.path}' cannot be opened: {exc.strerror}") from None
        proc = _PROC_FD / str(self.fd)
        self.root = proc if proc.is_dir() else self.path
        self._stat = os.fstat(self.fd)

    def __enter__(self) -> "PinnedEngineDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Releases the directory descriptor (paths from ``path_of`` stop working)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def path_of(self, relpath: str) -> Path:
        """A path to ``relpath`` inside the pinned directory, for libraries that open paths."""
        return self.root.joinpath(*_parts(relpath, self.path))

    def describe(self, relpath: str) -> Path:
        """``relpath`` under the user's path, for messages."""
        return self.path / relpath

    def replaced(self) -> bool:
        """Whether ``path`` now names another directory than the pinned one (a build replaced it)."""
        try:
            now = os.stat(self.path)
        except OSError:
            return True
        return (now.st_dev, now.st_ino) != (self._stat.st_dev, self._stat.st_ino)

    def lstat(self, relpath: str) -> os.stat_result:
        """``lstat`` of a listed file after checking every folder on the way is a real folder.

        Raises:
            FileNotFoundError: it does not exist.
            EngineError: a component is a symlink or not a folder, or the file is not a regular file.
        """
        assert self.fd is not None, "PinnedEngineDir used after close()"
        parts = _parts(relpath, self.path)
        for depth in range(1, len(parts) + 1):
            info = os.stat(os.path.join(*parts[:depth]), dir_fd=self.fd, follow_symlinks=False)
            last = depth == len(parts)
            here = self.describe("/".join(parts[:depth]))
            if stat.S_ISLNK(info.st_mode):
                raise NotRegularFileError(here, "a symbolic link")
            if not last and not stat.S_ISDIR(info.st_mode):
                raise NotRegularFileError(here, "not a folder")
            if last and not stat.S_ISREG(info.st_mode):
                raise NotRegularFileError(here, _kind(info.st_mode))
        return info

    @contextlib.contextmanager
    def open_fd(self, relpath: str) -> Iterator[int]:
        """A read-only descriptor of a regular file (checked with ``lstat`` first, so a FIFO never blocks)."""
        self.lstat(relpath)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(os.path.join(*_parts(relpath, self.path)), flags, dir_fd=self.fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between lstat and open
                raise NotRegularFileError(self.describe(relpath), _kind(os.fstat(fd).st_mode))
            yield fd
        finally:
            os.close(fd)

    def read_bytes(self, relpath: str, limit: Optional[int] = None) -> bytes:
        """The contents of a regular file (``EngineError`` when over ``limit`` bytes)."""
        with self.open_fd(relpath) as fd:
            size = os.fstat(fd).st_size
            if limit is not None and size > limit:
                raise EngineError(f"{self.describe(relpath)}: {size} bytes is more than a manifest can be ({limit}); the engine is corrupt - rebuild it")
            chunks = []
            while chunk := os.read(fd, _HASH_CHUNK):
                chunks.append(chunk)
            return b"".join(chunks)

    def sha256(self, relpath: str) -> str:
        with self.open_fd(relpath) as fd:
            return _sha256(fd)


class NotRegularFileError(EngineError):
    """A file of the engine is a symlink, FIFO, device or folder (or a folder on its path is not one)."""

    def __init__(self, path: Path, what: str) -> None:
        self.status = what if what.startswith("not ") else f"is {what}, not a regular file"
        super().__init__(f"{path}: {self.status}; an engine's files are regular files inside it - rebuild the engine")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def _parts(relpath: str, root: Path) -> tuple[str, ...]:
    pure = PurePosixPath(relpath)
    if not relpath or pure.is_absolute() or "\\" in relpath or "\0" in relpath or any(part in ("..", ".", "") for part in relpath.split("/")):
        raise EngineError(f"{root / MANIFEST}: '{relpath}' is not a relative path inside the engine directory")
    return pure.parts


@contextlib.contextmanager
def pinned(path: Union[str, Path, PinnedEngineDir]) -> Iterator[PinnedEngineDir]:
    """``path`` itself when already pinned, else a ``PinnedEngineDir`` closed on exit."""
    if isinstance(path, PinnedEngineDir):
        yield path
        return
    with PinnedEngineDir(path) as pin:
        yield pin


def resolve_inside(root: Path, relpath: str, *, what: str, source: Optional[Path] = None) -> Path:
    """``root / relpath`` after checking it is a plain relative path that stays inside ``root``.

    ``source`` is the file that holds the reference (the manifest unless given); errors name it.

    Raises:
        EngineError: absolute paths, ``..`` components, or symlinks leading outside ``root``.
    """
    source = source or root / MANIFEST
    pure = PurePosixPath(relpath)
    if not relpath or pure.is_absolute() or "\\" in relpath or any(part in ("..", "") for part in pure.parts):
        raise EngineError(f"{source}: {what} '{relpath}' is not a relative path inside the engine directory")
    path = root.joinpath(*pure.parts)
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        raise EngineError(f"{source}: {what} '{relpath}' leads outside the engine directory") from None
    return path


def read_manifest(path: Union[str, Path, PinnedEngineDir]) -> Manifest:
    """Reads and validates ``config.json`` of the engine at ``path``.

    Raises:
        EngineError: the directory or manifest is missing, not a regular file (a symlink is
            refused), not JSON, nested absurdly deep, of another format version, or malformed;
            the message names the file and the field.
    """
    with pinned(path) as pin:
        source = pin.describe(MANIFEST)
        try:
            raw = pin.read_bytes(MANIFEST, limit=MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise EngineError(f"{source}: missing; '{pin.path}' is not a graphbuild engine (or its build was interrupted)") from None
        except OSError as exc:
            raise EngineError(f"{source}: cannot be read: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except json.JSONDecodeError as exc:
            raise EngineError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); the engine is corrupt - rebuild it") from None
        except UnicodeDecodeError as exc:
            raise EngineError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start}); the engine is corrupt - rebuild it") from None
        except RecursionError:
            raise EngineError(f"{source}: JSON nested too deeply; the engine is corrupt - rebuild it") from None
        return Manifest.from_json(data, str(source))


def verify_files(path: Union[str, Path, PinnedEngineDir], manifest: Optional[Manifest] = None) -> list[tuple[str, str]]:
    """Checks every file the manifest lists; never raises for bad files.

    Returns:
        ``(relpath, status)`` pairs, status one of ``"ok"``, ``"missing"``, ``"size mismatch"``,
        ``"checksum mismatch"``, ``"unreadable"``, or why it is not a regular file (``"is a
        symbolic link, not a regular file"``, ``"is a FIFO, not a regular file"``, ...).
    """
    with pinned(path) as pin:
        manifest = manifest if manifest is not None else read_manifest(pin)
        return [(relpath, _status(pin, relpath, entry.size, entry.sha256)) for relpath, entry in manifest.files.items()]


def _status(pin: PinnedEngineDir, relpath: str, size: int, digest: Optional[str], *, raise_kind: bool = False) -> str:
    try:
        info = pin.lstat(relpath)
        if info.st_size != size:
            return "size mismatch"
        if digest is not None and pin.sha256(relpath) != digest:
            return "checksum mismatch"
        return "ok"
    except FileNotFoundError:
        return "missing"
    except NotRegularFileError as exc:
        if raise_kind:
            raise
        return exc.status
    except OSError:
        return "unreadable"


def check_files(path: Union[str, Path, PinnedEngineDir], manifest: Manifest, *, checksums: bool = True) -> None:
    """Raises ``EngineError`` naming the first listed file that is missing, not a regular file,
    truncated or (with ``checksums``) tampered with. Without ``checksums`` only ``lstat`` runs."""
    with pinned(path) as pin:
        for relpath, entry in manifest.files.items():
            status = _status(pin, relpath, entry.size, entry.sha256 if checksums else None, raise_kind=True)
            if status != "ok":
                if pin.replaced():
                    raise EngineReplacedError(pin.path)
                raise EngineError(f"{pin.describe(relpath)}: {status} (the manifest records its size and sha256); the engine is corrupt - rebuild it")


class EngineReplacedError(EngineError):
    """The engine directory was replaced by another build while it was being loaded."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"'{path}' was replaced by another build while it was being loaded; load it again")


def load_pinned(path: Union[str, Path], load: Callable[[PinnedEngineDir], _T], *, attempts: int = 3) -> _T:
    """Calls ``load(pin)`` with the engine directory pinned, so everything it reads is one engine.

    Leftovers of killed builds beside ``path`` are cleaned first (and an engine that a killed
    replace left aside is put back). When ``load`` fails because another build replaced the
    directory meanwhile (its files vanished), it is tried again on the new directory, at most
    ``attempts`` times in all.

    Raises:
        EngineReplacedError: the directory kept being replaced.
        EngineError: whatever ``load`` raised otherwise.
    """
    from graphbuild.engine.leftovers import clean_leftovers

    clean_leftovers(Path(path))
    for attempt in range(attempts):
        with PinnedEngineDir(path) as pin:
            try:
                return load(pin)
            except GraphBuildError as exc:
                pinned_root = str(pin.root)
                if pinned_root != str(pin.path) and exc.args and isinstance(exc.args[0], str):
                    exc.args = (exc.args[0].replace(pinned_root, str(pin.path)), *exc.args[1:])  # name the user's path
                if not isinstance(exc, EngineError) or not pin.replaced():
                    raise
                if attempt + 1 == attempts:
                    raise EngineReplacedError(pin.path) from exc
    raise AssertionError("unreachable")
