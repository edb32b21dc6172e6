// The library's one exported symbol, RegisterCustomOps, which ONNX Runtime calls after dlopen from
// SessionOptions.register_custom_ops_library: it checks the runtime's API, then adds a "graphbuild"
// custom-op domain holding TPEmbedding for the CPU provider (and the CUDA provider when built with
// CUDA) to the session options.
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

OrtStatus* Register(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (api_base == nullptr || api_base->GetApi == nullptr) return nullptr;  // Nothing to report to.
  const OrtApi* table = api_base->GetApi(ort::kMinApiVersion);
  if (table == nullptr) {
    // Older runtime: report through the version-1 table, which every release has.
    const OrtApi* oldest = api_base->GetApi(1);
    if (oldest == nullptr) return nullptr;
    const char* version =
        api_base->GetVersionString != nullptr ? api_base->GetVersionString() : nullptr;
    const ort::Api api(oldest);
    return GuardAbi(api, "RegisterCustomOps", [&] {
      return MakeStatus(api, ort::kFail,
                        "graphbuild's custom-op library needs ONNX Runtime C API version " +
                            std::to_string(ort::kMinApiVersion) + " (ONNX Runtime 1." +
                            std::to_string(ort::kMinApiVersion) +
                            " or newer); this runtime is " +
                            (version != nullptr ? version : "of unknown version"));
    });
  }

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
    RecordShapeByReference(api_base->GetApi(ort::kShapeReferenceApiVersion) != nullptr);
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
