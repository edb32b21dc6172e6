"""``graphbuild run``: run an engine on inputs given on the command line or in files.

An ``--input NAME=SOURCE`` source is one of:

- ``ids.npy`` or ``@ids.npy``: a numpy file (its dtype must match the input's);
- ``batch.npz`` or ``batch.npz:key`` (``@`` prefix optional): an array of an ``.npz`` archive, by
  default the one named like the input;
- ``1,2,3``: comma-separated numbers, cast to the input's dtype; a flat list gets leading 1-dims
  up to the input's rank (``input_ids`` of shape ``(batch, seq)`` and ``1,2,3`` give ``[[1, 2, 3]]``);
- ``[[1,2],[3,4]]``: a JSON-style nested list, cast and padded with leading 1-dims the same way.

``--random-inputs`` generates the inputs not given (see ``random_inputs``); ``--providers`` picks
ONNX Runtime's execution providers; ``--json`` prints the timings and every output's summary as JSON.
Names from the engine are printed with control characters escaped.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import re
import time
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.runtime.mpi_cli import run_under_mpi, wants_mpi
from graphbuild.tools.common import CLIError, format_shape, printable, write_atomically
from graphbuild.tools.random_inputs import parse_input_shapes, random_feeds, vocabulary_bounds

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
  --random-inputs            every input not given: ids inside the vocabulary of the embedding
                             they feed, other ints in [0, 100), floats N(0, 1); symbolic dims
                             from --input-shapes NAME:[D0,D1,...] (1 when not named)
"""
_PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
logger = logging.getLogger("graphbuild.run")


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
    parser.add_argument("--random-inputs", action="store_true", help="generate every input not given with --input (seeded by --seed)")
    parser.add_argument("--input-shapes", nargs="+", action="extend", default=[], metavar="NAME:DIMS", help="shapes of generated inputs, e.g. input_ids:[2,5]")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-inputs (default 0)")
    parser.add_argument("--providers", metavar="LIST", help="ONNX Runtime execution providers in order of preference, comma-separated: cpu, cuda or full names such as CUDAExecutionProvider (default: CUDA when present, else CPU)")
    parser.add_argument("--json", action="store_true", help="print the timings and every output's summary as JSON")
    # MPI: one process per rank (docs/mpi.md)
    parser.add_argument("--executor", choices=("auto", "local", "mpi"), default="auto", help="local: every rank in this process; mpi: this MPI process's rank; auto (default): mpi when started by mpiexec")
    parser.add_argument("--all-ranks", action="store_true", help="print (and write, as FILE.rankR.npz) every rank's outputs, not only rank 0's")
    parser.add_argument("--replicas", type=int, default=1, metavar="K", help="under mpiexec: K data-parallel copies of the engine (mpiexec -n tp_size*K)")
    parser.set_defaults(handler=run_run)


def parse_providers(text: Optional[str]) -> Optional[list[str]]:
    """``"cuda,cpu"`` -> ``["CUDAExecutionProvider", "CPUExecutionProvider"]``; None stays None."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise CLIError(f"bad --providers '{text}': expected names separated by commas, e.g. cuda,cpu")
    return [_PROVIDER_ALIASES.get(name.lower(), name) for name in names]


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
    unreadable = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        loaded = np.load(path, allow_pickle=False)
    except unreadable as exc:
        raise CLIError(f"--input {name}: '{path}' is not a readable .npy/.npz file ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            wanted = key or name
            if wanted not in loaded.files:
                raise CLIError(f"--input {name}: '{path}' has no array '{wanted}' (it holds {loaded.files}); name one with {path}:KEY")
            try:
                return loaded[wanted]
            except unreadable as exc:
                raise CLIError(f"--input {name}: array '{wanted}' of '{path}' is not readable ({type(exc).__name__}: {exc})") from None
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
    if dtype.name != "bool" and _has_bool(data):
        raise CLIError(f"--input {name}={text}: input '{name}' is {dtype}; true/false are for bool inputs, write numbers")
    return _cast_literal(name, text, values, dtype)


def _has_bool(data: Any) -> bool:
    if isinstance(data, list):
        return any(_has_bool(item) for item in data)
    return isinstance(data, bool)


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


def read_inputs(items: Sequence[str], specs: Sequence["TensorSpec"], engine_name: str, *, require_all: bool = True) -> dict[str, np.ndarray]:
    """Parses every ``--input NAME=SOURCE`` against the engine's input specs.

    Args:
        items: the ``--input`` values.
        specs: the engine's inputs.
        engine_name: for messages.
        require_all: an input not given is an error (False: ``--random-inputs`` makes the rest).

    Raises:
        CLIError: bad syntax, an unknown or repeated name, a missing input, an unreadable file or
            values that do not fit the input's dtype.
    """
    by_name = {spec.name: spec for spec in specs}
    listing = printable(", ".join(str(spec) for spec in specs))
    feeds: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, source = item.partition("=")
        name = name.strip()
        if not sep or not name or not source.strip():
            raise CLIError(f"bad --input '{item}': expected NAME=SOURCE, e.g. input_ids=1,2,3 or input_ids=ids.npy")
        if name not in by_name:
            raise CLIError(f"--input {name}: engine '{printable(engine_name)}' has no input '{name}' (its inputs: {listing})")
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
    if missing and require_all:
        raise CLIError(f"engine '{printable(engine_name)}' needs input(s) {missing}; give them with --input NAME=SOURCE or use --random-inputs (its inputs: {listing})")
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


def summary_json(array: np.ndarray) -> dict[str, Any]:
    """An output for ``--json``: dtype, shape, statistics of its finite values and the first values
    (non-finite floats as the strings ``"nan"``, ``"inf"``, ``"-inf"``, so the JSON stays strict)."""
    data = array.astype(np.float64)
    finite = data[np.isfinite(data)]
    stats = {"min": float(finite.min()), "max": float(finite.max()), "mean": float(finite.mean()), "std": float(finite.std())} if finite.size else {}
    if array.dtype.kind == "f" or array.dtype == dtypes.bfloat16.numpy:
        first = [v if math.isfinite(v) else str(v) for v in data.reshape(-1)[:_PREVIEW].tolist()]
    else:
        first = array.reshape(-1)[:_PREVIEW].tolist()
    return {"dtype": array.dtype.name, "shape": list(array.shape), **stats, "non_finite": int(data.size - finite.size), "first": first}


def _feed_reader(args: argparse.Namespace, record: dict[str, np.ndarray]) -> Callable[[Sequence[str], Sequence["TensorSpec"], str], dict[str, np.ndarray]]:
    """``read(items, specs, engine_name)``: the ``--input`` values, and with ``--random-inputs``
    generated arrays for the inputs not given (the MPI executor calls it on rank 0 only); the
    feeds are also put into ``record``."""
    shapes = parse_input_shapes(args.input_shapes)
    if shapes and not args.random_inputs:
        raise CLIError("--input-shapes sets the shapes of generated inputs; add --random-inputs")

    def read(items: Sequence[str], specs: Sequence["TensorSpec"], engine_name: str) -> dict[str, np.ndarray]:
        if not args.random_inputs:
            record.update(read_inputs(items, specs, engine_name))
            return record
        from graphbuild.engine import read_manifest

        given = read_inputs(items, specs, engine_name, require_all=False)
        bounds = vocabulary_bounds(Path(args.engine), read_manifest(args.engine))
        record.update({**given, **random_feeds(specs, shapes, bounds, args.seed, given)})
        return record

    return read


def run_run(args: argparse.Namespace) -> int:
    import graphbuild as gb

    output = Path(args.output) if args.output else None
    if output is not None:  # checked before the run, not after it
        if output.is_dir():
            raise CLIError(f"--output {output}: is a directory; name a .npz file")
        if not output.resolve().parent.is_dir():
            raise CLIError(f"--output {output}: directory '{output.parent}' does not exist")
    providers = parse_providers(args.providers)
    feeds: dict[str, np.ndarray] = {}
    read = _feed_reader(args, feeds)
    if wants_mpi(args.executor):
        return run_under_mpi(args, read, functools.partial(_json_from_timing_line, feeds) if args.json else report_outputs)
    start = time.perf_counter()
    engine = gb.Engine.load(args.engine, verify=not args.no_verify, providers=providers)
    loaded = time.perf_counter()
    logger.info("loaded engine '%s' in %.0f ms", engine.name, 1000 * (loaded - start))
    read(args.inputs, engine.inputs, engine.name)
    begin = time.perf_counter()
    if args.all_ranks:
        sections = [(f"rank {rank}", outputs) for rank, outputs in enumerate(engine.run_all_ranks(feeds))]
    else:
        sections = [("", engine.run(feeds))]
    ran = time.perf_counter()
    if args.json:
        print_json(engine, sections, output, feeds, load_ms=1000 * (loaded - start), run_ms=1000 * (ran - begin))
    else:
        report_outputs(engine, sections, f"engine '{printable(engine.name)}' (tp_size {engine.tp_size}): load {1000 * (loaded - start):.0f} ms, run {1000 * (ran - begin):.1f} ms", output)
    return 0


def _save_sections(sections: Sequence[tuple[str, dict[str, np.ndarray]]], output: Optional[Path]) -> list[tuple[Path, list[str]]]:
    """Writes the outputs to ``output`` (``FILE.rankR.npz`` per rank when there are several
    sections); returns each file with the outputs saved as float32."""
    if output is None:
        return []
    written = []
    for rank, (_, outputs) in enumerate(sections):
        path = output if len(sections) == 1 else output.with_name(f"{output.stem}.rank{rank}{output.suffix}")
        written.append((path, save_npz(path, outputs)))
    return written


def report_outputs(engine: Any, sections: Sequence[tuple[str, dict[str, np.ndarray]]], timing: str, output: Optional[Path]) -> None:
    """Prints the timing line and each section's outputs (a section per rank with --all-ranks) and
    writes them to ``output`` (``FILE.rankR.npz`` per rank when there are several sections)."""
    print(timing)
    for heading, outputs in sections:
        if heading:
            print(f"{heading}:")
        for name, array in outputs.items():
            print(f"{printable(name)}: {array.dtype.name}{format_shape(array.shape)}  {summarize_array(array)}")
            if array.size:
                print(f"  {preview(array)}")
    for path, widened in _save_sections(sections, output):
        note = f" ({', '.join(printable(n) for n in widened)} saved as float32)" if widened else ""
        print(f"wrote {printable(path)}{note}")


def print_json(
    engine: Any, sections: Sequence[tuple[str, dict[str, np.ndarray]]], output: Optional[Path], feeds: dict[str, np.ndarray], *, load_ms: Optional[float], run_ms: Optional[float]
) -> None:
    """``graphbuild run --json``: one document with the timings, the inputs' shapes, every output's
    ``summary_json`` (per rank with --all-ranks) and the files written."""
    report: dict[str, Any] = {"engine": engine.name, "path": str(engine.path), "tp_size": engine.tp_size, "load_ms": load_ms, "run_ms": run_ms}
    report["inputs"] = {name: {"dtype": a.dtype.name, "shape": list(a.shape)} for name, a in feeds.items()}
    if len(sections) == 1 and not sections[0][0]:
        report["outputs"] = {name: summary_json(a) for name, a in sections[0][1].items()}
    else:
        report["ranks"] = [{"rank": rank, "outputs": {name: summary_json(a) for name, a in outputs.items()}} for rank, (_, outputs) in enumerate(sections)]
    report["output_files"] = [str(path) for path, _ in _save_sections(sections, output)]
    print(json.dumps(report, indent=2, allow_nan=False))


_TIMES = re.compile(r"load ([\d.]+) ms, run ([\d.]+) ms$")


def _json_from_timing_line(feeds: dict[str, np.ndarray], engine: Any, sections: Sequence[tuple[str, dict[str, np.ndarray]]], timing: str, output: Optional[Path]) -> None:
    """``print_json`` as the MPI executor's report callback, which hands over its timing line."""
    times = _TIMES.search(timing)
    print_json(engine, sections, output, feeds, load_ms=float(times.group(1)) if times else None, run_ms=float(times.group(2)) if times else None)
