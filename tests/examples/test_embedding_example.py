"""``examples/embedding_tp.py`` at small sizes: every (tp_size, sharding_dim) the demo runs, built
with and without the plugin, compared with numpy; and the script's ``main`` end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphbuild as gb

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embedding_tp.py"
VOCAB, HIDDEN = 97, 10  # neither divides evenly by 4


@pytest.fixture(scope="module")
def example(load_script):
    return load_script(EXAMPLE)


def _table(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((VOCAB, HIDDEN), dtype=np.float32)


def test_make_network_is_the_llama_embedding_layer(example):
    net = example.make_network(tp_size=2, sharding_dim=1, vocab_size=VOCAB, hidden_size=HIDDEN)
    assert list(net.inputs) == ["input_ids"] and list(net.outputs) == ["embeddings"]
    assert list(net.constants) == ["wte.weight"]
    (node,) = net.nodes
    assert (node.op, node.name, node.attrs["tp_size"], node.attrs["sharding_dim"]) == ("embedding", "wte", 2, 1)
    assert net.outputs["embeddings"].shape == ("batch", "seq", HIDDEN)
    np.testing.assert_array_equal(net.constants["wte.weight"].const, _table())  # N(0, 1) from seed 0


def test_make_network_defaults_are_llama_sizes(example):
    import inspect

    defaults = {n: p.default for n, p in inspect.signature(example.make_network).parameters.items()}
    assert (defaults["vocab_size"], defaults["hidden_size"], defaults["tp_size"], defaults["sharding_dim"]) == (32000, 4096, 2, 0)


@pytest.mark.parametrize("use_plugin", [True, False], ids=["plugin", "lowered"])
@pytest.mark.parametrize("sharding_dim", [0, 1])
@pytest.mark.parametrize("tp_size", [1, 2, 4])
def test_every_configuration_matches_numpy(example, tp_size, sharding_dim, use_plugin, rng, tmp_path):
    net = example.make_network(tp_size=tp_size, sharding_dim=sharding_dim, vocab_size=VOCAB, hidden_size=HIDDEN, seed=3)
    engine = gb.build(net, tmp_path / "engine", use_plugin=use_plugin, verify_each_pass=True)
    assert engine.tp_size == tp_size
    assert bool(engine.manifest.custom_ops) == use_plugin
    table = _table(3)
    seed_ids = np.array([[1, 2, 3]], dtype=np.int64)
    out = engine.run({"input_ids": seed_ids})["embeddings"]
    assert out.shape == (1, 3, HIDDEN)
    np.testing.assert_array_equal(out, table[seed_ids])
    ids = rng.integers(0, VOCAB, size=(3, 5))
    for rank_out in engine.run_all_ranks({"input_ids": ids}):
        np.testing.assert_array_equal(rank_out["embeddings"], table[ids])


def test_check_config_reports_shape_diff_and_timing(example, tmp_path):
    result = example.check_config(_table(), 2, 0, tmp_path / "engine", use_plugin=True)
    assert result["ok"] and result["shape"] == (1, 3, HIDDEN) and result["max_abs_diff"] == 0.0
    assert result["build_ms"] > 0 and result["run_ms"] > 0


def test_main_builds_every_configuration_and_prints_ok(example, tmp_path, capsys):
    status = example.main(["--vocab-size", str(VOCAB), "--hidden-size", str(HIDDEN), "--out", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.rstrip().endswith("OK")
    assert out.count(f"[1, 3, {HIDDEN}]") == 6
    kept = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert kept == ["tp1_sd0", "tp1_sd1", "tp2_sd0", "tp2_sd1", "tp4_sd0", "tp4_sd1"]


def test_main_without_out_leaves_no_engines_behind(example, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert example.main(["--quick", "--no-plugin"]) == 0
    assert "OK" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_main_refuses_a_zero_size_instead_of_using_the_default(example, capsys):
    assert example.main(["--vocab-size", "0", "--hidden-size", str(HIDDEN)]) == 1
    captured = capsys.readouterr()
    assert f"embedding 0 x {HIDDEN}" in captured.out
    assert "num_embeddings must be a positive int, got 0" in captured.err
