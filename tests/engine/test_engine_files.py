"""Engine directories: what is written, and every way loading one can fail."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.engine import MANIFEST, read_manifest, verify_files


def small_network(rng: np.random.Generator, vocab: int = 300, hidden: int = 1000, tp_size: int = 2) -> gb.Network:
    net = gb.Network("files")
    with net:
        ids = net.add_input("input_ids", "int64", ("batch", "seq"))
        weight = gb.constant(rng.standard_normal((vocab, hidden)).astype(np.float32), name="wte.weight")
        net.mark_output(F.embedding(ids, weight, tp_size=tp_size, name="wte"), "emb")
    return net


@pytest.fixture
def engine_dir(tmp_path, rng):
    gb.build(small_network(rng), tmp_path / "engine")
    return tmp_path / "engine"


def rewrite(engine_dir, relpath: str, data: bytes) -> None:
    """Replaces a listed file and records its new size and checksum, as a tool that wrote it would."""
    (engine_dir / relpath).write_bytes(data)
    manifest = json.loads((engine_dir / MANIFEST).read_text())
    manifest["files"][relpath] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (engine_dir / MANIFEST).write_text(json.dumps(manifest))


def segment_file(engine_dir) -> str:
    return read_manifest(engine_dir).ranks[1].steps[0].file


def test_layout_manifest_and_external_data(engine_dir):
    manifest = json.loads((engine_dir / MANIFEST).read_text())
    assert manifest["format"] == "graphbuild-engine" and manifest["format_version"] == 1
    assert manifest["tp_size"] == 2 and manifest["tp_group"] == [0, 1]
    assert manifest["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]}]
    assert manifest["outputs"] == [{"name": "emb", "dtype": "float32", "shape": ["batch", "seq", 1000]}]
    assert manifest["custom_ops"] == [{"domain": "graphbuild", "op_type": "TPEmbedding", "since_version": 1}]
    for rank in manifest["ranks"]:
        kinds = [step["kind"] for step in rank["steps"]]
        assert kinds == ["segment", "collective"]
        assert rank["steps"][1]["op"] == "allreduce"
        assert rank["weight_bytes"] == 150 * 1000 * 4  # one shard of ceil(300/2) rows
    for relpath in manifest["files"]:
        assert (engine_dir / relpath).is_file()
    assert all(status == "ok" for _, status in verify_files(engine_dir))
    assert not [p for p in engine_dir.parent.iterdir() if p.name.startswith(".")], "no staging directories left"


def test_large_weights_go_to_external_data(tmp_path, rng):
    gb.build(small_network(rng, vocab=600, hidden=1000), tmp_path / "big")
    manifest = read_manifest(tmp_path / "big")
    data_files = [f for f in manifest.files if f.endswith(".data")]
    assert sorted(data_files) == ["rank0/segment0.onnx.data", "rank1/segment0.onnx.data"]
    model = onnx.load(str(tmp_path / "big" / "rank0/segment0.onnx"), load_external_data=False)
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external == ["wte.weight"]
    onnx.checker.check_model(str(tmp_path / "big" / "rank0/segment0.onnx"), full_check=True)


def test_missing_directory(tmp_path):
    with pytest.raises(gb.EngineError, match="does not exist"):
        gb.Engine.load(tmp_path / "nope")


def test_missing_manifest(engine_dir):
    (engine_dir / MANIFEST).unlink()
    with pytest.raises(gb.EngineError, match=r"config\.json: missing"):
        gb.Engine.load(engine_dir)


def test_corrupt_manifest_names_file_and_line(engine_dir):
    (engine_dir / MANIFEST).write_text('{"format": "graphbuild-engine",\n  oops')
    with pytest.raises(gb.EngineError, match=r"config\.json: not valid JSON \(line 2"):
        gb.Engine.load(engine_dir)


def test_wrong_format_version(engine_dir):
    manifest = json.loads((engine_dir / MANIFEST).read_text())
    manifest["format_version"] = 99
    (engine_dir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(gb.EngineError, match="format version 99 is not supported"):
        gb.Engine.load(engine_dir)


def test_truncated_segment(engine_dir):
    path = engine_dir / segment_file(engine_dir)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(gb.EngineError, match=r"rank1/segment0\.onnx: size mismatch"):
        gb.Engine.load(engine_dir)


def test_tampered_segment(engine_dir):
    path = engine_dir / segment_file(engine_dir)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(gb.EngineError, match=r"rank1/segment0\.onnx: checksum mismatch"):
        gb.Engine.load(engine_dir)
    assert dict(verify_files(engine_dir))["rank1/segment0.onnx"] == "checksum mismatch"


def test_deleted_segment(engine_dir):
    (engine_dir / segment_file(engine_dir)).unlink()
    with pytest.raises(gb.EngineError, match=r"rank1/segment0\.onnx: missing"):
        gb.Engine.load(engine_dir)


def test_unverified_load_still_rejects_garbage_models(engine_dir):
    (engine_dir / segment_file(engine_dir)).write_bytes(b"\x08\x07garbage")
    with pytest.raises(gb.EngineError, match=r"rank1/segment0\.onnx"):
        gb.Engine.load(engine_dir, verify=False)


@pytest.mark.parametrize("bad_path", ["../outside.onnx", "/etc/passwd", "rank0/../../x", ""])
def test_manifest_paths_must_stay_inside(engine_dir, bad_path):
    manifest = json.loads((engine_dir / MANIFEST).read_text())
    manifest["files"][bad_path] = {"sha256": "0" * 64, "bytes": 1}
    (engine_dir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(gb.EngineError, match="inside the engine directory|outside the engine directory"):
        gb.Engine.load(engine_dir)


def test_symlink_escaping_the_engine_is_refused(engine_dir, tmp_path):
    outside = tmp_path / "outside.onnx"
    relpath = segment_file(engine_dir)
    shutil.move(engine_dir / relpath, outside)
    (engine_dir / relpath).symlink_to(outside)
    with pytest.raises(gb.EngineError, match=r"rank1/segment0\.onnx: is a symbolic link, not a regular file"):
        gb.Engine.load(engine_dir)


def test_external_data_location_must_stay_inside(tmp_path, rng):
    gb.build(small_network(rng, vocab=600), tmp_path / "big")
    root = tmp_path / "big"
    model_path = root / "rank0/segment0.onnx"
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../secret.bin"
    rewrite(root, "rank0/segment0.onnx", model.SerializeToString())
    with pytest.raises(gb.EngineError, match=r"segment0\.onnx: initializer 'wte.weight' refers to external data '\.\./\.\./secret\.bin', which the manifest does not list"):
        gb.Engine.load(root, verify=False)


def test_existing_engine_needs_overwrite(engine_dir, rng):
    with pytest.raises(gb.EngineError, match="already exists; pass overwrite=True"):
        gb.build(small_network(rng), engine_dir)
    engine = gb.build(small_network(rng, hidden=8), engine_dir, overwrite=True)
    assert engine.outputs[0].shape == ("batch", "seq", 8)
    assert not [p for p in engine_dir.parent.iterdir() if p.name.startswith(".")]


def test_overwrite_refuses_a_directory_that_is_not_an_engine(tmp_path, rng):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(gb.EngineError, match="is not an engine graphbuild wrote"):
        gb.build(small_network(rng), precious, overwrite=True)
    assert (precious / "notes.txt").read_text() == "mine"


def test_interrupted_build_leaves_nothing_that_loads(tmp_path, rng, monkeypatch):
    from graphbuild.passes import export_onnx

    calls = {"n": 0}
    real_write = export_onnx.write_model

    def write_then_interrupt(exported, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_write(exported, path)

    monkeypatch.setattr(export_onnx, "write_model", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        gb.build(small_network(rng), tmp_path / "engine")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_during_a_rebuild_keeps_the_old_engine(tmp_path, rng, monkeypatch):
    from graphbuild.passes import export_onnx

    old = gb.build(small_network(rng), tmp_path / "engine")
    ids = np.array([[1, 2, 3]])
    before = old.run({"input_ids": ids})["emb"]

    def disk_full(exported, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_onnx, "write_model", disk_full)
    with pytest.raises(gb.EngineError, match=r"writing the engine '.*engine' failed, nothing was written: \[Errno 28\] No space left"):
        gb.build(small_network(rng), tmp_path / "engine", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]
    np.testing.assert_array_equal(gb.Engine.load(tmp_path / "engine").run({"input_ids": ids})["emb"], before)


def test_a_failed_swap_puts_the_old_engine_back(tmp_path, rng, monkeypatch):
    import os

    from graphbuild.engine import renames, writer

    gb.build(small_network(rng), tmp_path / "engine")
    monkeypatch.setattr(renames, "_RENAMEAT2", None)  # the plain-rename fallback
    real_rename = os.rename

    def rename(source, destination):
        if ".building-" in str(source):
            raise OSError(18, "Invalid cross-device link")
        return real_rename(source, destination)

    monkeypatch.setattr(writer.os, "rename", rename)
    with pytest.raises(gb.EngineError, match="failed, nothing was written"):
        gb.build(small_network(rng), tmp_path / "engine", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]
    gb.Engine.load(tmp_path / "engine")  # checksums and all


def test_an_engine_path_under_a_file_is_named(tmp_path, rng):
    (tmp_path / "afile").write_text("")
    with pytest.raises(gb.EngineError, match=r"cannot create the engine directory '.*afile/x': \[Errno 17\] File exists"):
        gb.build(small_network(rng), tmp_path / "afile" / "x")


def test_feeds_are_validated_before_running(engine_dir):
    engine = gb.Engine.load(engine_dir)
    with pytest.raises(gb.InputError, match=r"missing input\(s\) \['input_ids'\]"):
        engine.run({})
    with pytest.raises(gb.InputError, match=r"unknown input\(s\) \['ids'\]"):
        engine.run({"input_ids": np.zeros((1, 1), np.int64), "ids": 1})
    with pytest.raises(gb.InputError, match="input 'input_ids' must be int64, got int32"):
        engine.run({"input_ids": np.zeros((1, 2), np.int32)})
    with pytest.raises(gb.InputError, match=r"must have rank 2 \(batch, seq\), got shape \(3,\)"):
        engine.run({"input_ids": np.zeros(3, np.int64)})
    np.testing.assert_array_equal(engine.run({"input_ids": [[1, 2]]})["emb"].shape, (1, 2, 1000))
