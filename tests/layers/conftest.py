"""Fixtures for the layer tests: random checkpoint weights, and running one layer built per rank
(rank-local networks, as TensorRT-LLM builds them) through the reference interpreter or an engine.

Test modules cannot import this file (pytest runs with ``--import-mode=importlib``), so its
helpers are handed out as fixtures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import layers, reference


def random_weights(rng: np.random.Generator, module: layers.Module, scale: float = 0.5) -> dict[str, np.ndarray]:
    """A full (checkpoint-shaped) float32 tensor per parameter name of ``module``."""
    return {name: (rng.standard_normal(p.full_shape) * scale).astype(np.float32) for name, p in module.named_parameters()}


def run_layer(
    build: Callable[[layers.Mapping], layers.Module],
    inputs: Mapping[str, tuple[str, tuple]],
    feeds: Mapping[str, np.ndarray],
    tp_size: int,
    weights: Mapping[str, np.ndarray],
    *,
    forward: Optional[Callable[..., Any]] = None,
    engine_dir: Optional[Path] = None,
) -> list[np.ndarray]:
    """Builds ``build(mapping)`` for every rank, loads ``weights`` (full tensors) into each, makes
    one network per rank with ``inputs`` and output ``"y" = forward(layer, *inputs)``, and runs
    them: through ``reference.run_ranks``, or through ``gb.build`` when ``engine_dir`` is given.

    Returns:
        Every rank's ``y``, in rank order.
    """

    def make(mapping: layers.Mapping) -> gb.Network:
        layer = build(mapping)
        for name, param in layer.named_parameters():
            param.load(weights[name], what=name)
        net = gb.Network(f"layer.rank{mapping.tp_rank}")
        with net:
            args = [net.add_input(name, dtype, shape) for name, (dtype, shape) in inputs.items()]
            out = forward(layer, *args) if forward is not None else layer(*args)
            net.mark_output(out, "y")
        return net

    networks = layers.build_rank_networks(make, tp_size)
    if engine_dir is not None:
        return [out["y"] for out in gb.build(networks, engine_dir, verify_each_pass=True).run_all_ranks(dict(feeds))]
    return [out["y"] for out in reference.run_ranks(networks, feeds)]


@pytest.fixture
def weights_for(rng: np.random.Generator) -> Callable[..., dict[str, np.ndarray]]:
    """``weights_for(module, scale=0.5)``: see ``random_weights`` (seeded per test)."""
    return lambda module, scale=0.5: random_weights(rng, module, scale)


@pytest.fixture
def tp_run() -> Callable[..., list[np.ndarray]]:
    """``tp_run(build, inputs, feeds, tp_size, weights, forward=None, engine_dir=None)``: see ``run_layer``."""
    return run_layer
