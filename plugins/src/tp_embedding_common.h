// The host-side part of TPEmbedding shared by the CPU and the CUDA kernel, so the two cannot drift:
// the op descriptor's static callbacks, attribute parsing, input checks and output-shape
// computation, the text of every error, id validation for host-resident ids, and the guard that
// turns C++ exceptions into ONNX Runtime statuses at the C ABI boundary.
//
// TPEmbedding (domain "graphbuild") is one tensor-parallel rank's embedding lookup:
//   out[p] = table[ids[p] - vocab_start]  when that row lies in this rank's shard,
//   out[p] = 0                            when the id belongs to another rank's shard,
// and ids outside the global vocabulary [0, vocab_size) are an error unless zero_out_of_range=1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <string>
#include <type_traits>

#include "graphbuild/ort_abi.h"

namespace graphbuild::plugins {

inline constexpr const char* kDomain = "graphbuild";
inline constexpr const char* kOpName = "TPEmbedding";
inline constexpr const char* kCudaExecutionProvider = "CUDAExecutionProvider";
inline constexpr size_t kNumInputs = 2;   // ids, table
inline constexpr size_t kNumOutputs = 1;  // out
inline constexpr uint32_t kCustomOpVersion = 16;

// The OrtApi table (GetApi(ort::kMinApiVersion)) handed over by RegisterCustomOps.
const OrtApi* RegisteredApi() noexcept;

// Records the table on first registration. Returns false when a different ONNX Runtime instance in
// this process registered the library before (kernels then could call into the wrong runtime).
bool RecordRegisteredApi(const OrtApi* api) noexcept;

// Records whether the registered runtime offers GetTensorElementTypeAndShapeDataReference (API
// 24); PrepareLookup then reads shapes without allocating.
void RecordShapeByReference(bool available) noexcept;

// Creates a status carrying `message` (the runtime copies the text).
OrtStatus* MakeStatus(const ort::Api& api, ort::ErrorCode code,
                      const std::string& message) noexcept;

// Runs body() (which returns OrtStatus*) and turns any escaping exception into a status, so no
// exception crosses the C ABI. `where` names the entry point for the message.
template <typename Body>
OrtStatus* GuardAbi(const ort::Api& api, const char* where, Body&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return api.CreateStatus(ort::kRuntimeException, "graphbuild TPEmbedding: out of host memory");
  } catch (const std::exception& error) {
    return MakeStatus(api, ort::kRuntimeException, std::string(where) + ": " + error.what());
  } catch (...) {
    return MakeStatus(api, ort::kRuntimeException,
                      std::string(where) + ": unknown C++ exception");
  }
}

// Attributes of one TPEmbedding node, parsed once when its kernel is created.
struct TPEmbeddingConfig {
  std::string node_name;
  int64_t vocab_size = 0;   // Global vocabulary size V; ids must lie in [0, V).
  int64_t vocab_start = 0;  // Global id of this shard's row 0.
  bool zero_out_of_range = false;

  // "TPEmbedding '<node name>'", the prefix of every message about this node.
  std::string Label() const;
};

// Reads and checks the node's attributes (vocab_size required, both >= 0, zero_out_of_range 0/1).
OrtStatus* ParseConfig(const ort::Api& api, const OrtKernelInfo* info, TPEmbeddingConfig* config);

// The kernel object ONNX Runtime holds per node; the CPU and the CUDA op share it.
struct TPEmbeddingKernel {
  const OrtApi* api = nullptr;
  TPEmbeddingConfig config;
};

// One lookup, resolved from the kernel context. Pointers are host or device memory depending on
// the execution provider; nothing here dereferences them.
struct LookupArgs {
  const void* ids = nullptr;
  ort::ElementType id_type = ort::kUndefined;
  int64_t num_ids = 0;  // Number of elements of ids (0 for an empty tensor, 1 for a scalar).
  const void* table = nullptr;
  ort::ElementType table_type = ort::kUndefined;
  int64_t rows = 0;       // Rows in this rank's shard.
  int64_t dim = 0;        // Embedding width D.
  size_t row_bytes = 0;   // dim * element size.
  void* out = nullptr;    // num_ids * row_bytes bytes, same element type as table.
};

// Checks the inputs (ids int32/int64 of any rank, table float32/float16/bfloat16 of rank 2),
// allocates the output of shape ids.shape + [D] (the table's element type, as the descriptor
// declares). Errors are INVALID_ARGUMENT naming the node, what was expected and what came.
OrtStatus* PrepareLookup(const ort::Api& api, const TPEmbeddingConfig& config,
                         OrtKernelContext* context, LookupArgs* args);

// Flat position of the first id outside [0, vocab_size) in host memory, or -1 when all are valid.
int64_t FindFirstOutOfRange(const void* ids, ort::ElementType id_type, int64_t num_ids,
                            int64_t vocab_size) noexcept;

// The id stored at flat position `position` of host-resident ids.
int64_t ReadId(const void* ids, ort::ElementType id_type, int64_t position) noexcept;

// INVALID_ARGUMENT: "TPEmbedding '<node>': id <id> at flat position <p> is outside the vocabulary
// [0, <vocab_size>)". graphbuild/plugin.py (format_out_of_range, parse_out_of_range) holds
// the same wording and parses it; tests/runtime checks the two agree.
OrtStatus* OutOfRangeStatus(const ort::Api& api, const TPEmbeddingConfig& config, int64_t id,
                            int64_t position);

// Size in bytes of the id and table element types this op accepts (0 for any other type).
size_t ElementSize(ort::ElementType type) noexcept;

// Name of an element type for messages ("float16", "int64", "element type 11", ...).
std::string ElementTypeName(ort::ElementType type);

// The element types a table (and so the output) may have. ONNX Runtime infers a dynamically typed
// output only from a single dynamically typed input, so ids are declared dynamic (any type, checked
// by the kernel) and each table type gets its own descriptor with a concrete output type.
inline constexpr ort::ElementType kTableTypes[] = {ort::kFloat32, ort::kFloat16, ort::kBFloat16};
inline constexpr size_t kNumTableTypes = sizeof(kTableTypes) / sizeof(kTableTypes[0]);

// One registered operator descriptor. OrtCustomOp comes first, so the `const OrtCustomOp*` ONNX
// Runtime hands back converts to the whole descriptor.
struct TPEmbeddingOp {
  OrtCustomOp base;
  ort::ElementType table_type;
  // Checked when a kernel is created, before its attributes (null: nothing to check): an error
  // status when the kernel cannot run in this process as configured (its environment variables).
  OrtStatus* (*check_setup)(const ort::Api& api);
};
static_assert(std::is_standard_layout_v<TPEmbeddingOp> && offsetof(TPEmbeddingOp, base) == 0);

// Fills the parts of a descriptor that are the same for every execution provider: version, name,
// input/output types (ids dynamic, table and output `table_type`) and characteristics, memory
// types, CreateKernelV2 (runs check_setup, then parses the config into a TPEmbeddingKernel) and
// KernelDestroy; every other field null. The caller then sets GetExecutionProviderType and KernelComputeV2.
void FillCommonDescriptor(TPEmbeddingOp* op, ort::ElementType table_type);

}  // namespace graphbuild::plugins
