"""Layers: PyTorch-like modules that build graphbuild networks, tensor parallel like
TensorRT-LLM's ``tensorrt_llm.layers``.

``Module`` registers submodules and ``Parameter`` objects under hierarchical names
(``"wte.weight"``); a parameter becomes a network constant of that name the first time a forward
uses it. Every parameter knows its checkpoint shape (``full_shape``) and how to cut this rank's
part out of it (``weight_loader``, applied by ``Parameter.load``).

- ``Embedding``, ``PositionEmbedding``: lookup tables (vocab- or hidden-parallel).
- ``ColumnLinear``, ``QKVColumnLinear``, ``RowLinear``, ``LMHead``: tensor-parallel linear layers.
- ``Attention``: multi-head self-attention over the rank's heads (causal or bidirectional);
  ``padding_mask_bias`` makes its additive mask.
- ``MLP``, ``GatedMLP``: feed-forward blocks. ``LayerNorm``, ``RMSNorm``: replicated norms.
- ``Mapping``, ``build_rank_networks``: build one rank-local network per rank
  (``graphbuild.layers.parallel`` explains the model); ``no_init()`` skips the random
  initialisation of layers whose weights a checkpoint will replace.
"""

from graphbuild.layers.attention import Attention, padding_mask_bias
from graphbuild.layers.embedding import Embedding, PositionEmbedding
from graphbuild.layers.linear import ColumnLinear, LMHead, QKVColumnLinear, RowLinear
from graphbuild.layers.mlp import MLP, GatedMLP
from graphbuild.layers.module import Module, Parameter
from graphbuild.layers.normalization import LayerNorm, RMSNorm
from graphbuild.layers.parallel import Mapping, build_rank_networks, no_init

__all__ = [
    "Attention",
    "ColumnLinear",
    "Embedding",
    "GatedMLP",
    "LMHead",
    "LayerNorm",
    "MLP",
    "Mapping",
    "Module",
    "Parameter",
    "PositionEmbedding",
    "QKVColumnLinear",
    "RMSNorm",
    "RowLinear",
    "build_rank_networks",
    "no_init",
    "padding_mask_bias",
]
