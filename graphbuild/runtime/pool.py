"""Reused host memory for the arrays ``engine.run`` returns, the way ONNX Runtime's arena reuses its own.

A fresh 64 MiB output array costs more than the lookup that fills it: the kernel has to fault in
every page of new memory. A ``BufferPool`` keeps the memory of returned arrays instead: each array
the caller gets is backed by a pooled block through a small lease object (the array's ``base``);
when the caller drops the array and every view of it, the lease goes with it and puts the block
back, and the next call writes into that block again, its pages already mapped. An array the caller
still holds is never handed out again or written by a later call, so "returned arrays are yours"
holds as it did with fresh arrays.

Each block is 64-byte aligned (as ONNX Runtime's CPU buffers) and keeps one ``OrtValue`` over its
memory, made once, so binding it as a segment's output costs no allocation either.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import numpy as np
import onnxruntime as ort

from graphbuild import dtypes
from graphbuild.runtime.ortvalues import aligned_empty, to_ortvalue


class Block:
    """One pooled buffer: a typed array over aligned memory and (made on first use) its OrtValue."""

    __slots__ = ("array", "interface", "_ortvalue")

    def __init__(self, shape: tuple[int, ...], dtype: dtypes.DType) -> None:
        self.array = aligned_empty(shape, dtype.numpy)
        self.interface = dict(self.array.__array_interface__)
        self._ortvalue: Optional[ort.OrtValue] = None

    @property
    def ortvalue(self) -> ort.OrtValue:
        """An OrtValue sharing the block's memory (for binding it as an output)."""
        if self._ortvalue is None:
            self._ortvalue = to_ortvalue(self.array)
        return self._ortvalue


class _Lease:
    """The ``base`` of an array handed out from a pool; when it dies, its block goes back."""

    __slots__ = ("block", "pool", "__weakref__")

    def __init__(self, block: Block, pool: "BufferPool") -> None:
        self.block = block
        self.pool = pool

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return self.block.interface

    def __del__(self) -> None:
        self.pool.put(self.block)


class BufferPool:
    """Blocks of one shape and dtype, taken for a call and handed to the caller or put back.

    Args:
        shape: the arrays' shape.
        dtype: their dtype.
        keep: how many free blocks the pool holds on to; more are released to the allocator.

    Attributes:
        allocations: how many blocks the pool has allocated (fresh memory) so far.
    """

    def __init__(self, shape: tuple[int, ...], dtype: dtypes.DType, keep: int = 2) -> None:
        self.shape = tuple(shape)
        self.dtype = dtype
        self.keep = keep
        self.allocations = 0
        self._free: list[Block] = []
        self._lock = threading.Lock()  # leases die in whatever thread drops the last reference
        self._plain = np.dtype(dtype.numpy).kind != "V"

    def take(self) -> Block:
        """A block nobody holds: a free one if there is one, else a new one."""
        with self._lock:
            if self._free:
                return self._free.pop()
            self.allocations += 1
        return Block(self.shape, self.dtype)

    def put(self, block: Block) -> None:
        """Returns a block nobody holds any more (the caller's array died, or it was never handed out)."""
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(block)

    def hand_out(self, block: Block) -> np.ndarray:
        """The caller's array over ``block``; the block returns to the pool when the array (and
        every view of it) is gone."""
        array = np.asarray(_Lease(block, self))
        return array if self._plain else array.view(self.dtype.numpy)  # bfloat16 comes through as void

    def close(self) -> None:
        """Drops the free blocks and keeps none from now on (arrays still held stay valid)."""
        with self._lock:
            self.keep = 0
            self._free.clear()

    @property
    def free(self) -> int:
        """Free blocks held right now."""
        return len(self._free)
