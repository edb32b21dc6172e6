// The library's one exported symbol, RegisterCustomOps, which ONNX Runtime calls after dlopen from
// SessionOptions.register_custom_ops_library: it negotiates the runtime's C API version (the lowest
// one covering the slots it always calls, newer slots only where offered; a runtime older than
// that is refused with a status naming both versions), then adds a "graphbuild" custom-op domain
// holding TPEmbedding for the CPU provider (and the CUDA provider when built with CUDA) to the
// session options.
#include <cstdint>
#include <string>

#include "graphbuild/ort_abi.h"
#include "tp_embedding_common.h"
#include "tp_embedding_cpu.h"
#ifdef GRAPHBUILD_WITH_CUDA
#include "tp_embedding_cuda.h"
#endif

namespace graphbuild::plugins {
namespace {

// The op descriptors, one per execution provider and table type: built once, never freed, because
// sessions keep pointers to them for as long as the process lives.
struct Descriptors {
  TPEmbeddingOp cpu[kNumTableTypes];
#ifdef GRAPHBUILD_WITH_CUDA
  TPEmbeddingOp cuda[kNumTableTypes];
#endif
};

const Descriptors& GetDescriptors() {
  static const Descriptors descriptors = [] {
    Descriptors built;
    for (size_t i = 0; i < kNumTableTypes; ++i) {
      FillCpuDescriptor(&built.cpu[i], kTableTypes[i]);
#ifdef GRAPHBUILD_WITH_CUDA
      FillCudaDescriptor(&built.cuda[i], kTableTypes[i]);
#endif
    }
    return built;
  }();
  return descriptors;
}

// Checks that `table` behaves as the ABI facts say: a status made with CreateStatus reads back
// the same code and message.
bool StatusRoundTrips(const ort::Api& api) {
  OrtStatus* probe = api.CreateStatus(ort::kInvalidArgument, "graphbuild-probe");
  if (probe == nullptr) return false;
  const char* message = api.GetErrorMessage(probe);  // A mismatched table may hand back null.
  const bool ok = api.GetErrorCode(probe) == ort::kInvalidArgument && message != nullptr &&
                  std::string(message) == "graphbuild-probe";
  api.ReleaseStatus(probe);
  return ok;
}

// The highest OrtApi version the runtime offers, read from GetVersionString: release 1.N offers
// API versions 1 to N. kUnknownApiVersion when the string is missing or not "1.N..." (a 2.x
// runtime counts as newer than every 1.x). Asking GetApi for a version the runtime lacks makes
// it print an error on stderr, so versions above this are never asked for.
constexpr uint32_t kUnknownApiVersion = 0;
constexpr uint32_t kNewerThanKnown = ~uint32_t{0};

// Reads the decimal number at `cursor` (at most six digits) and moves past it; -1 when none is there.
int64_t ReadNumber(const char*& cursor) {
  int64_t value = -1;
  for (int digits = 0; *cursor >= '0' && *cursor <= '9'; ++cursor, ++digits) {
    if (digits == 6) return -1;
    value = (value < 0 ? 0 : value * 10) + (*cursor - '0');
  }
  return value;
}

uint32_t OfferedApiVersion(const char* version) {
  if (version == nullptr) return kUnknownApiVersion;
  const char* cursor = version;
  const int64_t major = ReadNumber(cursor);
  if (major < 1 || *cursor++ != '.') return kUnknownApiVersion;
  const int64_t minor = ReadNumber(cursor);
  if (minor < 0) return kUnknownApiVersion;
  if (major > 1) return kNewerThanKnown;
  return static_cast<uint32_t>(minor);
}

// Refuses a runtime older than kMinApiVersion through the version-1 table, which every release
// has. Returns null when not even that is there (then there is nothing to report to).
OrtStatus* RefuseOldRuntime(const OrtApiBase* api_base, const char* version) {
  const OrtApi* oldest = api_base->GetApi(1);
  if (oldest == nullptr) return nullptr;
  const ort::Api api(oldest);
  return GuardAbi(api, "RegisterCustomOps", [&] {
    return MakeStatus(api, ort::kFail,
                      "graphbuild's custom-op library needs ONNX Runtime C API version " +
                          std::to_string(ort::kMinApiVersion) + " (ONNX Runtime 1." +
                          std::to_string(ort::kMinApiVersion) + " or newer); this runtime is " +
                          (version != nullptr ? version : "of unknown version"));
  });
}

OrtStatus* Register(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (api_base == nullptr || api_base->GetApi == nullptr) return nullptr;  // Nothing to report to.
  const char* version =
      api_base->GetVersionString != nullptr ? api_base->GetVersionString() : nullptr;
  const uint32_t offered = OfferedApiVersion(version);
  if (offered != kUnknownApiVersion && offered < ort::kMinApiVersion) {
    return RefuseOldRuntime(api_base, version);
  }
  // The lowest version whose table has every slot called unconditionally; newer slots are used
  // only after the runtime says it has them.
  const OrtApi* table = api_base->GetApi(ort::kMinApiVersion);
  if (table == nullptr) return RefuseOldRuntime(api_base, version);
  const bool shape_by_reference =
      offered != kUnknownApiVersion && offered >= ort::kShapeReferenceApiVersion &&
      api_base->GetApi(ort::kShapeReferenceApiVersion) != nullptr;

  const ort::Api api(table);
  return GuardAbi(api, "RegisterCustomOps", [&]() -> OrtStatus* {
    if (!StatusRoundTrips(api)) {
      return api.CreateStatus(ort::kFail,
                              "graphbuild's custom-op library does not match this ONNX Runtime's "
                              "C API (status round trip failed)");
    }
    if (!RecordRegisteredApi(table)) {
      return api.CreateStatus(ort::kFail,
                              "graphbuild's custom-op library was already registered with "
                              "another ONNX Runtime instance in this process; load it into one "
                              "runtime only");
    }
    RecordShapeByReference(shape_by_reference);
    const Descriptors& descriptors = GetDescriptors();
    // Each call gets its own domain. ONNX Runtime does not take ownership and sessions created
    // from these options refer to it, so once added it is deliberately never released; a domain
    // that never reached the options is released with the error.
    OrtCustomOpDomain* domain = nullptr;
    if (OrtStatus* status = api.CreateCustomOpDomain(kDomain, &domain)) return status;
    const auto fail = [&](OrtStatus* status) {
      api.ReleaseCustomOpDomain(domain);
      return status;
    };
    for (const TPEmbeddingOp& op : descriptors.cpu) {
      if (OrtStatus* status = api.CustomOpDomain_Add(domain, &op.base)) return fail(status);
    }
#ifdef GRAPHBUILD_WITH_CUDA
    for (const TPEmbeddingOp& op : descriptors.cuda) {
      if (OrtStatus* status = api.CustomOpDomain_Add(domain, &op.base)) return fail(status);
    }
#endif
    if (OrtStatus* status = api.AddCustomOpDomain(options, domain)) return fail(status);
    return nullptr;
  });
}

}  // namespace
}  // namespace graphbuild::plugins

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(
    OrtSessionOptions* options, const OrtApiBase* api_base) {
  return graphbuild::plugins::Register(options, api_base);
}
