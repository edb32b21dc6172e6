"""Helpers shared by the ``graphbuild`` subcommands: the CLI's error type, table and number
formatting, escaping of names for the terminal, and atomic file writes."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, IO, Sequence

from graphbuild.errors import GraphBuildError
from graphbuild.ir.value import format_shape

__all__ = ["CLIError", "format_bytes", "format_counts", "format_shape", "format_table", "printable", "write_atomically"]

# Characters a terminal would act on rather than show: C0/C1 controls (escape sequences, newlines),
# line and paragraph separators, and bidirectional overrides (which reorder what follows).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


class CLIError(GraphBuildError):
    """Bad command-line input: a spec, an option value, a file the user named."""


def printable(text: object) -> str:
    """``str(text)`` with control characters escaped (``"a\\x1b[31m"``, ``"two\\nlines"``), so a name
    from an engine or a file cannot move the cursor, recolour the terminal or fake an output line."""

    def escape(match: re.Match[str]) -> str:
        code = ord(match.group())
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(match.group(), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")

    return _UNSAFE.sub(escape, str(text))


def format_bytes(count: int) -> str:
    """``1536`` -> ``"1.5 KiB"``; plain bytes below 1 KiB."""
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_counts(counts: dict[str, int]) -> str:
    """``{"tp_embedding": 1, "allreduce": 1}`` -> ``"allreduce:1 tp_embedding:1"`` (sorted)."""
    return " ".join(f"{op}:{n}" for op, n in sorted(counts.items())) or "-"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    """A plain-text table with left-aligned columns and a dashed rule under the header."""
    cells = [[printable(h) for h in headers]] + [[printable(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return (indent + "  ".join(c.ljust(w) for c, w in zip(row, widths))).rstrip()

    rule = indent + "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Writes ``path`` through a temporary file in the same directory, renamed into place.

    An interrupted write leaves no partial file at ``path``.
    """
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise CLIError(f"cannot write '{path}': directory '{directory}' does not exist")
    handle = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
