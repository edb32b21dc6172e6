"""``graphbuild bench`` on tiny configurations: the table and ``--json`` document it produces, its
own correctness check, memory-based skipping and argument errors. (The kernel's large-output paths
that the bench times are tested in ``tests/plugins/test_cpu_stream_copy.py``.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from graphbuild.runtime.session import CUDA, cuda_device_count
from graphbuild.tools import bench_cmd, bench_paths, bench_report
from graphbuild.tools.cli import main, make_parser

VOCAB, HIDDEN = 300, 64
TINY = ["--vocab", str(VOCAB), "--hidden", str(HIDDEN), "--repeats", "3", "--warmup", "1"]
HAVE_TORCH = importlib.util.find_spec("torch") is not None
CORE_PATHS = {"copy", "numpy_take", "ort_gather", "tp_embedding", "tp_embedding_shard", "engine"}


def _run_json(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict, str]:
    """Runs the bench with ``--json``; returns the exit status, the document and stdout + stderr."""
    out_file = tmp_path / "bench.json"
    status = main(["bench", *TINY, *args, "--json", str(out_file)])
    captured = capsys.readouterr()
    return status, (json.loads(out_file.read_text()) if out_file.exists() else {}), captured.out + captured.err


def test_tiny_run_prints_checked_table_and_json(tmp_path, capsys):
    status, doc, printed = _run_json(tmp_path, capsys, "--tokens", "1", "40", "--dtype", "float32", "bfloat16", "--threads", "1", "2")
    assert status == 0
    assert doc["ok"] is True and doc["tool"] == "graphbuild bench"
    assert doc["settings"]["vocab"] == [VOCAB] and doc["settings"]["tokens"] == [1, 40] and doc["settings"]["threads"] == [1, 2]
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["onnxruntime"] == ort.__version__
    results = doc["results"]
    groups = {(r["dtype"], r["tokens"], r["threads"]) for r in results}
    assert groups == {(d, t, n) for d in ("float32", "bfloat16") for t in (1, 40) for n in (1, 2)}
    expected_paths = CORE_PATHS | ({"torch_embedding"} if HAVE_TORCH else set())
    for group in groups:
        rows = {r["path"]: r for r in results if (r["dtype"], r["tokens"], r["threads"]) == group}
        assert set(rows) == expected_paths, group
        gather, copy = rows["ort_gather"], rows["copy"]
        assert gather["vs_gather"] == pytest.approx(1.0) and copy["vs_copy"] == pytest.approx(1.0)
        for r in rows.values():
            itemsize = 4 if r["dtype"] == "float32" else 2
            assert r["bytes"] == 2 * r["tokens"] * HIDDEN * itemsize
            assert r["samples"] == 3 and 0 < r["ms_min"] <= r["ms"] < 1000
            assert r["gb_per_s"] == pytest.approx(r["bytes"] / (r["ms"] * 1e6))
            assert r["vs_gather"] == pytest.approx(gather["ms"] / r["ms"])
            assert r["vs_copy"] == pytest.approx(copy["ms"] / r["ms"])
            assert r["check"] == ("-" if r["path"] == "copy" else "ok")
        ours = rows["tp_embedding"]
        if group[1] <= bench_cmd.PAIRED_MAX_TOKENS:  # also timed with calls alternating (--repeats of them)
            assert ours["paired_calls"] == 3 and 0 < ours["vs_gather_paired"] < 100
        else:
            assert "vs_gather_paired" not in ours
    (target,) = doc["targets"]
    assert target["target"] == "1-16 tokens: latency no worse than ORT Gather's (calls alternating, ratio >= 1.00)"
    paired = [r["vs_gather_paired"] for r in results if "vs_gather_paired" in r]
    assert target["total"] == 4 and target["worst"] == round(min(paired), 3)
    assert "TPEmbedding vs ORT Gather, calls alternating (3 each)" in printed
    assert "TPEmbedding shard 1 of 2" in printed and "vs Gather" in printed and "Kernel targets" in printed
    assert f"vocab {VOCAB} x hidden {HIDDEN}, bfloat16" in printed


def test_quick_and_filters_choose_the_plan():
    parser = make_parser()
    quick = bench_cmd.settings_from(parser.parse_args(["bench", "--quick"]))
    assert quick["vocab"] == (32000,) and quick["tokens"] == (1, 16, 4096) and quick["budget_s"] < bench_cmd.BUDGET_S
    full = bench_cmd.settings_from(parser.parse_args(["bench", "--threads", "1", "all", "1"]))
    assert full["vocab"] == (32000, 128256) and full["tokens"] == (1, 16, 256, 4096, 16384)
    assert full["dtype"] == ("float32", "float16", "bfloat16") and full["threads"][0] == 1 and len(full["threads"]) <= 2


def test_paired_timing_alternates_calls_and_which_goes_first():
    order = []
    first = bench_paths.TimedPath("a", "A", lambda i: order.append(("a", i)), lambda i: None, None)
    second = bench_paths.TimedPath("b", "B", lambda i: order.append(("b", i)), lambda i: None, None)
    a_s, b_s = bench_cmd.measure_paired(first, second, 5)
    timed = order[-10:]  # after 5 warm-up pairs
    assert timed == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2), ("b", 3), ("a", 3), ("a", 4), ("b", 4)]
    assert order[:10] == [("a", 0), ("b", 0)] * 5 and a_s >= 0 and b_s >= 0


def test_small_token_target_is_scored_on_the_paired_ratio():
    def result(tokens, vs_gather, paired=None):
        row = {"path": "tp_embedding", "vocab": 100, "dtype": "float32", "tokens": tokens, "threads": 1, "vs_gather": vs_gather, "vs_copy": 1.0}
        if paired is not None:
            row["vs_gather_paired"] = paired
        return row

    targets = bench_report.evaluate_targets([result(1, 0.97, paired=1.01), result(16, 0.99, paired=0.995), result(16, 1.02)], "cpu")
    (small,) = [t for t in targets if t["target"].startswith("1-16 tokens")]
    assert (small["met"], small["total"], small["worst"]) == (2, 3, 0.995)


def test_correctness_check_compares_with_numpy(rng):
    table = rng.standard_normal((10, 6)).astype(np.float32)
    ids = np.array([9, 0, 4, 5, 7])
    shard = bench_cmd.expected_output(table, ids, "shard", shard_rows=5)
    independent = np.stack([table[i] if i < 5 else np.zeros(6, np.float32) for i in ids])
    assert np.array_equal(shard, independent)
    assert bench_cmd.check_output(table[ids].copy(), bench_cmd.expected_output(table, ids, "full", 5)) == "ok"
    wrong = table[ids].copy()
    wrong[3, 2] += 1.0
    assert bench_cmd.check_output(wrong, table[ids]) == "MISMATCH: 1 of 5 rows differ, first at position 3"
    assert bench_cmd.check_output(table[ids[:4]], table[ids]).startswith("MISMATCH: got float32[4, 6]")
    # Bit-for-bit: a NaN row compares equal to itself, -0.0 differs from 0.0.
    nan_row = np.full((1, 6), np.nan, np.float32)
    assert bench_cmd.check_output(nan_row.copy(), nan_row) == "ok"
    assert bench_cmd.check_output(np.full((1, 6), -0.0, np.float32), np.zeros((1, 6), np.float32)).startswith("MISMATCH")


def test_configurations_that_do_not_fit_are_skipped_with_the_reason(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_report, "available_memory", lambda: 200_000)
    status, doc, printed = _run_json(tmp_path, capsys, "--tokens", "1", "300", "--dtype", "float32", "--threads", "1", "--no-engine", "--no-torch")
    assert status == 0
    assert {r["tokens"] for r in doc["results"]} == {1}
    (skipped,) = doc["skipped"]
    assert skipped["tokens"] == 300 and "needs about" in skipped["reason"] and "available" in skipped["reason"]
    assert "skipped 300 tokens: needs about" in printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tokens", "0"], "--tokens must be at least 1, got 0"),
        (["--threads", "two"], "--threads takes whole numbers or 'all', got 'two'"),
        (["--vocab", "1"], "--vocab must be at least 2, got 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(capsys, args, message):
    assert main(["bench", *TINY, *args]) == 1
    assert capsys.readouterr().err.strip() == f"graphbuild: error: {message}"


@pytest.mark.skipif(CUDA in ort.get_available_providers() and cuda_device_count() > 0, reason="a CUDA device is present")
def test_cuda_without_a_cuda_device_is_a_clear_error(capsys):
    assert main(["bench", *TINY, "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("graphbuild: error: --device cuda") and ("CUDAExecutionProvider" in err or "no CUDA device" in err)


def _fake_numpy_path(result):
    def make(self, id_sets):
        return bench_paths.TimedPath("numpy_take", "numpy take", lambda i: None, result, "full")

    return make


def test_a_path_with_wrong_output_fails_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_paths.LookupSetup, "_numpy_path", _fake_numpy_path(lambda i: np.zeros((40, HIDDEN), np.float32)))
    status, doc, printed = _run_json(tmp_path, capsys, "--tokens", "40", "--dtype", "float32", "--threads", "1", "--no-engine")
    assert status == 1 and doc["ok"] is False
    (numpy_row,) = [r for r in doc["results"] if r["path"] == "numpy_take"]
    assert numpy_row["check"] == "MISMATCH: 40 of 40 rows differ, first at position 0"
    assert all(r["check"] in ("ok", "-") for r in doc["results"] if r["path"] != "numpy_take")
    assert "graphbuild: error: 1 path(s) gave wrong results: numpy take (vocab 300 float32, 40 tokens, 1 thread): MISMATCH" in printed


def test_a_path_that_raises_is_reported_and_fails_the_run(capsys, monkeypatch):
    def boom(i):
        raise RuntimeError("device lost")

    monkeypatch.setattr(bench_paths.LookupSetup, "_numpy_path", _fake_numpy_path(boom))
    assert main(["bench", *TINY, "--tokens", "5", "--dtype", "float32", "--threads", "1", "--no-engine"]) == 1
    captured = capsys.readouterr()
    assert "numpy take at 5 tokens, 1 thread left out: failed: RuntimeError: device lost" in captured.out
    assert "graphbuild: error: 1 path(s) gave wrong results: numpy take" in captured.err
