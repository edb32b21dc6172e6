"""Moving arrays in and out of ONNX Runtime, bfloat16 included.

ONNX Runtime's Python binding does not accept ``ml_dtypes.bfloat16`` arrays, so every tensor goes
through an ``OrtValue``: bfloat16 data is handed over as its uint16 bits with the ONNX element type
set explicitly, and read back through the value's data pointer.
"""

from __future__ import annotations

import ctypes
from typing import Sequence

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


def write_into(value: ort.OrtValue, array: np.ndarray) -> None:
    """Copies a contiguous host ``array`` into ``value`` (on any device; bfloat16 included)."""
    value.update_inplace(array.view(np.uint16) if array.dtype == dtypes.bfloat16.numpy else array)


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


def device_of(providers: Sequence[str]) -> str:
    """The OrtValue device the executor keeps tensors on: ``"cuda"`` when CUDA is the first provider.

    CUDA: tensors between segments stay on device 0; everything else lives in host memory.
    """
    return "cuda" if providers and providers[0] == "CUDAExecutionProvider" else "cpu"


def aligned_empty(shape: Sequence[int], dtype: np.dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialized host array at an address that is a multiple of ``alignment``, as ONNX
    Runtime's own CPU buffers are (numpy guarantees only 16), so kernels keep their aligned wide stores."""
    dtype = np.dtype(dtype)
    size = int(np.prod(tuple(shape), dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + size].view(dtype).reshape(tuple(shape))


def allocate(shape: Sequence[int], dtype: dtypes.DType, device: str) -> ort.OrtValue:
    """An uninitialized tensor of ``shape`` and ``dtype`` owned by ONNX Runtime on ``device``."""
    return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype.onnx, device, 0)


def host_view(value: ort.OrtValue) -> np.ndarray:
    """A numpy array over a host OrtValue's memory, no copy (the caller keeps ``value`` alive).

    Raises:
        ValueError: the value is not in host memory.
    """
    if value.device_name().lower() != "cpu":
        raise ValueError(f"host_view needs a CPU OrtValue, this one lives on {value.device_name()}")
    dtype = dtypes.from_onnx(value.element_type())
    shape = tuple(value.shape())
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.empty(shape, dtype.numpy)
    raw = (ctypes.c_char * (count * dtype.numpy.itemsize)).from_address(value.data_ptr())
    return np.frombuffer(raw, dtype=dtype.numpy).reshape(shape)


def to_host(value: ort.OrtValue) -> np.ndarray:
    """A fresh host array with the value's contents, from any device (bfloat16 included)."""
    if value.device_name().lower() == "cpu":
        return host_view(value).copy()
    # CUDA: OrtValue.numpy() copies device memory to the host; bfloat16 comes back as raw bits.
    dtype = dtypes.from_onnx(value.element_type())
    array = value.numpy()
    return array.view(dtype.numpy) if array.dtype != dtype.numpy else array
