"""Reused host memory for the arrays ``engine.run`` returns, the way ONNX Runtime's arena reuses its own.

A fresh 64 MiB output array costs more than the lookup that fills it: the kernel has to fault in
every page of new memory. A ``BufferPool`` keeps the memory of returned arrays instead. Each array
the caller gets is a view of a pooled block; once the caller has dropped it and every view of it,
nothing refers to the block's memory any more, and the next call writes into that block again, its
pages already mapped. Whether a block is free is read from the reference count of the array that
owns its memory (every numpy view of it holds one reference), so handing an array out costs one view
and no hook runs when it dies. An array the caller still holds is never handed out again or written
by a later call, so "returned arrays are yours" holds as it did with fresh arrays.

Each block is 64-byte aligned (as ONNX Runtime's CPU buffers) and keeps one ``OrtValue`` over its
memory, made once, so binding it as a segment's output costs no allocation either.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import onnxruntime as ort

from graphbuild import dtypes
from graphbuild.runtime.ortvalues import aligned_empty, to_ortvalue


class Block:
    """One pooled buffer: a typed array over aligned memory and an OrtValue sharing it.

    Attributes:
        array: the block's typed array (the pool's own view; the caller gets other views).
        ortvalue: an OrtValue over the same memory, for binding it as a segment output.
        taken: lent to a call that has not handed it out or put it back yet.
    """

    __slots__ = ("array", "ortvalue", "taken", "_owner", "_idle_refs")

    def __init__(self, shape: tuple[int, ...], dtype: dtypes.DType) -> None:
        self.array = aligned_empty(shape, dtype.numpy)
        self._owner = self.array.base if self.array.base is not None else self.array  # owns the memory
        self.ortvalue: ort.OrtValue = to_ortvalue(self.array)
        self.taken = False
        self._idle_refs = sys.getrefcount(self._owner)  # with no array of the caller's alive

    @property
    def in_use(self) -> bool:
        """Lent to a call, or some array (or view) the caller holds still refers to its memory."""
        return self.taken or sys.getrefcount(self._owner) != self._idle_refs


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
        self._blocks: list[Block] = []
        self._lock = threading.Lock()  # calls are serialized by the executor; this guards close()

    def take(self) -> Block:
        """A block nobody holds: a free one if there is one, else a new one. Free blocks beyond
        ``keep`` are released to the allocator on the way."""
        with self._lock:
            if len(self._blocks) > self.keep + 1:
                self._release_extra()
            for block in self._blocks:  # ``Block.in_use``, inline: this runs on every call
                if not block.taken and sys.getrefcount(block._owner) == block._idle_refs:
                    break
            else:
                block = Block(self.shape, self.dtype)
                self.allocations += 1
                if self.keep:
                    self._blocks.append(block)
            block.taken = True
            return block

    def _release_extra(self) -> None:
        """Forgets the free blocks beyond the first ``keep + 1`` free ones."""
        free = 0
        for block in list(self._blocks):
            if not block.in_use:
                free += 1
                if free > self.keep + 1:
                    self._blocks.remove(block)

    def put(self, block: Block) -> None:
        """Gives back a block that was taken but not handed out (the call failed, or nobody asked)."""
        block.taken = False

    def hand_out(self, block: Block) -> np.ndarray:
        """The caller's array over ``block``: the block is in use for as long as it (or a view of it) lives."""
        array = block.array[...]
        block.taken = False
        return array

    def close(self) -> None:
        """Forgets every block and keeps none from now on (arrays still held stay valid)."""
        with self._lock:
            self.keep = 0
            self._blocks.clear()

    @property
    def free(self) -> int:
        """Free blocks held right now."""
        return sum(1 for block in self._blocks if not block.in_use)
