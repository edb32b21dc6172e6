"""The typed manifest: round trip, schema validation with field paths, and checks against the ONNX files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.engine import MANIFEST, Manifest, read_manifest
from graphbuild.tools.cli import main


def network(rng: np.random.Generator, *, sharding_dim: int = 0) -> gb.Network:
    net = gb.Network("manifest")
    with net:
        ids = net.add_input("input_ids", "int64", ("batch", "seq"))
        weight = gb.constant(rng.standard_normal((40, 6)).astype(np.float32), name="wte.weight")
        net.mark_output(F.embedding(ids, weight, tp_size=2, sharding_dim=sharding_dim, name="wte"), "emb")
    return net


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two engines (plugin and standard ONNX) built once; tests edit copies of them."""
    root = tmp_path_factory.mktemp("built")
    gb.build(network(np.random.default_rng(0)), root / "plugin")
    gb.build(network(np.random.default_rng(0)), root / "plain", use_plugin=False)
    return root


@pytest.fixture
def engine_copy(built, tmp_path):
    import shutil

    def copy(kind: str = "plugin"):
        shutil.copytree(built / kind, tmp_path / kind)
        return tmp_path / kind

    return copy


def edit(root, change) -> None:
    data = json.loads((root / MANIFEST).read_text())
    change(data)
    (root / MANIFEST).write_text(json.dumps(data))


def test_round_trip_is_lossless(engine_copy):
    root = engine_copy()
    data = json.loads((root / MANIFEST).read_text())
    manifest = Manifest.from_json(data)
    assert manifest.to_json() == data
    assert manifest.ranks[1].rank == 1 and manifest.ranks[1].steps[1].kind == "collective"
    assert manifest.ranks[0].steps[0].file == "rank0/segment0.onnx"
    assert manifest.inputs[0].shape == ("batch", "seq") and str(manifest.outputs[0]) == "emb: float32(batch, seq, 6)"


HOSTILE = {
    "rank without 'rank'": (lambda d: d["ranks"][1].pop("rank"), r"ranks\[1\]: missing 'rank'"),
    "step without 'input'": (lambda d: d["ranks"][1]["steps"][1].pop("input"), r"ranks\[1\]\.steps\[1\]: missing 'input'"),
    "custom_ops as strings": (lambda d: d.update(custom_ops=["graphbuild::TPEmbedding"]), r"custom_ops\[0\]: expected an object, got a string"),
    "shape null": (lambda d: d["inputs"][0].update(shape=None), r"inputs\[0\]\.shape: expected a list, got null"),
    "dimension a float": (lambda d: d["outputs"][0]["shape"].__setitem__(2, 6.5), r"outputs\[0\]\.shape\[2\]: a dimension is"),
    "unknown output tensor": (lambda d: d["ranks"][0]["outputs"].update(emb="nope"), r"ranks\[0\]\.outputs\.emb: 'nope' is not a tensor of rank 0"),
    "outputs {}": (lambda d: d["ranks"][0].update(outputs={}), r"ranks\[0\]\.outputs: maps \[\] but the engine's outputs are \['emb'\]"),
    "no outputs at all": (lambda d: [d.update(outputs=[])] + [r.update(outputs={}) for r in d["ranks"]], r"outputs: the engine declares no outputs"),
    "unknown dtype": (lambda d: d["inputs"][0].update(dtype="int3"), r"inputs\[0\]\.dtype: unknown dtype 'int3'"),
    "ranks a dict": (lambda d: d.update(ranks={}), r"config\.json: ranks: expected a list, got an object"),
    "steps an int": (lambda d: d["ranks"][0].update(steps=3), r"ranks\[0\]\.steps: expected a list"),
    "step kind unknown": (lambda d: d["ranks"][0]["steps"][0].update(kind="magic"), r"ranks\[0\]\.steps\[0\]\.kind: unknown step kind 'magic'"),
    "unknown collective": (lambda d: [r["steps"][1].update(op="alltoall") for r in d["ranks"]], r"ranks\[0\]\.steps\[1\]\.op: unknown collective 'alltoall'"),
    "tp_size a boolean": (lambda d: d.update(tp_size=True), r"tp_size: expected an integer, got a boolean"),
    "tp_size disagrees": (lambda d: d.update(tp_size=3), r"ranks: lists 2 rank\(s\) but tp_size is 3"),
    "ranks out of order": (lambda d: d["ranks"].reverse(), r"ranks\[0\]\.rank: is 1, expected 0"),
    "negative size": (lambda d: next(iter(d["files"].values())).update(bytes=-1), r"files\.rank0/segment0\.onnx\.bytes: expected a non-negative integer"),
    "bad checksum text": (lambda d: next(iter(d["files"].values())).update(sha256="xyz"), r"files\.rank0/segment0\.onnx\.sha256: expected 64"),
    "segment file unlisted": (lambda d: d["ranks"][0]["steps"][0].update(file="rank0/other.onnx"), r"ranks\[0\]\.steps\[0\]\.file: 'rank0/other\.onnx' is not listed"),
    "segment input unknown": (lambda d: d["ranks"][1]["steps"][0].update(inputs=["ghost"]), r"ranks\[1\]\.steps\[0\]\.inputs: 'ghost' is not an engine input"),
    "schedules differ": (lambda d: d["ranks"][1]["steps"][1].update(instance_id=99), r"ranks\[1\]\.steps: rank 1's schedule"),
    "manifest a list": (lambda d: (d.clear(), d.update(x=1)) and None, r"format is None, expected 'graphbuild-engine'"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_malformed_manifest_names_the_field(engine_copy, case, capsys):
    change, message = HOSTILE[case]
    root = engine_copy()
    edit(root, change)
    with pytest.raises(gb.EngineError, match=message) as info:
        gb.Engine.load(root)
    assert "rebuild" in str(info.value)
    capsys.readouterr()
    assert main(["inspect", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("graphbuild: error: ") and "Traceback" not in err


def test_deeply_nested_json_is_an_engine_error(engine_copy, capsys):
    root = engine_copy()
    (root / MANIFEST).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(gb.EngineError, match=r"config\.json: JSON nested too deeply"):
        read_manifest(root)
    assert main(["inspect", str(root)]) == 1


def test_an_older_format_version_is_refused_naming_both(engine_copy):
    root = engine_copy()
    edit(root, lambda d: d.update(format_version=0))
    with pytest.raises(gb.EngineError, match=r"engine format version 0 is not supported by this graphbuild, which reads format version 1"):
        gb.Engine.load(root)


def test_inspect_exits_1_in_a_fresh_process(engine_copy):
    root = engine_copy()
    edit(root, lambda d: d["ranks"][1].pop("rank"))
    done = subprocess.run([sys.executable, "-m", "graphbuild.tools", "inspect", str(root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "ranks[1]: missing 'rank'" in done.stderr


# --- the manifest must agree with the ONNX files --------------------------------------------------
def test_allreduce_swapped_for_allgather_is_refused(engine_copy):
    root = engine_copy()
    edit(root, lambda d: [r["steps"][1].update(op="allgather") for r in d["ranks"]])
    with pytest.raises(gb.EngineError, match=r"ranks\[0\]\.outputs\.emb: tensor '.*' is float\(batch, seq, 12\) but the engine declares output 'emb' as float\(batch, seq, 6\)"):
        gb.Engine.load(root)


def test_inspect_refuses_a_manifest_that_disagrees_with_its_files(engine_copy, capsys):
    root = engine_copy()
    edit(root, lambda d: [r["steps"][1].update(op="allgather") for r in d["ranks"]])
    assert main(["inspect", str(root)]) == 1
    assert "but the engine declares output 'emb' as float(batch, seq, 6)" in capsys.readouterr().err


def test_allgather_swapped_for_allreduce_is_refused(tmp_path, rng):
    gb.build(network(rng, sharding_dim=1), tmp_path / "e")
    edit(tmp_path / "e", lambda d: [r["steps"][1].update(op="allreduce") for r in d["ranks"]])
    with pytest.raises(gb.EngineError, match=r"is float\(batch, seq, 3\) but the engine declares output 'emb' as float\(batch, seq, 6\)"):
        gb.Engine.load(tmp_path / "e")


def test_rank_pointed_at_another_ranks_file_is_refused(engine_copy):
    root = engine_copy()
    edit(root, lambda d: d["ranks"][0]["steps"][0].update(file="rank1/segment0.onnx"))
    with pytest.raises(gb.EngineError, match=r"ranks\[0\]\.steps\[0\]\.file: 'rank1/segment0\.onnx' is not in rank 0's folder 'rank0/'"):
        gb.Engine.load(root)


def test_ranks_files_swapped_consistently_are_refused(engine_copy):
    root = engine_copy()

    def swap(d):
        d["ranks"][0]["steps"][0]["file"], d["ranks"][1]["steps"][0]["file"] = "rank1/segment0.onnx", "rank0/segment0.onnx"

    edit(root, swap)
    with pytest.raises(gb.EngineError, match="is not in rank 0's folder"):
        gb.Engine.load(root)


def test_removed_range_check_is_refused(engine_copy):
    root = engine_copy("plain")
    data = json.loads((root / MANIFEST).read_text())
    assert data["ranks"][0]["steps"][0]["checks"], "the standard-ONNX lookup carries a range check"
    edit(root, lambda d: d["ranks"][0]["steps"][0].update(checks=[]))
    with pytest.raises(gb.EngineError, match=r"ranks\[0\]\.steps\[0\]: outputs .* and checks \[\] but the segment's graph writes"):
        gb.Engine.load(root)


def test_range_check_pointed_at_another_tensor_is_refused(engine_copy):
    root = engine_copy("plain")
    edit(root, lambda d: d["ranks"][0]["steps"][0]["checks"][0].update(node="elsewhere"))
    with pytest.raises(gb.EngineError, match=r"check '.*' of node 'elsewhere' is not a range check of this segment"):
        gb.Engine.load(root)


def test_declared_input_dtype_must_match_the_segments(engine_copy):
    root = engine_copy()
    edit(root, lambda d: d["inputs"][0].update(dtype="int32"))
    with pytest.raises(gb.EngineError, match=r"input 'input_ids' is int32\(batch, seq\) here but the segment reads int64\(batch, seq\)"):
        gb.Engine.load(root)


def test_custom_op_must_be_declared(engine_copy):
    root = engine_copy()
    edit(root, lambda d: d.update(custom_ops=[], use_plugin=False))
    with pytest.raises(gb.EngineError, match=r"custom op graphbuild::TPEmbedding, which the manifest's custom_ops do not declare"):
        gb.Engine.load(root)


def test_unedited_engines_still_run(engine_copy):
    ids = np.array([[0, 5, 39]])
    table = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    for kind in ("plugin", "plain"):
        np.testing.assert_array_equal(gb.Engine.load(engine_copy(kind)).run({"input_ids": ids})["emb"], table[ids])


def test_checking_some_ranks_opens_only_their_files(engine_copy):
    from graphbuild.engine import PinnedEngineDir
    from graphbuild.engine.consistency import check_segments

    root = engine_copy()
    (root / "rank1/segment0.onnx").write_bytes(b"\x08\x07not a model")
    with PinnedEngineDir(root) as pin:
        manifest = read_manifest(pin)
        check_segments(pin, manifest, [0])  # an MPI process of rank 0 never reads rank 1's file
        with pytest.raises(gb.EngineError, match=r"rank1/segment0\.onnx: not a readable ONNX model"):
            check_segments(pin, manifest, [1])
