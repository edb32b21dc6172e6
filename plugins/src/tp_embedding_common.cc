// The host-side part of TPEmbedding shared by the CPU and the CUDA kernel: attribute parsing,
// input checks, output allocation, id validation for host-resident ids, the error texts, and the
// execution-provider-independent half of the op descriptor (see tp_embedding_common.h).
#include "tp_embedding_common.h"

#include <algorithm>
#include <atomic>
#include <utility>
#include <vector>

namespace graphbuild::plugins {
namespace {

std::atomic<const OrtApi*> g_registered_api{nullptr};
std::atomic<bool> g_shape_by_reference{false};

// Ranks up to this size keep the output shape on the stack.
constexpr size_t kInlineRank = 8;

// Reads a tensor's element type and dimensions: by reference into the value (no allocation) when
// the runtime has API 24, else through an OrtTensorTypeAndShapeInfo that it owns.
class TensorInfo {
 public:
  explicit TensorInfo(const ort::Api& api) : api_(api) {}
  TensorInfo(const TensorInfo&) = delete;
  TensorInfo& operator=(const TensorInfo&) = delete;
  ~TensorInfo() {
    if (info_ != nullptr) api_.ReleaseTensorTypeAndShapeInfo(info_);
  }

  OrtStatus* Load(const OrtValue* value) {
    if (g_shape_by_reference.load(std::memory_order_relaxed)) {
      if (OrtStatus* status =
              api_.GetTensorElementTypeAndShapeDataReference(value, &type_, &dims_, &rank_)) {
        return status;
      }
      count_ = 1;
      for (size_t i = 0; i < rank_; ++i) count_ *= static_cast<size_t>(dims_[i]);
      return nullptr;
    }
    if (OrtStatus* status = api_.GetTensorTypeAndShape(value, &info_)) return status;
    if (OrtStatus* status = api_.GetTensorElementType(info_, &type_)) return status;
    if (OrtStatus* status = api_.GetDimensionsCount(info_, &rank_)) return status;
    return api_.GetTensorShapeElementCount(info_, &count_);
  }
  // Writes the dimensions into dims[0, rank()).
  OrtStatus* Dimensions(int64_t* dims) const {
    if (info_ == nullptr) {
      std::copy(dims_, dims_ + rank_, dims);
      return nullptr;
    }
    return api_.GetDimensions(info_, dims, rank_);
  }

  ort::ElementType type() const { return type_; }
  size_t rank() const { return rank_; }
  size_t count() const { return count_; }

 private:
  const ort::Api& api_;
  OrtTensorTypeAndShapeInfo* info_ = nullptr;
  const int64_t* dims_ = nullptr;  // By-reference mode: the value's own dimensions.
  ort::ElementType type_ = ort::kUndefined;
  size_t rank_ = 0;
  size_t count_ = 0;
};

std::string ShapeText(const int64_t* dims, size_t rank) {
  std::string text = "[";
  for (size_t i = 0; i < rank; ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(dims[i]);
  }
  return text + "]";
}

bool Succeeds(const ort::Api& api, OrtStatus* status) {
  if (status == nullptr) return true;
  api.ReleaseStatus(status);
  return false;
}

// Reads an int attribute. A missing optional one takes `fallback`; a missing required one, or one
// stored with another attribute type, is an INVALID_ARGUMENT naming the node.
OrtStatus* ReadIntAttribute(const ort::Api& api, const OrtKernelInfo* info,
                            const TPEmbeddingConfig& config, const char* name, bool required,
                            int64_t fallback, int64_t* out) {
  if (Succeeds(api, api.KernelInfoGetAttribute_int64(info, name, out))) return nullptr;
  // Absent, or present with another type: probe the other kinds to tell the two apart. The scalar
  // getters check the stored type; the array getters do not (they succeed for any attribute that
  // is present and count that kind's elements), so their sizes name the list type, and an array
  // getter that succeeds with nothing to count still proves the attribute is present.
  const char* stored_as = nullptr;
  float float_value = 0.0f;
  size_t size = 0;
  if (Succeeds(api, api.KernelInfoGetAttribute_float(info, name, &float_value))) {
    stored_as = "a float";
  } else if (Succeeds(api, api.KernelInfoGetAttribute_string(info, name, nullptr, &size))) {
    stored_as = "a string";
  } else if (Succeeds(api, api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size))) {
    stored_as = "an attribute of another type";
    size_t float_count = 0;
    if (size > 0) {
      stored_as = "a list of ints";
    } else if (Succeeds(api, api.KernelInfoGetAttributeArray_float(info, name, nullptr,
                                                                   &float_count)) &&
               float_count > 0) {
      stored_as = "a list of floats";
    }
  }
  if (stored_as != nullptr) {
    return MakeStatus(api, ort::kInvalidArgument,
                      config.Label() + ": attribute '" + name + "' must be an int, got " +
                          stored_as);
  }
  if (required) {
    return MakeStatus(api, ort::kInvalidArgument,
                      config.Label() + ": required int attribute '" + name + "' is missing");
  }
  *out = fallback;
  return nullptr;
}

template <typename Id>
int64_t FirstOutOfRange(const Id* ids, int64_t num_ids, int64_t vocab_size) {
  // One unsigned compare covers both id < 0 and id >= vocab_size (vocab_size >= 0).
  const uint64_t limit = static_cast<uint64_t>(vocab_size);
  for (int64_t p = 0; p < num_ids; ++p) {
    if (static_cast<uint64_t>(static_cast<int64_t>(ids[p])) >= limit) return p;
  }
  return -1;
}

// --- Op descriptor callbacks shared by every execution provider. ---

const char* GetName(const OrtCustomOp*) { return kOpName; }
ort::ElementType TableTypeOf(const OrtCustomOp* op) {
  return reinterpret_cast<const TPEmbeddingOp*>(op)->table_type;
}
ort::ElementType GetInputType(const OrtCustomOp* op, size_t index) {
  return index == 0 ? ort::kUndefined : TableTypeOf(op);
}
ort::ElementType GetOutputType(const OrtCustomOp* op, size_t) { return TableTypeOf(op); }
size_t GetInputTypeCount(const OrtCustomOp*) { return kNumInputs; }
size_t GetOutputTypeCount(const OrtCustomOp*) { return kNumOutputs; }
ort::IoCharacteristic GetIoCharacteristic(const OrtCustomOp*, size_t) { return ort::kRequired; }
ort::MemType GetInputMemoryType(const OrtCustomOp*, size_t) { return ort::kDefault; }
int GetVariadicMinArity(const OrtCustomOp*) { return 1; }
int GetVariadicHomogeneity(const OrtCustomOp*) { return 1; }

OrtStatus* CreateKernelV2(const OrtCustomOp* op, const OrtApi* given_api, const OrtKernelInfo* info,
                          void** kernel) {
  const OrtApi* table = RegisteredApi() != nullptr ? RegisteredApi() : given_api;
  const ort::Api api(table);
  return GuardAbi(api, "TPEmbedding kernel creation", [&]() -> OrtStatus* {
    *kernel = nullptr;
    const auto* descriptor = reinterpret_cast<const TPEmbeddingOp*>(op);
    if (descriptor->check_setup != nullptr) {
      if (OrtStatus* status = descriptor->check_setup(api)) return status;
    }
    TPEmbeddingConfig config;
    if (OrtStatus* status = ParseConfig(api, info, &config)) return status;
    *kernel = new TPEmbeddingKernel{table, std::move(config)};
    return nullptr;
  });
}

void KernelDestroy(void* kernel) { delete static_cast<TPEmbeddingKernel*>(kernel); }

}  // namespace

const OrtApi* RegisteredApi() noexcept { return g_registered_api.load(std::memory_order_acquire); }

bool RecordRegisteredApi(const OrtApi* api) noexcept {
  const OrtApi* expected = nullptr;
  if (g_registered_api.compare_exchange_strong(expected, api, std::memory_order_acq_rel)) {
    return true;
  }
  return expected == api;
}

void RecordShapeByReference(bool available) noexcept {
  g_shape_by_reference.store(available, std::memory_order_relaxed);
}

OrtStatus* MakeStatus(const ort::Api& api, ort::ErrorCode code,
                      const std::string& message) noexcept {
  return api.CreateStatus(code, message.c_str());
}

std::string TPEmbeddingConfig::Label() const {
  return std::string(kOpName) + " '" + node_name + "'";
}

OrtStatus* ParseConfig(const ort::Api& api, const OrtKernelInfo* info, TPEmbeddingConfig* config) {
  size_t size = 0;
  if (OrtStatus* status = api.KernelInfo_GetNodeName(info, nullptr, &size)) return status;
  std::string name(size, '\0');
  if (size > 0) {
    if (OrtStatus* status = api.KernelInfo_GetNodeName(info, name.data(), &size)) return status;
    name.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL.
  }
  config->node_name = std::move(name);

  size_t inputs = 0;
  size_t outputs = 0;
  if (OrtStatus* status = api.KernelInfo_GetInputCount(info, &inputs)) return status;
  if (OrtStatus* status = api.KernelInfo_GetOutputCount(info, &outputs)) return status;
  if (inputs != kNumInputs || outputs != kNumOutputs) {
    return MakeStatus(api, ort::kInvalidArgument,
                      config->Label() + ": expected 2 inputs (ids, table) and 1 output, got " +
                          std::to_string(inputs) + " inputs and " + std::to_string(outputs) +
                          " outputs");
  }

  int64_t zero_out_of_range = 0;
  if (OrtStatus* status = ReadIntAttribute(api, info, *config, "vocab_size", /*required=*/true, 0,
                                           &config->vocab_size)) {
    return status;
  }
  if (OrtStatus* status = ReadIntAttribute(api, info, *config, "vocab_start", /*required=*/false,
                                           0, &config->vocab_start)) {
    return status;
  }
  if (OrtStatus* status = ReadIntAttribute(api, info, *config, "zero_out_of_range",
                                           /*required=*/false, 0, &zero_out_of_range)) {
    return status;
  }
  if (config->vocab_size < 0) {
    return MakeStatus(api, ort::kInvalidArgument,
                      config->Label() + ": attribute 'vocab_size' must be >= 0, got " +
                          std::to_string(config->vocab_size));
  }
  if (config->vocab_start < 0) {
    return MakeStatus(api, ort::kInvalidArgument,
                      config->Label() + ": attribute 'vocab_start' must be >= 0, got " +
                          std::to_string(config->vocab_start));
  }
  if (zero_out_of_range != 0 && zero_out_of_range != 1) {
    return MakeStatus(api, ort::kInvalidArgument,
                      config->Label() + ": attribute 'zero_out_of_range' must be 0 or 1, got " +
                          std::to_string(zero_out_of_range));
  }
  config->zero_out_of_range = zero_out_of_range == 1;
  return nullptr;
}

OrtStatus* PrepareLookup(const ort::Api& api, const TPEmbeddingConfig& config,
                         OrtKernelContext* context, LookupArgs* args) {
  size_t inputs = 0;
  if (OrtStatus* status = api.KernelContext_GetInputCount(context, &inputs)) return status;
  const OrtValue* ids_value = nullptr;
  const OrtValue* table_value = nullptr;
  if (inputs == kNumInputs) {
    if (OrtStatus* status = api.KernelContext_GetInput(context, 0, &ids_value)) return status;
    if (OrtStatus* status = api.KernelContext_GetInput(context, 1, &table_value)) return status;
  }
  if (ids_value == nullptr || table_value == nullptr) {
    return MakeStatus(api, ort::kInvalidArgument,
                      config.Label() + ": expected 2 inputs (ids, table), got " +
                          std::to_string(inputs));
  }

  TensorInfo ids_info(api);
  TensorInfo table_info(api);
  if (OrtStatus* status = ids_info.Load(ids_value)) return status;
  if (OrtStatus* status = table_info.Load(table_value)) return status;

  if (ids_info.type() != ort::kInt32 && ids_info.type() != ort::kInt64) {
    return MakeStatus(api, ort::kInvalidArgument,
                      config.Label() + ": input 0 'ids' must be int32 or int64, got " +
                          ElementTypeName(ids_info.type()));
  }
  // Each descriptor declares its table type, so ONNX Runtime already refuses other types when it
  // loads the model; the kernel checks again rather than trust that.
  const size_t elem_size = ElementSize(table_info.type());
  if (table_info.type() != ort::kFloat32 && table_info.type() != ort::kFloat16 &&
      table_info.type() != ort::kBFloat16) {
    return MakeStatus(api, ort::kInvalidArgument,
                      config.Label() +
                          ": input 1 'table' must be float32, float16 or bfloat16, got " +
                          ElementTypeName(table_info.type()));
  }
  if (table_info.rank() != 2) {
    std::vector<int64_t> dims(table_info.rank());
    if (OrtStatus* status = table_info.Dimensions(dims.data())) return status;
    return MakeStatus(api, ort::kInvalidArgument,
                      config.Label() + ": input 1 'table' must be 2-D [rows, D], got rank " +
                          std::to_string(table_info.rank()) + " with shape " +
                          ShapeText(dims.data(), dims.size()));
  }
  int64_t table_dims[2] = {0, 0};
  if (OrtStatus* status = table_info.Dimensions(table_dims)) return status;

  // Output shape: ids.shape + [D], on the stack for ranks up to kInlineRank.
  const size_t out_rank = ids_info.rank() + 1;
  int64_t inline_dims[kInlineRank + 1];
  std::vector<int64_t> heap_dims;
  int64_t* out_dims = inline_dims;
  if (out_rank > kInlineRank + 1) {
    heap_dims.resize(out_rank);
    out_dims = heap_dims.data();
  }
  if (OrtStatus* status = ids_info.Dimensions(out_dims)) return status;
  out_dims[out_rank - 1] = table_dims[1];

  OrtValue* out_value = nullptr;
  if (OrtStatus* status = api.KernelContext_GetOutput(context, 0, out_dims, out_rank, &out_value)) {
    return status;
  }
  // The output's element type is the table's: the descriptor declares the same type for both, so
  // it is not read back (a shape query costs an allocation per call, a third of the kernel's
  // fixed overhead at one token).

  void* ids_data = nullptr;
  void* table_data = nullptr;
  void* out_data = nullptr;
  OrtValue* ids_mutable = const_cast<OrtValue*>(ids_value);      // The C API has no const getter;
  OrtValue* table_mutable = const_cast<OrtValue*>(table_value);  // inputs are only read.
  if (ids_info.count() > 0) {
    if (OrtStatus* status = api.GetTensorMutableData(ids_mutable, &ids_data)) return status;
  }
  if (table_info.count() > 0) {
    if (OrtStatus* status = api.GetTensorMutableData(table_mutable, &table_data)) return status;
  }
  if (ids_info.count() > 0 && table_dims[1] > 0) {  // The output has elements.
    if (OrtStatus* status = api.GetTensorMutableData(out_value, &out_data)) return status;
  }

  args->ids = ids_data;
  args->id_type = ids_info.type();
  args->num_ids = static_cast<int64_t>(ids_info.count());
  args->table = table_data;
  args->table_type = table_info.type();
  args->rows = table_dims[0];
  args->dim = table_dims[1];
  args->row_bytes = static_cast<size_t>(table_dims[1]) * elem_size;
  args->out = out_data;
  return nullptr;
}

int64_t FindFirstOutOfRange(const void* ids, ort::ElementType id_type, int64_t num_ids,
                            int64_t vocab_size) noexcept {
  if (id_type == ort::kInt32) {
    return FirstOutOfRange(static_cast<const int32_t*>(ids), num_ids, vocab_size);
  }
  return FirstOutOfRange(static_cast<const int64_t*>(ids), num_ids, vocab_size);
}

int64_t ReadId(const void* ids, ort::ElementType id_type, int64_t position) noexcept {
  if (id_type == ort::kInt32) return static_cast<const int32_t*>(ids)[position];
  return static_cast<const int64_t*>(ids)[position];
}

OrtStatus* OutOfRangeStatus(const ort::Api& api, const TPEmbeddingConfig& config, int64_t id,
                            int64_t position) {
  return MakeStatus(api, ort::kInvalidArgument,
                    config.Label() + ": id " + std::to_string(id) + " at flat position " +
                        std::to_string(position) + " is outside the vocabulary [0, " +
                        std::to_string(config.vocab_size) + ")");
}

size_t ElementSize(ort::ElementType type) noexcept {
  switch (type) {
    case ort::kFloat32:
    case ort::kInt32:
      return 4;
    case ort::kFloat16:
    case ort::kBFloat16:
      return 2;
    case ort::kInt64:
      return 8;
    default:
      return 0;
  }
}

std::string ElementTypeName(ort::ElementType type) {
  static constexpr const char* kNames[] = {
      "undefined", "float32", "uint8",  "int8",   "uint16",    "int16",      "int32",    "int64",
      "string",    "bool",    "float16", "float64", "uint32", "uint64", "complex64", "complex128",
      "bfloat16"};
  const int index = static_cast<int>(type);
  if (index >= 0 && index < static_cast<int>(sizeof(kNames) / sizeof(kNames[0]))) {
    return kNames[index];
  }
  return "element type " + std::to_string(index);
}

void FillCommonDescriptor(TPEmbeddingOp* descriptor, ort::ElementType table_type) {
  *descriptor = TPEmbeddingOp{};
  descriptor->table_type = table_type;
  OrtCustomOp* op = &descriptor->base;
  op->version = kCustomOpVersion;
  op->GetName = GetName;
  op->GetInputType = GetInputType;
  op->GetInputTypeCount = GetInputTypeCount;
  op->GetOutputType = GetOutputType;
  op->GetOutputTypeCount = GetOutputTypeCount;
  op->KernelDestroy = KernelDestroy;
  op->GetInputCharacteristic = GetIoCharacteristic;
  op->GetOutputCharacteristic = GetIoCharacteristic;
  op->GetInputMemoryType = GetInputMemoryType;
  op->GetVariadicInputMinArity = GetVariadicMinArity;
  op->GetVariadicInputHomogeneity = GetVariadicHomogeneity;
  op->GetVariadicOutputMinArity = GetVariadicMinArity;
  op->GetVariadicOutputHomogeneity = GetVariadicHomogeneity;
  op->CreateKernelV2 = CreateKernelV2;
}

}  // namespace graphbuild::plugins
