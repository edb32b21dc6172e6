"""``graphbuild bench`` on tiny configurations: the table and ``--json`` document it produces, its
own correctness check, memory-based skipping and argument errors. (The kernel's large-output paths
that the bench times are tested in ``tests/plugins/test_cpu_stream_copy.py``.)"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from graphbuild import dtypes
from graphbuild.runtime.session import CUDA, cuda_device_count
from graphbuild.tools import bench_cmd, bench_copy, bench_paths, bench_report
from graphbuild.tools.cli import main, make_parser

VOCAB, HIDDEN = 300, 64
TINY = ["--vocab", str(VOCAB), "--hidden", str(HIDDEN), "--repeats", "3", "--warmup", "1"]
HAVE_TORCH = importlib.util.find_spec("torch") is not None
CORE_PATHS = {"copy", "numpy_take", "ort_gather", "tp_embedding", "tp_embedding_shard", "engine", "engine_run", "ort_gather_run"}


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
        # The ceiling is the fastest of the candidate copies, each timed in the same rounds.
        narrower = {"avx512": {"stream-32"}}.get(doc["machine"]["cpu_strategy"].get("isa"), set())  # streaming at each width
        assert set(copy["copy_candidates"]) == {"memcpy", "stream", "vector"} | narrower
        assert copy["ms"] == min(copy["copy_candidates"].values()) == copy["copy_candidates"][copy["copy_method"]]
        assert copy["label"].startswith(f"copy ceiling ({copy['copy_method']}")
        engine = rows["engine_run"]
        assert engine["vs_session"] == pytest.approx(rows["ort_gather_run"]["ms"] / engine["ms"])
        if group[1] <= bench_cmd.PAIRED_MAX_TOKENS:
            assert engine["paired_calls"] == 3 and engine["vs_session_paired"] > 0 and "overhead_us_paired" in engine
        ours = rows["tp_embedding"]
        alternating = ("vs_gather_paired", "gather_control_paired", "tp_control_paired")
        if group[1] <= bench_cmd.PAIRED_MAX_TOKENS:  # also timed with calls alternating (--repeats of them)
            assert ours["paired_calls"] == 3 and all(0 < ours[key] < 100 for key in alternating)
        else:
            assert not any(key in ours for key in alternating)
    targets = {t["target"].split(":")[0]: t for t in doc["targets"]}
    target = targets["1-16 tokens"]
    # engine.run at 1 token (40 is not scored), float32 only (bfloat16 has no session.run to compare with)
    assert targets["1/16/4096/16384 tokens (float32, float16)"]["total"] == 2
    assert targets["1 token"]["maximum"] == bench_report.MAX_ENGINE_OVERHEAD_US and targets["1 token"]["total"] == 2
    spread = bench_report.control_spread(results)
    assert spread is not None and target["control_spread"] == round(spread, 4)
    assert target["minimum"] == max(0.98, math.floor(1000 / (1 + spread)) / 1000)
    assert target["target"].startswith(f"1-16 tokens: latency no worse than ORT Gather's (calls alternating, ratio >= {target['minimum']:.3f}")
    paired = [r["vs_gather_paired"] for r in results if "vs_gather_paired" in r]
    assert target["total"] == 4 and target["worst"] == round(min(paired), 3)
    assert target["at_least_1"] == sum(1 for p in paired if p >= 1.0)
    assert "calls alternating (3 each): TPEmbedding vs ORT Gather" in printed and "A/A, second session vs first" in printed
    assert "TPEmbedding shard 1 of 2" in printed and "vs Gather" in printed and "Targets (CPU" in printed
    strategy = doc["machine"]["cpu_strategy"]
    assert strategy["isa"] in ("sse2", "avx", "avx512") and strategy["large"] in ("memcpy", "stream", "lockstep", "stream-prefetch", "lockstep-prefetch")
    assert f"CPU kernel: {strategy['cpu']} ({strategy['vendor']}), {strategy['isa']}" in printed
    assert "engine.run vs ORT Gather session.run: engine.run (tp 1)" in printed
    assert f"vocab {VOCAB} x hidden {HIDDEN}, bfloat16" in printed


def test_quick_and_filters_choose_the_plan():
    parser = make_parser()
    quick = bench_cmd.settings_from(parser.parse_args(["bench", "--quick"]))
    assert quick["vocab"] == (32000,) and quick["tokens"] == (1, 16, 4096) and quick["budget_s"] < bench_cmd.BUDGET_S
    full = bench_cmd.settings_from(parser.parse_args(["bench", "--threads", "1", "all", "1"]))
    assert full["vocab"] == (32000, 128256) and full["tokens"] == (1, 16, 256, 4096, 16384)
    assert full["dtype"] == ("float32", "float16", "bfloat16") and full["threads"][0] == 1 and len(full["threads"]) <= 2


def test_alternating_timing_cycles_the_paths_and_moves_each_over_every_id_set():
    order = []
    paths = [bench_paths.TimedPath(key, key, lambda i, key=key: order.append((key, i)), lambda i: None, None) for key in "abcd"]
    times = bench_cmd.measure_alternating(paths, 64)
    warmup, timed = order[:256], order[256:]
    assert warmup == [(key, 0) for key in "abcd"] * 64
    assert [key for key, _ in timed] == list("abcd") * 64  # each call follows the path before it
    shift = bench_cmd.ID_SHIFT_CYCLES
    assert [i for _, i in timed[:8]] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert [i for _, i in timed[4 * shift : 4 * shift + 4]] == [4 * shift + 1 + k for k in range(4)]
    for key in "abcd":  # 4 paths, 8 sets: over 4 x 16 cycles every path reads all of them
        assert {i % 8 for k, i in timed[: 4 * 4 * shift] if k == key} == set(range(8))
    assert len(times) == 4 and all(t.shape == (64,) and (t >= 0).all() for t in times)


def test_alternating_ratios_pool_each_ops_sessions_and_compare_its_two_sessions():
    gather, tp = np.array([1.0, 1.0, 9.0]), np.array([2.0, 2.0, 9.0])
    gather2, tp2 = np.array([4.0, 4.0, 4.0]), np.array([1.0, 8.0, 8.0])
    ratios = bench_cmd.alternating_ratios([gather, tp, gather2, tp2])
    # Pooled medians: Gather's of [1, 1, 9, 4, 4, 4] is 4, TPEmbedding's of [2, 2, 9, 1, 8, 8] is 5.
    assert ratios == {"vs_gather_paired": 4 / 5, "gather_control_paired": 1 / 4, "tp_control_paired": 2 / 8}
    assert bench_cmd.alternating_ratios([gather, tp]) == {"vs_gather_paired": 1 / 2}


def test_alternating_paths_share_one_output_and_each_looks_up_the_right_rows(rng):
    table = rng.standard_normal((50, 8)).astype(np.float32)
    id_sets = [rng.integers(0, 50, size=3) for _ in range(4)]
    setup = bench_paths.LookupSetup(table, dtypes.float32, 1, "cpu", engine_dirs={}, use_torch=False)
    try:
        paths = setup.alternating_paths(id_sets)
        assert [p.key for p in paths] == ["ort_gather", "tp_embedding", "ort_gather_control", "tp_embedding_control"]
        assert paths[3].label == "TPEmbedding full table, second session"
        assert len({id(path.run.__self__.out) for path in paths}) == 1
        for n, path in enumerate(paths):
            # Each writes the shared buffer; the result read right after its own call is its rows.
            assert np.array_equal(path.result(n), table[id_sets[n % 4]])
    finally:
        setup.close()


def test_small_token_target_is_scored_on_the_paired_ratio_against_the_a_a_spread():
    def result(tokens, vs_gather, paired=None, controls=None):
        row = {"path": "tp_embedding", "vocab": 100, "dtype": "float32", "tokens": tokens, "threads": 1, "vs_gather": vs_gather, "vs_copy": 1.0}
        if paired is not None:
            row["vs_gather_paired"] = paired
        if controls is not None:
            row["gather_control_paired"], row["tp_control_paired"] = controls
        return row

    def small(rows):
        (rule,) = [t for t in bench_report.evaluate_targets(rows, "cpu") if t["target"].startswith("1-16 tokens")]
        return rule

    # Without A/A controls the bar is 1.00.
    rule = small([result(1, 0.97, paired=1.01), result(16, 0.99, paired=0.995), result(16, 1.02)])
    assert (rule["met"], rule["total"], rule["worst"], rule["minimum"]) == (2, 3, 0.995, 1.0)
    # Widest control 0.9915 (0.86% apart): the bar is 0.9915, floored to 0.991; 0.985 misses it.
    rows = [result(1, 0.9, paired=0.992, controls=(1.005, 0.9915)), result(16, 1.1, paired=0.985, controls=(1.0, 1.002)), result(1, 1.0, paired=1.01, controls=(1.0, 1.0))]
    rule = small(rows)
    assert rule["minimum"] == 0.991 and rule["control_spread"] == round(1 / 0.9915 - 1, 4)
    assert (rule["met"], rule["total"], rule["worst"], rule["at_least_1"]) == (2, 3, 0.985, 1)
    assert "ratio >= 0.991: A/A sessions read up to 0.9% apart" in rule["target"]
    # A control 10% apart is a noisy run: the bar stops at 1 / 1.02.
    rule = small([result(1, 1.0, paired=0.975, controls=(0.9, 1.0)), result(16, 1.0, paired=0.981, controls=(1.0, 1.0))])
    assert rule["minimum"] == 0.98 and (rule["met"], rule["total"]) == (1, 2)
    text = bench_report.format_targets([rule], "cpu")
    assert "MISSED" in text and "1 at 1.00 or more" not in text and "0 at 1.00 or more" in text


def test_tensor_parallel_engines_are_timed_and_reported(tmp_path, capsys):
    status, doc, printed = _run_json(tmp_path, capsys, "--tokens", "16", "--dtype", "float16", "--threads", "1", "--tp", "1", "2", "--no-torch")
    assert status == 0 and doc["settings"]["tp"] == [1, 2]
    rows = {r["path"]: r for r in doc["results"]}
    assert rows["engine_run_tp2"]["check"] == "ok" and rows["engine_run_tp2"]["label"] == "engine.run (tp 2)"
    assert rows["engine_run_tp2"]["vs_session"] == pytest.approx(rows["ort_gather_run"]["ms"] / rows["engine_run_tp2"]["ms"])
    (report,) = [t for t in doc["targets"] if t.get("report")]
    assert report["target"].startswith("1/16/4096/16384 tokens: engine.run at tp 2 and 4")
    assert report["total"] == 1 and report["range"][0] == round(rows["engine_run_tp2"]["vs_session"], 3)
    assert "engine (tp 2) built in" in printed and "  report 1/16/4096/16384 tokens: engine.run at tp 2 and 4" in printed


def test_the_ceiling_is_the_fastest_candidate_copy():
    def row(path, ms, label):
        return {"path": path, "ms": ms, "label": label}

    group = [row("copy:memcpy", 3.0, "copy, memcpy, 2 threads"), row("copy:stream", 2.0, "copy, streaming stores, 2 threads"), row("copy:vector", 2.5, "copy, ordinary stores, 2 threads"), row("ort_gather", 4.0, "ORT Gather")]
    best, gather = bench_copy.best_of(group)
    assert best["path"] == "copy" and best["ms"] == 2.0 and best["copy_method"] == "stream"
    assert best["label"] == "copy ceiling (stream, 2 threads)" and gather["path"] == "ort_gather"
    assert best["copy_candidates"] == {"memcpy": 3.0, "stream": 2.0, "vector": 2.5}
    bench_report.add_ratios([best, gather])
    assert gather["vs_copy"] == 0.5


def test_engine_targets_judge_the_call_users_make_against_a_bare_session():
    def row(path, tokens, ms, **extra):
        return {"path": path, "vocab": 100, "dtype": "float32", "tokens": tokens, "threads": 1, "ms": ms, **extra}

    rows = [row("ort_gather_run", 1, 0.006), row("engine_run", 1, 0.010), row("ort_gather_run", 4096, 8.0), row("engine_run", 4096, 7.0), row("engine_run", 256, 99.0), row("engine_run_tp2", 4096, 10.0)]
    rows.append(dict(row("engine_run", 16, 0.5), dtype="bfloat16", vs_session=0.01))  # not scored
    for group in ([r for r in rows if r["tokens"] == t] for t in (1, 4096, 256)):
        bench_report.add_ratios(group)
    targets = {t["target"].split(":")[0] + (" report" if t.get("report") else ""): t for t in bench_report.evaluate_targets(rows, "cpu")}
    ratio = targets["1/16/4096/16384 tokens (float32, float16)"]  # 256 tokens and bfloat16 are not scored
    assert (ratio["met"], ratio["total"], ratio["worst"]) == (1, 2, 0.6)
    overhead = targets["1 token"]  # 10 us against 6 us, without an alternating measurement
    assert (overhead["met"], overhead["total"], overhead["worst"]) == (1, 1, 4.0)
    assert targets["1/16/4096/16384 tokens report"]["range"] == [0.8, 0.8]
    rows[1]["overhead_us_paired"], rows[1]["vs_session_paired"] = 5.5, 0.9  # alternating calls win
    targets = {t["target"].split(":")[0]: t for t in bench_report.evaluate_targets(rows, "cpu") if not t.get("report")}
    assert targets["1 token"]["met"] == 0 and targets["1 token"]["worst"] == 5.5
    assert targets["1/16/4096/16384 tokens (float32, float16)"]["worst"] == 0.9
    assert "MISSED 1 token: engine.run (tp 1) at most 5 us per call more than the bare session.run: 0/1 configurations; worst 5.500 us" in bench_report.format_targets(list(targets.values()), "cpu")


def test_correctness_check_compares_with_numpy(rng):
    table = rng.standard_normal((10, 6)).astype(np.float32)
    ids = np.array([9, 0, 4, 5, 7])
    shard = bench_cmd.expected_output(table, ids, "shard", shard_rows=5)
    independent = np.stack([table[i] if i < 5 else np.zeros(6, np.float32) for i in ids])
    assert np.array_equal(shard, independent)
    assert bench_cmd.check_output(table[ids].copy(), bench_cmd.expected_output(table, ids, "full", 5)) == "ok"
    # A vocab-split engine's all-reduce adds zero rows: -0.0 becomes +0.0, nothing else changes.
    signed = table.copy()
    signed[4, 1] = -0.0
    summed = bench_cmd.expected_output(signed, ids, "summed", 5)
    assert np.signbit(np.take(signed, ids, axis=0)[2, 1]) and not np.signbit(summed[2, 1]) and summed[2, 1] == 0
    assert np.array_equal(np.delete(summed.ravel(), 2 * 6 + 1), np.delete(signed[ids].ravel(), 2 * 6 + 1))
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
