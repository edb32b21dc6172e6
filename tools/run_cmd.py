"""``graphbuild run``: run an engine on inputs given on the command line or in files.

An ``--input NAME=SOURCE`` source is one of:

- ``ids.npy`` or ``@ids.npy``: a numpy file (its dtype must match the input's);
- ``batch.npz`` or ``batch.npz:key`` (``@`` prefix optional): an array of an ``.npz`` archive, by
  default the one named like the input;
- ``1,2,3``: comma-separated numbers, cast to the input's dtype; a flat list gets leading 1-dims
  up to the input's rank (``input_ids`` of shape ``(batch, seq)`` and ``1,2,3`` give ``[[1, 2, 3]]``);
- ``[[1,2],[3,4]]``: a JSON-style nested list, cast and padded with leading 1-dims the same way.
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.runtime.mpi_cli import run_under_mpi, wants_mpi
from graphbuild.tools.common import CLIError, format_shape, write_atomically

if TYPE_CHECKING:
    from graphbuild.engine.manifest import TensorSpec

_PREVIEW = 6
_SOURCES_HELP = """\
input sources (--input NAME=SOURCE):
  ids.npy, @ids.npy          a .npy file; its dtype must match the input's
  batch.npz[:key]            an array of an .npz archive (default key: the input's name)
  1,2,3                      numbers cast to the input's dtype; leading 1-dims are added up to
                             the input's rank: input_ids (batch, seq) with 1,2,3 is [[1, 2, 3]]
  [[1,2],[3,4]]              a nested list, cast and padded the same way
"""


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        parents=parents,
        help="run an engine (all ranks in this process) and print its outputs",
        description="Runs every rank of ENGINE in this process and prints rank 0's outputs.",
        epilog=_SOURCES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("engine", metavar="ENGINE", help="engine directory written by 'graphbuild build'")
    parser.add_argument("-i", "--input", dest="inputs", action="append", default=[], metavar="NAME=SOURCE", help="an input: NAME=file.npy, NAME=file.npz[:key], NAME=1,2,3 or NAME=[[1,2],[3,4]]; repeatable")
    parser.add_argument("-o", "--output", metavar="FILE.npz", help="also write every output to this .npz file")
    parser.add_argument("--no-verify", action="store_true", help="skip the checksum check of the engine's files")
    # MPI: one process per rank (docs/mpi.md)
    parser.add_argument("--executor", choices=("auto", "local", "mpi"), default="auto", help="local: every rank in this process; mpi: this MPI process's rank; auto (default): mpi when started by mpiexec")
    parser.add_argument("--all-ranks", action="store_true", help="print (and write, as FILE.rankR.npz) every rank's outputs, not only rank 0's")
    parser.add_argument("--replicas", type=int, default=1, metavar="K", help="under mpiexec: K data-parallel copies of the engine (mpiexec -n tp_size*K)")
    parser.set_defaults(handler=run_run)


# --------------------------------------------------------------------------------- inputs
def file_source(source: str) -> Optional[tuple[Path, Optional[str]]]:
    """``(path, key)`` of an ``[@]file.npy`` / ``[@]file.npz[:key]`` source; None for a literal."""
    text = source[1:] if source.startswith("@") else source
    head, sep, key = text.rpartition(":")
    if sep and head.endswith((".npy", ".npz")):
        return Path(head), key or None
    if source.startswith("@") or text.endswith((".npy", ".npz")):
        return Path(text), None
    return None


def load_file_source(name: str, path: Path, key: Optional[str]) -> np.ndarray:
    """The array a file source names: a ``.npy`` file, or array ``key`` (default ``name``) of an ``.npz``."""
    if not path.is_file():
        raise CLIError(f"--input {name}: file '{path}' does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CLIError(f"--input {name}: '{path}' is not a readable .npy/.npz file ({exc})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            wanted = key or name
            if wanted not in loaded.files:
                raise CLIError(f"--input {name}: '{path}' has no array '{wanted}' (it holds {loaded.files}); name one with {path}:KEY")
            return loaded[wanted]
    if key is not None:
        raise CLIError(f"--input {name}: '{path}' is a single array; drop ':{key}'")
    return loaded


def parse_literal(name: str, text: str, dtype: dtypes.DType) -> np.ndarray:
    """Values written on the command line (``1,2,3`` or a nested ``[[1,2],[3,4]]``), as ``dtype``."""
    stripped = text.strip()
    try:
        if stripped.startswith("["):
            data = json.loads(stripped)
        else:
            data = [json.loads(tok) if tok.strip() else _fail_token(tok) for tok in stripped.split(",")]
    except (json.JSONDecodeError, ValueError) as exc:
        raise CLIError(f"--input {name}={text}: not a list of numbers ({exc}); write 1,2,3 or [[1,2],[3,4]], or @FILE for a file") from None
    try:
        values = np.array(data)
    except ValueError as exc:
        raise CLIError(f"--input {name}={text}: nested lists must be rectangular ({exc})") from None
    if values.dtype == object or values.dtype.kind not in "biuf":
        raise CLIError(f"--input {name}={text}: expected numbers, got {values.dtype.name} data")
    return _cast_literal(name, text, values, dtype)


def _fail_token(token: str) -> Any:
    raise ValueError(f"empty value in '{token}'")


def _cast_literal(name: str, text: str, values: np.ndarray, dtype: dtypes.DType) -> np.ndarray:
    if dtype.is_int:
        if values.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.round(values))):
            raise CLIError(f"--input {name}={text}: input '{name}' is {dtype}, but the values are not all integers")
        info = np.iinfo(dtype.numpy)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise CLIError(f"--input {name}={text}: values do not fit {dtype} [{info.min}, {info.max}]")
    elif dtype.name == "bool" and values.size and not np.isin(values, (0, 1)).all():
        raise CLIError(f"--input {name}={text}: input '{name}' is bool; use true/false or 1/0")
    return values.astype(dtype.numpy)


def fit_rank(name: str, array: np.ndarray, rank: int, shape: Sequence[Any]) -> np.ndarray:
    """Prepends 1-dims so a literal's ``ndim`` matches the input's rank (one value fits a scalar)."""
    if rank == 0 and array.size == 1:
        return array.reshape(())
    if array.ndim > rank:
        raise CLIError(f"--input {name}: {array.ndim}-D values for an input of rank {rank} {format_shape(shape)}")
    return array.reshape((1,) * (rank - array.ndim) + array.shape)


def read_inputs(items: Sequence[str], specs: Sequence["TensorSpec"], engine_name: str) -> dict[str, np.ndarray]:
    """Parses every ``--input NAME=SOURCE`` against the engine's input specs.

    Raises:
        CLIError: bad syntax, an unknown or repeated name, a missing input, an unreadable file or
            values that do not fit the input's dtype.
    """
    by_name = {spec.name: spec for spec in specs}
    listing = ", ".join(str(spec) for spec in specs)
    feeds: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, source = item.partition("=")
        name = name.strip()
        if not sep or not name or not source.strip():
            raise CLIError(f"bad --input '{item}': expected NAME=SOURCE, e.g. input_ids=1,2,3 or input_ids=ids.npy")
        if name not in by_name:
            raise CLIError(f"--input {name}: engine '{engine_name}' has no input '{name}' (its inputs: {listing})")
        if name in feeds:
            raise CLIError(f"--input {name} is given twice")
        spec = by_name[name]
        located = file_source(source)
        if located is not None:
            array = load_file_source(name, *located)
            if array.dtype.kind == "V" and array.dtype.itemsize == 2 and spec.dtype == dtypes.bfloat16:
                array = array.view(dtypes.bfloat16.numpy)  # .npy keeps bfloat16 as raw 2-byte records
        else:
            array = fit_rank(name, parse_literal(name, source, spec.dtype), len(spec.shape), spec.shape)
        feeds[name] = array
    missing = [spec.name for spec in specs if spec.name not in feeds]
    if missing:
        raise CLIError(f"engine '{engine_name}' needs input(s) {missing}; give them with --input NAME=SOURCE (its inputs: {listing})")
    return feeds


# --------------------------------------------------------------------------------- outputs
def summarize_array(array: np.ndarray) -> str:
    """``min -1.2 max 3.4 mean 0.01 std 0.99`` (or the counts of a bool array)."""
    if array.size == 0:
        return "empty"
    if array.dtype == np.bool_:
        return f"true {int(array.sum())} of {array.size}"
    data = array.astype(np.float64)
    finite = data[np.isfinite(data)]
    parts = [] if finite.size == data.size else [f"non-finite {data.size - finite.size}"]
    if finite.size:
        parts.insert(0, f"min {finite.min():.6g} max {finite.max():.6g} mean {finite.mean():.6g} std {finite.std():.6g}")
    return "  ".join(parts)


def preview(array: np.ndarray, count: int = _PREVIEW) -> str:
    """The first ``count`` values in flat order: ``[0.12, -0.5, ...]``."""
    flat = array.reshape(-1)[:count]
    if array.dtype == np.bool_ or array.dtype.kind in "iu":
        items = [str(v) for v in flat.tolist()]
    else:
        items = [f"{v:.6g}" for v in flat.astype(np.float64).tolist()]
    more = ", ..." if array.size > count else ""
    return "[" + ", ".join(items) + more + "]"


def save_npz(path: Path, outputs: dict[str, np.ndarray]) -> list[str]:
    """Writes ``outputs`` to ``path`` atomically; returns the names saved as float32 (bfloat16 ones,
    which ``.npz`` cannot describe)."""
    widened = [name for name, a in outputs.items() if a.dtype == dtypes.bfloat16.numpy]
    arrays = {name: (a.astype(np.float32) if name in widened else a) for name, a in outputs.items()}

    def write(handle: Any) -> None:
        # np.savez(handle, **arrays) would reject outputs named like its own parameters ("file").
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)

    write_atomically(path, write)
    return widened


def run_run(args: argparse.Namespace) -> int:
    import graphbuild as gb

    output = Path(args.output) if args.output else None
    if output is not None:  # checked before the run, not after it
        if output.is_dir():
            raise CLIError(f"--output {output}: is a directory; name a .npz file")
        if not output.resolve().parent.is_dir():
            raise CLIError(f"--output {output}: directory '{output.parent}' does not exist")
    if wants_mpi(args.executor):
        return run_under_mpi(args, read_inputs, report_outputs)
    start = time.perf_counter()
    engine = gb.Engine.load(args.engine, verify=not args.no_verify)
    loaded = time.perf_counter()
    feeds = read_inputs(args.inputs, engine.inputs, engine.name)
    begin = time.perf_counter()
    if args.all_ranks:
        sections = [(f"rank {rank}", outputs) for rank, outputs in enumerate(engine.run_all_ranks(feeds))]
    else:
        sections = [("", engine.run(feeds))]
    ran = time.perf_counter()
    report_outputs(engine, sections, f"engine '{engine.name}' (tp_size {engine.tp_size}): load {1000 * (loaded - start):.0f} ms, run {1000 * (ran - begin):.1f} ms", Path(args.output) if args.output else None)
    return 0


def report_outputs(engine: Any, sections: Sequence[tuple[str, dict[str, np.ndarray]]], timing: str, output: Optional[Path]) -> None:
    """Prints the timing line and each section's outputs (a section per rank with --all-ranks) and
    writes them to ``output`` (``FILE.rankR.npz`` per rank when there are several sections)."""
    print(timing)
    for heading, outputs in sections:
        if heading:
            print(f"{heading}:")
        for name, array in outputs.items():
            print(f"{name}: {array.dtype.name}{format_shape(array.shape)}  {summarize_array(array)}")
            if array.size:
                print(f"  {preview(array)}")
    if output is None:
        return
    for rank, (_, outputs) in enumerate(sections):
        path = output if len(sections) == 1 else output.with_name(f"{output.stem}.rank{rank}{output.suffix}")
        widened = save_npz(path, outputs)
        note = f" ({', '.join(widened)} saved as float32)" if widened else ""
        print(f"wrote {path}{note}")
