"""How fast ``graphbuild viz`` draws a large network, and how fast its HTML opens in headless Chromium.

Builds a GPT-style decoder from ``graphbuild.layers`` (tiny widths, many blocks) with about
``--nodes`` nodes, writes its picture (logical, and as the ranks the partition pass makes at
tp_size 2), opens each in Debian's Chromium through Playwright, and prints: nodes, the Python
time to lay out and write the HTML, the HTML's size, the time from navigation to the first full
draw (``performance.now()`` when the viewer is ready), and the time of one redraw with the whole
network in view (the worst case for panning and zooming)::

    python benchmarks/viz_bench.py               # about 5,000 nodes
    python benchmarks/viz_bench.py --nodes 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import graphbuild as gb
from graphbuild import layers
from graphbuild.viz import visualize
from graphbuild.viz.browser import launch, open_page

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import gpt_tp  # noqa: E402 - the example's model, importable once examples/ is on the path

def gpt_networks(n_layer: int, tp_size: int) -> list[gb.Network]:
    """Rank-local GPT networks with tiny widths (weights are not drawn: layers.no_init)."""
    config = gpt_tp.GPTConfig(vocab_size=64, n_positions=16, n_embd=8, n_head=2, n_layer=n_layer)
    with layers.no_init():
        models = [gpt_tp.GPT(config, mapping) for mapping in layers.Mapping.ranks(tp_size)]
    return [gpt_tp.make_network(model, f"gpt{n_layer}.rank{rank}") for rank, model in enumerate(models)]


def blocks_for(nodes: int, tp_size: int) -> int:
    """How many GPT blocks make about ``nodes`` nodes in all ranks together."""
    one, two = (sum(len(n.nodes) for n in gpt_networks(layers_, tp_size)) for layers_ in (1, 2))
    return max(1, round((nodes - (one - (two - one))) / (two - one)))


def measure(context, nets, path: Path, logical: bool) -> dict[str, float]:
    start = time.perf_counter()
    visualize(nets, path, logical=logical)
    written = time.perf_counter() - start
    page = open_page(context, path)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.reload()
    page.wait_for_function("window.gbViewer && window.gbViewer.ready")
    open_ms = page.evaluate("window.gbViewer.openMs")
    nodes = page.evaluate("window.gbViewer.nodes.length")
    page.evaluate("window.gbViewer.fit(true)")
    redraw_ms = min(page.evaluate("window.gbViewer.drawMs()") for _ in range(5))
    page.close()
    if errors:
        raise SystemExit(f"page errors: {errors}")
    return {"nodes": nodes, "python_s": written, "mb": path.stat().st_size / 1e6, "open_ms": open_ms, "redraw_ms": redraw_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000, help="about how many nodes each picture has (default 5000)")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"graphbuild viz benchmark: {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'picture':<28}{'nodes':>7}{'layout+write s':>16}{'HTML MB':>9}{'open ms':>9}{'redraw ms':>11}")
    with tempfile.TemporaryDirectory() as tmp, launch() as context:
        cases = [
            ("logical, tp_size 1", gpt_networks(blocks_for(args.nodes, 1), 1), True),
            ("ranks, tp_size 2", gpt_networks(blocks_for(args.nodes, 2), 2), False),
        ]
        for label, nets, logical in cases:
            row = measure(context, nets, Path(tmp) / "graph.html", logical)
            print(f"{label:<28}{row['nodes']:>7}{row['python_s']:>16.2f}{row['mb']:>9.2f}{row['open_ms']:>9.0f}{row['redraw_ms']:>11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
