// Runs TPEmbedding's CUDA kernels (plugins/src/tp_embedding_cuda_kernels.cuh) on the host, one
// (block, thread) after another, and compares every output byte and the reported first bad
// position with a plain C++ reference. The kernels use no shared memory and no barriers, so this
// sequential order is one valid schedule of the launch; it checks their index arithmetic (grid
// stride, warp lanes, the unrolled loop and its tail, 32- and 64-bit flat indices, id checks) on
// machines without a GPU. Built and run by test_cuda_kernel_emulation.py; prints "failures: N".
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

// The CUDA built-ins the kernels use, as host stand-ins.
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(threads)
struct Dim3 {
  unsigned x;
};
static Dim3 threadIdx, blockIdx, gridDim;
struct uint4 {
  unsigned x, y, z, w;
};
struct uint2 {
  unsigned x, y;
};
template <typename T>
T __ldg(const T* address) {
  return *address;
}
static void atomicMin(unsigned long long* address, unsigned long long value) {
  if (value < *address) *address = value;
}

#include "tp_embedding_cuda_kernels.cuh"

namespace {

using namespace graphbuild::plugins::cuda_kernels;

enum class Shape { kRowsPerWarp, kFlat32, kFlat64 };

struct Case {
  int64_t num_ids;
  int64_t units;  // copy units per row
  int64_t rows;
  int64_t vocab;
  int64_t start;
  bool validate;
  int bad;  // out-of-range ids planted
  Shape shape;
  unsigned grid;
};

int failures = 0;

template <typename Vec, typename Id>
void Check(std::mt19937_64& gen, const Case& c) {
  const int64_t row_bytes = c.units * static_cast<int64_t>(sizeof(Vec));
  std::vector<Vec> table_storage(c.rows * c.units + 1);
  auto* table = reinterpret_cast<unsigned char*>(table_storage.data());
  for (int64_t b = 0; b < c.rows * row_bytes; ++b) table[b] = static_cast<unsigned char>(gen());
  std::vector<Id> ids(c.num_ids);
  std::uniform_int_distribution<int64_t> valid(0, c.vocab - 1);
  for (auto& id : ids) id = static_cast<Id>(valid(gen));
  for (int k = 0; k < c.bad; ++k) {
    const int64_t p = static_cast<int64_t>(gen() % static_cast<uint64_t>(c.num_ids));
    const int64_t offset = static_cast<int64_t>(gen() % 5);
    ids[p] = static_cast<Id>((gen() & 1) != 0 ? -1 - offset : c.vocab + offset);
  }
  if (c.bad > 0 && sizeof(Id) == 4) ids[c.num_ids / 2] = static_cast<Id>(INT32_MIN);

  // Reference: the row of the id when it is in the vocabulary and in this shard, else zeros.
  std::vector<unsigned char> expected(c.num_ids * row_bytes, 0);
  int64_t expected_bad = -1;
  for (int64_t p = 0; p < c.num_ids; ++p) {
    const int64_t id = ids[p];
    if (id < 0 || id >= c.vocab) {
      if (expected_bad < 0) expected_bad = p;
      continue;
    }
    if (id >= c.start && id - c.start < c.rows) {
      std::copy_n(table + (id - c.start) * row_bytes, row_bytes, expected.begin() + p * row_bytes);
    }
  }

  std::vector<Vec> out_storage(c.num_ids * c.units + 1);
  auto* out = reinterpret_cast<unsigned char*>(out_storage.data());
  std::fill_n(out, c.num_ids * row_bytes, static_cast<unsigned char>(0xAB));  // poison
  unsigned long long first_bad = kNoBadPosition;
  const LookupParams<Id> params{ids.data(), c.num_ids, c.rows,  c.units,
                                c.vocab,    c.start,   c.validate ? &first_bad : nullptr};
  const int64_t span = std::max<int64_t>(c.units, 1);
  gridDim.x = c.grid;
  for (unsigned block = 0; block < c.grid; ++block) {
    for (unsigned thread = 0; thread < static_cast<unsigned>(kThreadsPerBlock); ++thread) {
      blockIdx.x = block;
      threadIdx.x = thread;
      const auto* t = table_storage.data();
      auto* o = out_storage.data();
      switch (c.shape) {
        case Shape::kRowsPerWarp:
          RowsPerWarp<Vec, Id>(params, t, o);
          break;
        case Shape::kFlat32:
          Flat<Vec, Id, uint32_t>(params, t, o, static_cast<uint32_t>(c.num_ids * span),
                                  static_cast<uint32_t>(span));
          break;
        case Shape::kFlat64:
          Flat<Vec, Id, uint64_t>(params, t, o, static_cast<uint64_t>(c.num_ids * span),
                                  static_cast<uint64_t>(span));
          break;
      }
    }
  }

  const bool rows_ok = std::equal(expected.begin(), expected.end(), out);
  const unsigned long long want_bad = c.validate && expected_bad >= 0
                                         ? static_cast<unsigned long long>(expected_bad)
                                         : kNoBadPosition;
  if (!rows_ok || first_bad != want_bad) {
    ++failures;
    std::printf(
        "FAIL unit=%zu id=%zu num_ids=%lld units=%lld rows=%lld start=%lld validate=%d bad=%d "
        "shape=%d grid=%u rows_ok=%d first_bad=%llu want=%llu\n",
        sizeof(Vec), sizeof(Id), static_cast<long long>(c.num_ids),
        static_cast<long long>(c.units), static_cast<long long>(c.rows),
        static_cast<long long>(c.start), c.validate, c.bad, static_cast<int>(c.shape), c.grid,
        rows_ok, first_bad, want_bad);
  }
}

template <typename Vec, typename Id>
void Sweep(std::mt19937_64& gen) {
  // Units around the warp width and the unrolled chunk (kUnroll * kWarpSize), and past it.
  const int64_t chunk = int64_t{kUnroll} * kWarpSize;
  const int64_t widths[] = {0, 1, 3, kWarpSize - 1, kWarpSize, kWarpSize + 1, chunk - 1, chunk,
                            chunk + 1, 2 * chunk + 37};
  for (const int64_t num_ids : {1, 2, 9, 17, 70}) {
    for (const int64_t units : widths) {
      for (const Shape shape : {Shape::kRowsPerWarp, Shape::kFlat32, Shape::kFlat64}) {
        for (const unsigned grid : {1u, 3u}) {
          // A middle shard of a padded vocabulary (ids below 25 or from 45 give zero rows), and
          // an unsharded table.
          Check<Vec, Id>(gen, {num_ids, units, 20, 50, 25, true, 0, shape, grid});
          Check<Vec, Id>(gen, {num_ids, units, 20, 50, 25, true, 3, shape, grid});
          Check<Vec, Id>(gen, {num_ids, units, 20, 50, 25, false, 3, shape, grid});
          Check<Vec, Id>(gen, {num_ids, units, 31, 31, 0, true, 1, shape, grid});
          Check<Vec, Id>(gen, {num_ids, units, 0, 31, 0, true, 0, shape, grid});  // empty shard
        }
      }
    }
  }
}

}  // namespace

int main() {
  std::mt19937_64 gen(20261123);
  Sweep<uint4, int64_t>(gen);
  Sweep<uint4, int32_t>(gen);
  Sweep<uint2, int64_t>(gen);
  Sweep<unsigned int, int32_t>(gen);
  Sweep<unsigned short, int64_t>(gen);
  Sweep<unsigned short, int32_t>(gen);
  std::printf("failures: %d\n", failures);
  return failures == 0 ? 0 : 1;
}
