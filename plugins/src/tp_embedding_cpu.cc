// TPEmbedding on ONNX Runtime's CPU execution provider: one validation pass over the ids, then
// row copies and zero rows split into tasks that run on the session's intra-op thread pool
// (lookups that fit in one task run inline, with no pool hand-off). The copy is element-type
// agnostic. Three things keep it at the memory-bandwidth limit:
// - rows ahead of the one being copied are prefetched, so the random row reads overlap instead of
//   each row waiting for memory in turn;
// - outputs too large to stay in cache are written with non-temporal (streaming) stores, which
//   skip reading each output line into the cache before overwriting it;
// - those large copies move eight rows in lockstep, 256 bytes of each per step, in the widest
//   vectors the CPU has (AVX-512F, AVX or SSE2): each row is one sequential stream for the
//   hardware prefetcher, and eight of them keep enough reads in flight to hide the DRAM latency
//   of rows that sit at random places in the table.
#include "tp_embedding_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
// The AVX and AVX-512F copies are compiled for their instruction sets (GCC target pragmas around
// their code) and chosen at run time from what the CPU has; defining GRAPHBUILD_NO_WIDE_VECTORS
// leaves them out. GRAPHBUILD_CPU_ISA=sse2|avx|avx512 in the environment caps the choice (the
// tests use it to run every copy on one machine).
#if defined(__SSE2__) && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(GRAPHBUILD_NO_WIDE_VECTORS)
#include <immintrin.h>
#define GRAPHBUILD_WIDE_VECTORS 1
#endif

#include "tp_embedding_common.h"

namespace graphbuild::plugins {
namespace {

// Output bytes one thread-pool task writes: big enough to amortise scheduling, small enough to
// balance the load. Streaming tasks are larger: each ends with a store fence and restarts its
// prefetches, and a streamed output (24 MiB or more) still makes 24 tasks or more.
constexpr size_t kBytesPerTask = 256 * 1024;
constexpr size_t kStreamingBytesPerTask = 1024 * 1024;
// Outputs at least this large are written with streaming stores: they would not stay in cache for
// the next op anyway, and streaming saves reading every output line before overwriting it. Below
// it, ordinary stores win because the output stays in the last-level cache (on the 2-core
// development VM streaming lost about 10% at 8 and 16 MiB and won 19-29% from 32 MiB up).
constexpr size_t kStreamingMinBytes = 24u << 20;
// Rows are prefetched this many bytes of rows ahead of the one being copied (at least one row).
// Cached copies touch one cache line per 4 KiB page plus the row's last line: that starts the
// hardware prefetcher on every page of the row early, without flooding the line-fill buffers
// (prefetching every line of the next row was 25% slower at 16 tokens).
constexpr size_t kPrefetchBytes = 32 * 1024;
constexpr size_t kPrefetchStride = 4096;
// Streaming copies: rows copied in lockstep, and the bytes of each row per step. In a standalone
// C++ loop over random 16 KiB rows of a 2 GiB table (1 thread, AVX-512), against memcpy of the same
// bytes: 8 rows x 256 bytes reached 0.95-1.00; 4 rows 0.91-0.97, 2 rows 0.86-0.89, 16 rows
// 0.89-0.94, and 128-byte steps 2-7% less. In this kernel, `graphbuild bench` at float32 128256 x 4096, 16384
// tokens, 1 thread went from 0.85 of its copy ceiling (4 KiB pages in lockstep, the previous
// design) to 0.94-0.97.
constexpr int kRowsInFlight = 8;
constexpr size_t kChunk = 256;

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
  bool streaming;       // Write with streaming stores (rows and output 16-byte aligned).
  size_t vector_bytes;  // ...with vectors this wide: 16 (SSE2), 32 (AVX), 64 (AVX-512F).
  int rows_in_flight;   // ...this many rows in lockstep: kRowsInFlight when every row is whole
                        // cache lines (a line left half-written while other rows advance is
                        // flushed in pieces, 2-3x slower), else 1.
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
inline int64_t RowsAhead(size_t row_bytes) {
  return static_cast<int64_t>(std::max<size_t>(1, kPrefetchBytes / row_bytes));
}

// Asks for the pages of a row to be brought towards the cache (a hint; never faults).
inline void PrefetchRow(const unsigned char* row, size_t row_bytes) {
  for (size_t off = 0; off < row_bytes; off += kPrefetchStride) __builtin_prefetch(row + off, 0, 3);
  __builtin_prefetch(row + row_bytes - 1, 0, 3);
}

// The streaming copies' prefetch: the last line of the row at position p only. That does the
// address translation (page walk) early and leaves the row's lines to the hardware prefetcher,
// which follows each row once its copy starts; prefetching a line per page as well was 3-5% slower.
template <typename Id>
inline void PrefetchRowEnd(const CopyJob& job, const Id* ids, int64_t p) {
  if (const unsigned char* row = SourceRow(job, ids, p)) {
    __builtin_prefetch(row + job.row_bytes - 1, 0, 3);
  }
}

// Copies (or zeroes) rows [begin, end) with ordinary stores, prefetching the rows ahead.
template <typename Id>
void CopyRows(const CopyJob& job, int64_t begin, int64_t end) {
  const Id* ids = static_cast<const Id*>(job.ids);
  const size_t row_bytes = job.row_bytes;
  // Row p + ahead is prefetched while row p is copied; the first rows are prefetched up front.
  const int64_t ahead = RowsAhead(row_bytes);
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
constexpr bool kHaveStreaming = true;
// The streaming copy, once per instruction set: each namespace defines `Vec` (one vector's
// streaming copy and zero) and includes the row loop, which is compiled for that instruction set
// so the vector code inlines into it.
namespace sse2 {
struct Vec {
  static constexpr size_t kBytes = 16;
  static void Stream(unsigned char* dst, const unsigned char* src) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  }
  static void StreamZero(unsigned char* dst) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst), _mm_setzero_si128());
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
  static void Stream(unsigned char* dst, const unsigned char* src) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  }
  static void StreamZero(unsigned char* dst) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), _mm256_setzero_si256());
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
  static void Stream(unsigned char* dst, const unsigned char* src) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), _mm512_loadu_si512(src));
  }
  static void StreamZero(unsigned char* dst) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), _mm512_setzero_si512());
  }
};
#include "tp_embedding_cpu_stream.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

template <typename Id>
void StreamRows(const CopyJob& job, int64_t begin, int64_t end) {
#if defined(GRAPHBUILD_WIDE_VECTORS)
  if (job.vector_bytes == 64) return avx512::StreamRows<Id>(job, begin, end);
  if (job.vector_bytes == 32) return avx::StreamRows<Id>(job, begin, end);
#endif
  sse2::StreamRows<Id>(job, begin, end);
}
#else
constexpr bool kHaveStreaming = false;
template <typename Id>
void StreamRows(const CopyJob& job, int64_t begin, int64_t end) {
  CopyRows<Id>(job, begin, end);  // Never chosen: streaming needs SSE2.
}
#endif

// The widest vector (in bytes) the streaming copy may use: the widest of AVX-512F (64), AVX (32)
// and SSE2 (16) that both the CPU and this build have, capped by GRAPHBUILD_CPU_ISA when set; an
// error message instead when that variable names something else, or what the CPU or build lacks.
struct IsaChoice {
  size_t vector_bytes = 16;
  std::string error;
};
IsaChoice ChooseIsa() {
  IsaChoice choice;
#if defined(GRAPHBUILD_WIDE_VECTORS)
  const size_t widest = __builtin_cpu_supports("avx512f") ? 64
                        : __builtin_cpu_supports("avx")   ? 32
                                                          : 16;
#elif defined(__SSE2__)
  const size_t widest = 16;
#else
  const size_t widest = 0;  // No streaming copy at all: large outputs use memcpy.
#endif
  const char* requested = std::getenv("GRAPHBUILD_CPU_ISA");
  if (requested == nullptr || *requested == '\0') {
    choice.vector_bytes = widest;
    return choice;
  }
  const std::string name(requested);
  const size_t asked = name == "sse2" ? 16 : name == "avx" ? 32 : name == "avx512" ? 64 : 0;
  if (asked == 0) {
    choice.error =
        "GRAPHBUILD_CPU_ISA must be 'sse2', 'avx', 'avx512' or unset, got '" + name + "'";
  } else if (asked > widest) {
    choice.error = "GRAPHBUILD_CPU_ISA=" + name +
                   ", but this CPU (or this build of the library) has no " + name + " copy";
  }
  choice.vector_bytes = asked;
  return choice;
}
const IsaChoice& Isa() {
  static const IsaChoice choice = ChooseIsa();
  return choice;
}
// The descriptor's check_setup: a bad GRAPHBUILD_CPU_ISA fails session creation, not each run.
OrtStatus* CheckIsa(const ort::Api& api) {
  const IsaChoice& isa = Isa();
  return isa.error.empty() ? nullptr : MakeStatus(api, ort::kInvalidArgument, isa.error);
}

void RunRange(const CopyJob& job, int64_t begin, int64_t end) {
  const bool int32_ids = job.id_type == ort::kInt32;
  if (job.streaming) {
    int32_ids ? StreamRows<int32_t>(job, begin, end) : StreamRows<int64_t>(job, begin, end);
  } else {
    int32_ids ? CopyRows<int32_t>(job, begin, end) : CopyRows<int64_t>(job, begin, end);
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
    const size_t out_bytes = static_cast<size_t>(args.num_ids) * args.row_bytes;
    const uintptr_t out_address = reinterpret_cast<uintptr_t>(job.out);
    job.streaming = kHaveStreaming && out_bytes >= kStreamingMinBytes &&
                    args.row_bytes % 16 == 0 && out_address % 16 == 0;
    const bool whole_lines = args.row_bytes % 64 == 0 && out_address % 64 == 0;
    job.rows_in_flight = whole_lines ? kRowsInFlight : 1;
    // Wider vectors need rows and output aligned to them; whole-line rows are aligned to all.
    job.vector_bytes = whole_lines ? Isa().vector_bytes : 16;  // Valid: checked at kernel creation.
    const size_t task_bytes = job.streaming ? kStreamingBytesPerTask : kBytesPerTask;
    job.ids_per_task = static_cast<int64_t>(std::max<size_t>(1, task_bytes / args.row_bytes));
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
  op->check_setup = CheckIsa;
}

}  // namespace graphbuild::plugins
