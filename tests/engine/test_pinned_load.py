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


def rebuild_after_sessions(monkeypatch, target, seeds: list[int]) -> None:
    """After each ONNX Runtime session the next load makes, another build (of the next seed in
    ``seeds``) replaces ``target``; once ``seeds`` is used up, sessions are made undisturbed."""
    real_create = executor_module.create_session

    def create_then_rebuild(path, **kwargs):
        session = real_create(path, **kwargs)
        if seeds:
            monkeypatch.setattr(executor_module, "create_session", real_create)  # the build's own load
            gb.build(net(seeds.pop(0)), target, overwrite=True)
            monkeypatch.setattr(executor_module, "create_session", create_then_rebuild)
        return session

    monkeypatch.setattr(executor_module, "create_session", create_then_rebuild)


@pytest.mark.parametrize("plain_rename", [False, True], ids=["renameat2", "plain-rename"])
@pytest.mark.parametrize("verify", [True, False])
def test_a_rebuild_during_a_load_never_mixes_engines(tmp_path, monkeypatch, plain_rename, verify):
    if plain_rename:
        monkeypatch.setattr(renames, "_RENAMEAT2", None)
    gb.build(net(0), tmp_path / "e")
    rebuild_after_sessions(monkeypatch, tmp_path / "e", [1])  # after rank 0's session is made
    engine = gb.Engine.load(tmp_path / "e", verify=verify)
    got = engine.run({"input_ids": IDS})["emb"]
    # Without pinning rank 0 ran build 0's weights and rank 1 build 1's: rows of both tables.
    np.testing.assert_array_equal(got, table(1)[IDS])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_a_directory_that_keeps_being_replaced_fails_clearly(tmp_path, monkeypatch):
    gb.build(net(0), tmp_path / "e")
    rebuild_after_sessions(monkeypatch, tmp_path / "e", list(range(1, 10)))
    with pytest.raises(gb.EngineError, match=r"'.*e' was replaced by another build while it was being loaded; load it again"):
        gb.Engine.load(tmp_path / "e")


def test_errors_raised_while_pinned_name_the_users_path(tmp_path):
    from graphbuild.engine.files import load_pinned

    gb.build(net(0), tmp_path / "e")

    def fail(pin):
        raise gb.ExecutionError(f"{pin.root / 'rank0/segment0.onnx'}: ONNX Runtime cannot load this segment")

    with pytest.raises(gb.ExecutionError) as info:
        load_pinned(tmp_path / "e", fail)
    assert str(info.value) == f"{tmp_path / 'e' / 'rank0/segment0.onnx'}: ONNX Runtime cannot load this segment"
