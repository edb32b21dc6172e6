"""Generated inputs for ``graphbuild run --random-inputs`` (Polygraphy's idea): shapes from
``--input-shapes NAME:[d0,d1,...]`` with symbolic dims bound consistently across inputs (1 when
no shape names them), values from a seeded generator.

Integer inputs that feed an embedding are drawn inside its vocabulary, read from the engine's
segments: the ``vocab_size`` attribute of a ``TPEmbedding`` node, or for engines built without the
plugin the vocabulary bound of the manifest's id check. Other integer inputs are drawn from
``[0, 100)``, bool inputs uniformly, float inputs from ``N(0, 1)``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.tools.common import CLIError, format_shape

if TYPE_CHECKING:
    from graphbuild.engine.manifest import Manifest

logger = logging.getLogger("graphbuild.run")

OTHER_INT_RANGE = (0, 100)
_PASSTHROUGH = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}
_SHAPE = re.compile(r"^\s*\[?\s*(\d+(?:\s*[,x]\s*\d+)*)?\s*\]?\s*$")


def parse_input_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``["input_ids:[2,5]", "mask:2x5", "token:[]"]`` -> ``{"input_ids": (2, 5), "mask": (2, 5), "token": ()}``.

    Raises:
        CLIError: an item is not ``NAME:DIMS`` with non-negative integer dims, or a name repeats.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        match = _SHAPE.match(dims)
        if not sep or not name or match is None:
            raise CLIError(f"bad --input-shapes '{item}': expected NAME:[D0,D1,...] with integer dims, e.g. input_ids:[2,5]")
        if name in shapes:
            raise CLIError(f"--input-shapes {name} is given twice")
        shapes[name] = tuple(int(d) for d in re.split(r"[,x]", match.group(1))) if match.group(1) else ()
    return shapes


def vocabulary_bounds(engine_path: Path, manifest: "Manifest") -> dict[str, int]:
    """Engine input name -> the smallest vocabulary of the embeddings it feeds as ids."""
    import onnx
    from onnx import numpy_helper

    inputs = {spec.name for spec in manifest.inputs}
    bounds: dict[str, int] = {}
    for step in manifest.ranks[0].segments:
        checked = {int(check.vocab_size) for check in step.checks}
        graph = onnx.load(str(engine_path / step.file), load_external_data=False).graph
        producers = {out: node for node in graph.node for out in node.output}
        constants = {t.name: t for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL}

        def source(name: str) -> str:
            while name in producers and producers[name].op_type in _PASSTHROUGH:
                name = producers[name].input[0]
            return name

        for node in graph.node:
            vocab: Optional[int] = None
            if node.op_type == "TPEmbedding":
                vocab = next((int(a.i) for a in node.attribute if a.name == "vocab_size"), None)
            elif node.op_type == "Less" and checked and node.input[1] in constants:
                value = numpy_helper.to_array(constants[node.input[1]])
                if value.size == 1 and int(value) in checked and node.input[0] in producers and producers[node.input[0]].op_type == "Cast":
                    vocab = int(value)
            ids = source(node.input[0]) if vocab is not None else None
            if ids in inputs:
                bounds[ids] = min(bounds.get(ids, vocab), vocab)
    return bounds


def _fits(want: Sequence[Any], shape: Sequence[int]) -> bool:
    return len(want) == len(shape) and all(isinstance(w, str) or w == d for w, d in zip(want, shape))


def _bind_shapes(specs: Sequence[Any], given: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    by_name = {spec.name: spec for spec in specs}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise CLIError(f"--input-shapes {unknown[0]}: the engine has no input '{unknown[0]}' (its inputs: {', '.join(str(s) for s in specs)})")
    symbols: dict[str, int] = {}
    for name, dims in given.items():
        spec = by_name[name]
        if len(dims) != len(spec.shape):
            raise CLIError(f"--input-shapes {name}: {len(dims)} dim(s) for an input of rank {len(spec.shape)} {format_shape(spec.shape)}")
        for want, dim in zip(spec.shape, dims):
            if isinstance(want, int) and want != dim:
                raise CLIError(f"--input-shapes {name}: {format_shape(dims)} does not fit {format_shape(spec.shape)}")
            if isinstance(want, str):
                if symbols.setdefault(want, dim) != dim:
                    raise CLIError(f"--input-shapes: dim '{want}' is {symbols[want]} in one shape and {dim} in another")
    defaulted = sorted({d for spec in specs for d in spec.shape if isinstance(d, str) and d not in symbols})
    if defaulted:
        logger.warning("--random-inputs: %s set to 1; choose sizes with --input-shapes NAME:[D0,D1,...]", ", ".join(defaulted))
    return {spec.name: tuple(d if isinstance(d, int) else symbols.get(d, 1) for d in spec.shape) for spec in specs}


def random_feeds(
    specs: Sequence[Any], shapes: Mapping[str, tuple[int, ...]], bounds: Mapping[str, int], seed: int, given: Optional[Mapping[str, np.ndarray]] = None
) -> dict[str, np.ndarray]:
    """A random array for every input spec (``specs``: the engine's inputs) not in ``given``,
    reproducible from ``seed``; symbolic dims follow ``shapes`` and the given arrays."""
    rng = np.random.default_rng(seed)
    given = given or {}
    fitting = {n: tuple(a.shape) for n, a in given.items() if _fits(next(s for s in specs if s.name == n).shape, a.shape)}
    bound = _bind_shapes(specs, {**fitting, **shapes})
    feeds: dict[str, np.ndarray] = {}
    for spec in (s for s in specs if s.name not in given):
        dtype, shape = spec.dtype, bound[spec.name]
        if dtype.is_int:
            low, high = (0, bounds[spec.name]) if spec.name in bounds else OTHER_INT_RANGE
            high = min(high, int(np.iinfo(dtype.numpy).max) + 1)
            feeds[spec.name] = rng.integers(low, high, size=shape).astype(dtype.numpy)
            source = "the vocabulary" if spec.name in bounds else "no embedding reads it"
            logger.info("random %s: %s%s in [%d, %d) (%s)", spec.name, dtype, format_shape(shape), low, high, source)
        elif dtype == dtypes.bool_:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
            logger.info("random %s: bool%s", spec.name, format_shape(shape))
        else:
            feeds[spec.name] = rng.standard_normal(size=shape).astype(dtype.numpy)
            logger.info("random %s: %s%s from N(0, 1)", spec.name, dtype, format_shape(shape))
    return feeds
