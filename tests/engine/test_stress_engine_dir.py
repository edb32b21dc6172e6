"""A short run of ``tools/stress_engine_dir.py``: concurrent rebuilds and loads, no wrong result.

The full run (a minute, more processes) is ``python tools/stress_engine_dir.py``.
"""

from __future__ import annotations

import numpy as np

import graphbuild as gb
from graphbuild.tools import stress_engine_dir as stress


def test_the_stress_networks_are_what_the_checker_expects(tmp_path):
    for seed in (0, 1, 2):
        engine = gb.build(stress.network(seed), tmp_path / str(seed))
        ids = np.arange(stress.VOCAB).reshape(1, -1)
        np.testing.assert_array_equal(engine.run({"input_ids": ids})["emb"], np.random.default_rng(seed).standard_normal((30, 4 + seed % 3)).astype(np.float32)[ids])


def test_short_concurrent_rebuilds_and_loads_give_no_wrong_result(tmp_path):
    outcome = stress.run(seconds=2, builders=1, loaders=1, workdir=str(tmp_path))
    counts = outcome["counts"]
    assert counts.get("WRONG", 0) == 0, outcome["wrong"]
    assert counts.get("built", 0) >= 1
    assert sum(n for key, n in counts.items() if key == "correct" or key.startswith("load error")) >= 1
    assert outcome["leftovers"] == []
