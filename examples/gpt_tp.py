"""A GPT-2-style causal decoder compiled at tp_size 1, 2 and 4, with greedy generation.

The model is GPT-2's architecture (learned positions, pre-norm blocks, causal attention, tanh-GELU
MLP, final LayerNorm, LM head tied to the token embedding) built from ``graphbuild.layers``; each
rank holds its slice of the heads, the MLP and the vocabulary. Weights are random from a seed
(written as a GPT-2-named safetensors file first) or come from a safetensors file with GPT-2
names (``wte.weight``, ``h.0.attn.c_attn.weight``, ...: Conv1D weights ``[in, out]``, transposed on
load). Greedy generation re-runs the engine on the whole sequence for every new token (no KV
cache) and the tokens must agree at every tp_size::

    python examples/gpt_tp.py                              # small random model, tp 1 2 4
    python examples/gpt_tp.py --prompt 5 17 42 --steps 8
    python examples/gpt_tp.py --config cfg.json --weights model.safetensors

A config JSON holds ``GPTConfig``'s fields (GPT-2 ``config.json`` names: vocab_size, n_positions,
n_embd, n_layer, n_head, layer_norm_epsilon).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

import graphbuild as gb
from graphbuild import layers

TP_SIZES = (1, 2, 4)
IGNORED = ("h.*.attn.bias", "h.*.attn.masked_bias")  # causal-mask buffers some GPT-2 files carry


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """GPT-2 hyper-parameters (names as in GPT-2's ``config.json``); the defaults are a small model."""

    vocab_size: int = 1000
    n_positions: int = 64
    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 8
    layer_norm_epsilon: float = 1e-5

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "GPTConfig":
        """Reads the fields this class has from a JSON file (others are ignored)."""
        content = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{f.name: content[f.name] for f in dataclasses.fields(cls) if f.name in content})


# ------------------------------------------------------------------------------------ the model
class GPTBlock(layers.Module):
    """Pre-norm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPTConfig, mapping: layers.Mapping) -> None:
        super().__init__()
        tp = mapping.tp_kwargs()
        self.ln_1 = layers.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = layers.Attention(config.n_embd, config.n_head, causal=True, **tp)
        self.ln_2 = layers.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = layers.MLP(config.n_embd, 4 * config.n_embd, hidden_act="gelu_tanh", **tp)

    def forward(self, x: gb.Tensor) -> gb.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(layers.Module):
    """The decoder: ``input_ids [batch, seq] -> logits [batch, seq, vocab_size]``.

    Parameter names follow GPT-2's where the layers allow (``wte``, ``wpe``, ``h.{i}.ln_1``,
    ``ln_f``); ``checkpoint_name`` maps the others.
    """

    def __init__(self, config: GPTConfig, mapping: Optional[layers.Mapping] = None) -> None:
        super().__init__()
        mapping = mapping or layers.Mapping()
        tp = mapping.tp_kwargs()
        self.config = config
        self.wte = layers.Embedding(config.vocab_size, config.n_embd, **tp)
        self.wpe = layers.PositionEmbedding(config.n_positions, config.n_embd, **tp)
        self.h = layers.Module()
        for index in range(config.n_layer):
            setattr(self.h, str(index), GPTBlock(config, mapping))
        self.ln_f = layers.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = layers.LMHead(config.n_embd, config.vocab_size, tied_embedding=self.wte, **tp)

    def forward(self, input_ids: gb.Tensor) -> gb.Tensor:
        x = self.wte(input_ids) + self.wpe(input_ids)
        for index in range(self.config.n_layer):
            x = getattr(self.h, str(index))(x)
        return self.lm_head(self.ln_f(x))


_GPT2_NAMES = {"attn.qkv": "attn.c_attn", "attn.dense": "attn.c_proj", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}


def checkpoint_name(param: str) -> str:
    """The GPT-2 tensor a parameter loads from (``h.0.attn.qkv.weight`` -> ``h.0.attn.c_attn.weight``)."""
    if not param.startswith("h."):
        return param
    index, rest = param[2:].split(".", 1)
    module, leaf = rest.rsplit(".", 1)
    return f"h.{index}.{_GPT2_NAMES.get(module, module)}.{leaf}"


def transforms_for(config: GPTConfig) -> dict[str, object]:
    """GPT-2 stores its Conv1D weights ``[in, out]``; the layers want ``[out, in]``."""
    return {f"h.{i}.{module}.weight": np.transpose for i in range(config.n_layer) for module in _GPT2_NAMES}


def random_gpt2_weights(config: GPTConfig, seed: int = 0, block_std: float = 0.1) -> dict[str, np.ndarray]:
    """A GPT-2-named float32 checkpoint drawn from ``seed``.

    Embeddings use GPT-2's scales (0.02, 0.01); the blocks' weights use ``block_std``, larger than
    GPT-2's 0.02, so that an untrained model does not simply repeat the token the tied LM head
    sees in its input.
    """
    rng = np.random.default_rng(seed)
    d = config.n_embd

    def normal(*shape: int, std: float = block_std) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def around(value: float, size: int) -> np.ndarray:  # LayerNorm params: not exactly 1/0, so loading is checked
        return (value + rng.standard_normal(size) * 0.1).astype(np.float32)

    weights = {"wte.weight": normal(config.vocab_size, d, std=0.02), "wpe.weight": normal(config.n_positions, d, std=0.01)}
    for i in range(config.n_layer):
        p = f"h.{i}"
        weights.update({
            f"{p}.ln_1.weight": around(1.0, d), f"{p}.ln_1.bias": around(0.0, d),
            f"{p}.attn.c_attn.weight": normal(d, 3 * d), f"{p}.attn.c_attn.bias": normal(3 * d),
            f"{p}.attn.c_proj.weight": normal(d, d), f"{p}.attn.c_proj.bias": normal(d),
            f"{p}.ln_2.weight": around(1.0, d), f"{p}.ln_2.bias": around(0.0, d),
            f"{p}.mlp.c_fc.weight": normal(d, 4 * d), f"{p}.mlp.c_fc.bias": normal(4 * d),
            f"{p}.mlp.c_proj.weight": normal(4 * d, d), f"{p}.mlp.c_proj.bias": normal(d),
        })  # fmt: skip
    weights.update({"ln_f.weight": around(1.0, d), "ln_f.bias": around(0.0, d)})
    return weights


def load_models(config: GPTConfig, tp_size: int, weights: Union[str, Path]) -> list[GPT]:
    """Every rank's model, loaded from a GPT-2-named safetensors checkpoint (each tensor read once)."""
    with layers.no_init():  # every weight comes from the checkpoint: skip the random draws
        models = [GPT(config, mapping) for mapping in layers.Mapping.ranks(tp_size)]
    gb.load_safetensors(weights, models, name_map=checkpoint_name, transforms=transforms_for(config), ignore=IGNORED)
    return models


def make_network(model: GPT, name: str = "gpt") -> gb.Network:
    """One rank's network: ``input_ids [batch, seq] -> logits [batch, seq, vocab_size]``."""
    net = gb.Network(name)
    with net:
        ids = net.add_input("input_ids", dtype="int64", shape=("batch", "seq"))
        net.mark_output(model(ids), "logits")
    return net


def build_engine(config: GPTConfig, tp_size: int, weights: Union[str, Path], engine_dir: Union[str, Path]) -> gb.Engine:
    """Loads the checkpoint into every rank's model and compiles them into ``engine_dir``."""
    models = load_models(config, tp_size, weights)
    networks = [make_network(model, f"gpt.rank{rank}") for rank, model in enumerate(models)]
    return gb.build(networks if tp_size > 1 else networks[0], engine_dir, overwrite=True)


def generate(engine: gb.Engine, prompt: Sequence[int], steps: int, n_positions: Optional[int] = None) -> list[int]:
    """Greedy decoding: append the argmax of the last position's logits ``steps`` times, re-running
    the engine on the whole sequence each time (no KV cache)."""
    tokens = [int(t) for t in prompt]
    if n_positions is not None and len(tokens) + steps > n_positions:
        raise ValueError(f"prompt of {len(tokens)} tokens + {steps} steps exceeds n_positions={n_positions}")
    for _ in range(steps):
        logits = engine.run({"input_ids": np.array([tokens], dtype=np.int64)})["logits"]
        tokens.append(int(logits[0, -1].argmax()))
    return tokens


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns 0 when every tp_size generates the same tokens."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="a JSON file with GPTConfig fields (default: the small built-in config)")
    parser.add_argument("--weights", type=Path, help="a GPT-2-named safetensors checkpoint (default: random weights from --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--tp-sizes", "--tp-size", type=int, nargs="+", default=list(TP_SIZES), metavar="N", help="tensor-parallel sizes (default: 1 2 4)")
    parser.add_argument("--prompt", type=int, nargs="+", default=[1, 2, 3, 4], metavar="ID", help="prompt token ids")
    parser.add_argument("--steps", type=int, default=6, help="tokens to generate")
    parser.add_argument("--out", type=Path, metavar="DIR", help="keep the engines (and the random checkpoint) under DIR")
    args = parser.parse_args(argv)
    config = GPTConfig.from_json(args.config) if args.config else GPTConfig()
    root = args.out or Path(tempfile.mkdtemp(prefix="graphbuild-gpt-tp-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        weights = args.weights
        source = str(weights)
        if weights is None:
            weights = gb.save_safetensors(random_gpt2_weights(config, args.seed), root / "gpt_random.safetensors")
            source = f"random from seed {args.seed}, written as GPT-2-named safetensors" + (f" to {weights}" if args.out else "")
        print(f"GPT {config}\nweights: {source}\nprompt: {args.prompt}")
        generated: dict[int, list[int]] = {}
        for tp_size in args.tp_sizes:
            start = time.perf_counter()
            engine = build_engine(config, tp_size, weights, root / f"tp{tp_size}")
            built = time.perf_counter()
            generated[tp_size] = generate(engine, args.prompt, args.steps, config.n_positions)
            ran = time.perf_counter()
            print(f"tp_size {tp_size}: built in {built - start:.1f} s, {args.steps} steps in {1000 * (ran - built):.0f} ms: {generated[tp_size]}")
    except (gb.GraphBuildError, ValueError) as exc:
        print(f"gpt_tp: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    if len({tuple(tokens) for tokens in generated.values()}) == 1:
        print("OK: the same tokens at every tp_size")
        return 0
    print("MISMATCH: the tp_sizes generated different tokens", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
