"""``examples/gpt_tp.py`` at a small size: a GPT-2-named random checkpoint loaded into every rank
and compiled at tp_size 1, 2 and 4; logits (values and argmax) against the numpy GPT-2 of
``numpy_gpt.py``, and greedy tokens equal to numpy's at every tp_size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphbuild as gb

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "examples" / "gpt_tp.py"
TP_SIZES = (1, 2, 4)


@pytest.fixture(scope="module")
def example(load_script):
    return load_script(EXAMPLE)


@pytest.fixture(scope="module")
def numpy_gpt(load_script):
    return load_script(HERE / "numpy_gpt.py")


@pytest.fixture(scope="module")
def config(example):
    # vocab 97 splits unevenly over 2 and 4 ranks (padded LM-head shards); 4 heads divide 1, 2, 4
    return example.GPTConfig(vocab_size=97, n_positions=16, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def checkpoint(example, config, tmp_path_factory):
    weights = example.random_gpt2_weights(config, seed=7, block_std=0.5)  # varied greedy tokens at this small size
    path = gb.save_safetensors(weights, tmp_path_factory.mktemp("gpt") / "gpt.safetensors")
    return weights, path


@pytest.fixture(scope="module")
def engines(example, config, checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt_engines")
    return {tp: example.build_engine(config, tp, checkpoint[1], root / f"tp{tp}") for tp in TP_SIZES}


@pytest.mark.parametrize("tp_size", TP_SIZES)
def test_logits_match_numpy(tp_size, engines, checkpoint, config, numpy_gpt, rng):
    engine = engines[tp_size]
    assert engine.tp_size == tp_size
    ids = rng.integers(0, config.vocab_size, size=(2, 9))
    logits = engine.run({"input_ids": ids})["logits"]
    expected = numpy_gpt.gpt_logits(checkpoint[0], ids, num_heads=config.n_head)
    assert logits.shape == (2, 9, config.vocab_size)  # padded vocab never returned
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)  # logits are O(0.5); errors seen ~1e-7
    np.testing.assert_array_equal(logits.argmax(-1), expected.argmax(-1))


def test_greedy_generation_agrees_at_every_tp_size(engines, example, checkpoint, config, numpy_gpt):
    prompt = [5, 17, 42]
    expected = numpy_gpt.greedy_generate(checkpoint[0], np.array([prompt]), 6, num_heads=config.n_head)[0].tolist()
    assert len(set(expected[3:])) > 2  # not a degenerate repetition, so agreeing means something
    for tp_size, engine in engines.items():
        assert example.generate(engine, prompt, 6, config.n_positions) == expected, f"tp_size {tp_size}"
    with pytest.raises(ValueError, match="n_positions=16"):
        example.generate(engines[1], prompt, 14, config.n_positions)


def test_checkpoint_names_are_gpt2s(example, config):
    assert example.checkpoint_name("h.1.attn.qkv.bias") == "h.1.attn.c_attn.bias"
    assert example.checkpoint_name("h.0.mlp.proj.weight") == "h.0.mlp.c_proj.weight"
    assert example.checkpoint_name("h.0.ln_2.weight") == "h.0.ln_2.weight"
    assert example.checkpoint_name("wte.weight") == "wte.weight"
    model = example.GPT(config)
    names = {name for name, _ in model.named_parameters()}
    assert {example.checkpoint_name(n) for n in names} == set(example.random_gpt2_weights(config))  # tied head: no lm_head tensor


def test_main_generates_the_same_tokens(example, config, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"vocab_size": 50, "n_positions": 12, "n_embd": 16, "n_layer": 1, "n_head": 2}')
    assert example.main(["--config", str(cfg), "--tp-sizes", "1", "2", "--steps", "3", "--prompt", "3", "4", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "tp_size 2:" in out and "OK: the same tokens at every tp_size" in out
    assert (tmp_path / "o" / "gpt_random.safetensors").is_file()


def test_main_prints_the_documented_session(example, doc_blocks, capsys):
    """Mirrors the session of docs/examples.md, '$ .venv/bin/python examples/gpt_tp.py': the default
    config at tp_size 1, 2 and 4 prints the documented lines, generated tokens included."""
    documented = doc_blocks.find_session("docs/examples.md", ".venv/bin/python examples/gpt_tp.py")
    assert example.main([]) == 0
    problem = doc_blocks.mismatch(documented.expected, capsys.readouterr().out)
    assert not problem, problem
