// TPEmbedding on ONNX Runtime's CPU execution provider: one validation pass over the ids, then
// row copies and zero rows split into tasks of a few hundred KB of output that run on the
// session's intra-op thread pool (lookups that fit in one task run inline, with no pool hand-off).
// The copy is element-type agnostic. Three things keep it at the memory-bandwidth limit:
// - the rows ahead of the one being copied are prefetched, so the random row reads overlap
//   instead of each row waiting for memory in turn;
// - outputs too large to stay in cache are written with non-temporal (streaming) stores, which
//   skip reading each output line into the cache before overwriting it;
// - those large copies move four 4 KiB pages in lockstep (AVX-512 where the CPU has it), since
//   the hardware prefetcher follows one stream per page: one page at a time leaves DRAM idle.
#include "tp_embedding_cpu.h"

#include <algorithm>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
// The AVX-512 copy is compiled with a target attribute and chosen at run time; defining
// GRAPHBUILD_NO_AVX512 leaves it out (to test the SSE2 path on an AVX-512 machine).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(GRAPHBUILD_NO_AVX512)
#include <immintrin.h>
#define GRAPHBUILD_HAVE_AVX512_PATH 1
#endif

#include "tp_embedding_common.h"

namespace graphbuild::plugins {
namespace {

// Output bytes one thread-pool task writes: big enough to amortise scheduling, small enough to
// balance the load.
constexpr size_t kBytesPerTask = 256 * 1024;
// Outputs at least this large are written with streaming stores: they would not stay in cache for
// the next op anyway, and streaming saves reading every output line before overwriting it. Below
// it, ordinary stores win because the output stays in the last-level cache (on the 2-core
// development VM streaming lost about 10% at 8 and 16 MiB and won 19-29% from 32 MiB up).
constexpr size_t kStreamingMinBytes = 24u << 20;
// Rows are prefetched this many bytes of rows ahead of the one being copied (at least one row),
// one cache line per 4 KiB page plus the row's last line: that starts the hardware prefetcher on
// every page of the row early, without flooding the line-fill buffers (prefetching every line of
// the next row was 25% slower at 16 tokens).
constexpr size_t kPrefetchBytes = 32 * 1024;
constexpr size_t kPrefetchStride = 4096;

// One lookup split into tasks; read-only while the tasks run.
struct CopyJob {
  const void* ids;
  ort::ElementType id_type;
  const unsigned char* table;
  unsigned char* out;
  int64_t num_ids;
  int64_t rows;
  int64_t vocab_size;
  int64_t vocab_start;
  size_t row_bytes;
  int64_t ids_per_task;
  bool streaming;  // Write with streaming stores (rows 16-byte aligned).
  bool lockstep;   // ...pages in lockstep (rows 64-byte aligned: no chunk splits a line).
  bool wide;       // ...with 64-byte AVX-512 stores (and the CPU has AVX-512F).
};

// A 4 KiB piece of a row being copied: where it goes and where it comes from.
struct Piece {
  unsigned char* dst;
  const unsigned char* src;
};
constexpr size_t kPage = 4096;
constexpr int kStreams = 8;     // Pages copied in lockstep (8 measured 2-4% above 4 at 256 MiB float32).
constexpr size_t kChunk = 128;  // Bytes of each page per step.

#if defined(__SSE2__)
constexpr bool kHaveStreaming = true;
// Copies `bytes` (a multiple of 16) to a 16-byte aligned `dst` with non-temporal stores.
void StreamCopy(unsigned char* dst, const unsigned char* src, size_t bytes) {
  size_t i = 0;
  for (; i + 64 <= bytes; i += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
  for (; i < bytes; i += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
  }
}
// Zeroes `bytes` (a multiple of 16) at a 16-byte aligned `dst` with non-temporal stores.
void StreamZero(unsigned char* dst, size_t bytes) {
  const __m128i zero = _mm_setzero_si128();
  for (size_t i = 0; i < bytes; i += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), zero);
  }
}
// Copies `count` (1 to kStreams) whole pages in lockstep, kChunk bytes of each per step, asking
// for each page's next chunk ahead of time. Destinations 16-byte aligned.
void StreamPages(const Piece* pieces, int count) {
  for (size_t off = 0; off < kPage; off += kChunk) {
    for (int k = 0; k < count; ++k) {
      const unsigned char* src = pieces[k].src + off;
      unsigned char* dst = pieces[k].dst + off;
      __builtin_prefetch(src + kChunk, 0, 3);  // Past the page's end only prefetches; never faults.
      __builtin_prefetch(src + kChunk + 64, 0, 3);
      __m128i v[kChunk / 16];
      for (size_t c = 0; c < kChunk / 16; ++c) {
        v[c] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16 * c));
      }
      for (size_t c = 0; c < kChunk / 16; ++c) {
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 16 * c), v[c]);
      }
    }
  }
}
// Orders the streaming stores before whatever the thread does next (they are weakly ordered).
void StreamFence() { _mm_sfence(); }
#else
constexpr bool kHaveStreaming = false;
void StreamCopy(unsigned char* dst, const unsigned char* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
}
void StreamZero(unsigned char* dst, size_t bytes) { std::memset(dst, 0, bytes); }
void StreamPages(const Piece* pieces, int count) {
  for (int k = 0; k < count; ++k) std::memcpy(pieces[k].dst, pieces[k].src, kPage);
}
void StreamFence() {}
#endif

#if defined(GRAPHBUILD_HAVE_AVX512_PATH)
// StreamPages with 64-byte loads and stores; destinations 64-byte aligned. Compiled for AVX-512F
// whatever the build's target, and only called when the CPU reports it (HaveAvx512).
__attribute__((target("avx512f"))) void StreamPagesWide(const Piece* pieces, int count) {
  for (size_t off = 0; off < kPage; off += kChunk) {
    for (int k = 0; k < count; ++k) {
      const unsigned char* src = pieces[k].src + off;
      unsigned char* dst = pieces[k].dst + off;
      __builtin_prefetch(src + kChunk, 0, 3);
      __builtin_prefetch(src + kChunk + 64, 0, 3);
      const __m512i a = _mm512_loadu_si512(src);
      const __m512i b = _mm512_loadu_si512(src + 64);
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), a);
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + 64), b);
    }
  }
}
bool HaveAvx512() {
  static const bool have = __builtin_cpu_supports("avx512f");
  return have;
}
#else
void StreamPagesWide(const Piece* pieces, int count) { StreamPages(pieces, count); }
bool HaveAvx512() { return false; }
#endif

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

// Asks for the pages of a row to be brought towards the cache (a hint; never faults).
inline void PrefetchRow(const unsigned char* row, size_t row_bytes) {
  for (size_t off = 0; off < row_bytes; off += kPrefetchStride) __builtin_prefetch(row + off, 0, 3);
  __builtin_prefetch(row + row_bytes - 1, 0, 3);
}

template <typename Id, bool kStream>
void CopyRows(const CopyJob& job, int64_t begin, int64_t end) {
  const Id* ids = static_cast<const Id*>(job.ids);
  const size_t row_bytes = job.row_bytes;
  // Row p + ahead is prefetched while row p is copied; the first rows are prefetched up front.
  const int64_t ahead = static_cast<int64_t>(std::max<size_t>(1, kPrefetchBytes / row_bytes));
  for (int64_t p = begin; p < std::min(end, begin + ahead); ++p) {
    if (const unsigned char* row = SourceRow(job, ids, p)) PrefetchRow(row, row_bytes);
  }
  unsigned char* dst = job.out + static_cast<size_t>(begin) * row_bytes;
  // Streaming: whole pages of rows wait here until kStreams of them can be copied in lockstep.
  Piece pending[kStreams];
  int num_pending = 0;
  const size_t whole_pages = row_bytes / kPage * kPage;
  for (int64_t p = begin; p < end; ++p, dst += row_bytes) {
    if (p + ahead < end) {
      if (const unsigned char* next = SourceRow(job, ids, p + ahead)) PrefetchRow(next, row_bytes);
    }
    const unsigned char* src = SourceRow(job, ids, p);
    if constexpr (kStream) {
      if (src == nullptr) {
        StreamZero(dst, row_bytes);
        continue;
      }
      if (!job.lockstep) {
        StreamCopy(dst, src, row_bytes);
        continue;
      }
      for (size_t off = 0; off < whole_pages; off += kPage) {
        pending[num_pending++] = Piece{dst + off, src + off};
        if (num_pending == kStreams) {
          job.wide ? StreamPagesWide(pending, num_pending) : StreamPages(pending, num_pending);
          num_pending = 0;
        }
      }
      if (whole_pages < row_bytes) {
        StreamCopy(dst + whole_pages, src + whole_pages, row_bytes - whole_pages);
      }
    } else {
      if (src != nullptr) {
        std::memcpy(dst, src, row_bytes);
      } else {
        std::memset(dst, 0, row_bytes);
      }
    }
  }
  if constexpr (kStream) {
    if (num_pending > 0) {
      job.wide ? StreamPagesWide(pending, num_pending) : StreamPages(pending, num_pending);
    }
    StreamFence();
  }
}

void RunRange(const CopyJob& job, int64_t begin, int64_t end) {
  const bool int32_ids = job.id_type == ort::kInt32;
  if (job.streaming) {
    if (int32_ids) {
      CopyRows<int32_t, true>(job, begin, end);
    } else {
      CopyRows<int64_t, true>(job, begin, end);
    }
  } else if (int32_ids) {
    CopyRows<int32_t, false>(job, begin, end);
  } else {
    CopyRows<int64_t, false>(job, begin, end);
  }
}

// KernelContext_ParallelFor callback: copies the ids of task `task`.
void RunTask(void* user, size_t task) {
  const CopyJob& job = *static_cast<const CopyJob*>(user);
  const int64_t begin = static_cast<int64_t>(task) * job.ids_per_task;
  RunRange(job, begin, std::min(job.num_ids, begin + job.ids_per_task));
}

OrtStatus* Compute(void* kernel_ptr, OrtKernelContext* context) {
  const auto& kernel = *static_cast<const TPEmbeddingKernel*>(kernel_ptr);
  const TPEmbeddingConfig& config = kernel.config;
  const ort::Api api(kernel.api);
  return GuardAbi(api, "TPEmbedding (CPU)", [&]() -> OrtStatus* {
    LookupArgs args;
    if (OrtStatus* status = PrepareLookup(api, config, context, &args)) return status;

    if (!config.zero_out_of_range) {
      const int64_t bad = FindFirstOutOfRange(args.ids, args.id_type, args.num_ids,
                                              config.vocab_size);
      if (bad >= 0) return OutOfRangeStatus(api, config, ReadId(args.ids, args.id_type, bad), bad);
    }
    if (args.num_ids == 0 || args.row_bytes == 0) return nullptr;  // Empty output.

    CopyJob job;
    job.ids = args.ids;
    job.id_type = args.id_type;
    job.table = static_cast<const unsigned char*>(args.table);
    job.out = static_cast<unsigned char*>(args.out);
    job.num_ids = args.num_ids;
    job.rows = args.rows;
    job.vocab_size = config.vocab_size;
    job.vocab_start = config.vocab_start;
    job.row_bytes = args.row_bytes;
    job.ids_per_task = static_cast<int64_t>(std::max<size_t>(1, kBytesPerTask / args.row_bytes));
    const size_t out_bytes = static_cast<size_t>(args.num_ids) * args.row_bytes;
    const uintptr_t out_address = reinterpret_cast<uintptr_t>(job.out);
    job.streaming = kHaveStreaming && out_bytes >= kStreamingMinBytes &&
                    args.row_bytes % 16 == 0 && out_address % 16 == 0;
    // Interleaved streams must each write whole cache lines: a line left half-written while the
    // other streams advance is flushed in pieces (2-3x slower, measured).
    job.lockstep = job.streaming && args.row_bytes % 64 == 0 && out_address % 64 == 0;
    job.wide = job.lockstep && HaveAvx512();
    const int64_t tasks = (args.num_ids + job.ids_per_task - 1) / job.ids_per_task;
    if (tasks == 1) {
      RunRange(job, 0, job.num_ids);
      return nullptr;
    }
    return api.KernelContext_ParallelFor(context, RunTask, static_cast<size_t>(tasks),
                                         /*num_batch=*/0, &job);
  });
}

const char* GetExecutionProviderType(const OrtCustomOp*) { return "CPUExecutionProvider"; }

}  // namespace

void FillCpuDescriptor(TPEmbeddingOp* op, ort::ElementType table_type) {
  FillCommonDescriptor(op, table_type);
  op->base.GetExecutionProviderType = GetExecutionProviderType;
  op->base.KernelComputeV2 = Compute;
}

}  // namespace graphbuild::plugins
