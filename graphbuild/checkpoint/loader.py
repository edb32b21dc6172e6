"""``load_safetensors``: fill one module, or one module per tensor-parallel rank, from a checkpoint,
reading each tensor once and letting every rank's ``weight_loader`` cut its slice."""

from __future__ import annotations

import dataclasses
import fnmatch
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from graphbuild.checkpoint.store import ParameterStore, PathLike
from graphbuild.errors import CheckpointError
from graphbuild.layers.module import Module, Parameter

NameMap = Union[Mapping[str, Any], Callable[[str], Any]]
Transform = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class LoadReport:
    """What ``load_safetensors`` did.

    Attributes:
        loaded: parameter name -> the checkpoint tensor names it was loaded from.
        skipped: parameters the name map mapped to None (left as they were).
        unused: checkpoint tensors no parameter used (only when ``strict=False`` or ``ignore``d).
        tensors_read: checkpoint tensors read (each once, whatever the number of ranks).
        ranks: number of modules loaded.
        seconds: wall time of the load.
    """

    loaded: dict[str, tuple[str, ...]]
    skipped: list[str]
    unused: list[str]
    tensors_read: int
    ranks: int
    seconds: float


def _checkpoint_names(param: str, name_map: Optional[NameMap]) -> Optional[tuple[str, ...]]:
    if name_map is None:
        target: Any = param
    elif callable(name_map) and not isinstance(name_map, Mapping):
        target = name_map(param)
    else:
        target = name_map.get(param, param)
    if target is None:
        return None
    names = (target,) if isinstance(target, str) else tuple(target) if isinstance(target, (list, tuple)) else ()
    if not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"parameter '{param}': name_map gives {target!r}; expected a tensor name, a list of names, or None")
    return names


def _rank_parameters(modules: Sequence[Module]) -> list[dict[str, Parameter]]:
    ranks = [dict(module.named_parameters()) for module in modules]
    first = ranks[0]
    for rank, params in enumerate(ranks[1:], start=1):
        if set(params) != set(first):
            diff = sorted(set(params) ^ set(first))[:3]
            raise CheckpointError(f"rank {rank}'s module has other parameters than rank 0's (differ: {diff}); pass modules of one architecture")
        for name, param in params.items():
            if param.full_shape != first[name].full_shape:
                raise CheckpointError(
                    f"parameter '{name}': rank {rank} expects a checkpoint tensor of shape {list(param.full_shape)}, "
                    f"rank 0 of shape {list(first[name].full_shape)}"
                )
    return ranks


def _fetch(store: ParameterStore, param: str, names: tuple[str, ...], param_obj: Parameter, cache: dict[str, np.ndarray], uses: dict[str, int]) -> np.ndarray:
    pieces = []
    for name in names:
        entry = store.entry(name)
        if param_obj.dtype.is_float and not entry.is_float:
            raise CheckpointError(
                f"parameter '{param}' {list(param_obj.full_shape)}: checkpoint tensor {entry.describe()} is not floating point"
            )
        if name not in cache:
            cache[name] = store.read(name)
        pieces.append(cache[name])
        uses[name] -= 1
        if uses[name] == 0:
            del cache[name]
    if len(pieces) == 1:
        return pieces[0]
    shapes = [list(p.shape) for p in pieces]
    if any(p.ndim == 0 or p.shape[1:] != pieces[0].shape[1:] for p in pieces):
        files = sorted({str(store.entry(n).file) for n in names})
        raise CheckpointError(
            f"parameter '{param}' {list(param_obj.full_shape)}: cannot concatenate checkpoint tensors {list(names)} "
            f"of shapes {shapes} along axis 0 (in {', '.join(files)})"
        )
    return np.concatenate(pieces, axis=0)


def _check_shapes(store: ParameterStore, plan: Mapping[str, tuple[str, ...]], params: Mapping[str, Parameter], transforms: Mapping[str, Transform]) -> None:
    """Checks, from the headers alone, the shape of every parameter loaded from one tensor without
    a transform, so such a mismatch fails before any parameter has changed."""
    for param, names in plan.items():
        if param in transforms or len(names) != 1:
            continue
        entry = store.entry(names[0])
        if entry.shape != params[param].full_shape:
            raise CheckpointError(
                f"parameter '{param}' (checkpoint '{names[0]}' in {entry.file}): checkpoint tensor has shape "
                f"{list(entry.shape)}, expected {list(params[param].full_shape)}"
            )


def load_safetensors(
    source: Union[PathLike, ParameterStore],
    modules: Union[Module, Sequence[Module]],
    *,
    name_map: Optional[NameMap] = None,
    transforms: Optional[Mapping[str, Transform]] = None,
    strict: bool = True,
    ignore: Iterable[str] = (),
) -> LoadReport:
    """Loads a safetensors checkpoint into a module, or into one module per rank.

    Each checkpoint tensor is read once (memory-mapped) and handed to the matching parameter of
    every module; ``Parameter.load`` checks it against the parameter's ``full_shape`` and its
    ``weight_loader`` cuts that rank's slice, so a rank copies only its own slice.

    Args:
        source: a checkpoint file, directory or index (see ``ParameterStore``), or a store.
        modules: a module, or a list of modules of one architecture, one per rank (rank-local
            layers built with ``tp_rank=0, 1, ...``).
        name_map: parameter name -> checkpoint name, as a dict (names it lacks map to
            themselves) or a function. A value may be a list of checkpoint names, concatenated
            along axis 0 (separate query/key/value into a fused ``qkv``), or None to leave that
            parameter as it is.
        transforms: parameter name -> function applied to its checkpoint tensor (after any
            concatenation, before the weight loader), e.g. ``np.transpose`` for GPT-2's Conv1D
            weights stored ``[in, out]``.
        strict: checkpoint tensors that no parameter uses are an error (else they are listed in
            the report's ``unused``).
        ignore: ``fnmatch`` patterns of checkpoint tensors that may stay unused even when strict
            (``"pooler.*"``).

    Returns:
        A ``LoadReport``.

    Raises:
        CheckpointError: a parameter's checkpoint tensor is missing, unexpected (strict), of the
            wrong shape or not floating point, or the checkpoint cannot be read; the message
            names the parameter, the expected shape and the file.
    """
    start = time.perf_counter()
    store = source if isinstance(source, ParameterStore) else ParameterStore(source)
    module_list = [modules] if isinstance(modules, Module) else list(modules)
    if not module_list or not all(isinstance(m, Module) for m in module_list):
        raise CheckpointError(f"load_safetensors needs a Module or a list of Modules, got {modules!r}")
    ranks = _rank_parameters(module_list)
    transforms = dict(transforms or {})
    unknown = sorted(set(transforms) - set(ranks[0]))
    if unknown:
        raise CheckpointError(f"transforms name parameters the module does not have: {unknown}")

    plan: dict[str, tuple[str, ...]] = {}
    skipped: list[str] = []
    missing: list[str] = []
    for param, obj in ranks[0].items():
        names = _checkpoint_names(param, name_map)
        if names is None:
            skipped.append(param)
            continue
        plan[param] = names
        for name in names:
            if name not in store:
                via = "" if names == (param,) else f" (name_map gives {list(names) if len(names) > 1 else repr(name)})"
                missing.append(
                    f"parameter '{param}' {list(obj.full_shape)}: checkpoint tensor '{name}'{via} not found in "
                    f"{store.describe()}{store.suggest(name)}"
                )
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise CheckpointError(missing[0] + more)
    _check_shapes(store, plan, ranks[0], transforms)

    used = {name for names in plan.values() for name in names}
    patterns = list(ignore)
    unused = [n for n in store.keys() if n not in used]
    unexpected = [n for n in unused if not any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if strict and unexpected:
        first = store.entry(unexpected[0])
        more = f" (and {len(unexpected) - 1} more: {unexpected[1:4]})" if len(unexpected) > 1 else ""
        raise CheckpointError(
            f"unexpected checkpoint tensor {first.describe()}: no parameter uses it{more}; "
            "map a parameter to it with name_map, list it in ignore=[...], or pass strict=False"
        )

    uses: dict[str, int] = {}
    for names in plan.values():
        for name in names:
            uses[name] = uses.get(name, 0) + 1
    reads_before = store.reads
    cache: dict[str, np.ndarray] = {}
    for param, names in plan.items():
        tensor = _fetch(store, param, names, ranks[0][param], cache, uses)
        files = ", ".join(sorted({str(store.entry(n).file) for n in names}))
        source_names = names[0] if len(names) == 1 else "+".join(names)
        what = f"parameter '{param}' (checkpoint '{source_names}' in {files})"
        if param in transforms:
            try:
                tensor = np.asarray(transforms[param](tensor))
            except Exception as exc:  # a user function: report which parameter it failed on
                raise CheckpointError(f"{what}: transform failed: {type(exc).__name__}: {exc}") from exc
            what += " after its transform"
        for rank, params in enumerate(ranks):
            label = what if len(ranks) == 1 else f"{what} on rank {rank}"
            target = params[param]
            target.load(tensor, what=label)  # copies out of the file's memory map
    return LoadReport(
        loaded=plan,
        skipped=skipped,
        unused=unused,
        tensors_read=store.reads - reads_before,
        ranks=len(ranks),
        seconds=time.perf_counter() - start,
    )
