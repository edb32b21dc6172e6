"""Checks that a manifest's parts refer to each other consistently (no files are read here).

Every rank is listed once and in order; every step reads tensors that exist by then (an engine
input, an earlier segment output or collective result); every rank maps exactly the engine's
outputs to tensors it has; every segment file is listed in ``files`` and lies in its own rank's
folder (``rankN/``); collectives agree across ranks. ``Manifest.from_json`` runs these checks;
``graphbuild.engine.consistency`` then checks the manifest against the ONNX files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graphbuild.engine.manifest import Manifest, _Where


def rank_folder(rank: int) -> str:
    """The folder that holds rank ``rank``'s files."""
    return f"rank{rank}/"


def check_references(manifest: "Manifest", where: "_Where") -> None:
    """Raises ``EngineError`` naming the first reference that does not resolve."""
    if manifest.tp_size < 1 or len(manifest.ranks) != manifest.tp_size:
        raise (where / "ranks").fail(f"lists {len(manifest.ranks)} rank(s) but tp_size is {manifest.tp_size}")
    if len(manifest.tp_group) != manifest.tp_size or len(set(manifest.tp_group)) != manifest.tp_size:
        raise (where / "tp_group").fail(f"expected {manifest.tp_size} distinct ranks, got {list(manifest.tp_group)}")
    if not manifest.outputs:
        raise (where / "outputs").fail("the engine declares no outputs")
    for what, specs in (("inputs", manifest.inputs), ("outputs", manifest.outputs)):
        names = [spec.name for spec in specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise (where / what).fail(f"names {duplicates} more than once")
    output_names = {spec.name for spec in manifest.outputs}
    seen_files: dict[str, str] = {}
    for position, plan in enumerate(manifest.ranks):
        here = where / "ranks" / position
        if plan.rank != position:
            raise (here / "rank").fail(f"is {plan.rank}, expected {position} (ranks are listed in order)")
        available = {spec.name for spec in manifest.inputs}
        for index, step in enumerate(plan.steps):
            at = here / "steps" / index
            if step.kind == "segment":
                _check_segment(manifest, step, at, position, available, seen_files)
            else:
                if step.input not in available:
                    raise (at / "input").fail(f"'{step.input}' is not an engine input or an earlier step's output")
                if not set(step.group) <= set(manifest.tp_group):
                    raise (at / "group").fail(f"{list(step.group)} names ranks outside tp_group {list(manifest.tp_group)}")
                available.add(step.output)
        if set(plan.outputs) != output_names:
            raise (here / "outputs").fail(f"maps {sorted(plan.outputs)} but the engine's outputs are {sorted(output_names)}")
        for name, tensor in plan.outputs.items():
            if tensor not in available:
                raise (here / "outputs" / name).fail(f"'{tensor}' is not a tensor of rank {position}")
    _check_same_schedule(manifest, where)


def _check_segment(manifest: "Manifest", step: Any, at: "_Where", rank: int, available: set[str], seen_files: dict[str, str]) -> None:
    if step.file not in manifest.files:
        raise (at / "file").fail(f"'{step.file}' is not listed in 'files'")
    if not step.file.startswith(rank_folder(rank)):
        raise (at / "file").fail(f"'{step.file}' is not in rank {rank}'s folder '{rank_folder(rank)}'")
    if step.file in seen_files:
        raise (at / "file").fail(f"'{step.file}' is also the file of {seen_files[step.file]}")
    seen_files[step.file] = at.path
    for name in step.inputs:
        if name not in available:
            raise (at / "inputs").fail(f"'{name}' is not an engine input or an earlier step's output")
    produced = list(step.outputs) + [check.tensor for check in step.checks]
    if len(set(produced)) != len(produced):
        raise (at / "outputs").fail(f"names a tensor twice: {produced}")
    available.update(step.outputs)


def _check_same_schedule(manifest: "Manifest", where: "_Where") -> None:
    def signature(plan: Any) -> list[Any]:
        return [(s.op, s.instance_id, tuple(s.group)) if s.kind == "collective" else "segment" for s in plan.steps]

    first = signature(manifest.ranks[0])
    for position, plan in enumerate(manifest.ranks[1:], start=1):
        if signature(plan) != first:
            raise (where / "ranks" / position / "steps").fail(f"rank {position}'s schedule {signature(plan)} differs from rank 0's {first}")
