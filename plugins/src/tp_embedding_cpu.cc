// TPEmbedding on ONNX Runtime's CPU execution provider: one validation pass over the ids, then
// row copies and zero rows split into tasks that run on the session's intra-op thread pool
// (lookups that fit in one task run inline, with no pool hand-off). The copy is element-type
// agnostic. How rows are copied (memcpy, or eight rows in lockstep with streaming or ordinary
// stores; the vector width; the prefetch distance) is decided once per process from what the CPU
// is and a short calibration: see tp_embedding_cpu_strategy.cc and tp_embedding_cpu_copy.cc.
#include "tp_embedding_cpu.h"

#include <algorithm>

#include "tp_embedding_common.h"
#include "tp_embedding_cpu_copy.h"
#include "tp_embedding_cpu_strategy.h"

namespace graphbuild::plugins {
namespace {

// Output bytes one thread-pool task writes: big enough to amortise scheduling, small enough to
// balance the load. From 256 KiB (16 float32 rows of 4096) a lookup is split as ONNX Runtime's
// Gather splits it: with the default spinning pool a 2-thread split saved 1.5-2 us a call there,
// and a pool that sleeps makes both pay the same wake-up. Lockstep tasks are larger: each
// restarts its prefetches (and a streaming one ends with a store fence), and an output large
// enough for them still makes a task per MiB.
constexpr size_t kBytesPerTask = 128 * 1024;
constexpr size_t kLockstepBytesPerTask = 1024 * 1024;

// The descriptor's check_setup: decides the strategy (calibrating, once per process) when the
// first kernel is created, so that a bad GRAPHBUILD_CPU_ISA or GRAPHBUILD_CPU_STRATEGY fails
// session creation, not each run.
OrtStatus* CheckStrategy(const ort::Api& api) {
  const CpuStrategy& strategy = Strategy();
  return strategy.error.empty() ? nullptr
                                : MakeStatus(api, ort::kInvalidArgument, strategy.error);
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

    const CpuStrategy& strategy = Strategy();  // Valid: checked at kernel creation.
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
    job.prefetch_bytes = strategy.prefetch_bytes;
    const size_t out_bytes = static_cast<size_t>(args.num_ids) * args.row_bytes;
    const bool large = out_bytes >= strategy.large_min_bytes;
    SetRowCopy(&job, large ? strategy.large : strategy.small,
               large ? strategy.large_vector_bytes : strategy.vector_bytes);
    const size_t task_bytes = job.copy == RowCopy::kMemcpy ? kBytesPerTask : kLockstepBytesPerTask;
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
  op->check_setup = CheckStrategy;
}

}  // namespace graphbuild::plugins
