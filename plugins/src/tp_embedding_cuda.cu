// TPEmbedding on ONNX Runtime's CUDA execution provider. One kernel both copies rows and, unless
// zero_out_of_range=1, validates ids: each out-of-vocabulary position is folded into a device-side
// atomicMin, so after one stream synchronisation the host knows the smallest offending flat
// position and reports it with the same text as the CPU kernel (tp_embedding_common.cc).
// Rows are copied by one warp each with the widest vector (16, 8, 4 or 2 bytes) that the row size
// and both pointers allow; all index arithmetic is 64-bit. Every CUDA call and launch is checked.
#include "tp_embedding_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "tp_embedding_common.h"

namespace graphbuild::plugins {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kThreadsPerBlock / kWarpSize;
// Grid-stride loops cover the rest; this only bounds the launch.
constexpr int64_t kMaxBlocks = int64_t{1} << 20;
constexpr unsigned long long kNoBadPosition = ULLONG_MAX;

// Copies out[p] = table[ids[p] - vocab_start] (or zeros) for every p, one warp per row, Vec being
// the copy unit. When first_bad is non-null, ids outside [0, vocab_size) also lower *first_bad to
// their flat position.
template <typename Vec, typename Id>
__global__ void __launch_bounds__(kThreadsPerBlock)
    LookupRows(const Id* __restrict__ ids, int64_t num_ids, const Vec* __restrict__ table,
               int64_t rows, int64_t vecs_per_row, int64_t vocab_size, int64_t vocab_start,
               Vec* __restrict__ out, unsigned long long* __restrict__ first_bad) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
                       static_cast<int64_t>(threadIdx.x) / kWarpSize;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t p = warp; p < num_ids; p += warp_stride) {
    const int64_t id = static_cast<int64_t>(ids[p]);  // One address per warp: a broadcast load.
    const Vec* src = nullptr;
    if (static_cast<uint64_t>(id) < static_cast<uint64_t>(vocab_size)) {
      // Both operands are non-negative, so no overflow; a negative local wraps past rows.
      const uint64_t local = static_cast<uint64_t>(id - vocab_start);
      if (local < static_cast<uint64_t>(rows)) {
        src = table + static_cast<int64_t>(local) * vecs_per_row;
      }
    } else if (first_bad != nullptr && lane == 0) {
      atomicMin(first_bad, static_cast<unsigned long long>(p));
    }
    Vec* dst = out + p * vecs_per_row;
    if (src != nullptr) {
#pragma unroll 4
      for (int64_t j = lane; j < vecs_per_row; j += kWarpSize) dst[j] = __ldg(src + j);
    } else {
      const Vec zero{};
#pragma unroll 4
      for (int64_t j = lane; j < vecs_per_row; j += kWarpSize) dst[j] = zero;
    }
  }
}

// Turns a CUDA error into an EP_FAIL status naming the node and the failing step.
OrtStatus* CheckCuda(const ort::Api& api, const TPEmbeddingConfig& config, cudaError_t error,
                     const char* step) {
  if (error == cudaSuccess) return nullptr;
  return MakeStatus(api, ort::kEpFail,
                    config.Label() + ": CUDA error in " + step + ": " + cudaGetErrorName(error) +
                        " (" + cudaGetErrorString(error) + ")");
}

// The stream-ordered device word that collects the smallest out-of-range position.
class DeviceFlag {
 public:
  explicit DeviceFlag(cudaStream_t stream) : stream_(stream) {}
  DeviceFlag(const DeviceFlag&) = delete;
  DeviceFlag& operator=(const DeviceFlag&) = delete;
  ~DeviceFlag() {
    if (ptr_ != nullptr) static_cast<void>(cudaFreeAsync(ptr_, stream_));
  }

  cudaError_t Allocate() {
    cudaError_t error = cudaMallocAsync(reinterpret_cast<void**>(&ptr_), sizeof(*ptr_), stream_);
    if (error != cudaSuccess) {
      ptr_ = nullptr;
      return error;
    }
    return cudaMemsetAsync(ptr_, 0xFF, sizeof(*ptr_), stream_);  // kNoBadPosition
  }
  unsigned long long* get() const { return ptr_; }

 private:
  cudaStream_t stream_;
  unsigned long long* ptr_ = nullptr;
};

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

template <typename Vec, typename Id>
cudaError_t LaunchTyped(const LookupArgs& args, const TPEmbeddingConfig& config,
                        unsigned long long* first_bad, cudaStream_t stream) {
  const int64_t vecs_per_row = static_cast<int64_t>(args.row_bytes / sizeof(Vec));
  const int64_t blocks =
      std::min<int64_t>((args.num_ids + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxBlocks);
  LookupRows<Vec, Id><<<static_cast<unsigned int>(blocks), kThreadsPerBlock, 0, stream>>>(
      static_cast<const Id*>(args.ids), args.num_ids, static_cast<const Vec*>(args.table),
      args.rows, vecs_per_row, config.vocab_size, config.vocab_start,
      static_cast<Vec*>(args.out), first_bad);
  return cudaGetLastError();
}

// Picks the widest copy unit that divides the row and matches both pointers' alignment.
template <typename Id>
cudaError_t Launch(const LookupArgs& args, const TPEmbeddingConfig& config,
                   unsigned long long* first_bad, cudaStream_t stream) {
  const uintptr_t bits = reinterpret_cast<uintptr_t>(args.table) |
                         reinterpret_cast<uintptr_t>(args.out) | args.row_bytes;
  if (bits % 16 == 0) return LaunchTyped<uint4, Id>(args, config, first_bad, stream);
  if (bits % 8 == 0) return LaunchTyped<uint2, Id>(args, config, first_bad, stream);
  if (bits % 4 == 0) return LaunchTyped<unsigned int, Id>(args, config, first_bad, stream);
  return LaunchTyped<unsigned short, Id>(args, config, first_bad, stream);  // 2-byte elements.
}

OrtStatus* Compute(void* kernel_ptr, OrtKernelContext* context) {
  const auto& kernel = *static_cast<const TPEmbeddingKernel*>(kernel_ptr);
  const TPEmbeddingConfig& config = kernel.config;
  const ort::Api api(kernel.api);
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

    DeviceFlag first_bad(stream);
    if (validate) {
      if (OrtStatus* s = CheckCuda(api, config, first_bad.Allocate(), "allocating the id check")) {
        return s;
      }
    }
    const cudaError_t launched = args.id_type == ort::kInt32
                                     ? Launch<int32_t>(args, config, first_bad.get(), stream)
                                     : Launch<int64_t>(args, config, first_bad.get(), stream);
    if (OrtStatus* status = CheckCuda(api, config, launched, "launching the lookup kernel")) {
      return status;
    }
    if (!validate) return nullptr;

    unsigned long long bad = kNoBadPosition;
    if (OrtStatus* s = CheckCuda(api, config,
                                 cudaMemcpyAsync(&bad, first_bad.get(), sizeof(bad),
                                                 cudaMemcpyDeviceToHost, stream),
                                 "reading the id check")) {
      return s;
    }
    if (OrtStatus* s = CheckCuda(api, config, cudaStreamSynchronize(stream),
                                 "running the lookup kernel")) {
      return s;
    }
    if (bad == kNoBadPosition) return nullptr;

    // Fetch the offending id itself for the message (error path only).
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
    if (OrtStatus* s = CheckCuda(api, config, cudaStreamSynchronize(stream),
                                 "reading the offending id")) {
      return s;
    }
    return OutOfRangeStatus(api, config, ReadId(id_bytes, args.id_type, 0), position);
  });
}

const char* GetExecutionProviderType(const OrtCustomOp*) { return kCudaExecutionProvider; }

}  // namespace

void FillCudaDescriptor(TPEmbeddingOp* op, ort::ElementType table_type) {
  FillCommonDescriptor(op, table_type);
  op->base.GetExecutionProviderType = GetExecutionProviderType;
  op->base.KernelComputeV2 = Compute;
}

}  // namespace graphbuild::plugins
