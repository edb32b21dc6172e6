"""The schedule parsed from the manifest, the Executor protocol, executor choice, and the plugin's error contract."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild import plugin
from graphbuild.engine import engine as engine_module
from graphbuild.runtime import Executor, LocalExecutor, Schedule
from graphbuild.runtime.schedule import CollectiveStep, SegmentStep

CPU = ["CPUExecutionProvider"]


def norm_engine(tmp_path, table, tp_size, sharding_dim, use_plugin=True):
    net = gb.Network("norm")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        emb = F.embedding(ids, gb.constant(table, name="wte"), tp_size=tp_size, sharding_dim=sharding_dim, name="wte")
        net.mark_output(F.rms_norm(emb, gb.constant(np.ones(table.shape[1], table.dtype))), "normed")
    return gb.build(net, tmp_path / f"norm{tp_size}{sharding_dim}{use_plugin}", providers=CPU, use_plugin=use_plugin)


def test_schedule_lists_each_ranks_segments_and_collectives_in_order(tmp_path, rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    engine = norm_engine(tmp_path, table, 3, 1, use_plugin=False)
    schedule = engine.executor.schedule
    assert schedule == Schedule.from_manifest(gb.Engine.load(engine.path).manifest)
    assert schedule.tp_size == 3 and len(schedule.ranks) == 3 and not schedule.needs_plugin
    for position, rank in enumerate(schedule.ranks):
        assert rank.rank == position
        kinds = [type(step) for step in rank.steps]
        assert kinds == [SegmentStep, CollectiveStep, SegmentStep]
        first, gather, second = rank.steps
        assert first.file == f"rank{position}/segment0.onnx" and first.rank == position
        assert (gather.op, gather.group, gather.axis % 2, gather.sizes) == ("allgather", (0, 1, 2), 1, (2, 1, 1))
        assert gather.input in first.outputs and gather.output in second.inputs
        assert [check.vocab_size for check in first.checks] == [10], "the lowered lookup's range check"
        assert [name for name, _ in rank.outputs] == ["normed"]
    assert schedule.ranks[1].files == ("rank1/segment0.onnx", "rank1/segment1.onnx")


class RecordingExecutor:
    """A stand-in executor: any object with the protocol's members runs an engine."""

    def __init__(self, inner: LocalExecutor) -> None:
        self.schedule = inner.schedule
        self.inner = inner
        self.calls = 0

    @property
    def ranks(self):
        return self.inner.ranks

    def run(self, feeds, out=None):
        self.calls += 1
        return self.inner.run(feeds, out)

    def run_all_ranks(self, feeds):
        self.calls += 1
        return self.inner.run_all_ranks(feeds)


def test_engine_runs_through_any_executor_and_registered_names(tmp_path, rng, monkeypatch):
    table = rng.standard_normal((8, 4)).astype(np.float32)
    built = norm_engine(tmp_path, table, 2, 0)
    assert isinstance(built.executor, Executor) and list(built.executor.ranks) == [0, 1]
    local = LocalExecutor(built.path, built.executor.schedule, providers=CPU)
    wrapper = RecordingExecutor(local)
    assert isinstance(wrapper, Executor)
    engine = gb.Engine.load(built.path, executor=wrapper)
    ids = rng.integers(0, 8, size=5)
    np.testing.assert_array_equal(engine.run({"ids": ids})["normed"], built.run({"ids": ids})["normed"])
    assert wrapper.calls == 1
    requests = []

    def factory(request):
        requests.append(request)
        request.check_ranks([1])
        return RecordingExecutor(LocalExecutor(request.root, request.schedule, providers=CPU))

    monkeypatch.setitem(engine_module.EXECUTORS, "recording", factory)
    engine = gb.Engine.load(built.path, executor="recording")
    assert isinstance(engine.executor, RecordingExecutor) and requests[0].schedule.tp_size == 2
    with pytest.raises(gb.EngineError, match=r"unknown executor 'nccl'; choose one of \['local', 'mpi', 'recording'\]"):
        gb.Engine.load(built.path, executor="nccl")
    with pytest.raises(gb.EngineError, match=r"executor must be one of .* or an Executor, got int"):
        gb.Engine.load(built.path, executor=3)


def test_an_executor_verifies_only_the_ranks_it_opens(tmp_path, rng, monkeypatch):
    table = rng.standard_normal((8192, 128)).astype(np.float32)  # 2 MiB a shard: external data
    built = norm_engine(tmp_path, table, 2, 0)
    (data,) = (built.path / "rank1").glob("*.data")
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 0xFF  # rank 1's weights tampered with, same size
    data.write_bytes(bytes(content))

    def rank0_only(request):
        request.check_ranks([0])
        return RecordingExecutor(built.executor)

    monkeypatch.setitem(engine_module.EXECUTORS, "rank0", rank0_only)
    gb.Engine.load(built.path, executor="rank0")  # rank 0's files are sound
    with pytest.raises(gb.EngineError, match=r"rank1/.*checksum mismatch"):
        gb.Engine.load(built.path)


def test_out_of_range_contract_round_trips_and_matches_the_plugin(tmp_path, rng):
    text = plugin.format_out_of_range("wte/rank0", -7, 12, 100, op=plugin.TP_EMBEDDING)
    assert plugin.parse_out_of_range(f"[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : {text}") == ("wte/rank0", -7, 12, 100)
    assert plugin.parse_out_of_range(plugin.format_out_of_range("wte", 1, 2, 3)) is None, "only the plugin's wording"
    table = rng.standard_normal((10, 4)).astype(np.float32)
    engine = norm_engine(tmp_path, table, 1, 0, use_plugin=True)
    with pytest.raises(gb.OutOfRangeIdError) as raised:
        engine.run({"ids": np.array([3, 4, 17])})
    assert str(raised.value) == "embedding 'wte': id 17 at flat position 2 is outside the vocabulary [0, 10)"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_runtime_does_not_import_the_compiler():
    package = Path(gb.__file__).parent
    files = sorted((package / "runtime").glob("*.py")) + [package / "engine" / "engine.py"]
    for path in files:
        bad = {name for name in _imports(path) if name.startswith(("graphbuild.ops", "graphbuild.passes", "graphbuild.functional"))}
        assert not bad, f"{path.name} imports {bad}"
