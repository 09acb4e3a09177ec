// SPDX-License-Identifier: MIT
#pragma once

#include "core/safetensors.h"

#include <cstdint>
#include <string>

namespace together {

// Shape and settings of a generated random-weight model. Used for the built-in default model, the tests'
// fixtures and the benchmarks; the files written are the same a Hugging Face checkpoint has.
struct RandomModelSpec {
    std::string architecture = "LlamaForCausalLM"; // or Qwen2ForCausalLM / Qwen3ForCausalLM / MistralForCausalLM
    int64_t hiddenSize = 256;
    int64_t intermediateSize = 688;
    int64_t numLayers = 4;
    int64_t numHeads = 8;
    int64_t numKvHeads = 4;
    int64_t headDim = 0;   // 0: hidden / heads
    int64_t vocabSize = 0; // 0: exactly the generated tokenizer's size; larger pads with reserved tokens
    int64_t maxPositionEmbeddings = 2048;
    double ropeTheta = 10000.0;
    bool tieWordEmbeddings = false;
    DType dtype = DType::F32;
    uint64_t seed = 1;
    // Multiplies the lm_head (or tied embedding) init: larger values give larger gaps between the top logits,
    // which keeps greedy decoding stable under different summation orders.
    double logitScale = 1.0;
};

// Writes config.json, generation_config.json, model.safetensors, tokenizer.json and tokenizer_config.json.
// The tokenizer is a byte-level BPE trained on a built-in English text, with a ChatML chat template.
void writeRandomModel(const std::string& dir, const RandomModelSpec& spec);

// Size in tokens of the generated tokenizer (bytes + merges + special tokens).
int64_t randomTokenizerSize();

// The benchmarks' model: TinyLlama-1.1B's shape (hidden 2048, intermediate 5632, 32 heads, 4 KV heads,
// vocab 32000) with `layers` layers, random bf16 weights, written once under `cacheDir`; returns its folder.
std::string ensureBenchModel(const std::string& cacheDir, int64_t layers = 22);
// The benchmark shapes: "tinyllama-1.1b" (the above) and "llama3-8b" (hidden 4096, intermediate 14336, 32 layers,
// 32 heads, 8 KV heads, vocab 128256; 16 GB in bf16). Throws Error naming the shapes for another name.
RandomModelSpec benchModelSpec(const std::string& shape, int64_t layers = 0);
std::string ensureBenchModel(const std::string& cacheDir, const std::string& shape, int64_t layers = 0);

} // namespace together
