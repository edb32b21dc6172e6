"""The ``graphbuild`` command line: ``build``, ``run``, ``inspect``, ``bench`` and ``viz``.

    graphbuild build examples/embedding_tp.py:make_network -o out/emb --tp-size 2
    graphbuild run out/emb --input input_ids=1,2,3 --output out.npz
    graphbuild inspect out/emb

Bad input ends with exit status 1 and one line on stderr, ``graphbuild: error: <message>``;
``--verbose`` adds the traceback. Usage errors exit with status 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Optional, Sequence

import graphbuild
from graphbuild.errors import GraphBuildError
from graphbuild.tools import bench_cmd, build_cmd, inspect_cmd, run_cmd, viz_cmd

PROG = "graphbuild"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def make_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    # --verbose is accepted before and after the subcommand; SUPPRESS keeps a subcommand's unset
    # flag from overwriting the value the main parser found.
    sub_common = argparse.ArgumentParser(add_help=False)
    sub_common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build, run and inspect graphbuild engines (tensor-parallel networks compiled to per-rank ONNX).",
        epilog="Run 'graphbuild COMMAND --help' for a command's options.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", default=False, help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {graphbuild.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (build_cmd, run_cmd, inspect_cmd, bench_cmd, viz_cmd):
        module.add_parser(subparsers, [sub_common])
    return parser


def _report(exc: BaseException, verbose: bool, message: str) -> None:
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line; returns the exit status (0 success, 1 error, 2 usage error).

    Args:
        argv: arguments without the program name; defaults to ``sys.argv[1:]``.
    """
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    verbose = bool(getattr(args, "verbose", False))
    try:
        return args.handler(args)
    except KeyboardInterrupt as exc:
        _report(exc, verbose, "interrupted")
        return EXIT_INTERRUPTED
    except (GraphBuildError, OSError, ValueError) as exc:
        _report(exc, verbose, _one_line(exc))
        return EXIT_ERROR
    except Exception as exc:  # a bug rather than bad input: still one line, traceback with --verbose
        hint = "" if verbose else " (rerun with --verbose for the traceback)"
        _report(exc, verbose, f"unexpected {type(exc).__name__}: {_one_line(exc)}{hint}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
