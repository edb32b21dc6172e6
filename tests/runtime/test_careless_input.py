"""Careless input to the runtime: lossy Python-list feeds, bad settings, read-only or clobbered ``out=``, shared outputs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.runtime import plan as plan_module
from graphbuild.runtime import session

CPU = ["CPUExecutionProvider"]


def lookup_net(table, tp_size=1, sharding_dim=0, id_dtype="int64"):
    net = gb.Network("lookup")
    with net:
        ids = net.add_input("input_ids", id_dtype, (1, "n"))
        net.mark_output(F.embedding(ids, gb.constant(table, name="wte"), tp_size=tp_size, sharding_dim=sharding_dim, name="wte"), "emb")
    return net


@pytest.fixture
def table(rng):
    return rng.standard_normal((10, 4)).astype(np.float32)


@pytest.fixture
def engine(tmp_path, table):
    return gb.build(lookup_net(table), tmp_path / "lookup", providers=CPU)


# ------------------------------------------------------------------------------ list feeds
@pytest.mark.parametrize(
    "feed,message",
    [
        ([[1.7, 2.9]], r"input 'input_ids' is int64 and takes integers, but the list holds floats \(float64\)"),
        ([[True, "3"]], r"input 'input_ids' is int64 and takes integers, but the list holds strings"),
        ([[True, False]], r"input 'input_ids' is int64 and takes integers, but the list holds booleans \(bool\)"),
        ([[1, 2**70]], r"input 'input_ids'"),
    ],
)
def test_lossy_list_feeds_are_refused_by_engines_and_the_reference(engine, table, feed, message):
    with pytest.raises(gb.InputError, match=message):
        engine.run({"input_ids": feed})
    with pytest.raises(gb.InputError, match=message):
        gb.reference.run(lookup_net(table), {"input_ids": feed})


def test_integer_lists_still_work_and_must_fit_narrow_dtypes(tmp_path, table):
    engine = gb.build(lookup_net(table, id_dtype="int32"), tmp_path / "i32", providers=CPU)
    np.testing.assert_array_equal(engine.run({"input_ids": [[1, 2, 9]]})["emb"], table[[[1, 2, 9]]])
    np.testing.assert_array_equal(gb.reference.run(lookup_net(table, id_dtype="int32"), {"input_ids": [[3]]})["emb"], table[[[3]]])
    with pytest.raises(gb.InputError, match=r"input 'input_ids' is int32; the value 4294967296 does not fit in it"):
        engine.run({"input_ids": [[1, 2**32]]})


def test_float_inputs_take_integer_and_float_lists_but_not_strings():
    net = gb.Network("scale")
    with net:
        x = net.add_input("x", "float32", (2,))
        net.mark_output(x * 2.0, "y")
    np.testing.assert_array_equal(gb.reference.run(net, {"x": [1, 2.5]})["y"], np.array([2.0, 5.0], np.float32))
    with pytest.raises(gb.InputError, match=r"input 'x' is float32 and takes numbers, but the list holds strings"):
        gb.reference.run(net, {"x": ["1", "2"]})


# ------------------------------------------------------------------------------ out= on error
@pytest.mark.parametrize("use_plugin", [False, True])
@pytest.mark.parametrize("tp_size", [1, 2])
def test_out_is_untouched_when_an_id_is_out_of_range(tmp_path, table, monkeypatch, use_plugin, tp_size):
    monkeypatch.setattr(plan_module, "DIRECT_MIN_BYTES", 0)  # the small output is written directly, as large ones are
    engine = gb.build(lookup_net(table, tp_size=tp_size), tmp_path / f"e{use_plugin}{tp_size}", providers=CPU, use_plugin=use_plugin)
    good = np.array([[1, 2, 3]])
    for _ in range(2):  # the first call makes the plan, the second runs it
        target = np.full((1, 3, 4), -7.0, np.float32)
        with pytest.raises(gb.OutOfRangeIdError, match=r"id 10 at flat position 2"):
            engine.run({"input_ids": np.array([[1, 2, 10]])}, out={"emb": target})
        np.testing.assert_array_equal(target, np.full((1, 3, 4), -7.0, np.float32))
        assert engine.run({"input_ids": good}, out={"emb": target})["emb"] is target
        np.testing.assert_array_equal(target, table[good])


def test_a_read_only_out_array_is_named_as_such(engine):
    target = np.zeros((1, 3, 4), np.float32)
    target.flags.writeable = False
    with pytest.raises(gb.InputError) as raised:
        engine.run({"input_ids": np.array([[1, 2, 3]])}, out={"emb": target})
    assert str(raised.value) == "out['emb'] is read-only (its flags.writeable is False); pass a writable numpy array of float32(1, 3, 4)"


# ------------------------------------------------------------------------------ shared outputs
@pytest.mark.parametrize("tp_size,sharding_dim", [(1, 0), (2, 0), (2, 1)])
def test_one_tensor_under_two_names_and_ranks_gives_distinct_arrays(tmp_path, rng, tp_size, sharding_dim):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    net = gb.Network("twice")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        emb = F.embedding(ids, gb.constant(table, name="wte"), tp_size=tp_size, sharding_dim=sharding_dim, name="wte")
        net.mark_output(emb, "a")
        net.mark_output(emb, "b")
    engine = gb.build(net, tmp_path / "twice", providers=CPU)
    ids = np.array([3, 1, 4])
    for _ in range(2):
        result = engine.run({"ids": ids})
        assert not np.shares_memory(result["a"], result["b"])
        result["a"][0, 0] = 99.0
        np.testing.assert_array_equal(result["b"], table[ids])
        ranks = engine.run_all_ranks({"ids": ids})
        arrays = [r[name] for r in ranks for name in ("a", "b")]
        assert not any(np.shares_memory(x, y) for i, x in enumerate(arrays) for y in arrays[i + 1 :])
        for array in arrays:
            np.testing.assert_array_equal(array, table[ids])


# ------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("value,level", [("warning", 2), ("WARNING", 2), ("3", 3), ("fatal", 4)])
def test_ort_log_severity_takes_names_and_numbers(monkeypatch, value, level):
    monkeypatch.setenv("GRAPHBUILD_ORT_LOG_SEVERITY", value)
    assert session.ort_log_severity() == level


def test_a_bad_ort_log_severity_is_one_clear_error_not_an_import_traceback(engine):
    done = subprocess.run([sys.executable, "-c", "import graphbuild"], capture_output=True, text=True, env={**os.environ, "GRAPHBUILD_ORT_LOG_SEVERITY": "warning"}, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
    done = subprocess.run(
        [sys.executable, "-c", f"import graphbuild as gb; gb.Engine.load({str(engine.path)!r}, providers=['CPUExecutionProvider'])"],
        capture_output=True, text=True, env={**os.environ, "GRAPHBUILD_ORT_LOG_SEVERITY": "loud"}, timeout=120,
    )
    assert done.returncode != 0
    assert "ConfigurationError: GRAPHBUILD_ORT_LOG_SEVERITY is 'loud'; use 0-4 or verbose, info, warning, error, fatal" in done.stderr


def test_providers_env_is_checked(monkeypatch):
    monkeypatch.setenv("GRAPHBUILD_PROVIDERS", "CPUExecutionProvider")
    assert session.default_providers() == CPU
    monkeypatch.setenv("GRAPHBUILD_PROVIDERS", "NopeExecutionProvider")
    with pytest.raises(gb.ConfigurationError, match=r"GRAPHBUILD_PROVIDERS names 'NopeExecutionProvider', which this onnxruntime does not have \(it has .*CPUExecutionProvider"):
        session.default_providers()
    monkeypatch.setenv("GRAPHBUILD_PROVIDERS", " , ")
    with pytest.raises(gb.ConfigurationError, match=r"GRAPHBUILD_PROVIDERS is ' , '; give provider names separated by commas"):
        session.default_providers()


def test_cuda_without_a_device_is_refused_by_name(monkeypatch, engine):
    monkeypatch.setattr(session, "cuda_device_count", lambda: 0)
    monkeypatch.setattr(session.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setenv("GRAPHBUILD_PROVIDERS", "CUDAExecutionProvider")
    with pytest.raises(gb.ConfigurationError, match=r"GRAPHBUILD_PROVIDERS names CUDAExecutionProvider, but no CUDA device is present"):
        gb.Engine.load(engine.path)
    monkeypatch.delenv("GRAPHBUILD_PROVIDERS")
    with pytest.raises(gb.ConfigurationError, match=r"providers names CUDAExecutionProvider, but no CUDA device is present"):
        gb.Engine.load(engine.path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


@pytest.mark.parametrize(
    "providers,message",
    [
        ("CPUExecutionProvider", r"providers must be a list of provider names such as \['CPUExecutionProvider'\], got the string 'CPUExecutionProvider'"),
        ([], r"providers is empty"),
        ([3], r"providers must be a list of provider names .*, got \[3\]"),
        (["NopeExecutionProvider"], r"providers names 'NopeExecutionProvider', which this onnxruntime does not have"),
    ],
)
def test_providers_argument_is_checked(engine, providers, message):
    with pytest.raises(gb.ConfigurationError, match=message):
        gb.Engine.load(engine.path, providers=providers)


@pytest.mark.parametrize("threads", [10**6, 0, -1, 2.5, True, "4"])
def test_intra_op_threads_is_checked_before_anything_is_allocated(engine, threads):
    with pytest.raises(gb.ConfigurationError, match=r"intra_op_threads must be None or an integer from 1 to \d+ .*, got"):
        gb.Engine.load(engine.path, providers=CPU, intra_op_threads=threads)


def test_intra_op_threads_takes_numpy_integers(engine, table):
    loaded = gb.Engine.load(engine.path, providers=CPU, intra_op_threads=np.int64(1))
    np.testing.assert_array_equal(loaded.run({"input_ids": [[2]]})["emb"], table[[[2]]])
