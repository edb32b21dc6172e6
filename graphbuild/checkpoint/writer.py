"""``save_safetensors``: write a module's parameters or a dict of arrays as a safetensors
checkpoint, in one file or as Hugging Face style shards with an index."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from graphbuild.checkpoint.store import DTYPES, INDEX_SUFFIX, PathLike
from graphbuild.errors import CheckpointError
from graphbuild.layers.module import Module


def _arrays_to_save(source: Union[Module, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    if isinstance(source, Module):
        arrays = {}
        for name, param in source.named_parameters():
            if param.shape != param.full_shape:
                raise CheckpointError(
                    f"parameter '{name}' holds a rank's slice {list(param.shape)} of {list(param.full_shape)}; "
                    "save the logical (unsharded) module instead"
                )
            arrays[name] = param.data
        return arrays
    if isinstance(source, Mapping):
        return {str(k): np.asarray(v) for k, v in source.items()}
    raise CheckpointError(f"save_safetensors needs a Module or a dict of arrays, got {type(source).__name__}")


def _write_file(arrays: Mapping[str, np.ndarray], path: Path, metadata: Optional[Mapping[str, str]]) -> None:
    from safetensors.numpy import save_file

    for name, array in arrays.items():
        if array.dtype not in DTYPES.values():
            raise CheckpointError(f"tensor '{name}': dtype {array.dtype} cannot be stored in a safetensors file")
    contiguous = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(contiguous, temp, metadata=dict(metadata) if metadata else None)
        os.replace(temp, path)
    except Exception as exc:
        Path(temp).unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write checkpoint: {exc}") from exc


def save_safetensors(
    source: Union[Module, Mapping[str, Any]],
    path: PathLike,
    *,
    metadata: Optional[Mapping[str, str]] = None,
    max_shard_bytes: Optional[int] = None,
) -> Path:
    """Writes a module's parameters, or a dict of arrays, as a safetensors checkpoint.

    Args:
        source: a module holding whole (unsharded) parameters, saved under their hierarchical
            names; or a dict name -> array (float32, float16, ``ml_dtypes.bfloat16``, ints, bool).
        path: the file to write; with ``max_shard_bytes``, the directory to write the shards and
            their ``model.safetensors.index.json`` into.
        metadata: string metadata stored in the header (``{"format": "np"}``).
        max_shard_bytes: split the tensors, in order, into files of at most this many bytes of
            data each (a larger tensor gets a file of its own), Hugging Face style.

    Returns:
        The file written, or the index file.

    Raises:
        CheckpointError: a parameter is a rank's slice, a dtype cannot be stored, or the file
            cannot be written.
    """
    arrays = _arrays_to_save(source)
    path = Path(path)
    if max_shard_bytes is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_file(arrays, path, metadata)
        return path
    if max_shard_bytes < 1:
        raise CheckpointError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    shards: list[dict[str, np.ndarray]] = [{}]
    filled = 0
    for name, array in arrays.items():
        if shards[-1] and filled + array.nbytes > max_shard_bytes:
            shards.append({})
            filled = 0
        shards[-1][name] = array
        filled += array.nbytes
    path.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        _write_file(shard, path / filename, metadata)
        weight_map.update({name: filename for name in shard})
    index = path / ("model" + INDEX_SUFFIX)
    total = int(sum(a.nbytes for a in arrays.values()))
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n", encoding="utf-8")
    return index
