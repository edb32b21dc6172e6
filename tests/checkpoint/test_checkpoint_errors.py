"""Every way a checkpoint can fail to load is a ``CheckpointError`` whose message names the
parameter (or tensor), the expected shape and the file: missing, unexpected, wrongly shaped and
non-float tensors, a name map to a missing name, truncated, garbage and absent files, broken
indexes, and modules or transforms that do not fit."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors.numpy import save_file

import graphbuild as gb
from graphbuild import CheckpointError
from graphbuild.layers import Module, Parameter


class Pair(Module):
    """Two parameters, the first column-split over ``tp_size`` ranks."""

    def __init__(self, tp_size: int = 1, rank: int = 0):
        super().__init__()
        rows = 8 // tp_size
        self.up = Parameter(np.zeros((rows, 3)), full_shape=(8, 3), weight_loader=lambda t: t[rank * rows : (rank + 1) * rows])
        self.scale = Parameter(np.zeros(3))


@pytest.fixture
def ckpt(rng, tmp_path):
    path = tmp_path / "pair.safetensors"
    save_file({"up": rng.standard_normal((8, 3)).astype(np.float32), "scale": rng.standard_normal(3).astype(np.float32)}, path)
    return path


def raises(match_all: list[str], call, *args, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    for piece in match_all:
        assert piece in message, f"{piece!r} not in {message!r}"
    return message


def test_missing_parameter(rng, tmp_path):
    path = tmp_path / "only_up.safetensors"
    save_file({"up": rng.standard_normal((8, 3)).astype(np.float32)}, path)
    raises(["parameter 'scale'", "[3]", "'scale' not found", str(path)], gb.load_safetensors, path, Pair())


def test_name_map_to_a_missing_name_suggests_close_names(ckpt):
    message = raises(
        ["parameter 'up'", "[8, 3]", "'upp'", "name_map gives", str(ckpt), "did you mean 'up'"],
        gb.load_safetensors, ckpt, Pair(), name_map={"up": "upp"},
    )  # fmt: skip
    assert message.count("not found") == 1
    raises(["parameter 'up'", "[8, 3]", "'k'", str(ckpt)], gb.load_safetensors, ckpt, Pair(), name_map={"up": ["up", "k"]})


def test_unexpected_tensor_is_an_error_when_strict(rng, ckpt, tmp_path):
    path = tmp_path / "extra.safetensors"
    arrays = {"up": np.ones((8, 3), np.float32), "scale": np.ones(3, np.float32), "pooler.w": rng.standard_normal((2, 5)).astype(np.float32)}
    save_file(arrays, path)
    raises(["unexpected checkpoint tensor 'pooler.w'", "[2, 5]", str(path), "strict=False"], gb.load_safetensors, path, Pair())
    assert gb.load_safetensors(path, Pair(), strict=False).unused == ["pooler.w"]
    assert gb.load_safetensors(path, Pair(), ignore=["pooler.*"]).unused == ["pooler.w"]


@pytest.mark.parametrize("tp_size", [1, 2])
def test_wrong_shape_names_parameter_both_shapes_and_file(tp_size, rng, tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({"up": rng.standard_normal((8, 4)).astype(np.float32), "scale": np.ones(3, np.float32)}, path)
    ranks = [Pair(tp_size, r) for r in range(tp_size)]
    raises(["parameter 'up'", "[8, 4]", "expected [8, 3]", str(path)], gb.load_safetensors, path, ranks)
    assert all(not m.scale.data.any() for m in ranks)  # checked from the header: nothing was loaded


def test_wrong_shape_of_concatenated_pieces_names_the_rank(tmp_path):
    path = tmp_path / "pieces.safetensors"
    save_file({"a": np.ones((4, 3), np.float32), "b": np.ones((5, 3), np.float32), "scale": np.ones(3, np.float32)}, path)
    raises(["parameter 'up'", "'a+b'", "[9, 3]", "expected [8, 3]", "on rank 0", str(path)],
           gb.load_safetensors, path, [Pair(2, 0), Pair(2, 1)], name_map={"up": ["a", "b"]})  # fmt: skip


def test_wrong_shape_after_transform_and_failing_transform(ckpt):
    raises(["parameter 'up'", "after its transform", "[3, 8]", "expected [8, 3]", str(ckpt)],
           gb.load_safetensors, ckpt, Pair(), transforms={"up": np.transpose})  # fmt: skip
    raises(["parameter 'scale'", "transform failed", "division by zero", str(ckpt)],
           gb.load_safetensors, ckpt, Pair(), transforms={"scale": lambda t: 1 / 0 if t.size else t})  # fmt: skip
    raises(["transforms name parameters the module does not have", "nope"], gb.load_safetensors, ckpt, Pair(), transforms={"nope": np.transpose})


def test_concatenating_mismatched_pieces(rng, tmp_path):
    path = tmp_path / "qkv.safetensors"
    save_file({"a": np.ones((4, 3), np.float32), "b": np.ones((4, 2), np.float32), "scale": np.ones(3, np.float32)}, path)
    raises(["parameter 'up'", "[8, 3]", "cannot concatenate", "[[4, 3], [4, 2]]", str(path)],
           gb.load_safetensors, path, Pair(), name_map={"up": ["a", "b"]})  # fmt: skip


def test_integer_tensor_into_a_float_parameter(tmp_path):
    path = tmp_path / "ints.safetensors"
    save_file({"up": np.ones((8, 3), np.int64), "scale": np.ones(3, np.float32)}, path)
    raises(["parameter 'up'", "[8, 3]", "I64", "not floating point", str(path)], gb.load_safetensors, path, Pair())


def test_truncated_file_names_file_and_tensor(ckpt, tmp_path):
    data = ckpt.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-10])
    message = raises([str(cut), "truncated", "needs bytes", f"the file has {len(data) - 10} bytes"], gb.load_safetensors, cut, Pair())
    assert re.search(r"tensor '(up|scale)'", message)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "too short"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx", "not valid JSON"),
        (b"\xff" * 64, "runs past the end of the file"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "not a JSON object"),
    ],
    ids=["empty", "bad-json", "huge-length", "not-object"],
)
def test_garbage_files(content, problem, tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    raises([str(path), problem], gb.ParameterStore, path)


def test_malformed_entries(tmp_path):
    def write(header: dict, data: bytes = b"") -> str:
        raw = json.dumps(header).encode()
        path = tmp_path / "m.safetensors"
        path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
        return str(path)

    raises(["tensor 'x'", "dtype 'Q7'", "cannot read"], gb.ParameterStore, write({"x": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"0"))
    raises(["tensor 'x'", "F32 [2]", "8 bytes", "[0, 4]"], gb.ParameterStore, write({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"0" * 8))
    raises(["tensor 'x'", "malformed"], gb.ParameterStore, write({"x": {"dtype": "F32"}}))


def test_absent_and_empty_sources(tmp_path):
    raises([str(tmp_path / "nope.safetensors"), "not found"], gb.load_safetensors, tmp_path / "nope.safetensors", Pair())
    raises([str(tmp_path), "no .safetensors files"], gb.ParameterStore, tmp_path)


def test_broken_indexes(ckpt, tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"up": "gone.safetensors"}}))
    raises([str(index), "'gone.safetensors'", "tensor 'up'", "does not exist"], gb.ParameterStore, tmp_path)
    index.write_text(json.dumps({"weight_map": {"up": ckpt.name, "ghost": ckpt.name}}))
    raises([str(index), "'ghost'", str(ckpt), "no such tensor"], gb.ParameterStore, index)
    index.write_text("{}")
    raises([str(index), "weight_map"], gb.ParameterStore, index)
    (tmp_path / "other.safetensors.index.json").write_text("{}")
    raises([str(tmp_path), "several checkpoint indexes"], gb.ParameterStore, tmp_path)


def test_tensor_in_two_files(ckpt, tmp_path):
    save_file({"up": np.ones((8, 3), np.float32)}, tmp_path / "second.safetensors")
    raises(["tensor 'up'", str(ckpt), str(tmp_path / "second.safetensors")], gb.ParameterStore, tmp_path)


def test_modules_of_different_architectures(ckpt):
    other = Pair()
    other.extra = Parameter(np.zeros(2))
    raises(["rank 1", "other parameters", "extra"], gb.load_safetensors, ckpt, [Pair(), other])
    raises(["parameter 'up'", "rank 1", "[4, 3]", "[8, 3]"], gb.load_safetensors, ckpt, [Pair(), _with_full_shape(4)])
    raises(["Module"], gb.load_safetensors, ckpt, [])
    raises(["parameter 'up'", "name_map gives 3"], gb.load_safetensors, ckpt, Pair(), name_map=lambda name: 3)


def _with_full_shape(rows: int) -> Pair:
    module = Pair()
    module.up = Parameter(np.zeros((rows, 3)))
    return module


def test_saving_a_rank_slice_or_unknown_dtype_is_refused(tmp_path):
    raises(["parameter 'up'", "[4, 3]", "[8, 3]", "unsharded"], gb.save_safetensors, Pair(2, 0), tmp_path / "x.safetensors")
    raises(["tensor 'c'", "complex"], gb.save_safetensors, {"c": np.ones(2, np.complex64)}, tmp_path / "x.safetensors")
    raises(["dict of arrays", "list"], gb.save_safetensors, [1], tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("escape", ["absolute", "parent", "inner parent"])
def test_index_naming_a_file_outside_its_directory_is_refused(ckpt, tmp_path, escape):
    # ckpt lies in tmp_path; the index lies one folder below it and points back up at it.
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "sub").mkdir()
    filename = {"absolute": str(ckpt), "parent": f"../{ckpt.name}", "inner parent": f"sub/../../{ckpt.name}"}[escape]
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"scale": filename, "up": filename}}))
    for source in (index, folder):
        message = raises([str(index), f"'{filename}'", "tensor 'scale'", "outside"], gb.ParameterStore, source)
        assert "checkpoint directory" in message


def test_index_may_name_files_in_subfolders_and_symlinks(rng, ckpt, tmp_path):
    # Hugging Face's cache links each snapshot file to a blob elsewhere: a link is the user's
    # own doing and is followed; only the names written in the index must stay inside.
    folder = tmp_path / "model"
    (folder / "shards").mkdir(parents=True)
    scale = rng.standard_normal(3).astype(np.float32)
    save_file({"scale": scale}, folder / "shards" / "b.safetensors")
    (folder / "a.safetensors").symlink_to(ckpt)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"up": "a.safetensors", "scale": "shards/b.safetensors"}}))
    store = gb.ParameterStore(folder)
    assert sorted(store) == ["scale", "up"]
    np.testing.assert_array_equal(store.read("scale"), scale)


def test_index_naming_a_file_that_is_not_a_string(ckpt, tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"up": ckpt.name, "scale": 7}}))
    raises([str(index), "tensor 'scale'", "7", "not a file name"], gb.ParameterStore, index)
