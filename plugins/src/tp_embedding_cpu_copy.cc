// The CPU kernel's row copies (see tp_embedding_cpu_copy.h). Which one a lookup uses is decided
// in tp_embedding_cpu_strategy.cc; here is how each one works:
// - memcpy: rows ahead of the one being copied are prefetched, one cache line per 4 KiB page plus
//   the row's last line, which starts the hardware prefetcher on every page of the row early
//   without flooding the line-fill buffers (prefetching every line was 25% slower at 16 tokens);
// - lockstep (streaming or not): eight rows move side by side, 256 bytes of each per step, in the
//   widest vectors chosen (AVX-512F, AVX or SSE2): each row is one sequential stream for the
//   hardware prefetcher, and eight of them keep enough reads in flight to hide the DRAM latency of
//   rows that sit at random places in the table. Only each row's last line is prefetched: that
//   does the address translation (page walk) early and leaves the lines to the hardware prefetcher
//   (prefetching a line per page as well was 3-5% slower).
// In a standalone loop over random 16 KiB rows of a 2 GiB table (1 thread, AVX-512, Intel Xeon),
// against memcpy of the same bytes: 8 rows x 256 bytes reached 0.95-1.00; 4 rows 0.91-0.97, 2 rows
// 0.86-0.89, 16 rows 0.89-0.94, and 128-byte steps 2-7% less.
// - stream-prefetch and lockstep-prefetch: the same, but while a group of eight rows is copied,
//   each 256-byte step first prefetches into L2 (prefetcht1) the same step of the row that takes
//   its place in the next group, so a group's reads are in flight a whole group ahead and spread
//   over its copy rather than sent in a burst. On an AMD EPYC (Zen 4, 1 thread, AVX2 vectors,
//   random 8 KiB rows of a 250 MiB table, calls alternating) the streaming lockstep went from 0.78-
//   0.88 of a contiguous streaming copy of the same bytes to 1.0-1.05 (0.90-0.92 at 16384 rows of a
//   1 GiB table); prefetching into L1 instead, or only the first lines of each page, gained nothing
//   or less. The calibration decides whether a CPU gets them.
#include "tp_embedding_cpu_copy.h"

#include <algorithm>
#include <cstring>
#include <utility>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
// The AVX and AVX-512F copies are compiled for their instruction sets (GCC target pragmas around
// their code) and chosen at run time from what the CPU has; defining GRAPHBUILD_NO_WIDE_VECTORS
// leaves them out.
#if defined(__SSE2__) && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(GRAPHBUILD_NO_WIDE_VECTORS)
#include <immintrin.h>
#define GRAPHBUILD_WIDE_VECTORS 1
#endif

namespace graphbuild::plugins {
namespace {

constexpr size_t kPrefetchStride = 4096;

// One group of rows copied in lockstep: where each comes from and where it goes.
struct RowGroup {
  const unsigned char* src[kRowsInFlight];
  unsigned char* dst[kRowsInFlight];
  int count = 0;
};

// The table row that flat position p reads, or null when the output row is zero: the id lives in
// another rank's shard, or (with zero_out_of_range=1 only) outside [0, vocab_size).
template <typename Id>
inline const unsigned char* SourceRow(const CopyJob& job, const Id* ids, int64_t p) {
  const int64_t id = static_cast<int64_t>(ids[p]);
  if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(job.vocab_size)) return nullptr;
  // id - vocab_start cannot overflow (both non-negative); a negative local wraps past rows.
  const uint64_t local = static_cast<uint64_t>(id - job.vocab_start);
  if (local >= static_cast<uint64_t>(job.rows)) return nullptr;
  return job.table + local * job.row_bytes;
}

// How many rows ahead of the one being copied are prefetched.
inline int64_t RowsAhead(const CopyJob& job) {
  return static_cast<int64_t>(std::max<size_t>(1, job.prefetch_bytes / job.row_bytes));
}

// Asks for the pages of a row to be brought towards the cache (a hint; never faults).
inline void PrefetchRow(const unsigned char* row, size_t row_bytes) {
  for (size_t off = 0; off < row_bytes; off += kPrefetchStride) __builtin_prefetch(row + off, 0, 3);
  __builtin_prefetch(row + row_bytes - 1, 0, 3);
}

// The lockstep copies' prefetch: the last line of the row at position p only.
template <typename Id>
inline void PrefetchRowEnd(const CopyJob& job, const Id* ids, int64_t p) {
  if (const unsigned char* row = SourceRow(job, ids, p)) {
    __builtin_prefetch(row + job.row_bytes - 1, 0, 3);
  }
}

// Copies (or zeroes) rows [begin, end) with memcpy, prefetching the rows ahead.
template <typename Id>
void MemcpyRows(const CopyJob& job, int64_t begin, int64_t end) {
  const Id* ids = static_cast<const Id*>(job.ids);
  const size_t row_bytes = job.row_bytes;
  // Row p + ahead is prefetched while row p is copied; the first rows are prefetched up front.
  const int64_t ahead = RowsAhead(job);
  for (int64_t p = begin; p < std::min(end, begin + ahead); ++p) {
    if (const unsigned char* row = SourceRow(job, ids, p)) PrefetchRow(row, row_bytes);
  }
  unsigned char* dst = job.out + static_cast<size_t>(begin) * row_bytes;
  for (int64_t p = begin; p < end; ++p, dst += row_bytes) {
    if (p + ahead < end) {
      if (const unsigned char* next = SourceRow(job, ids, p + ahead)) PrefetchRow(next, row_bytes);
    }
    if (const unsigned char* src = SourceRow(job, ids, p)) {
      std::memcpy(dst, src, row_bytes);
    } else {
      std::memset(dst, 0, row_bytes);
    }
  }
}

#if defined(__SSE2__)
// The vector copies, once per instruction set: each namespace defines `Vec` and includes the
// loops, which are compiled for that instruction set so the vector code inlines into them.
namespace sse2 {
struct Vec {
  static constexpr size_t kBytes = 16;
  template <bool kStreaming>
  static void Copy(unsigned char* dst, const unsigned char* src) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    if constexpr (kStreaming) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst), v);
    } else {
      _mm_store_si128(reinterpret_cast<__m128i*>(dst), v);
    }
  }
  template <bool kStreaming>
  static void Zero(unsigned char* dst) {
    if constexpr (kStreaming) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst), _mm_setzero_si128());
    } else {
      _mm_store_si128(reinterpret_cast<__m128i*>(dst), _mm_setzero_si128());
    }
  }
};
#include "tp_embedding_cpu_stream.inc"
}  // namespace sse2

#if defined(GRAPHBUILD_WIDE_VECTORS)
#pragma GCC push_options
#pragma GCC target("avx")
namespace avx {
struct Vec {
  static constexpr size_t kBytes = 32;
  template <bool kStreaming>
  static void Copy(unsigned char* dst, const unsigned char* src) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    if constexpr (kStreaming) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), v);
    } else {
      _mm256_store_si256(reinterpret_cast<__m256i*>(dst), v);
    }
  }
  template <bool kStreaming>
  static void Zero(unsigned char* dst) {
    if constexpr (kStreaming) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), _mm256_setzero_si256());
    } else {
      _mm256_store_si256(reinterpret_cast<__m256i*>(dst), _mm256_setzero_si256());
    }
  }
};
#include "tp_embedding_cpu_stream.inc"
}  // namespace avx
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {
struct Vec {
  static constexpr size_t kBytes = 64;
  template <bool kStreaming>
  static void Copy(unsigned char* dst, const unsigned char* src) {
    const __m512i v = _mm512_loadu_si512(src);
    if constexpr (kStreaming) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), v);
    } else {
      _mm512_store_si512(reinterpret_cast<__m512i*>(dst), v);
    }
  }
  template <bool kStreaming>
  static void Zero(unsigned char* dst) {
    if constexpr (kStreaming) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), _mm512_setzero_si512());
    } else {
      _mm512_store_si512(reinterpret_cast<__m512i*>(dst), _mm512_setzero_si512());
    }
  }
};
#include "tp_embedding_cpu_stream.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

template <typename Id, bool kStreaming, bool kPrefetchNext>
void VectorRows(const CopyJob& job, int64_t begin, int64_t end) {
#if defined(GRAPHBUILD_WIDE_VECTORS)
  if (job.vector_bytes == 64) return avx512::LockstepRows<Id, kStreaming, kPrefetchNext>(job, begin, end);
  if (job.vector_bytes == 32) return avx::LockstepRows<Id, kStreaming, kPrefetchNext>(job, begin, end);
#endif
  sse2::LockstepRows<Id, kStreaming, kPrefetchNext>(job, begin, end);
}

template <bool kStreaming>
void VectorBytes(unsigned char* dst, const unsigned char* src, size_t bytes, size_t vector_bytes) {
#if defined(GRAPHBUILD_WIDE_VECTORS)
  if (vector_bytes == 64) return avx512::CopyAligned<kStreaming>(dst, src, bytes);
  if (vector_bytes == 32) return avx::CopyAligned<kStreaming>(dst, src, bytes);
#endif
  (void)vector_bytes;
  sse2::CopyAligned<kStreaming>(dst, src, bytes);
}
#else
// No vector copies (not x86-64): SetRowCopy never chooses them.
template <typename Id, bool kStreaming, bool kPrefetchNext>
void VectorRows(const CopyJob& job, int64_t begin, int64_t end) {
  MemcpyRows<Id>(job, begin, end);
}
template <bool kStreaming>
void VectorBytes(unsigned char* dst, const unsigned char* src, size_t bytes, size_t) {
  std::memcpy(dst, src, bytes);
}
#endif

template <typename Id>
void RunRangeOf(const CopyJob& job, int64_t begin, int64_t end) {
  switch (job.copy) {
    case RowCopy::kStream:
      return VectorRows<Id, true, false>(job, begin, end);
    case RowCopy::kLockstep:
      return VectorRows<Id, false, false>(job, begin, end);
    case RowCopy::kStreamPrefetch:
      return VectorRows<Id, true, true>(job, begin, end);
    case RowCopy::kLockstepPrefetch:
      return VectorRows<Id, false, true>(job, begin, end);
    case RowCopy::kMemcpy:
      break;
  }
  MemcpyRows<Id>(job, begin, end);
}

}  // namespace

size_t WidestVectorBytes() {
#if defined(GRAPHBUILD_WIDE_VECTORS)
  return __builtin_cpu_supports("avx512f") ? 64 : __builtin_cpu_supports("avx") ? 32 : 16;
#elif defined(__SSE2__)
  return 16;
#else
  return 0;
#endif
}

void SetRowCopy(CopyJob* job, RowCopy wanted, size_t vector_bytes) {
  const uintptr_t out_address = reinterpret_cast<uintptr_t>(job->out);
  const bool vectors = vector_bytes >= 16 && job->row_bytes % 16 == 0 && out_address % 16 == 0;
  job->copy = vectors ? wanted : RowCopy::kMemcpy;
  // Rows of whole cache lines all start at the same offset within a line: past each row's first
  // line boundary they are aligned to every vector width. (An output numpy allocated starts 16
  // bytes past a line; ONNX Runtime's start on one.)
  const bool whole_lines = job->row_bytes % 64 == 0;
  job->rows_in_flight = whole_lines ? kRowsInFlight : 1;
  job->out_head = whole_lines ? (64 - out_address % 64) % 64 : 0;
  // Other rows are aligned to 16 bytes only.
  job->vector_bytes = whole_lines ? vector_bytes : 16;
}

void RunRange(const CopyJob& job, int64_t begin, int64_t end) {
  if (job.id_type == ort::kInt32) {
    RunRangeOf<int32_t>(job, begin, end);
  } else {
    RunRangeOf<int64_t>(job, begin, end);
  }
}

void CopyBytes(void* dst, const void* src, size_t bytes, RowCopy method, size_t vector_bytes) {
  auto* to = static_cast<unsigned char*>(dst);
  const auto* from = static_cast<const unsigned char*>(src);
  if (method == RowCopy::kMemcpy || vector_bytes < 16) {
    std::memcpy(to, from, bytes);
    return;
  }
  // memcpy up to the first vector-aligned byte of dst and after the last whole block of 4 vectors.
  const size_t head = std::min(bytes, (vector_bytes - reinterpret_cast<uintptr_t>(to) % vector_bytes) %
                                          vector_bytes);
  const size_t body = (bytes - head) / (4 * vector_bytes) * (4 * vector_bytes);
  std::memcpy(to, from, head);
  if (method == RowCopy::kStream) {
    VectorBytes<true>(to + head, from + head, body, vector_bytes);
  } else {
    VectorBytes<false>(to + head, from + head, body, vector_bytes);
  }
  std::memcpy(to + head + body, from + head + body, bytes - head - body);
}

}  // namespace graphbuild::plugins
