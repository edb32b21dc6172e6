"""Networks for the picture tests (the examples' embedding network and GPT decoder, small), and a
headless Chromium for the browser tests."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from graphbuild import layers

ROOT = Path(__file__).resolve().parents[2]


def load_example(stem: str) -> Any:
    name = f"graphbuild_viz_tests_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def embedding_net(tp_size: int, sharding_dim: int):
    """examples/embedding_tp.py's network with a 10 x 6 table (uneven over 4 ranks either way)."""
    return load_example("embedding_tp").make_network(tp_size=tp_size, sharding_dim=sharding_dim, vocab_size=10, hidden_size=6)


def gpt_nets(tp_size: int, n_layer: int = 1):
    """Rank-local GPT-2-style decoders from graphbuild.layers (examples/gpt_tp.py), one per rank."""
    gpt = load_example("gpt_tp")
    config = gpt.GPTConfig(vocab_size=50, n_positions=16, n_embd=16, n_layer=n_layer, n_head=4)
    models = [gpt.GPT(config, mapping) for mapping in layers.Mapping.ranks(tp_size)]
    return [gpt.make_network(model, f"gpt.rank{rank}") for rank, model in enumerate(models)]


def gpt_of_about(nodes: int):
    """A logical GPT decoder (tp_size 1, unset weights) with about ``nodes`` nodes."""
    one, two = (len(gpt_nets(1, n)[0].nodes) for n in (1, 2))
    n_layer = max(1, round((nodes - (2 * one - two)) / (two - one)))
    gpt = load_example("gpt_tp")
    with layers.no_init():
        model = gpt.GPT(gpt.GPTConfig(vocab_size=50, n_positions=16, n_embd=8, n_layer=n_layer, n_head=2))
    return gpt.make_network(model, f"gpt{n_layer}")


def _debian() -> bool:
    return sys.platform.startswith("linux") and os.path.exists("/etc/debian_version")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium context. Skipped off Debian Linux only; on Debian a missing Chromium or
    Playwright fails the tests (make test installs Chromium)."""
    if not _debian():
        pytest.skip("browser tests run on Debian Linux, where make test installs Debian's chromium")
    from graphbuild.viz.browser import find_chromium, launch

    if find_chromium() is None:
        pytest.fail("no Chromium: run 'make test' (it installs Debian's chromium) or apt-get install -y chromium")

    with launch() as context:
        yield context
