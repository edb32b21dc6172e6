"""A name longer than the file system allows is an EngineError naming the path, the name and the
limit, from gb.build and from Engine.load alike, before anything is created."""

from __future__ import annotations

import os

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.engine.leftovers import BUILDING, leftover_prefix


def small_network() -> gb.Network:
    net = gb.Network("small")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        weight = gb.constant(np.arange(40, dtype=np.float32).reshape(10, 4), name="wte.weight")
        net.mark_output(F.embedding(ids, weight, tp_size=1, name="wte"), "emb")
    return net


NAME_MAX = 255


@pytest.mark.parametrize("where", ["last", "middle"])
def test_a_name_over_the_limit_is_named_in_build_and_load(tmp_path, where):
    long = "n" * 300
    target = tmp_path / long if where == "last" else tmp_path / long / "engine"
    for call in (lambda: gb.build(small_network(), target), lambda: gb.Engine.load(target)):
        with pytest.raises(gb.EngineError) as info:
            call()
        message = str(info.value)
        assert f"'{str(tmp_path)}/" in message
        assert "the name 'nnnnnnnn" in message and "is 300 bytes long" in message
        assert f"at most {NAME_MAX}" in message and "choose a shorter name" in message
    assert list(tmp_path.iterdir()) == []  # nothing created, no temporary folder left


def test_multibyte_names_are_measured_in_bytes(tmp_path):
    target = tmp_path / ("é" * 200)  # 200 characters, 400 bytes
    with pytest.raises(gb.EngineError, match="is 400 bytes long"):
        gb.Engine.load(target)


def test_a_name_that_fits_but_leaves_no_room_for_the_temporary_folder(tmp_path):
    extra = len(leftover_prefix(tmp_path / "x", BUILDING)) - 1 + 8
    target = tmp_path / ("t" * (NAME_MAX - extra + 1))
    with pytest.raises(gb.EngineError) as info:
        gb.build(small_network(), target)
    message = str(info.value)
    assert f"graphbuild first writes the engine directory beside it under a temporary name {extra} bytes longer" in message
    assert f"may be at most {NAME_MAX - extra}" in message
    assert list(tmp_path.iterdir()) == []


def test_the_longest_name_that_fits_builds_and_loads(tmp_path):
    extra = len(leftover_prefix(tmp_path / "x", BUILDING)) - 1 + 8
    target = tmp_path / ("t" * (NAME_MAX - extra))
    gb.build(small_network(), target)
    ids = np.array([3, 9])
    np.testing.assert_array_equal(gb.Engine.load(target).run({"ids": ids})["emb"], np.arange(40, dtype=np.float32).reshape(10, 4)[ids])


def test_a_path_over_path_max(tmp_path):
    deep = tmp_path.joinpath(*(["d" * 200] * 21))  # about 4,200 bytes
    with pytest.raises(gb.EngineError, match=r"the path is \d+ bytes long; this file system allows paths shorter than 4096"):
        gb.Engine.load(deep)
    assert os.listdir(tmp_path) == []
