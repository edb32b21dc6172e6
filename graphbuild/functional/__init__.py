"""graphbuild's symbolic op API: each function adds one node to its inputs' network."""

from graphbuild.functional.collectives import allgather, allreduce
from graphbuild.functional.elementwise import add, cast, div, equal, identity, less, mul, sub, where
from graphbuild.functional.embedding import embedding
from graphbuild.functional.nn import gelu, layer_norm, matmul, relu, rms_norm, silu, softmax
from graphbuild.functional.shape import concat, gather, reshape, slice_tensor, split, squeeze, transpose, unsqueeze

__all__ = [
    "add",
    "allgather",
    "allreduce",
    "cast",
    "concat",
    "div",
    "embedding",
    "equal",
    "gather",
    "gelu",
    "identity",
    "layer_norm",
    "less",
    "matmul",
    "mul",
    "relu",
    "reshape",
    "rms_norm",
    "silu",
    "slice_tensor",
    "softmax",
    "split",
    "squeeze",
    "sub",
    "transpose",
    "unsqueeze",
    "where",
]
