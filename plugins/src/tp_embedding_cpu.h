// The CPU execution provider's TPEmbedding descriptors (see tp_embedding_cpu.cc).
#pragma once

#include "tp_embedding_common.h"

namespace graphbuild::plugins {

// Fills `op` as the TPEmbedding operator with `table_type` tables for ONNX Runtime's CPU
// execution provider.
void FillCpuDescriptor(TPEmbeddingOp* op, ort::ElementType table_type);

}  // namespace graphbuild::plugins
