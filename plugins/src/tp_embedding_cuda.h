// The CUDA execution provider's TPEmbedding descriptors (see tp_embedding_cuda.cu). Only built, and
// only registered, when the library is compiled with CUDA (GRAPHBUILD_WITH_CUDA).
#pragma once

#include "tp_embedding_common.h"

namespace graphbuild::plugins {

// Fills `op` as the TPEmbedding operator with `table_type` tables for ONNX Runtime's CUDA
// execution provider: inputs and output live in device memory, work runs on the provider's
// compute stream.
void FillCudaDescriptor(TPEmbeddingOp* op, ort::ElementType table_type);

}  // namespace graphbuild::plugins
