"""``load_safetensors`` / ``ParameterStore`` / ``save_safetensors``: loading rank-local modules at
several tp sizes, sharded and indexed checkpoints, float16 and bfloat16 files, name maps and
transforms. Checkpoints are written with the ``safetensors`` package itself and every rank's
slice is checked against numpy slicing of the arrays that were written."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import graphbuild as gb
from graphbuild.layers import Module, Parameter

D, FF = 6, 10  # neither divides by 4


def split_loader(tp_size: int, rank: int, axis: int):
    return lambda full: np.array_split(full, tp_size, axis=axis)[rank]


class Linear(Module):
    """A rank-local linear layer: ``axis=0`` splits the output features (column parallel, bias
    split too), ``axis=1`` the input features (row parallel, bias whole)."""

    def __init__(self, out_features: int, in_features: int, *, tp_size: int = 1, rank: int = 0, axis: int = 0, dtype: str = "float32"):
        super().__init__()
        local = list(np.array_split(np.zeros((out_features, in_features)), tp_size, axis=axis)[rank].shape)
        self.weight = Parameter(np.zeros(local), dtype, full_shape=(out_features, in_features), weight_loader=split_loader(tp_size, rank, axis))
        if axis == 0:
            self.bias = Parameter(np.zeros(local[0]), dtype, full_shape=(out_features,), weight_loader=split_loader(tp_size, rank, 0))
        else:
            self.bias = Parameter(np.zeros(out_features), dtype)


class Block(Module):
    def __init__(self, tp_size: int = 1, rank: int = 0, dtype: str = "float32"):
        super().__init__()
        self.qkv = Linear(3 * D, D, tp_size=tp_size, rank=rank, axis=0, dtype=dtype)
        self.fc = Linear(FF, D, tp_size=tp_size, rank=rank, axis=0, dtype=dtype)
        self.proj = Linear(D, FF, tp_size=tp_size, rank=rank, axis=1, dtype=dtype)
        self.norm = Parameter(np.ones(D), dtype)


class Model(Module):
    def __init__(self, tp_size: int = 1, rank: int = 0, dtype: str = "float32"):
        super().__init__()
        self.layer0 = Block(tp_size, rank, dtype)
        self.layer1 = Block(tp_size, rank, dtype)


def ranks_of(tp_size: int, dtype: str = "float32") -> list[Model]:
    return [Model(tp_size, r, dtype) for r in range(tp_size)]


def full_weights(rng, dtype=np.float32) -> dict[str, np.ndarray]:
    shapes = {"qkv.weight": (3 * D, D), "qkv.bias": (3 * D,), "fc.weight": (FF, D), "fc.bias": (FF,),
              "proj.weight": (D, FF), "proj.bias": (D,), "norm": (D,)}  # fmt: skip
    return {f"layer{i}.{name}": rng.standard_normal(shape).astype(dtype) for i in range(2) for name, shape in shapes.items()}


def expected_slice(name: str, full: np.ndarray, tp_size: int, rank: int) -> np.ndarray:
    if name.endswith("norm") or name.endswith("proj.bias"):
        return full
    axis = 1 if name.endswith("proj.weight") else 0
    return np.array_split(full, tp_size, axis=axis)[rank]


def check_ranks(ranks: list[Model], weights: dict[str, np.ndarray]) -> None:
    for rank, model in enumerate(ranks):
        params = dict(model.named_parameters())
        assert set(params) == set(weights)
        for name, param in params.items():
            want = expected_slice(name, weights[name], len(ranks), rank).astype(param.dtype.numpy)
            np.testing.assert_array_equal(param.data, want, err_msg=f"{name} rank {rank}")


@pytest.mark.parametrize("tp_size", [1, 2, 3, 4])
def test_every_rank_gets_its_slice_and_each_tensor_is_read_once(tp_size, rng, tmp_path):
    weights = full_weights(rng)
    save_file(weights, tmp_path / "model.safetensors")
    ranks = ranks_of(tp_size)
    report = gb.load_safetensors(tmp_path / "model.safetensors", ranks)
    check_ranks(ranks, weights)
    assert report.tensors_read == len(weights)  # once, whatever tp_size is
    assert report.ranks == tp_size and report.unused == [] and report.skipped == []
    assert report.loaded["layer1.fc.weight"] == ("layer1.fc.weight",)
    # the ranks' column-parallel slices together are the whole tensor
    np.testing.assert_array_equal(np.concatenate([m.layer0.qkv.weight.data for m in ranks]), weights["layer0.qkv.weight"])
    np.testing.assert_array_equal(np.concatenate([m.layer1.proj.weight.data for m in ranks], axis=1), weights["layer1.proj.weight"])


def test_a_single_logical_module_loads_whole_tensors_into_memory_it_owns(rng, tmp_path):
    weights = full_weights(rng)
    path = tmp_path / "m.safetensors"
    save_file(weights, path)
    model = Model()
    gb.load_safetensors(path, model)
    check_ranks([model], weights)
    # parameters do not keep the file mapped: rewriting it in place changes nothing
    path.write_bytes(b"\0" * path.stat().st_size)
    check_ranks([model], weights)
    assert all(p.data.flags.writeable for p in model.parameters())


@pytest.mark.parametrize("how", ["directory", "index-file"])
def test_sharded_checkpoint_with_index(how, rng, tmp_path):
    weights = full_weights(rng)
    index = gb.save_safetensors(weights, tmp_path / "ckpt", max_shard_bytes=300)
    content = json.loads(index.read_text())
    files = sorted(set(content["weight_map"].values()))
    assert index.name == "model.safetensors.index.json" and len(files) > 2
    assert content["metadata"]["total_size"] == sum(a.nbytes for a in weights.values())
    for filename in files:  # every shard is a valid safetensors file, within the size limit
        with safe_open(str(tmp_path / "ckpt" / filename), "np") as f:
            sizes = [f.get_tensor(k).nbytes for k in f.keys()]
            assert len(sizes) == 1 or sum(sizes) <= 300
    store = gb.ParameterStore(tmp_path / "ckpt" if how == "directory" else index)
    assert len(store.files) == len(files) and sorted(store.keys()) == sorted(weights)
    ranks = ranks_of(3)
    report = gb.load_safetensors(store, ranks)
    check_ranks(ranks, weights)
    assert report.tensors_read == len(weights)


def test_directory_of_files_without_index(rng, tmp_path):
    weights = full_weights(rng)
    names = sorted(weights)
    save_file({n: weights[n] for n in names[:5]}, tmp_path / "a.safetensors")
    save_file({n: weights[n] for n in names[5:]}, tmp_path / "b.safetensors")
    ranks = ranks_of(2)
    gb.load_safetensors(tmp_path, ranks)
    check_ranks(ranks, weights)


@pytest.mark.parametrize("param_dtype", ["float32", "same"])
@pytest.mark.parametrize("ckpt_dtype", [np.float16, ml_dtypes.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_checkpoints(ckpt_dtype, param_dtype, rng, tmp_path):
    weights = full_weights(rng, ckpt_dtype)
    path = tmp_path / "half.safetensors"
    save_file(weights, path)
    store = gb.ParameterStore(path)
    with safe_open(str(path), "np") as f:  # the package's own reader agrees bit for bit
        for name in weights:
            got = store.read(name)
            assert got.dtype == np.dtype(ckpt_dtype) and store.entry(name).dtype == ("F16" if ckpt_dtype == np.float16 else "BF16")
            np.testing.assert_array_equal(got.view(np.uint16), weights[name].view(np.uint16))
            np.testing.assert_array_equal(f.get_tensor(name).view(np.uint16), weights[name].view(np.uint16))
    dtype = "float16" if ckpt_dtype == np.float16 else "bfloat16"
    ranks = ranks_of(2, dtype if param_dtype == "same" else "float32")
    gb.load_safetensors(store, ranks)
    check_ranks(ranks, weights)  # compares after the same astype the parameter applies
    if param_dtype == "float32":
        exact = weights["layer0.fc.weight"].astype(np.float32)
        np.testing.assert_array_equal(np.concatenate([m.layer0.fc.weight.data for m in ranks]), exact)


def test_name_map_concatenates_transforms_and_skips(rng, tmp_path):
    weights = full_weights(rng)
    # a checkpoint with separate q/k/v (BERT style), proj stored [in, out] (GPT-2 Conv1D style)
    ckpt = {}
    for i in range(2):
        for part, piece in zip("qkv", np.split(weights[f"layer{i}.qkv.weight"], 3)):
            ckpt[f"h.{i}.{part}.w"] = piece
        for part, piece in zip("qkv", np.split(weights[f"layer{i}.qkv.bias"], 3)):
            ckpt[f"h.{i}.{part}.b"] = piece
        for name in ("fc.weight", "fc.bias", "proj.bias"):
            ckpt[f"h.{i}.{name}"] = weights[f"layer{i}.{name}"]
        ckpt[f"h.{i}.proj.weight"] = np.ascontiguousarray(weights[f"layer{i}.proj.weight"].T)
        ckpt[f"h.{i}.ln"] = weights[f"layer{i}.norm"]
    save_file(ckpt, tmp_path / "gpt.safetensors")

    def name_map(param: str):
        layer, rest = param.split(".", 1)
        prefix = f"h.{layer[-1]}"
        if rest == "norm":
            return None if layer == "layer1" else f"{prefix}.ln"
        if rest.startswith("qkv."):
            suffix = "w" if rest.endswith("weight") else "b"
            return [f"{prefix}.{p}.{suffix}" for p in "qkv"]
        return f"{prefix}.{rest}"

    transforms = {f"layer{i}.proj.weight": np.transpose for i in range(2)}
    ranks = ranks_of(4)
    report = gb.load_safetensors(tmp_path / "gpt.safetensors", ranks, name_map=name_map, transforms=transforms, strict=False)
    assert report.skipped == ["layer1.norm"] and report.unused == ["h.1.ln"]
    assert report.loaded["layer0.qkv.weight"] == ("h.0.q.w", "h.0.k.w", "h.0.v.w")
    weights["layer1.norm"] = np.ones(D, np.float32)  # skipped: kept its initial value
    check_ranks(ranks, weights)
    # the dict form: unnamed parameters map to themselves
    save_file({"layer0.norm": weights["layer0.norm"], "other": weights["layer1.norm"]}, tmp_path / "n.safetensors")
    block = Model().layer0
    only_norm = {name: None for name, _ in block.named_parameters() if name != "norm"}
    only_norm["norm"] = "layer0.norm"
    gb.load_safetensors(tmp_path / "n.safetensors", block, name_map=only_norm, ignore=["oth*"])
    np.testing.assert_array_equal(block.norm.data, weights["layer0.norm"])


def test_save_module_round_trips_through_the_package_reader(rng, tmp_path):
    source = Model()
    weights = full_weights(rng)
    for name, param in source.named_parameters():
        param.data = weights[name]
    path = gb.save_safetensors(source, tmp_path / "sub" / "out.safetensors", metadata={"format": "np"})
    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"format": "np"}
        assert sorted(f.keys()) == sorted(weights)
        for name in weights:
            np.testing.assert_array_equal(f.get_tensor(name), weights[name])
    assert not [p for p in path.parent.iterdir() if p.name != "out.safetensors"]  # no temp file left
    bf16 = {"w": weights["layer0.fc.weight"].astype(ml_dtypes.bfloat16)}
    gb.save_safetensors(bf16, tmp_path / "bf16.safetensors")
    store = gb.ParameterStore(tmp_path / "bf16.safetensors")
    assert store.entry("w").dtype == "BF16"
    np.testing.assert_array_equal(store.read("w").view(np.uint16), bf16["w"].view(np.uint16))
