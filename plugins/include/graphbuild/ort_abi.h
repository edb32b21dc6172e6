// graphbuild's own declaration of the slice of the ONNX Runtime C ABI that the custom-op library
// uses: opaque handle types, the enums it passes across the boundary, OrtApiBase, typed access to
// the OrtApi function table by slot index, and the OrtCustomOp operator descriptor.
//
// Written from the facts in shared/ORT_ABI.md; no ONNX Runtime header is included or copied.
// OrtApi only ever grows by appending slots, so a slot index means the same function in every
// release whose table is long enough. RegisterCustomOps asks GetApi for kMinApiVersion, the
// highest "since" version among the slots always called here, and for a newer version only when the
// runtime's version string says it has it (release 1.N offers API versions 1 to N).
#pragma once

#include <cstddef>
#include <cstdint>

// Opaque handles, owned by the runtime. They keep their ONNX Runtime names at global scope so the
// exported RegisterCustomOps reads like its C declaration; nothing here ever defines them.
struct OrtApi;
struct OrtStatus;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;
struct OrtShapeInferContext;

namespace graphbuild::ort {

// OrtApi version that added the newest slot called below (274, KernelContext_ParallelFor).
inline constexpr uint32_t kMinApiVersion = 17;
// OrtApi version that added slot 414 (GetTensorElementTypeAndShapeDataReference), used when the
// runtime has it (ONNX Runtime 1.24 and newer).
inline constexpr uint32_t kShapeReferenceApiVersion = 24;

// OrtErrorCode. C enums are int-sized on the platforms ONNX Runtime supports.
enum ErrorCode : int {
  kOk = 0,
  kFail = 1,
  kInvalidArgument = 2,
  kNoSuchFile = 3,
  kNoModel = 4,
  kEngineError = 5,
  kRuntimeException = 6,
  kInvalidProtobuf = 7,
  kModelLoaded = 8,
  kNotImplemented = 9,
  kInvalidGraph = 10,
  kEpFail = 11,
};

// ONNXTensorElementDataType: the ONNX TensorProto numbering (only the values used are named).
enum ElementType : int {
  kUndefined = 0,
  kFloat32 = 1,
  kInt32 = 6,
  kInt64 = 7,
  kFloat16 = 10,
  kBFloat16 = 16,
};

// OrtCustomOpInputOutputCharacteristic.
enum IoCharacteristic : int { kRequired = 0, kOptional = 1, kVariadic = 2 };

// OrtMemType as returned by OrtCustomOp::GetInputMemoryType.
enum MemType : int { kCpuInput = -2, kCpuOutput = -1, kDefault = 0 };

}  // namespace graphbuild::ort

// OrtApiBase: exactly two function pointers, in this order.
struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

// OrtCustomOp: uint32 version (then padding on LP64) followed by 25 function pointers.
struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char* (*GetName)(const OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op);
  graphbuild::ort::ElementType (*GetInputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const OrtCustomOp* op);
  graphbuild::ort::ElementType (*GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
  void (*KernelCompute)(void* kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* kernel);
  graphbuild::ort::IoCharacteristic (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index);
  graphbuild::ort::IoCharacteristic (*GetOutputCharacteristic)(const OrtCustomOp* op,
                                                               size_t index);
  graphbuild::ort::MemType (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);
  int (*GetVariadicInputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
  OrtStatus* (*CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                               void** kernel);
  OrtStatus* (*KernelComputeV2)(void* kernel, OrtKernelContext* context);
  OrtStatus* (*InferOutputShapeFn)(const OrtCustomOp* op, OrtShapeInferContext* context);
  int (*GetStartVersion)(const OrtCustomOp* op);
  int (*GetEndVersion)(const OrtCustomOp* op);
  size_t (*GetMayInplace)(int** input_index, int** output_index);
  void (*ReleaseMayInplace)(int* input_index, int* output_index);
  size_t (*GetAliasMap)(int** input_index, int** output_index);
  void (*ReleaseAliasMap)(int* input_index, int* output_index);
};

static_assert(sizeof(void (*)()) == 8, "graphbuild's ORT ABI declarations assume LP64");
static_assert(sizeof(graphbuild::ort::ElementType) == 4 && sizeof(graphbuild::ort::MemType) == 4);
static_assert(offsetof(OrtCustomOp, CreateKernel) == 8);
static_assert(offsetof(OrtCustomOp, CreateKernelV2) == 8 + 16 * 8);
static_assert(offsetof(OrtCustomOp, KernelComputeV2) == 8 + 17 * 8);
static_assert(offsetof(OrtCustomOp, ReleaseAliasMap) == 8 + 24 * 8);
static_assert(sizeof(OrtCustomOp) == 208, "OrtCustomOp must be 8 + 25 pointers on LP64");

namespace graphbuild::ort {

// Typed, read-only view of an OrtApi table. Each method calls the function in one slot; the slot
// numbers and signatures are the ones listed in shared/ORT_ABI.md.
class Api {
 public:
  explicit Api(const OrtApi* table) : table_(reinterpret_cast<const AnyFn*>(table)) {}

  OrtStatus* CreateStatus(ErrorCode code, const char* message) const {
    return Slot<0, OrtStatus* (*)(ErrorCode, const char*)>()(code, message);
  }
  ErrorCode GetErrorCode(const OrtStatus* status) const {
    return Slot<1, ErrorCode (*)(const OrtStatus*)>()(status);
  }
  const char* GetErrorMessage(const OrtStatus* status) const {
    return Slot<2, const char* (*)(const OrtStatus*)>()(status);
  }
  OrtStatus* CreateCustomOpDomain(const char* domain, OrtCustomOpDomain** out) const {
    return Slot<26, OrtStatus* (*)(const char*, OrtCustomOpDomain**)>()(domain, out);
  }
  OrtStatus* CustomOpDomain_Add(OrtCustomOpDomain* domain, const OrtCustomOp* op) const {
    return Slot<27, OrtStatus* (*)(OrtCustomOpDomain*, const OrtCustomOp*)>()(domain, op);
  }
  OrtStatus* AddCustomOpDomain(OrtSessionOptions* options, OrtCustomOpDomain* domain) const {
    return Slot<28, OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*)>()(options, domain);
  }
  OrtStatus* GetTensorMutableData(OrtValue* value, void** out) const {
    return Slot<51, OrtStatus* (*)(OrtValue*, void**)>()(value, out);
  }
  OrtStatus* GetTensorElementType(const OrtTensorTypeAndShapeInfo* info, ElementType* out) const {
    return Slot<60, OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, ElementType*)>()(info, out);
  }
  OrtStatus* GetDimensionsCount(const OrtTensorTypeAndShapeInfo* info, size_t* out) const {
    return Slot<61, OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*)>()(info, out);
  }
  OrtStatus* GetDimensions(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t n) const {
    return Slot<62, OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)>()(info,
                                                                                         dims, n);
  }
  OrtStatus* GetTensorShapeElementCount(const OrtTensorTypeAndShapeInfo* info, size_t* out) const {
    return Slot<64, OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*)>()(info, out);
  }
  OrtStatus* GetTensorTypeAndShape(const OrtValue* value, OrtTensorTypeAndShapeInfo** out) const {
    return Slot<65, OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**)>()(value, out);
  }
  OrtStatus* KernelInfoGetAttribute_float(const OrtKernelInfo* info, const char* name,
                                          float* out) const {
    return Slot<85, OrtStatus* (*)(const OrtKernelInfo*, const char*, float*)>()(info, name, out);
  }
  OrtStatus* KernelInfoGetAttribute_int64(const OrtKernelInfo* info, const char* name,
                                          int64_t* out) const {
    return Slot<86, OrtStatus* (*)(const OrtKernelInfo*, const char*, int64_t*)>()(info, name,
                                                                                    out);
  }
  OrtStatus* KernelInfoGetAttribute_string(const OrtKernelInfo* info, const char* name, char* out,
                                           size_t* size) const {
    return Slot<87, OrtStatus* (*)(const OrtKernelInfo*, const char*, char*, size_t*)>()(
        info, name, out, size);
  }
  OrtStatus* KernelContext_GetInputCount(const OrtKernelContext* context, size_t* out) const {
    return Slot<88, OrtStatus* (*)(const OrtKernelContext*, size_t*)>()(context, out);
  }
  OrtStatus* KernelContext_GetOutputCount(const OrtKernelContext* context, size_t* out) const {
    return Slot<89, OrtStatus* (*)(const OrtKernelContext*, size_t*)>()(context, out);
  }
  OrtStatus* KernelContext_GetInput(const OrtKernelContext* context, size_t index,
                                    const OrtValue** out) const {
    return Slot<90, OrtStatus* (*)(const OrtKernelContext*, size_t, const OrtValue**)>()(
        context, index, out);
  }
  OrtStatus* KernelContext_GetOutput(OrtKernelContext* context, size_t index, const int64_t* dims,
                                     size_t ndims, OrtValue** out) const {
    return Slot<91,
                OrtStatus* (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**)>()(
        context, index, dims, ndims, out);
  }
  void ReleaseStatus(OrtStatus* status) const { Slot<93, void (*)(OrtStatus*)>()(status); }
  void ReleaseTensorTypeAndShapeInfo(OrtTensorTypeAndShapeInfo* info) const {
    Slot<99, void (*)(OrtTensorTypeAndShapeInfo*)>()(info);
  }
  // Slot 101 is pinned by upstream's own static_assert (the last slot of API version 1).
  void ReleaseCustomOpDomain(OrtCustomOpDomain* domain) const {
    Slot<101, void (*)(OrtCustomOpDomain*)>()(domain);
  }
  // Slot 162 is the one just before KernelInfoGetAttributeArray_int64 (both added in version 8);
  // tests/plugins checks it through the "list of floats" attribute message.
  OrtStatus* KernelInfoGetAttributeArray_float(const OrtKernelInfo* info, const char* name,
                                               float* out, size_t* size) const {
    return Slot<162, OrtStatus* (*)(const OrtKernelInfo*, const char*, float*, size_t*)>()(
        info, name, out, size);
  }
  OrtStatus* KernelInfoGetAttributeArray_int64(const OrtKernelInfo* info, const char* name,
                                               int64_t* out, size_t* size) const {
    return Slot<163, OrtStatus* (*)(const OrtKernelInfo*, const char*, int64_t*, size_t*)>()(
        info, name, out, size);
  }
  OrtStatus* KernelContext_GetGPUComputeStream(const OrtKernelContext* context,
                                               void** out) const {
    return Slot<193, OrtStatus* (*)(const OrtKernelContext*, void**)>()(context, out);
  }
  OrtStatus* KernelInfo_GetInputCount(const OrtKernelInfo* info, size_t* out) const {
    return Slot<230, OrtStatus* (*)(const OrtKernelInfo*, size_t*)>()(info, out);
  }
  OrtStatus* KernelInfo_GetOutputCount(const OrtKernelInfo* info, size_t* out) const {
    return Slot<231, OrtStatus* (*)(const OrtKernelInfo*, size_t*)>()(info, out);
  }
  OrtStatus* KernelInfo_GetNodeName(const OrtKernelInfo* info, char* out, size_t* size) const {
    return Slot<244, OrtStatus* (*)(const OrtKernelInfo*, char*, size_t*)>()(info, out, size);
  }
  // Runs fn(user, i) for i in [0, total) on the session's intra-op thread pool (inline when the
  // session has none). num_batch == 0 lets the pool schedule each index as its own work item.
  OrtStatus* KernelContext_ParallelFor(const OrtKernelContext* context, void (*fn)(void*, size_t),
                                       size_t total, size_t num_batch, void* user) const {
    return Slot<274, OrtStatus* (*)(const OrtKernelContext*, void (*)(void*, size_t), size_t,
                                    size_t, void*)>()(context, fn, total, num_batch, user);
  }

  // Slot 414, API 24: the element type and a pointer to the value's own dimensions (valid while
  // the value lives), without allocating an OrtTensorTypeAndShapeInfo. Only call it when
  // GetApi(kShapeReferenceApiVersion) is non-null.
  OrtStatus* GetTensorElementTypeAndShapeDataReference(const OrtValue* value, ElementType* type,
                                                       const int64_t** dims, size_t* rank) const {
    return Slot<414, OrtStatus* (*)(const OrtValue*, ElementType*, const int64_t**, size_t*)>()(
        value, type, dims, rank);
  }

 private:
  using AnyFn = void (*)();

  template <size_t kIndex, typename Fn>
  Fn Slot() const {
    return reinterpret_cast<Fn>(table_[kIndex]);
  }

  const AnyFn* table_;
};

}  // namespace graphbuild::ort
