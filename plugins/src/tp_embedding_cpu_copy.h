// The CPU kernel's row copies (see tp_embedding_cpu_copy.cc): one lookup described as a CopyJob,
// copied by one of three methods that tp_embedding_cpu_strategy.cc chooses between, plus plain
// contiguous copies of the same three kinds for calibration and for the benchmark's copy ceiling.
#pragma once

#include <cstddef>
#include <cstdint>

#include "graphbuild/ort_abi.h"

namespace graphbuild::plugins {

// How the rows of one lookup are copied.
enum class RowCopy {
  // One row after the other with memcpy (glibc: `rep movsb` or vector loops), prefetching ahead.
  kMemcpy,
  // Rows in lockstep (kRowsInFlight at a time, kLockstepChunk bytes of each per step) written with
  // non-temporal (streaming) stores, which skip reading each output line before overwriting it.
  kStream,
  // The same lockstep with ordinary stores: the outputs stay in cache.
  kLockstep,
  // kStream and kLockstep with the next group's rows prefetched into L2 while a group is copied,
  // each step of a row asking for the same step of the row that follows it one group later.
  kStreamPrefetch,
  kLockstepPrefetch,
};
inline constexpr int kNumRowCopies = 5;


// Lockstep copies: rows copied side by side, and the bytes of each row per step.
inline constexpr int kRowsInFlight = 8;
inline constexpr size_t kLockstepChunk = 256;

// One lookup split into tasks; read-only while the tasks run.
struct CopyJob {
  const void* ids = nullptr;
  ort::ElementType id_type = ort::kInt64;
  const unsigned char* table = nullptr;
  unsigned char* out = nullptr;
  int64_t num_ids = 0;
  int64_t rows = 0;
  int64_t vocab_size = 0;
  int64_t vocab_start = 0;
  size_t row_bytes = 0;
  int64_t ids_per_task = 0;
  RowCopy copy = RowCopy::kMemcpy;  // The lockstep copies need rows and output 16-byte aligned.
  size_t vector_bytes = 16;         // ...and use vectors this wide: 16 (SSE2), 32 (AVX), 64 (AVX-512F).
  int rows_in_flight = 1;           // ...this many rows in lockstep: kRowsInFlight when every row is
                                    // whole cache lines (a line left half-written while other rows
                                    // advance is flushed in pieces, 2-3x slower), else 1.
  size_t out_head = 0;              // ...the bytes of each output row before its first line boundary
                                    // (copied with memcpy; 0 when the output is line aligned).
  size_t prefetch_bytes = 32 * 1024;  // Rows this many bytes ahead are prefetched (at least one).
};

// The widest vector copy this build has for this CPU, in bytes: 64 (AVX-512F), 32 (AVX), 16
// (SSE2), or 0 when there is no vector copy at all (not x86-64: every method is memcpy).
size_t WidestVectorBytes();

// Fills job.copy, vector_bytes and rows_in_flight for `wanted` from the job's row size and output
// address: methods the rows or the output's alignment do not allow fall back to kMemcpy.
void SetRowCopy(CopyJob* job, RowCopy wanted, size_t vector_bytes);

// Copies (or zeroes) the rows [begin, end) of `job`.
void RunRange(const CopyJob& job, int64_t begin, int64_t end);

// Copies `bytes` from `src` to `dst` (not overlapping) by `method` with `vector_bytes` vectors:
// memcpy, or a vector loop with streaming or ordinary stores (memcpy for the unaligned ends);
// kMemcpy, kStream or kLockstep only.
void CopyBytes(void* dst, const void* src, size_t bytes, RowCopy method, size_t vector_bytes);

}  // namespace graphbuild::plugins
