// SPDX-License-Identifier: MIT
#pragma once

#include "model/safetensors.h"

#include <cstdint>
#include <string>
#include <vector>

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

// Named shapes of random-weight models: one table for the built-in default model, the benchmarks, calibration,
// `together-cli make-model --shape` and the tests.
//   default         the built-in default model: hidden 256, 4 layers, 8 heads / 4 KV heads (f32)
//   tiny            hidden 16, 1 layer, 2 heads / 1 KV head: plumbing
//   small           hidden 128, 4 layers, 4 heads / 2 KV heads, 8192 positions: processes rather than numerics
//   large-margin    hidden 96, head dim 16, 5 layers, top logits far apart (logit scale 6, seed 21): greedy ids
//                   stay the same across the summation orders of different placements
//   accuracy        hidden 256, 4 layers, vocab 2048: `together-worker bench --accuracy`
//   layer-overhead  hidden 64, vocab 512: calibration's fixed cost per layer
//   tinyllama-1.1b  TinyLlama-1.1B's shape (hidden 2048, intermediate 5632, 22 layers, 32 heads / 4 KV heads,
//                   vocab 32000), bf16: the benchmarks
//   llama3-8b       Llama-3-8B's shape (hidden 4096, intermediate 14336, 32 layers, 32 heads / 8 KV heads, vocab
//                   128256; 16 GB in bf16)
struct ModelShape {
    std::string name;
    std::string what;
    RandomModelSpec spec;
};
const std::vector<ModelShape>& modelShapes();
// The named shape (`layers` > 0 replaces its layer count); throws Error listing the names for another name.
RandomModelSpec modelShape(const std::string& name, int64_t layers = 0);

// Whether `dir` holds a whole model (config.json and model.safetensors).
bool isModelFolder(const std::string& dir);
// Writes the random model `spec` to `dir` unless a model is there already. It is written into a temporary folder
// with a unique name beside `dir` and renamed, so an interrupted write never looks like a model and two
// processes writing one at once keep whichever finished first. Returns `dir`.
std::string ensureRandomModel(const std::string& dir, const RandomModelSpec& spec);

// The benchmarks' model: the shape `shape` (default tinyllama-1.1b) with `layers` layers (0: the shape's), written
// once under `cacheDir` as "bench-<shape>-<layers>l-bf16"; returns its folder.
std::string ensureBenchModel(const std::string& cacheDir, const std::string& shape, int64_t layers = 0);
std::string ensureBenchModel(const std::string& cacheDir, int64_t layers = 22);

// Where the built-in default model (the "default" shape) lives: $TOGETHER_CACHE_DIR, else $XDG_CACHE_HOME/together,
// else ~/.cache/together, plus "/default-model". Written on first use.
std::string defaultModelDir();
// Writes the default random model if it is not there yet; returns its folder.
std::string ensureDefaultModel();

} // namespace together
