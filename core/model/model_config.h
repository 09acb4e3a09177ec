// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace together {

class SafeTensors;

// Rotary scaling of type "llama3" (Llama 3.1 / 3.2): long wavelengths are divided by `factor`, short ones kept,
// the band in between interpolated.
struct RopeScaling {
    std::string type; // "" when absent
    double factor = 1.0;
    double lowFreqFactor = 1.0;
    double highFreqFactor = 4.0;
    int64_t originalMaxPositionEmbeddings = 8192;
};

// The decoder families we run. All are the Llama block: RMSNorm, rotary, GQA attention, SiLU-gated MLP.
// Qwen2 adds bias on q, k, v; Qwen3 adds RMSNorm on each head's q and k before rotary.
struct ModelConfig {
    std::string architecture; // LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM
    int64_t hiddenSize = 0;
    int64_t intermediateSize = 0;
    int64_t numLayers = 0;
    int64_t numHeads = 0;
    int64_t numKvHeads = 0;
    int64_t headDim = 0;
    int64_t vocabSize = 0;
    int64_t maxPositionEmbeddings = 0;
    int64_t slidingWindow = 0; // 0: none
    double rmsNormEps = 1e-6;
    double ropeTheta = 10000.0;
    RopeScaling ropeScaling;
    bool tieWordEmbeddings = false;
    bool attentionBias = false; // q, k, v bias
    bool qkNorm = false;
    std::string torchDtype;
    // A GGUF file's matrices: their average bits per weight as stored (its mix of block types), what a native run
    // holds and reads; 0 for a safetensors checkpoint. ("gguf_matrix_bits" in the config JSON a GGUF amounts to.)
    double storedBitsPerWeight = 0;
    // The largest block of the file's quantized matrices, in weights (256 for the K-quants, 32 for Q4_0/Q8_0...):
    // a native run's tensor-parallel column shares must be whole ones. 0 for none. ("gguf_block_weights".)
    int64_t storedBlockWeights = 0;
    // Each matrix's type as the file stores it, by its Hugging Face name ("Q4_K", "Q6_K", "F16"...): what a native
    // run holds of it, counted tensor by tensor (a Q4_K_M file mixes types within a layer). Empty for a
    // safetensors checkpoint. ("gguf_tensor_types"; checked by parseTensorType when read.)
    std::map<std::string, std::string> storedTensorTypes;
    // Bits per weight of the matrices as the file stores them: storedBitsPerWeight, else the checkpoint's dtype.
    double nativeBitsPerWeight() const { return storedBitsPerWeight > 0 ? storedBitsPerWeight : torchDtype == "float32" ? 32.0 : 16.0; }
    std::optional<int64_t> bosTokenId;
    std::vector<int64_t> eosTokenIds;

    // Reads config.json from a model folder, or the metadata of a GGUF file (`dir` is then the file). Refuses
    // unknown architectures and quantized safetensors checkpoints by name.
    static ModelConfig fromDirectory(const std::string& dir);
    // The config.json text fromDirectory reads: the folder's file, or the one a GGUF's metadata amounts to. The
    // master sends it to shards.
    static std::string configJsonText(const std::string& path);
    static ModelConfig fromJsonText(const std::string& text, const std::string& where);

    // Every tensor the architecture needs, with the shape this config implies.
    struct TensorSpec {
        std::string name;
        std::vector<int64_t> shape;
    };
    std::vector<TensorSpec> layerTensors(int64_t layer) const;
    std::vector<TensorSpec> globalTensors() const; // embedding, final norm, lm_head (if untied)
    // Checks that the files hold every needed tensor with the right shape; throws naming the first bad one.
    void validate(const SafeTensors& tensors) const;

    // Context a run may use: max_position_embeddings, reduced to the sliding window where one is set.
    int64_t contextLimit() const;
};

// Defaults from generation_config.json (all optional).
struct GenerationDefaults {
    std::optional<double> temperature;
    std::optional<int> topK;
    std::optional<double> topP;
    std::optional<bool> doSample;
    std::vector<int64_t> eosTokenIds;

    static GenerationDefaults fromDirectory(const std::string& dir); // empty when the file is absent
};

} // namespace together
