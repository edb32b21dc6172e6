"""Layers: PyTorch-like modules that build graphbuild networks.

``Module`` registers submodules and ``Parameter`` objects under hierarchical names
(``"wte.weight"``); a parameter becomes a network constant of that name the first time a forward
uses it. ``Embedding`` is the tensor-parallel lookup table (tch-rs ``nn::embedding`` /
``torch.nn.Embedding`` semantics on top of ``functional.embedding``).
"""

from graphbuild.layers.embedding import Embedding
from graphbuild.layers.module import Module, Parameter

__all__ = ["Embedding", "Module", "Parameter"]
