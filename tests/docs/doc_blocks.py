"""The fenced code blocks of ``README.md`` and ``docs/*.md``, and the rules that check a documented
shell session against what the commands print.

A block is ```` ```LANG ```` ... ```` ``` ```` (indented fences inside list items too). Languages:

- ``python``: code that runs as written;
- ``console``, or ``sh``/``bash`` whose lines start with ``$ ``: a session, commands after ``$ ``
  followed by what they print;
- ``sh``/``bash`` without prompts: commands to type (not run here; ``graphbuild`` lines are parsed);
- ``text``: output, file trees, anything not meant to run.

Output lines are compared loosely where a run differs from the documented one: numbers with a
decimal point, integers followed by a unit of time or size (``415 ms``, ``380 B``) and 16-digit hex
checksums are placeholders; ``...`` on its own line skips lines, inside a line it matches any text.
Error lines (``graphbuild: error: ...``) must match exactly.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parents[2]
LANGUAGES = {"python", "console", "sh", "bash", "text"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)\s*$")
_PROMPT = "$ "
_COMMENT = re.compile(r"\s{2,}#.*$")  # a trailing comment after two or more spaces


@dataclasses.dataclass
class Block:
    """One fenced block: its page (relative to the repository), 1-based line and language."""

    page: str
    line: int
    lang: str
    text: str

    @property
    def is_session(self) -> bool:
        return self.lang == "console" or (self.lang in ("sh", "bash") and any(l.startswith(_PROMPT) for l in self.text.splitlines()))

    @property
    def label(self) -> str:
        return f"{self.page}:{self.line}"


@dataclasses.dataclass
class Command:
    """One ``$ command`` of a session and the lines the page shows it printing."""

    command: str
    expected: list[str]


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/ (new pages are picked up without listing them)."""
    return [root / "README.md"] + sorted((root / "docs").rglob("*.md"))


def blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """Every fenced block of one page, in order.

    Raises:
        ValueError: a fence is never closed.
    """
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    page = path.relative_to(root).as_posix()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, start = match["indent"], index
        body = []
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            text = lines[index]
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            index += 1
        if index == len(lines):
            raise ValueError(f"{page}:{start + 1}: code block never closed")
        found.append(Block(page, start + 1, match["lang"], "\n".join(body) + "\n"))
        index += 1
    return found


def all_blocks(root: Path = ROOT) -> Iterator[Block]:
    for path in pages(root):
        yield from blocks(path, root)


def session(block: Block) -> list[Command]:
    """The commands of a session block with the output shown under each."""
    commands: list[Command] = []
    for line in block.text.splitlines():
        if line.startswith(_PROMPT):
            commands.append(Command(_COMMENT.sub("", line[len(_PROMPT) :]).strip(), []))
        elif commands:
            commands[-1].expected.append(line)
        elif line.strip():
            raise ValueError(f"{block.label}: session text before the first '$ ' command: {line!r}")
    return commands


def find_session(page: str, command: str, root: Path = ROOT) -> Command:
    """The command of ``page`` whose text is ``command`` (for tests that mirror a documented session)."""
    for block in blocks(root / page, root):
        if block.is_session:
            for cmd in session(block):
                if cmd.command == command:
                    return cmd
    raise LookupError(f"{page} has no session with '$ {command}'")


_VOLATILE = re.compile(r"-?\d+\.\d+(?:e[+-]?\d+)?|-?\d+(?= ?(?:ms|s|B|KiB|MiB|GiB)\b)|\b[0-9a-f]{16}\b")


def _normalize(line: str) -> str:
    return " ".join(_VOLATILE.sub("#", line).split())


def _pattern(expected: str) -> re.Pattern[str]:
    text = _normalize(expected)
    if expected.startswith("graphbuild: error:"):
        text = " ".join(expected.split())
    return re.compile(".*".join(re.escape(part) for part in text.split("...")))


def mismatch(expected: Sequence[str], actual: str) -> str:
    """Why ``actual`` output does not show the ``expected`` lines in order; "" when it does.

    Consecutive expected lines must be consecutive in the output, except across a ``...`` line;
    blank lines do not count.
    """
    lines = [" ".join(l.split()) if l.startswith("graphbuild: error:") else _normalize(l) for l in actual.splitlines() if l.strip()]
    chunks: list[list[str]] = [[]]
    for line in expected:
        if line.strip() == "...":
            chunks.append([])
        elif line.strip():
            chunks[-1].append(line)
    position = 0
    for chunk in chunks:
        if not chunk:
            continue
        patterns = [_pattern(line) for line in chunk]
        for start in range(position, len(lines) - len(chunk) + 1):
            if all(p.fullmatch(lines[start + k]) for k, p in enumerate(patterns)):
                position = start + len(chunk)
                break
        else:
            return f"expected lines not found in order:\n  " + "\n  ".join(chunk) + "\nin the output:\n" + actual
    return ""
