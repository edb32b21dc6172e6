"""A load sees exactly one complete engine, even while another build replaces the directory."""

from __future__ import annotations

import os

import numpy as np
import pytest

import graphbuild as gb
from graphbuild.engine import PinnedEngineDir, read_manifest, renames
from graphbuild.runtime import executor as executor_module
from tests.engine.test_engine_files import small_network

IDS = np.arange(30).reshape(1, 30)  # rows of both shards


def net(seed: int) -> gb.Network:
    return small_network(np.random.default_rng(seed), vocab=30, hidden=4)


def table(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((30, 4)).astype(np.float32)


def test_pinned_paths_keep_naming_the_pinned_directory(tmp_path):
    gb.build(net(0), tmp_path / "e")
    with PinnedEngineDir(tmp_path / "e") as pin:
        os.rename(tmp_path / "e", tmp_path / "moved")
        gb.build(net(1), tmp_path / "e")
        assert pin.replaced()
        assert read_manifest(pin).files == read_manifest(tmp_path / "moved").files
        assert pin.path_of("rank0/segment0.onnx").read_bytes() == (tmp_path / "moved/rank0/segment0.onnx").read_bytes()
    assert read_manifest(tmp_path / "e").files != read_manifest(tmp_path / "moved").files


@pytest.mark.parametrize("plain_rename", [False, True], ids=["renameat2", "plain-rename"])
@pytest.mark.parametrize("verify", [True, False])
def test_a_rebuild_during_a_load_never_mixes_engines(tmp_path, monkeypatch, plain_rename, verify):
    if plain_rename:
        monkeypatch.setattr(renames, "_RENAMEAT2", None)
    gb.build(net(0), tmp_path / "e")
    real_create = executor_module.create_session
    calls = {"n": 0}

    def create_then_rebuild(path, **kwargs):
        session = real_create(path, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:  # rank 0's session is made: now another build replaces the engine
            monkeypatch.setattr(executor_module, "create_session", real_create)
            gb.build(net(1), tmp_path / "e", overwrite=True)
        return session

    monkeypatch.setattr(executor_module, "create_session", create_then_rebuild)
    engine = gb.Engine.load(tmp_path / "e", verify=verify)
    got = engine.run({"input_ids": IDS})["emb"]
    # Without pinning rank 0 ran build 0's weights and rank 1 build 1's: rows of both tables.
    np.testing.assert_array_equal(got, table(1)[IDS])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_a_directory_that_keeps_being_replaced_fails_clearly(tmp_path, monkeypatch):
    gb.build(net(0), tmp_path / "e")
    real_create = executor_module.create_session
    seed = {"n": 1}

    def always_rebuild(path, **kwargs):
        session = real_create(path, **kwargs)
        seed["n"] += 1
        monkeypatch.setattr(executor_module, "create_session", real_create)
        gb.build(net(seed["n"]), tmp_path / "e", overwrite=True)
        monkeypatch.setattr(executor_module, "create_session", always_rebuild)
        return session

    monkeypatch.setattr(executor_module, "create_session", always_rebuild)
    with pytest.raises(gb.EngineError, match=r"'.*e' was replaced by another build while it was being loaded; load it again"):
        gb.Engine.load(tmp_path / "e")
