"""Writing engines: what overwrite replaces and refuses, racing builds, leftovers, permissions."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphbuild as gb
from graphbuild.engine import MANIFEST, renames, writer
from graphbuild.tools.cli import main
from tests.engine.test_engine_files import small_network

IDS = np.array([[0, 7, 29]])


def net(hidden: int, seed: int = 0) -> gb.Network:
    return small_network(np.random.default_rng(seed), vocab=30, hidden=hidden)


def table(hidden: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((30, hidden)).astype(np.float32)


def check_engine(path, hidden: int, seed: int = 0) -> None:
    np.testing.assert_array_equal(gb.Engine.load(path).run({"input_ids": IDS})["emb"], table(hidden, seed)[IDS])


@pytest.fixture(params=["renameat2", "plain-rename"])
def rename_mode(request, monkeypatch):
    """Both ways the writer puts an engine in place (renameat2, and the fallback without it)."""
    if request.param == "plain-rename":
        monkeypatch.setattr(renames, "_RENAMEAT2", None)
    elif renames._RENAMEAT2 is None:
        pytest.skip("renameat2 is not available in this C library")
    return request.param


def hugging_face_folder(path) -> dict[str, bytes]:
    path.mkdir()
    files = {"config.json": b'{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}', "model.safetensors": b"\0" * 64, "tokenizer.json": b"{}"}
    for name, data in files.items():
        (path / name).write_bytes(data)
    return files


def test_overwrite_refuses_a_hugging_face_folder(tmp_path):
    files = hugging_face_folder(tmp_path / "gpt2")
    with pytest.raises(gb.EngineError, match=r"'.*gpt2' exists and is not an engine graphbuild wrote \(its config\.json does not declare \"format\": \"graphbuild-engine\"\); refusing to replace it"):
        gb.build(net(4), tmp_path / "gpt2", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "gpt2").iterdir()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]


def test_cli_overwrite_refuses_a_hugging_face_folder(tmp_path, capsys):
    files = hugging_face_folder(tmp_path / "gpt2")
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "embedding_tp.py")
    code = main(["build", f"{example}:make_network", "-o", str(tmp_path / "gpt2"), "--overwrite", "--set", "vocab_size=16", "--set", "hidden_size=4"])
    assert code == 1 and "is not an engine graphbuild wrote" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "gpt2").iterdir()} == files


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda p: (p / "notes.txt").write_text("mine"), r"it holds 'notes\.txt', which graphbuild did not write"),
        (lambda p: (p / "rank0" / "mine").mkdir(), r"it holds 'rank0/mine/', which graphbuild did not write"),
        (lambda p: (p / MANIFEST).write_text(json.dumps({**json.loads((p / MANIFEST).read_text()), "format_version": 7})), r"its format version 7 is not one this graphbuild knows"),
    ],
    ids=["extra-file", "extra-folder", "unknown-version"],
)
def test_overwrite_refuses_an_engine_holding_other_things(tmp_path, spoil, reason):
    gb.build(net(4), tmp_path / "e")
    spoil(tmp_path / "e")
    before = sorted(str(p) for p in (tmp_path / "e").rglob("*"))
    with pytest.raises(gb.EngineError, match=reason):
        gb.build(net(5), tmp_path / "e", overwrite=True)
    assert sorted(str(p) for p in (tmp_path / "e").rglob("*")) == before


def test_overwrite_refuses_a_symlink_and_a_file(tmp_path):
    gb.build(net(4), tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(gb.EngineError, match="it is a symbolic link"):
        gb.build(net(5), tmp_path / "link", overwrite=True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(gb.EngineError, match="it is not a directory"):
        gb.build(net(5), tmp_path / "afile", overwrite=True)
    assert (tmp_path / "afile").read_text() == "x"
    check_engine(tmp_path / "real", 4)


def test_overwrite_replaces_an_engine_and_an_empty_folder(tmp_path, rename_mode):
    gb.build(net(4), tmp_path / "e")
    gb.build(net(6, seed=1), tmp_path / "e", overwrite=True)
    check_engine(tmp_path / "e", 6, seed=1)
    (tmp_path / "empty").mkdir()
    gb.build(net(4), tmp_path / "empty", overwrite=True)
    check_engine(tmp_path / "empty", 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "empty"]


def _racing_writer(monkeypatch, target, hidden: int):
    """Makes the next build's file writing also build another engine at ``target`` (a racing build)."""
    from graphbuild.passes import export_onnx

    real_write = export_onnx.write_model
    state = {"done": False}

    def write_and_race(exported, path):
        if not state["done"]:
            state["done"] = True
            monkeypatch.setattr(export_onnx, "write_model", real_write)
            gb.build(net(hidden, seed=2), target)
        return real_write(exported, path)

    monkeypatch.setattr(export_onnx, "write_model", write_and_race)


def test_without_overwrite_a_target_that_appeared_meanwhile_is_kept(tmp_path, monkeypatch, rename_mode):
    _racing_writer(monkeypatch, tmp_path / "e", hidden=3)
    with pytest.raises(gb.EngineError, match=r"'.*e' already exists while this build was writing \(another build\?\); pass overwrite=True"):
        gb.build(net(4), tmp_path / "e")
    check_engine(tmp_path / "e", 3, seed=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_with_overwrite_a_target_that_appeared_meanwhile_is_replaced(tmp_path, monkeypatch, rename_mode):
    _racing_writer(monkeypatch, tmp_path / "e", hidden=3)
    gb.build(net(4), tmp_path / "e", overwrite=True)
    check_engine(tmp_path / "e", 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_exchange_leaves_no_moment_without_an_engine(tmp_path, monkeypatch):
    if renames._RENAMEAT2 is None:
        pytest.skip("renameat2 is not available in this C library")
    gb.build(net(4), tmp_path / "e")
    seen = []
    real_rmtree = writer.shutil.rmtree

    def rmtree_after_swap(path, *args, **kwargs):
        if ".e.building-" in str(path) and (path / MANIFEST).exists():
            seen.append(json.loads((tmp_path / "e" / MANIFEST).read_text())["outputs"][0]["shape"])
            check_engine(path, 4)  # the swapped-out folder is the old engine, complete
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(writer.shutil, "rmtree", rmtree_after_swap)
    gb.build(net(6), tmp_path / "e", overwrite=True)
    assert seen == [["batch", "seq", 6]]


# --- leftovers ------------------------------------------------------------------------------------
def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def leftover(tmp_path, name: str, kind: str, pid: int, host: str = "") -> os.PathLike:
    host = host or socket.gethostname().replace(".", "_")
    folder = tmp_path / f".{name}.{kind}-{host}.{pid}.abc123"
    folder.mkdir()
    (folder / "rank0").mkdir()
    (folder / "rank0" / "segment0.onnx").write_bytes(b"\0" * 1000)
    return folder


@pytest.mark.parametrize("then", ["build", "load"])
def test_stale_building_folders_are_removed_by_the_next_build_or_load(tmp_path, then):
    gb.build(net(4), tmp_path / "e")
    stale = leftover(tmp_path, "e", "building", dead_pid())
    live = leftover(tmp_path, "e", "building", os.getpid())
    other_host = leftover(tmp_path, "e", "building", dead_pid(), host="another-host")
    other_engine = leftover(tmp_path, "f", "building", dead_pid())
    if then == "build":
        gb.build(net(5), tmp_path / "e", overwrite=True)
    else:
        gb.Engine.load(tmp_path / "e")
    assert not stale.exists()
    assert live.exists() and other_host.exists() and other_engine.exists()


def test_a_kill_between_the_renames_is_recovered(tmp_path):
    gb.build(net(4), tmp_path / "e")
    pid = dead_pid()
    aside = tmp_path / f".e.replaced-{socket.gethostname().replace('.', '_')}.{pid}.xyz"
    aside.mkdir()
    os.rename(tmp_path / "e", aside / "e")
    gb.build(net(6), tmp_path / "new")
    os.rename(tmp_path / "new", tmp_path / f".e.building-{socket.gethostname().replace('.', '_')}.{pid}.qrs")
    check_engine(tmp_path / "e", 4)  # the load puts the old engine back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_a_killed_build_leaves_nothing_after_the_next_build(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        import numpy as np
        sys.path.insert(0, {os.getcwd()!r})
        import graphbuild as gb
        from graphbuild.passes import export_onnx
        from tests.engine.test_engine_files import small_network

        real = export_onnx.write_model
        def write_then_die(exported, path):
            real(exported, path)
            os.kill(os.getpid(), signal.SIGKILL)
        export_onnx.write_model = write_then_die
        gb.build(small_network(np.random.default_rng(0), vocab=30, hidden=4), {str(tmp_path / "e")!r})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == [".e.building"]
    gb.build(net(4), tmp_path / "e")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


@pytest.mark.parametrize("mask, mode", [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700)])
def test_engine_folder_mode_follows_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        gb.build(net(4), tmp_path / "e")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "e").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "e" / MANIFEST).st_mode) == mode & 0o666
