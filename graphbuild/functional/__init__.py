"""graphbuild's symbolic op API: each function adds one node to its inputs' network."""

from graphbuild.functional.collectives import allgather, allreduce
from graphbuild.functional.elementwise import add, cast, div, equal, identity, less, mul, sub, where
from graphbuild.functional.embedding import embedding
from graphbuild.functional.math_ops import absolute, erf, exp, log, maximum, minimum, neg, power, sigmoid, sqrt, tanh
from graphbuild.functional.nn import gelu, layer_norm, linear, matmul, relu, rms_norm, silu, softmax
from graphbuild.functional.reduce import reduce_max, reduce_mean, reduce_sum
from graphbuild.functional.shape import arange_like, concat, gather, reshape, slice_tensor, split, squeeze, transpose, unsqueeze

__all__ = [
    "absolute",
    "add",
    "allgather",
    "allreduce",
    "arange_like",
    "cast",
    "concat",
    "div",
    "embedding",
    "equal",
    "erf",
    "exp",
    "gather",
    "gelu",
    "identity",
    "layer_norm",
    "less",
    "linear",
    "log",
    "matmul",
    "maximum",
    "minimum",
    "mul",
    "neg",
    "power",
    "reduce_max",
    "reduce_mean",
    "reduce_sum",
    "relu",
    "reshape",
    "rms_norm",
    "sigmoid",
    "silu",
    "slice_tensor",
    "softmax",
    "split",
    "sqrt",
    "squeeze",
    "sub",
    "tanh",
    "transpose",
    "unsqueeze",
    "where",
]
