// TPEmbedding on ONNX Runtime's CPU execution provider: one validation pass over the ids, then
// row copies (memcpy) and zero rows (memset) split into chunks of a few hundred KB of output that
// run on the session's intra-op thread pool. The copy is element-type agnostic.
#include "tp_embedding_cpu.h"

#include <algorithm>
#include <cstring>

#include "tp_embedding_common.h"

namespace graphbuild::plugins {
namespace {

// Output bytes one thread-pool task writes: big enough to amortise scheduling, small enough to
// balance the load. Lookups that fit in one task run inline on the calling thread.
constexpr size_t kBytesPerTask = 256 * 1024;

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
};

template <typename Id>
void CopyRows(const CopyJob& job, int64_t begin, int64_t end) {
  const Id* ids = static_cast<const Id*>(job.ids);
  const uint64_t vocab = static_cast<uint64_t>(job.vocab_size);
  const uint64_t rows = static_cast<uint64_t>(job.rows);
  const size_t row_bytes = job.row_bytes;
  unsigned char* dst = job.out + static_cast<size_t>(begin) * row_bytes;
  for (int64_t p = begin; p < end; ++p, dst += row_bytes) {
    const int64_t id = static_cast<int64_t>(ids[p]);
    // Ids outside [0, vocab_size) only get here with zero_out_of_range=1: they give zero rows.
    if (static_cast<uint64_t>(id) < vocab) {
      // id - vocab_start cannot overflow (both non-negative); a negative local wraps past rows.
      const uint64_t local = static_cast<uint64_t>(id - job.vocab_start);
      if (local < rows) {
        std::memcpy(dst, job.table + local * row_bytes, row_bytes);
        continue;
      }
    }
    std::memset(dst, 0, row_bytes);  // The id lives in another rank's shard.
  }
}

// KernelContext_ParallelFor callback: copies the ids of task `task`.
void RunTask(void* user, size_t task) {
  const CopyJob& job = *static_cast<const CopyJob*>(user);
  const int64_t begin = static_cast<int64_t>(task) * job.ids_per_task;
  const int64_t end = std::min(job.num_ids, begin + job.ids_per_task);
  if (job.id_type == ort::kInt32) {
    CopyRows<int32_t>(job, begin, end);
  } else {
    CopyRows<int64_t>(job, begin, end);
  }
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
    const int64_t tasks = (args.num_ids + job.ids_per_task - 1) / job.ids_per_task;
    if (tasks == 1) {
      RunTask(&job, 0);
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
