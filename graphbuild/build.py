"""``gb.build``: compile a network into an engine directory.

Pipeline (``phases()``, one named list run by ``graphbuild.passes.Phases``, which times each):
copy of the user's networks (never modified) → verify → shape/dtype inference → constant folding →
dead-code elimination → tensor-parallel partition (one network per rank) → per-rank cleanup
(dead-code elimination, constant outputs) → segmentation at collectives → ONNX export of every
segment; then the atomic write of the engine directory and the load. ``compile_engine`` and
``write_compiled`` run the compile phases and the write on their own; the compile phases' timings
are ``CompiledEngine.phase_times`` (the compiler-scaling benchmark and ``graphbuild build -v`` print
them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import graphbuild
from graphbuild.engine import Engine, TensorSpec, write_engine
from graphbuild.engine.manifest import CollectiveStep, CustomOp, Manifest, RangeCheck, RankPlan, SegmentStep
from graphbuild.errors import GraphConstructionError, PartitionError
from graphbuild.ir import Network, Node, Value
from graphbuild.ir.value import format_shape
from graphbuild.plugin import DOMAIN_VERSION


def _collective_step(node: Node) -> CollectiveStep:
    workspace: Optional[Value] = node.inputs[1] if len(node.inputs) > 1 else None
    return CollectiveStep(
        op=node.op,
        name=node.name,
        instance_id=node.attrs["instance_id"],
        group=tuple(node.attrs["group"]),
        input=node.inputs[0].name,
        workspace=workspace.name if workspace is not None else None,
        output=node.output.name,
        attrs=dict(node.attrs),  # plain data (verified); json writes tuples as lists
    )


@dataclasses.dataclass
class _State:
    """What the phases of ``_compile`` pass along."""

    networks: list[Network]
    use_plugin: bool
    opset: int
    external_data_threshold: int
    ranks: list[Network] = dataclasses.field(default_factory=list)
    schedules: list[list[Any]] = dataclasses.field(default_factory=list)
    exports: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    rank_entries: list[RankPlan] = dataclasses.field(default_factory=list)


def _copy(state: _State) -> None:
    state.networks = [net.copy() for net in state.networks]  # the user's networks are never modified


def _partition(state: _State) -> None:
    from graphbuild.passes import partition, partition_ranks

    networks = state.networks
    ranks = partition(networks[0]) if len(networks) == 1 else partition_ranks(networks)
    tp_size = ranks[0].meta.get("tp_size", 1)
    if len(ranks) != tp_size:
        meta = ranks[0].meta
        rank = meta["tp_group"][meta["tp_position"]]
        raise PartitionError(
            f"network '{networks[0].name}' is rank {rank} of a {tp_size}-rank group (rank-local mode); "
            "pass the networks of every rank as a list: gb.build([net_rank0, net_rank1, ...], path)"
        )
    state.ranks = ranks


def _segment(state: _State) -> None:
    from graphbuild.passes import check_same_schedule, segment

    state.schedules = [segment(net) for net in state.ranks]
    check_same_schedule(state.schedules)


def _lower(state: _State) -> None:
    from graphbuild.passes import CollectiveStep
    from graphbuild.passes.export_onnx import lower_nodes

    source = state.networks[0]
    for rank, (net, steps) in enumerate(zip(state.ranks, state.schedules)):
        entries: list[Any] = []
        for step in steps:
            if isinstance(step, CollectiveStep):
                entries.append(_collective_step(step.node))
                continue
            relpath = f"rank{rank}/segment{step.index}.onnx"
            exported = lower_nodes(
                net,
                step.nodes,
                step.inputs,
                [(v.name, v) for v in step.outputs],
                use_plugin=state.use_plugin,
                opset=state.opset,
                external_data_threshold=state.external_data_threshold,
                graph_name=f"{source.name}.rank{rank}.segment{step.index}",
            )
            state.exports.append((relpath, exported))
            entries.append(
                SegmentStep(
                    index=step.index,
                    file=relpath,
                    inputs=tuple(exported.inputs),
                    outputs=tuple(exported.outputs),
                    checks=tuple(RangeCheck(c["tensor"], c["node"], c["vocab_size"], c["kind"]) for c in exported.checks),
                    onnx_nodes=exported.onnx_nodes,
                    ops=dict(exported.ops),
                )
            )
        used = {v.name for node in net.nodes for v in node.inputs if v is not None and v.is_constant}
        state.rank_entries.append(
            RankPlan(
                rank=rank,
                weight_bytes=int(sum(v.const.nbytes for v in net.constants.values() if v.name in used)),
                ops=net.op_counts(),
                steps=tuple(entries),
                outputs={name: value.name for name, value in net.outputs.items()},
            )
        )


def phases(verify_each_pass: bool = False) -> Any:
    """``gb.build``'s compile flow as one named list of ``Phases`` (the write step excluded).

    ``copy`` (the user's networks are never modified), ``optimize`` (``default_pipeline`` on each
    network: its passes are timed by name: ``verify``, ``infer_shapes``, ``fold_constants``,
    ``eliminate_dead_code``), ``partition``, ``rank_dce`` (``rank_cleanup`` on each rank:
    dead-code elimination and constant outputs), ``segment``, ``lower_onnx``.
    """
    from graphbuild.passes import Phase, Phases, default_pipeline, rank_cleanup

    return Phases(
        [
            Phase("copy", _copy),
            Phase("optimize", passes=default_pipeline(verify_each=verify_each_pass), report_passes=True),
            Phase("partition", _partition),
            Phase("rank_dce", passes=rank_cleanup(), over="ranks"),
            Phase("segment", _segment),
            Phase("lower_onnx", _lower),
        ]
    )


def rank_networks(networks: Sequence[Network], verify_each_pass: bool = False) -> list[Network]:
    """The rank networks ``gb.build`` makes of ``networks``: the phases up to the per-rank cleanup
    (``copy``, ``optimize``, ``partition``, ``rank_dce``), in rank order; ``networks`` stay as they are."""
    runner = phases(verify_each_pass)
    runner.phases = runner.phases[: runner.names.index("rank_dce") + 1]
    return runner.run(_State(list(networks), False, 0, 0)).ranks




@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector (restoring its previous state afterwards).

    Compiling allocates many small IR objects that stay alive; each full collection walks all of
    them, which made the partition of an 8k-node network at tp_size 8 grow by about 2.6x per
    doubling instead of 2x. Cycles made meanwhile are collected once the collector runs again.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _interface(net: Network) -> tuple[dict[str, str], dict[str, str]]:
    inputs = {name: f"{v.dtype.name} {format_shape(v.shape)}" for name, v in net.inputs.items()}
    outputs = {name: v.dtype.name for name, v in net.outputs.items()}
    return inputs, outputs


def _check_same_interface(networks: Sequence[Network]) -> None:
    """Rank-local networks make one engine: every rank takes the same inputs and gives the same outputs."""
    first_inputs, first_outputs = _interface(networks[0])
    for net in networks[1:]:
        inputs, outputs = _interface(net)
        for what, mine, theirs in (("inputs", inputs, first_inputs), ("outputs", outputs, first_outputs)):
            if mine != theirs:
                raise GraphConstructionError(
                    f"network '{net.name}' has {what} {_listing(mine)} but network '{networks[0].name}' has "
                    f"{_listing(theirs)}; the rank-local networks of one engine must agree on their {what}"
                )


def _listing(specs: dict[str, str]) -> str:
    return "{" + ", ".join(f"{name}: {spec}" for name, spec in specs.items()) + "}"


@dataclasses.dataclass
class CompiledEngine:
    """An engine compiled in memory and not yet written: its manifest and its lowered segments.

    Attributes:
        manifest: the manifest without its ``files`` table (the writer adds checksums).
        exports: ``(relative path, ExportedModel)`` per segment file.
        phase_times: seconds per compile phase, as ``phases()`` reports them (``copy``, ``verify``,
            ``infer_shapes``, ``fold_constants``, ``eliminate_dead_code``, ``partition``,
            ``rank_dce``, ``segment``, ``lower_onnx``).
    """

    manifest: Manifest
    exports: list[tuple[str, Any]]
    phase_times: dict[str, float] = dataclasses.field(default_factory=dict)


def build(
    network: Union[Network, Sequence[Network]],
    output_dir: Union[str, Path],
    *,
    use_plugin: bool = True,
    overwrite: bool = False,
    opset: Optional[int] = None,
    verify_each_pass: bool = False,
    external_data_threshold: int = 1 << 20,
    providers: Optional[Sequence[str]] = None,
    timings: Optional[dict[str, float]] = None,
) -> Engine:
    """Compiles ``network`` into an engine directory and loads it.

    The tensor-parallel size comes from the network's ops (``embedding(..., tp_size=N)``).

    Args:
        network: a logical network, or a list with one rank-local network per rank.
        output_dir: the engine directory to create.
        use_plugin: lower embeddings to graphbuild's ``TPEmbedding`` custom op; False uses standard
            ONNX ops only, so the engine runs on any ONNX runtime (same results, same errors).
        overwrite: replace an existing engine at ``output_dir``.
        opset: standard ONNX opset of the segments: 17 or newer, up to what the installed ONNX
            Runtime loads (default 21).
        verify_each_pass: run the IR verifier after every pass (slower; tests turn it on).
        external_data_threshold: initializers larger than this many bytes go to external data.
        providers: execution providers for the returned engine.
        timings: when given, receives the seconds each phase took: the compile phases
            (``CompiledEngine.phase_times``), then ``write`` and ``load``.

    Returns:
        The loaded engine.

    Raises:
        GraphBuildError: the network is invalid, cannot be partitioned or exported, or the
            directory cannot be written; the message names the op, node or file.
    """
    compiled = compile_engine(
        network, use_plugin=use_plugin, opset=opset, verify_each_pass=verify_each_pass, external_data_threshold=external_data_threshold, timings=timings
    )
    clock = time.perf_counter()
    path = write_compiled(compiled, output_dir, overwrite=overwrite)
    written = time.perf_counter()
    engine = Engine.load(path, providers=providers, verify=False)
    if timings is not None:
        timings["write"] = timings.get("write", 0.0) + written - clock
        timings["load"] = timings.get("load", 0.0) + time.perf_counter() - written
    return engine


def compile_engine(
    network: Union[Network, Sequence[Network]],
    *,
    use_plugin: bool = True,
    opset: Optional[int] = None,
    verify_each_pass: bool = False,
    external_data_threshold: int = 1 << 20,
    timings: Optional[dict[str, float]] = None,
) -> CompiledEngine:
    """Runs ``gb.build``'s compiler phases in memory: passes, partition, segmentation, lowering.

    Arguments are ``build``'s. The seconds each phase took are the result's ``phase_times``;
    ``timings``, when given, also receives them, added to what it holds.
    """
    from graphbuild.passes.export_onnx import DEFAULT_OPSET, check_opset

    networks = [network] if isinstance(network, Network) else list(network)
    if not networks or not all(isinstance(n, Network) for n in networks):
        raise GraphConstructionError(f"gb.build needs a Network or a list of Networks, got {network!r}")
    source = networks[0]
    if not source.outputs:
        raise GraphConstructionError(f"network '{source.name}' has no outputs; mark some with net.mark_output(tensor, name)")
    _check_same_interface(networks)
    opset = DEFAULT_OPSET if opset is None else opset
    check_opset(opset)
    with _gc_paused():
        return _compile(networks, use_plugin, opset, verify_each_pass, external_data_threshold, timings)


def _compile(
    networks: list[Network], use_plugin: bool, opset: int, verify_each_pass: bool, external_data_threshold: int, timings: Optional[dict[str, float]]
) -> CompiledEngine:
    from graphbuild.passes.infra import add_seconds

    runner = phases(verify_each_pass)
    state = runner.run(_State(networks, use_plugin, opset, external_data_threshold))
    if timings is not None:
        add_seconds(timings, runner.seconds)
    source, ranks, exports = networks[0], state.ranks, state.exports
    custom = sorted({(n.domain, n.op_type) for _, exported in exports for n in exported.model.graph.node if n.domain})
    manifest = Manifest(
        graphbuild_version=graphbuild.__version__,
        name=source.name,
        tp_size=len(ranks),
        tp_group=tuple(ranks[0].meta.get("tp_group", range(len(ranks)))),
        use_plugin=use_plugin,
        opset=opset,
        custom_ops=tuple(CustomOp(domain, op_type, DOMAIN_VERSION) for domain, op_type in custom),
        inputs=tuple(TensorSpec(v.name, v.dtype, v.shape) for v in source.inputs.values()),
        outputs=tuple(TensorSpec(name, v.dtype, v.shape) for name, v in ranks[0].outputs.items()),
        ranks=tuple(state.rank_entries),
    )
    json.dumps(manifest.to_json())  # fail here, not half-way through writing, if an attribute is not JSON data
    return CompiledEngine(manifest, exports, dict(runner.seconds))


def write_compiled(compiled: CompiledEngine, output_dir: Union[str, Path], *, overwrite: bool = False) -> Path:
    """Writes a compiled engine's files and manifest atomically into ``output_dir``; returns the path."""
    from graphbuild.passes.export_onnx import write_model

    def write_files(staging: Path) -> list[Path]:
        written: list[Path] = []
        for relpath, exported in compiled.exports:
            path = staging / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            written.extend(write_model(exported, path))
        return written

    return write_engine(Path(output_dir), compiled.manifest, write_files, overwrite=overwrite)
