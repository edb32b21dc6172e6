"""Moving arrays in and out of ONNX Runtime, bfloat16 included.

ONNX Runtime's Python binding does not accept ``ml_dtypes.bfloat16`` arrays, so every tensor goes
through an ``OrtValue``: bfloat16 data is handed over as its uint16 bits with the ONNX element type
set explicitly, and read back through the value's data pointer.
"""

from __future__ import annotations

import ctypes

import numpy as np
import onnxruntime as ort

from graphbuild import dtypes


def to_ortvalue(array: np.ndarray) -> ort.OrtValue:
    """A CPU OrtValue sharing ``array``'s memory (a contiguous copy is made if needed).

    The caller must keep ``array`` alive while the OrtValue is used.
    """
    array = np.ascontiguousarray(array).reshape(array.shape)  # ascontiguousarray makes 0-d arrays 1-d
    if array.dtype == dtypes.bfloat16.numpy:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), dtypes.bfloat16.onnx)
    return ort.OrtValue.ortvalue_from_numpy(array)


def from_ortvalue(value: ort.OrtValue) -> np.ndarray:
    """A numpy array with the value's contents (CPU values only; bfloat16 comes back as bfloat16)."""
    if value.element_type() == dtypes.bfloat16.onnx:
        shape = tuple(value.shape())
        count = int(np.prod(shape, dtype=np.int64))
        out = np.empty(shape, dtype=dtypes.bfloat16.numpy)
        if count:
            ctypes.memmove(out.ctypes.data, value.data_ptr(), count * 2)
        return out
    return value.numpy()
