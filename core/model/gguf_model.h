// SPDX-License-Identifier: MIT
#pragma once

#include "model/gguf.h"
#include "model/safetensors.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace together {

struct ModelConfig;

// A GGUF file as the rest of the program sees a Hugging Face folder: its metadata as the config.json it amounts
// to, and its tensors under the Hugging Face names ("blk.3.attn_q.weight" is "model.layers.3.self_attn.q_proj.weight").
//
// Architectures: "llama" (Llama, Mistral, TinyLlama), "qwen2", "qwen3". Hyperparameters come from the
// "{arch}.*" keys; a missing "output.weight" means the head is tied to the embedding; Llama 3's
// "rope_freqs.weight" is accepted when it is the llama3 rotary scaling (factor, low 1, high 4, original 8192
// positions), checked value by value, and refused otherwise. "llama" files hold q and k rows in llama.cpp's
// interleaved rotary order: their views say so (TensorView::interleavedHead) and slices come out in the
// Hugging Face order.

// The config.json text (Hugging Face keys) of the file's model; throws naming the key that is missing or wrong.
std::string ggufConfigJson(const Gguf& g);
// The views of every tensor the model uses. Throws naming the first tensor whose type together cannot run.
SafeTensors ggufTensors(const Gguf& g, const ModelConfig& config);
// End-of-generation ids: eos, eot and eom ids the file names.
std::vector<int64_t> ggufEosTokenIds(const Gguf& g);
// "Q4_K 97, Q6_K 24, F32 45": the types of the file's tensors, most used first.
std::string ggufTypeMix(const Gguf& g);
// The Hugging Face name of a GGUF tensor name, or "" when the name is not one the model uses; and back.
std::string huggingFaceTensorName(const std::string& ggufName);
std::string ggufTensorName(const std::string& huggingFaceName);

// tokenizer.ggml.token_type's values.
namespace gguf_token {
enum Type : int64_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };
} // namespace gguf_token

// The split patterns of byte-level ("gpt2") vocabularies, by the name tokenizer.ggml.pre gives them, as the
// Hugging Face tokenizer.json of those models writes them.
struct GgufPreTokenizer {
    const char* name;
    const char* pattern;
    bool nfc;          // the tokenizer.json normalizes to NFC first (Qwen)
    bool ignoreMerges; // a word that is a vocabulary token is that token (Llama 3)
};
const std::vector<GgufPreTokenizer>& ggufPreTokenizers();
// Llama 3's rotary scaling as llama.cpp's converter writes it (rope_freqs.weight): one divisor per pair of
// dimensions of a head.
std::vector<double> llama3RopeDivisors(double base, int64_t headDim, double factor, double low, double high, double original);

// Writes the Hugging Face model folder `dir` as one GGUF file, as llama.cpp's converter would: its metadata, its
// vocabulary (a SentencePiece-style tokenizer.json as "llama" with scores from the merges' order, a byte-level one
// as "gpt2" with its merges and split pattern), the chat template, and its tensors under GGUF names ("llama": q and
// k rows in interleaved rotary order). Matrices are written as `matrices` (F32, F16, BF16, Q8_0, Q4_0 or Q4_K)
// where their rows are whole blocks, else Q8_0, else F16 (llama.cpp's fallbacks); vectors as F32.
void exportGguf(const std::string& dir, const std::string& file, GgmlType matrices);
// The tokenizer.* metadata exportGguf writes for the tokenizer.json (and tokenizer_config.json) in `dir`; the
// config's BOS and EOS ids, when given, take precedence over tokenizer_config.json's tokens.
std::vector<std::pair<std::string, GgufValue>> ggufTokenizerMetadata(const std::string& dir, std::optional<int64_t> bos,
                                                                     const std::vector<int64_t>& eos);

} // namespace together
