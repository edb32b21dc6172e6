"""Every file an engine reads is listed, checksummed and a regular file inside it."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphbuild as gb
from graphbuild.engine import MANIFEST
from tests.engine.test_engine_files import rewrite, small_network


@pytest.fixture
def engine_dir(tmp_path, rng):
    gb.build(small_network(rng, vocab=30, hidden=4), tmp_path / "engine")
    return tmp_path / "engine"


def test_manifest_symlink_to_outside_is_refused(engine_dir, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.move(engine_dir / MANIFEST, outside)
    (engine_dir / MANIFEST).symlink_to(outside)
    with pytest.raises(gb.EngineError, match=r"config\.json: is a symbolic link, not a regular file"):
        gb.Engine.load(engine_dir)


def test_rank_folder_symlink_is_refused(engine_dir, tmp_path):
    shutil.move(engine_dir / "rank1", tmp_path / "rank1")
    (engine_dir / "rank1").symlink_to(tmp_path / "rank1")
    with pytest.raises(gb.EngineError, match=r"engine/rank1: is a symbolic link"):
        gb.Engine.load(engine_dir, verify=False)


def _load_in_thread(path, **kwargs):
    outcome: dict = {}

    def target():
        try:
            outcome["engine"] = gb.Engine.load(path, **kwargs)
        except gb.GraphBuildError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)  # a guard against a hang, not a speed assertion
    assert not thread.is_alive(), "Engine.load blocked"
    return outcome


@pytest.mark.parametrize("verify", [False, True])
def test_fifo_segment_does_not_block(engine_dir, verify):
    path = engine_dir / "rank1/segment0.onnx"
    path.unlink()
    os.mkfifo(path)
    outcome = _load_in_thread(engine_dir, verify=verify)
    assert "is a FIFO, not a regular file" in str(outcome.get("error"))


def test_fifo_manifest_does_not_block(engine_dir):
    (engine_dir / MANIFEST).unlink()
    os.mkfifo(engine_dir / MANIFEST)
    outcome = _load_in_thread(engine_dir)
    assert "config.json: is a FIFO, not a regular file" in str(outcome.get("error"))


def _external(name: str, location: str, dims=(2,)) -> TensorProto:
    tensor = helper.make_tensor(name, TensorProto.FLOAT, dims, np.zeros(dims, np.float32).tobytes(), raw=True)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(dims))))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _plant(engine_dir, change) -> None:
    """Adds unlisted external data (a file inside the engine) to rank 0's segment, checksums updated."""
    (engine_dir / "rank0/extra.bin").write_bytes(np.arange(64, dtype=np.float32).tobytes())
    model = onnx.load(str(engine_dir / "rank0/segment0.onnx"), load_external_data=False)
    change(model.graph)
    rewrite(engine_dir, "rank0/segment0.onnx", model.SerializeToString())


def _constant_node(graph) -> None:
    graph.node.append(helper.make_node("Constant", [], ["planted"], name="planted_constant", value=_external("planted", "extra.bin")))


def _if_subgraph(graph) -> None:
    branch = helper.make_graph([helper.make_node("Constant", [], ["b"], name="inner", value=_external("b", "extra.bin"))], "branch", [], [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    graph.initializer.append(cond)
    graph.node.append(helper.make_node("If", ["cond"], ["planted_if"], name="planted_if", then_branch=branch, else_branch=branch))


def _sparse_initializer(graph) -> None:
    values = _external("planted_sparse", "extra.bin")
    indices = helper.make_tensor("planted_sparse_idx", TensorProto.INT64, [2], [0, 1])
    graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))


@pytest.mark.parametrize(
    "change, where",
    [(_constant_node, "attribute 'value' of node 'planted_constant'"), (_if_subgraph, "attribute 'value' of node 'inner'"), (_sparse_initializer, "sparse initializer 'planted_sparse'")],
    ids=["constant", "if-subgraph", "sparse-initializer"],
)
def test_unlisted_external_data_anywhere_is_refused(engine_dir, change, where):
    _plant(engine_dir, change)
    for verify in (True, False):
        with pytest.raises(gb.EngineError, match=rf"rank0/segment0\.onnx: {where} refers to external data 'extra\.bin', which the manifest does not list"):
            gb.Engine.load(engine_dir, verify=verify)
