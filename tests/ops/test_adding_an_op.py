"""The worked example of ``docs/adding-an-op.md`` runs as written and does what the page says.

The page's Python blocks (the op's file, then its test) run in a fresh interpreter, followed by
further checks of the op they registered: every tp_size from 1 to 4 and the attribute schema. A
separate process keeps the op out of this process's registry (the docs test registers it too).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "adding-an-op.md"

FURTHER_CHECKS = textwrap.dedent(
    """
    import pytest
    from graphbuild.ops import get_op

    opdef = get_op("column_scale")
    assert opdef.partition is not None and opdef.tp_claim is not None and not opdef.collective
    x = rng.standard_normal((3, 7)).astype(np.float32)
    scale = rng.standard_normal(7).astype(np.float32)
    for tp_size in (1, 2, 3, 4):
        net = gb.Network(f"scale{tp_size}")
        with net:
            inp = net.add_input("x", "float32", ("n", 7))
            net.mark_output(column_scale(inp, gb.constant(scale, name="s"), tp_size=tp_size), "y")
        ranks = partition(net)
        assert len(ranks) == tp_size
        for out in gb.reference.run_ranks(ranks, {"x": x}):
            assert np.array_equal(out["y"], x * scale)
        for out in gb.build(net, f"out/e{tp_size}", use_plugin=False).run_all_ranks({"x": x}):
            assert np.array_equal(out["y"], x * scale)
    with gb.Network("bad") as bad:
        x = bad.add_input("x", "float32", ("n", 4))
        with pytest.raises(gb.GraphConstructionError, match=r"column_scale '.*': tp_size must be an int, got 2.5"):
            column_scale(x, gb.constant(np.ones(4, np.float32)), tp_size=2.5)
    print("checked")
    """
)


def test_the_page_runs_and_its_op_works_at_every_tp_size(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 2, "the op's file and its test"
    script = tmp_path / "page.py"
    script.write_text("\n".join(blocks) + FURTHER_CHECKS)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "checked"
