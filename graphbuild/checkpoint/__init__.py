"""Safetensors checkpoints: index them, load them into modules rank by rank, and write them.

``ParameterStore`` indexes a ``.safetensors`` file, a directory of them, or a Hugging Face
``*.safetensors.index.json`` (sharded checkpoint): every tensor's name, dtype, shape, file and byte
range, checked against the file's size so a truncated file is reported before anything is read.
Tensors are read through a memory map of their byte range, so a read costs nothing until a rank
copies its slice, and every dtype the format defines for floats (F32, F16, BF16, F64, F8) reads the
same way; bfloat16 arrives as ``ml_dtypes.bfloat16``, which plain numpy lacks.

``load_safetensors`` fills one module, or one module per tensor-parallel rank (rank-local layers
of the same architecture), from a checkpoint: each checkpoint tensor is read once and every rank's
``Parameter.load`` cuts its own slice through the parameter's ``weight_loader``::

    ranks = [Model(tp_size=2, tp_rank=r) for r in range(2)]
    gb.load_safetensors("model.safetensors", ranks,
                        name_map={"attn.qkv.weight": ["attn.q.weight", "attn.k.weight", "attn.v.weight"]},
                        transforms={"mlp.fc.weight": np.transpose})

``save_safetensors`` writes a module's (unsharded) parameters or a dict of arrays, as one file or
as shards with an index.
"""

from graphbuild.checkpoint.loader import LoadReport, NameMap, Transform, load_safetensors
from graphbuild.checkpoint.store import ParameterStore, TensorEntry, read_header
from graphbuild.checkpoint.writer import save_safetensors

__all__ = ["LoadReport", "NameMap", "ParameterStore", "TensorEntry", "Transform", "load_safetensors", "read_header", "save_safetensors"]
