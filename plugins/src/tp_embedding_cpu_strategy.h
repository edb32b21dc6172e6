// How the CPU kernel copies rows on this machine (see tp_embedding_cpu_strategy.cc): decided once
// per process from what the CPU is and a short calibration, or forced through the environment.
#pragma once

#include <cstddef>
#include <string>

#include "tp_embedding_cpu_copy.h"

namespace graphbuild::plugins {

struct CpuStrategy {
  std::string error;           // Non-empty: GRAPHBUILD_CPU_ISA or GRAPHBUILD_CPU_STRATEGY is bad.
  size_t vector_bytes = 16;    // The vector copies' width: 64 (AVX-512F), 32 (AVX), 16 (SSE2).
  size_t prefetch_bytes = 32 * 1024;
  size_t large_min_bytes = 0;  // Outputs at least this large are copied by `large`...
  RowCopy large = RowCopy::kMemcpy;
  size_t large_vector_bytes = 16;    // ...in vectors this wide (at most vector_bytes)...
  RowCopy small = RowCopy::kMemcpy;  // ...smaller ones by `small`, in vector_bytes vectors.
  std::string description;     // JSON: the CPU facts, the choice and how it was made.
};

// The strategy of this process, decided on the first call (which may calibrate, tens of ms).
const CpuStrategy& Strategy();

}  // namespace graphbuild::plugins
