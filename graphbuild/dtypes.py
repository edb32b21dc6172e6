"""graphbuild's element types and their numpy and ONNX equivalents.

Six dtypes are supported: float32, float16, bfloat16, int32, int64 and bool. ``bfloat16`` maps to
``ml_dtypes.bfloat16`` in numpy (the type ONNX and JAX use too).
"""

from __future__ import annotations

import dataclasses
from typing import Union

import ml_dtypes
import numpy as np
from onnx import TensorProto

from graphbuild.errors import GraphConstructionError


@dataclasses.dataclass(frozen=True)
class DType:
    """An element type: its name, numpy dtype, ONNX ``TensorProto`` enum and kind."""

    name: str
    numpy: np.dtype
    onnx: int
    is_float: bool
    is_int: bool

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    def __repr__(self) -> str:
        return f"gb.{self.name}"

    def __str__(self) -> str:
        return self.name


float32 = DType("float32", np.dtype(np.float32), TensorProto.FLOAT, True, False)
float16 = DType("float16", np.dtype(np.float16), TensorProto.FLOAT16, True, False)
bfloat16 = DType("bfloat16", np.dtype(ml_dtypes.bfloat16), TensorProto.BFLOAT16, True, False)
int32 = DType("int32", np.dtype(np.int32), TensorProto.INT32, False, True)
int64 = DType("int64", np.dtype(np.int64), TensorProto.INT64, False, True)
bool_ = DType("bool", np.dtype(np.bool_), TensorProto.BOOL, False, False)

ALL: tuple[DType, ...] = (float32, float16, bfloat16, int32, int64, bool_)
FLOATS: tuple[DType, ...] = (float32, float16, bfloat16)
INTS: tuple[DType, ...] = (int32, int64)

_BY_NAME = {d.name: d for d in ALL}
_BY_NAME.update({"float": float32, "half": float16, "bf16": bfloat16, "fp32": float32, "fp16": float16})
_BY_NUMPY = {d.numpy: d for d in ALL}
_BY_ONNX = {d.onnx: d for d in ALL}

DTypeLike = Union[DType, str, np.dtype, type]


def as_dtype(value: DTypeLike) -> DType:
    """Converts a name (``"float16"``), numpy dtype or scalar type, or DType to a DType.

    Raises:
        GraphConstructionError: the type is not one of graphbuild's six dtypes.
    """
    if isinstance(value, DType):
        return value
    if isinstance(value, str) and value in _BY_NAME:
        return _BY_NAME[value]
    try:
        found = _BY_NUMPY.get(np.dtype(value))
    except TypeError:
        found = None
    if found is None:
        supported = ", ".join(d.name for d in ALL)
        raise GraphConstructionError(f"unsupported dtype {value!r}; graphbuild supports {supported}")
    return found


def from_onnx(elem_type: int) -> DType:
    """The DType of an ONNX ``TensorProto`` element type."""
    if elem_type not in _BY_ONNX:
        raise GraphConstructionError(f"ONNX element type {elem_type} has no graphbuild dtype")
    return _BY_ONNX[elem_type]


def promote(a: DType, b: DType) -> DType:
    """The common dtype of two operands; graphbuild never promotes implicitly, so they must match."""
    if a != b:
        raise GraphConstructionError(f"dtype mismatch: {a} and {b}; insert an explicit cast")
    return a
