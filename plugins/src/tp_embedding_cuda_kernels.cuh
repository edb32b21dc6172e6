// The device side of TPEmbedding's CUDA kernel: launch constants, the per-launch parameters and
// the two lookup kernels (see tp_embedding_cuda.cu for how they are chosen and launched).
//
// Kept apart from the host code so it can also be compiled as plain C++ by the kernel emulation
// test (tests/plugins/cuda_kernel_emulation.cc), which defines the few CUDA built-ins used here
// and runs every (block, thread) in turn: the kernels use no shared memory and no barriers, so
// that is a valid schedule, and their index arithmetic is checked on machines without a GPU.
#pragma once

#include <climits>
#include <cstdint>

namespace graphbuild::plugins::cuda_kernels {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kThreadsPerBlock / kWarpSize;
// Copy units each lane of RowsPerWarp loads before it stores them (ptxas may split the group to
// save registers; at full occupancy 4 x 16 bytes per lane still keep ~128 KiB in flight per SM).
constexpr int kUnroll = 8;
// Grids are capped at this many blocks per multiprocessor (a full SM at 256 threads per block);
// grid-stride loops cover the rest.
constexpr int64_t kBlocksPerMultiprocessor = 8;
// RowsPerWarp needs at least this many ids per multiprocessor to keep the chip busy; below it, and
// for rows of fewer than kWarpSize copy units, the flat kernel spreads the work wider.
constexpr int64_t kMinRowsPerMultiprocessor = kWarpsPerBlock;
constexpr unsigned long long kNoBadPosition = ULLONG_MAX;

// What every launch shape needs besides the typed table and output pointers.
template <typename Id>
struct LookupParams {
  const Id* ids;
  int64_t num_ids;
  int64_t rows;          // Rows in this rank's shard.
  int64_t vecs_per_row;  // Copy units per row (0 for an empty row).
  int64_t vocab_size;
  int64_t vocab_start;
  unsigned long long* first_bad;  // Null when ids outside [0, vocab_size) give zero rows.
};

// The shard row that id `p` selects, or -1 for a zero row. Ids outside [0, vocab_size) also lower
// *first_bad to p when `report` is set and validation is on.
template <typename Id>
__device__ __forceinline__ int64_t ResolveRow(const LookupParams<Id>& params, int64_t p,
                                              bool report) {
  const int64_t id = static_cast<int64_t>(params.ids[p]);
  // One unsigned compare covers both id < 0 and id >= vocab_size (vocab_size >= 0).
  if (static_cast<uint64_t>(id) < static_cast<uint64_t>(params.vocab_size)) {
    // Both operands are non-negative, so no overflow; a negative local wraps past rows.
    const uint64_t local = static_cast<uint64_t>(id - params.vocab_start);
    return local < static_cast<uint64_t>(params.rows) ? static_cast<int64_t>(local) : -1;
  }
  if (report && params.first_bad != nullptr) {
    atomicMin(params.first_bad, static_cast<unsigned long long>(p));
  }
  return -1;
}

// One warp per row, grid-stride over rows. Each lane loads kUnroll units (a warp-wide stride apart,
// so every load instruction of the warp is coalesced) before storing them.
template <typename Vec, typename Id>
__global__ void __launch_bounds__(kThreadsPerBlock)
    RowsPerWarp(const LookupParams<Id> params, const Vec* __restrict__ table,
                Vec* __restrict__ out) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t first_warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
                             static_cast<int64_t>(threadIdx.x) / kWarpSize;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  const int64_t width = params.vecs_per_row;
  constexpr int64_t kChunk = int64_t{kUnroll} * kWarpSize;
  for (int64_t p = first_warp; p < params.num_ids; p += warp_stride) {
    const int64_t row = ResolveRow(params, p, /*report=*/lane == 0);  // Broadcast load of ids[p].
    Vec* dst = out + p * width;
    if (row >= 0) {
      const Vec* src = table + row * width;
      int64_t j = lane;
      for (; j + (kUnroll - 1) * kWarpSize < width; j += kChunk) {
        Vec staged[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) staged[u] = __ldg(src + j + u * kWarpSize);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) dst[j + u * kWarpSize] = staged[u];
      }
      for (; j < width; j += kWarpSize) dst[j] = __ldg(src + j);
    } else {
      const Vec zero{};
      for (int64_t j = lane; j < width; j += kWarpSize) dst[j] = zero;
    }
  }
}

// One thread per copy unit of the output, grid-stride. Index is uint32_t when the whole output
// (counting one slot per id for empty rows) fits, so the row division stays 32-bit.
template <typename Vec, typename Id, typename Index>
__global__ void __launch_bounds__(kThreadsPerBlock)
    Flat(const LookupParams<Id> params, const Vec* __restrict__ table, Vec* __restrict__ out,
         Index total, Index span) {
  const Index stride = static_cast<Index>(gridDim.x) * kThreadsPerBlock;
  for (Index i = static_cast<Index>(blockIdx.x) * kThreadsPerBlock + threadIdx.x; i < total;
       i += stride) {
    const Index p = i / span;
    const Index j = i - p * span;
    const int64_t row = ResolveRow(params, static_cast<int64_t>(p), /*report=*/j == 0);
    if (static_cast<int64_t>(j) < params.vecs_per_row) {
      const int64_t width = params.vecs_per_row;
      out[static_cast<int64_t>(p) * width + j] =
          row >= 0 ? __ldg(table + row * width + j) : Vec{};
    }
  }
}

}  // namespace graphbuild::plugins::cuda_kernels
