"""graphbuild: define a tensor-parallel network symbolically, compile it into per-rank ONNX
engines with graphbuild's own embedding operator, and run them with ONNX Runtime.

Quick start::

    import graphbuild as gb
    from graphbuild import functional as F

    net = gb.Network("emb")
    with net:
        ids = net.add_input("input_ids", dtype="int64", shape=("batch", "seq"))
        w = gb.constant(table, name="wte.weight")
        y = F.embedding(ids, w, tp_size=2, sharding_dim=0)
        net.mark_output(y, "embeddings")
    engine = gb.build(net, "out/emb")
    outputs = engine.run({"input_ids": ids_np})
"""

from __future__ import annotations

from typing import Any, Optional

__version__ = "0.1.0"

from graphbuild import dtypes
from graphbuild.dtypes import DType, bfloat16, float16, float32, int32, int64
from graphbuild.errors import (
    CheckpointError,
    ConfigurationError,
    EngineError,
    ExecutionError,
    ExportError,
    GraphBuildError,
    GraphConstructionError,
    InputError,
    NetworkContextError,
    OutOfRangeIdError,
    PartitionError,
    PassError,
    PluginNotFoundError,
    RuntimeVersionError,
    ShapeInferenceError,
    VerificationError,
)
from graphbuild.ir import Network, Node, Value, current_network
from graphbuild.tensor import Tensor
from graphbuild.engine import Engine
from graphbuild.build import build
from graphbuild import functional, reference
from graphbuild.checkpoint import LoadReport, ParameterStore, load_safetensors, save_safetensors
from graphbuild.viz import visualize


def constant(array: Any, name: Optional[str] = None, dtype: Optional[dtypes.DTypeLike] = None) -> Tensor:
    """Adds a constant to the current network (``with net:``); see ``Network.add_constant``."""
    return current_network().add_constant(array, name=name, dtype=dtype)


__all__ = [
    "CheckpointError",
    "ConfigurationError",
    "DType",
    "Engine",
    "EngineError",
    "ExecutionError",
    "ExportError",
    "GraphBuildError",
    "GraphConstructionError",
    "InputError",
    "LoadReport",
    "Network",
    "NetworkContextError",
    "Node",
    "OutOfRangeIdError",
    "ParameterStore",
    "PartitionError",
    "PassError",
    "PluginNotFoundError",
    "RuntimeVersionError",
    "ShapeInferenceError",
    "Tensor",
    "Value",
    "VerificationError",
    "__version__",
    "bfloat16",
    "build",
    "constant",
    "current_network",
    "dtypes",
    "float16",
    "float32",
    "functional",
    "int32",
    "int64",
    "load_safetensors",
    "reference",
    "save_safetensors",
    "visualize",
]
