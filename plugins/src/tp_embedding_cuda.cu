// TPEmbedding on ONNX Runtime's CUDA execution provider.
//
// One kernel launch both copies rows and, unless zero_out_of_range=1, validates ids on the device:
// every out-of-vocabulary position is folded into a per-kernel-instance device word with atomicMin,
// so after the launch one 8-byte copy into pinned host memory and one stream synchronisation tell
// the host the smallest offending flat position, reported with the same text as the CPU kernel
// (tp_embedding_common.cc). The word is allocated once per kernel instance (node), kept at "no bad
// position" between calls, reset on the error path only, and freed with the kernel.
//
// Two launch shapes, both grid-stride with 64-bit index arithmetic:
//   - RowsPerWarp, for many wide rows (16384 x 4096 fp16): one warp per row, each lane staging up
//     to kUnroll loads before it stores them;
//   - Flat, for few ids (1 to 16 tokens) or narrow rows: one thread per copy unit of the output,
//     so even a single row is spread over the whole row's worth of threads.
// The copy unit is the widest of 16, 8, 4 or 2 bytes that divides the row and both pointers'
// alignment. Every CUDA call and launch is checked; errors become EP_FAIL statuses naming the node.
// The kernels themselves live in tp_embedding_cuda_kernels.cuh (also compiled by a host test).
#include "tp_embedding_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <mutex>
#include <string>
#include <utility>

#include "tp_embedding_common.h"
#include "tp_embedding_cuda_kernels.cuh"

namespace graphbuild::plugins {
namespace {

using namespace cuda_kernels;  // The device half of this file (tp_embedding_cuda_kernels.cuh).

// The per-node kernel object: the shared attributes plus this node's device state, created on the
// first call (on the device of that call's stream) and reused by every later one.
struct CudaKernel {
  TPEmbeddingKernel base;
  std::mutex mutex;  // ONNX Runtime may run one session from several threads at once.
  bool initialised = false;
  int device = -1;
  int64_t multiprocessors = 1;
  unsigned long long* first_bad = nullptr;       // Device word, kNoBadPosition between calls.
  unsigned long long* first_bad_host = nullptr;  // Pinned host copy of it.
  bool needs_reset = false;  // A failed call may have left first_bad set.

  explicit CudaKernel(TPEmbeddingKernel shared) : base(std::move(shared)) {}
  CudaKernel(const CudaKernel&) = delete;
  CudaKernel& operator=(const CudaKernel&) = delete;
  ~CudaKernel() {
    if (!initialised) return;
    // Errors are ignored: at process exit the runtime may already be shutting down.
    int current = -1;
    const bool switched = cudaGetDevice(&current) == cudaSuccess && current != device &&
                          cudaSetDevice(device) == cudaSuccess;
    if (first_bad != nullptr) static_cast<void>(cudaFree(first_bad));
    if (first_bad_host != nullptr) static_cast<void>(cudaFreeHost(first_bad_host));
    if (switched) static_cast<void>(cudaSetDevice(current));
  }
};

// Turns a CUDA error into an EP_FAIL status naming the node and the failing step.
OrtStatus* CheckCuda(const ort::Api& api, const TPEmbeddingConfig& config, cudaError_t error,
                     const char* step) {
  if (error == cudaSuccess) return nullptr;
  return MakeStatus(api, ort::kEpFail,
                    config.Label() + ": CUDA error in " + step + ": " + cudaGetErrorName(error) +
                        " (" + cudaGetErrorString(error) + ")");
}

// This library links its own (static) CUDA runtime, whose current device need not be the one
// ONNX Runtime chose for the session (several ranks may share a process, one GPU each): follow
// the compute stream's device.
cudaError_t UseStreamDevice(cudaStream_t stream) {
#if CUDART_VERSION >= 12080
  if (stream == nullptr) return cudaSuccess;
  int stream_device = 0;
  int current_device = 0;
  if (cudaError_t error = cudaStreamGetDevice(stream, &stream_device)) return error;
  if (cudaError_t error = cudaGetDevice(&current_device)) return error;
  if (stream_device != current_device) return cudaSetDevice(stream_device);
#else
  static_cast<void>(stream);  // Older toolkits: rely on the context ONNX Runtime made current.
#endif
  return cudaSuccess;
}

// Allocates the node's device word and pinned copy on the current device (first call only) and
// checks that later calls stay on that device. Call with kernel.mutex held.
OrtStatus* PrepareDeviceState(const ort::Api& api, CudaKernel& kernel, cudaStream_t stream) {
  const TPEmbeddingConfig& config = kernel.base.config;
  int device = 0;
  if (OrtStatus* s = CheckCuda(api, config, cudaGetDevice(&device), "selecting the device")) {
    return s;
  }
  if (kernel.initialised) {
    if (device == kernel.device) return nullptr;
    return MakeStatus(api, ort::kEpFail,
                      config.Label() + ": called on CUDA device " + std::to_string(device) +
                          " after running on device " + std::to_string(kernel.device) +
                          "; a session's kernels stay on one device");
  }
  int multiprocessors = 0;
  if (OrtStatus* s = CheckCuda(api, config,
                               cudaDeviceGetAttribute(&multiprocessors,
                                                      cudaDevAttrMultiProcessorCount, device),
                               "reading the device's multiprocessor count")) {
    return s;
  }
  unsigned long long* word = nullptr;
  unsigned long long* host = nullptr;
  cudaError_t error = cudaMalloc(reinterpret_cast<void**>(&word), sizeof(*word));
  if (error == cudaSuccess) {
    error = cudaMallocHost(reinterpret_cast<void**>(&host), sizeof(*host));
  }
  if (error == cudaSuccess) {
    error = cudaMemsetAsync(word, 0xFF, sizeof(*word), stream);  // kNoBadPosition
  }
  if (error != cudaSuccess) {
    if (word != nullptr) static_cast<void>(cudaFree(word));
    if (host != nullptr) static_cast<void>(cudaFreeHost(host));
    return CheckCuda(api, config, error, "allocating the id check");
  }
  kernel.device = device;
  kernel.multiprocessors = std::max(multiprocessors, 1);
  kernel.first_bad = word;
  kernel.first_bad_host = host;
  kernel.initialised = true;
  return nullptr;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename Vec, typename Id>
cudaError_t LaunchTyped(const LookupArgs& args, const LookupParams<Id>& params,
                        int64_t multiprocessors, cudaStream_t stream) {
  const auto* table = static_cast<const Vec*>(args.table);
  auto* out = static_cast<Vec*>(args.out);
  const int64_t max_blocks = multiprocessors * kBlocksPerMultiprocessor;
  if (params.vecs_per_row >= kWarpSize &&
      params.num_ids >= multiprocessors * kMinRowsPerMultiprocessor) {
    const int64_t blocks = std::min(CeilDiv(params.num_ids, kWarpsPerBlock), max_blocks);
    RowsPerWarp<Vec, Id><<<static_cast<unsigned int>(blocks), kThreadsPerBlock, 0, stream>>>(
        params, table, out);
    return cudaGetLastError();
  }
  // An empty row still needs one thread per id to validate it.
  const int64_t span = std::max<int64_t>(params.vecs_per_row, 1);
  const int64_t total = params.num_ids * span;  // <= output bytes (or num_ids): no overflow.
  const int64_t blocks = std::min(CeilDiv(total, kThreadsPerBlock), max_blocks);
  const auto grid = static_cast<unsigned int>(blocks);
  // The 32-bit variant needs total + stride to stay below 2^32 (no wrap in the grid-stride loop).
  if (total + max_blocks * kThreadsPerBlock <= int64_t{UINT32_MAX}) {
    Flat<Vec, Id, uint32_t><<<grid, kThreadsPerBlock, 0, stream>>>(
        params, table, out, static_cast<uint32_t>(total), static_cast<uint32_t>(span));
  } else {
    Flat<Vec, Id, uint64_t><<<grid, kThreadsPerBlock, 0, stream>>>(
        params, table, out, static_cast<uint64_t>(total), static_cast<uint64_t>(span));
  }
  return cudaGetLastError();
}

// Picks the widest copy unit that divides the row and matches both pointers' alignment.
template <typename Id>
cudaError_t Launch(const LookupArgs& args, const TPEmbeddingConfig& config,
                   unsigned long long* first_bad, int64_t multiprocessors, cudaStream_t stream) {
  LookupParams<Id> params{static_cast<const Id*>(args.ids), args.num_ids, args.rows, 0,
                          config.vocab_size, config.vocab_start, first_bad};
  const uintptr_t bits = reinterpret_cast<uintptr_t>(args.table) |
                         reinterpret_cast<uintptr_t>(args.out) | args.row_bytes;
  const auto units = [&](size_t unit) { return static_cast<int64_t>(args.row_bytes / unit); };
  if (bits % 16 == 0) {
    params.vecs_per_row = units(16);
    return LaunchTyped<uint4, Id>(args, params, multiprocessors, stream);
  }
  if (bits % 8 == 0) {
    params.vecs_per_row = units(8);
    return LaunchTyped<uint2, Id>(args, params, multiprocessors, stream);
  }
  if (bits % 4 == 0) {
    params.vecs_per_row = units(4);
    return LaunchTyped<unsigned int, Id>(args, params, multiprocessors, stream);
  }
  params.vecs_per_row = units(2);  // 2-byte elements: float16, bfloat16.
  return LaunchTyped<unsigned short, Id>(args, params, multiprocessors, stream);
}

// Reads back the smallest bad position after the launch; on the error path also fetches the id
// itself and resets the device word. Call with kernel.mutex held.
OrtStatus* CollectIdCheck(const ort::Api& api, CudaKernel& kernel, const LookupArgs& args,
                          cudaStream_t stream) {
  const TPEmbeddingConfig& config = kernel.base.config;
  if (OrtStatus* s = CheckCuda(api, config,
                               cudaMemcpyAsync(kernel.first_bad_host, kernel.first_bad,
                                               sizeof(*kernel.first_bad), cudaMemcpyDeviceToHost,
                                               stream),
                               "reading the id check")) {
    return s;
  }
  if (OrtStatus* s = CheckCuda(api, config, cudaStreamSynchronize(stream),
                               "running the lookup kernel")) {
    return s;
  }
  const unsigned long long bad = *kernel.first_bad_host;
  if (bad == kNoBadPosition) return nullptr;

  // Error path: the next call must start from a clean word even if what follows fails.
  kernel.needs_reset = true;
  const auto position = static_cast<int64_t>(bad);
  const size_t id_size = ElementSize(args.id_type);
  int64_t id_bytes[1] = {0};
  const char* src = static_cast<const char*>(args.ids) + static_cast<size_t>(position) * id_size;
  if (OrtStatus* s = CheckCuda(api, config,
                               cudaMemcpyAsync(id_bytes, src, id_size, cudaMemcpyDeviceToHost,
                                               stream),
                               "reading the offending id")) {
    return s;
  }
  if (OrtStatus* s = CheckCuda(api, config,
                               cudaMemsetAsync(kernel.first_bad, 0xFF, sizeof(*kernel.first_bad),
                                               stream),
                               "resetting the id check")) {
    return s;
  }
  // Synchronise so the reset is done before another call, possibly on another stream, launches.
  if (OrtStatus* s = CheckCuda(api, config, cudaStreamSynchronize(stream),
                               "reading the offending id")) {
    return s;
  }
  kernel.needs_reset = false;
  return OutOfRangeStatus(api, config, ReadId(id_bytes, args.id_type, 0), position);
}

OrtStatus* Compute(void* kernel_ptr, OrtKernelContext* context) {
  auto& kernel = *static_cast<CudaKernel*>(kernel_ptr);
  const TPEmbeddingConfig& config = kernel.base.config;
  const ort::Api api(kernel.base.api);
  return GuardAbi(api, "TPEmbedding (CUDA)", [&]() -> OrtStatus* {
    LookupArgs args;
    if (OrtStatus* status = PrepareLookup(api, config, context, &args)) return status;
    const bool validate = !config.zero_out_of_range;
    if (args.num_ids == 0 || (args.row_bytes == 0 && !validate)) return nullptr;

    void* stream_handle = nullptr;
    if (OrtStatus* status = api.KernelContext_GetGPUComputeStream(context, &stream_handle)) {
      return status;
    }
    const auto stream = static_cast<cudaStream_t>(stream_handle);
    if (OrtStatus* s = CheckCuda(api, config, UseStreamDevice(stream), "selecting the device")) {
      return s;
    }

    // Held until the id check has been read back, so concurrent runs of this node (which may use
    // different streams) never share the device word mid-flight.
    std::lock_guard<std::mutex> lock(kernel.mutex);
    if (OrtStatus* status = PrepareDeviceState(api, kernel, stream)) return status;
    if (validate && kernel.needs_reset) {
      if (OrtStatus* s = CheckCuda(api, config,
                                   cudaMemsetAsync(kernel.first_bad, 0xFF,
                                                   sizeof(*kernel.first_bad), stream),
                                   "resetting the id check")) {
        return s;
      }
      kernel.needs_reset = false;
    }
    unsigned long long* first_bad = validate ? kernel.first_bad : nullptr;
    const cudaError_t launched =
        args.id_type == ort::kInt32
            ? Launch<int32_t>(args, config, first_bad, kernel.multiprocessors, stream)
            : Launch<int64_t>(args, config, first_bad, kernel.multiprocessors, stream);
    if (OrtStatus* status = CheckCuda(api, config, launched, "launching the lookup kernel")) {
      return status;
    }
    if (!validate) return nullptr;
    return CollectIdCheck(api, kernel, args, stream);
  });
}

OrtStatus* CreateKernel(const OrtCustomOp*, const OrtApi* given_api, const OrtKernelInfo* info,
                        void** kernel) {
  // The table recorded at registration, as the CPU kernel uses (tp_embedding_common.cc).
  const OrtApi* table = RegisteredApi() != nullptr ? RegisteredApi() : given_api;
  const ort::Api api(table);
  return GuardAbi(api, "TPEmbedding (CUDA) kernel creation", [&]() -> OrtStatus* {
    *kernel = nullptr;
    TPEmbeddingConfig config;
    if (OrtStatus* status = ParseConfig(api, info, &config)) return status;
    *kernel = new CudaKernel(TPEmbeddingKernel{table, std::move(config)});
    return nullptr;
  });
}

void DestroyKernel(void* kernel) { delete static_cast<CudaKernel*>(kernel); }

const char* GetExecutionProviderType(const OrtCustomOp*) { return kCudaExecutionProvider; }

}  // namespace

void FillCudaDescriptor(TPEmbeddingOp* op, ort::ElementType table_type) {
  FillCommonDescriptor(op, table_type);
  op->base.GetExecutionProviderType = GetExecutionProviderType;
  op->base.CreateKernelV2 = CreateKernel;
  op->base.KernelDestroy = DestroyKernel;
  op->base.KernelComputeV2 = Compute;
}

}  // namespace graphbuild::plugins
