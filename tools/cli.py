"""The ``graphbuild`` command line: ``build``, ``run``, ``inspect``, ``bench`` and ``viz``.

    graphbuild build examples/embedding_tp.py:make_network -o out/emb --tp-size 2
    graphbuild run out/emb --input input_ids=1,2,3 --output out.npz
    graphbuild inspect out/emb

Bad input ends with exit status 1 and one line on stderr, ``graphbuild: error: <message>``;
``-v`` adds the traceback. Usage errors exit with status 2 (argparse's convention). Messages go
through the standard ``logging`` module under the ``graphbuild`` logger: warnings by default, ``-v``
info (phase lines with times), ``-vv`` debug, ``-q`` errors only, or ``--log-level LEVEL``. A closed
pipe (``graphbuild inspect ENGINE | head -1``) ends the command quietly, as it ends Unix tools.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from types import ModuleType
from typing import Optional, Sequence

import graphbuild
from graphbuild.errors import GraphBuildError
from graphbuild.tools import bench_cmd, build_cmd, inspect_cmd, run_cmd, viz_cmd
from graphbuild.tools.common import printable

PROG = "graphbuild"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe

#: The subcommands in the order ``--help`` lists them: each module has ``add_parser(subparsers, parents)``
#: that registers its parser with ``handler=`` set to the function running it.
SUBCOMMANDS: list[ModuleType] = [build_cmd, run_cmd, inspect_cmd, bench_cmd, viz_cmd]

LEVELS = ("debug", "info", "warning", "error", "critical")


def _add_logging_options(parser: argparse.ArgumentParser, suffix: str, default: object) -> None:
    """``-v``, ``-q`` and ``--log-level``; the main parser and every subcommand take them (under
    different ``dest``s, so ``graphbuild -v build -v`` counts both)."""
    group = parser.add_argument_group("output")
    group.add_argument("-v", "--verbose", dest=f"verbose{suffix}", action="count", default=default, help="more output: -v phase lines with times and tracebacks of errors, -vv debug detail")
    group.add_argument("-q", "--quiet", dest=f"quiet{suffix}", action="count", default=default, help="errors only (no warnings, no progress bar)")
    group.add_argument("--log-level", dest=f"log_level{suffix}", type=str.lower, choices=LEVELS, default=default, help="the logging level (overrides -v and -q)")


def make_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of ``SUBCOMMANDS``."""
    sub_common = argparse.ArgumentParser(add_help=False)
    _add_logging_options(sub_common, "", argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build, run and inspect graphbuild engines (tensor-parallel networks compiled to per-rank ONNX).",
        epilog="Run 'graphbuild COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {graphbuild.__version__}")
    _add_logging_options(parser, "_main", None)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers, [sub_common])
    return parser


def log_level(args: argparse.Namespace) -> int:
    """The level ``-v``/``-q``/``--log-level`` ask for (given before or after the subcommand)."""
    named = getattr(args, "log_level", None) or getattr(args, "log_level_main", None)
    if named:
        return getattr(logging, named.upper())
    verbose = (getattr(args, "verbose", 0) or 0) + (getattr(args, "verbose_main", 0) or 0)
    quiet = (getattr(args, "quiet", 0) or 0) + (getattr(args, "quiet_main", 0) or 0)
    return min(max(logging.WARNING - 10 * verbose + 10 * quiet, logging.DEBUG), logging.CRITICAL)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        label = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{PROG}: {label}{printable(record.getMessage())}"


def configure_logging(level: int) -> logging.Logger:
    """Sends the ``graphbuild`` logger's records at ``level`` and above to the current stderr."""
    logger = logging.getLogger(PROG)
    for handler in [h for h in logger.handlers if getattr(h, "_graphbuild_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    handler._graphbuild_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    return logger


def _report(exc: BaseException, tracebacks: bool, message: str) -> None:
    if tracebacks:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return printable(text) or type(exc).__name__


def _quiet_broken_pipe() -> int:
    """stdout's reader has gone: point stdout at /dev/null (so the flush at exit cannot fail again)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
        pass
    return EXIT_BROKEN_PIPE


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line; returns the exit status (0 success, 1 error, 2 usage error, 130
    interrupted, 141 stdout closed by its reader).

    Args:
        argv: arguments without the program name; defaults to ``sys.argv[1:]``.
    """
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    level = log_level(args)
    configure_logging(level)
    tracebacks = level <= logging.INFO
    try:
        code = args.handler(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt as exc:
        _report(exc, tracebacks, "interrupted")
        return EXIT_INTERRUPTED
    except (GraphBuildError, OSError, ValueError) as exc:
        _report(exc, tracebacks, _one_line(exc))
        return EXIT_ERROR
    except Exception as exc:  # a bug rather than bad input: still one line, traceback with -v
        hint = "" if tracebacks else " (rerun with -v for the traceback)"
        _report(exc, tracebacks, f"unexpected {type(exc).__name__}: {_one_line(exc)}{hint}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
