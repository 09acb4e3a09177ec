// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace together {

class Gguf;

// A Hugging Face tokenizer.json with a BPE model, in both flavours found on the hub:
//  - SentencePiece-style (Llama 2, TinyLlama, Mistral): "▁" normalizer or Metaspace pre-tokenizer, byte_fallback;
//  - byte-level (Llama 3, Qwen): Split regex pre-tokenizer + ByteLevel byte-to-unicode mapping.
// The pipeline follows the file: added tokens are split out first, then normalizer, pre-tokenizer, BPE model,
// post-processor; decoding runs the file's decoder chain.
class Tokenizer {
public:
    struct AddedToken {
        int id = 0;
        std::string content;
        bool special = false;
        bool lstrip = false;
        bool rstrip = false;
        bool singleWord = false;
    };

    // Reads tokenizer.json and (if present) tokenizer_config.json from a model folder, or the vocabulary and chat
    // template of a GGUF file (`dir` is then the file).
    static Tokenizer fromDirectory(const std::string& dir);
    static Tokenizer fromGguf(const Gguf& gguf);
    static Tokenizer fromJson(const std::string& tokenizerJson, const std::string& tokenizerConfigJson,
                              const std::string& where);

    Tokenizer();
    ~Tokenizer();
    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;

    // `specialAllowed`, when given, has one flag per byte of `text`: a special token is recognised only where
    // every byte of it is allowed. Text a user typed is marked not allowed, so it cannot forge role markers.
    std::vector<int> encode(std::string_view text, bool addSpecialTokens = true,
                            const std::vector<bool>* specialAllowed = nullptr) const;
    std::string decode(const std::vector<int>& ids, bool skipSpecialTokens = false) const;
    // The bytes one token contributes when decoding. `atStart` applies the decoder's start-of-text rules
    // (SentencePiece strips the leading space there); a streamed continuation passes false.
    std::string tokenBytes(int id, bool atStart) const;

    int vocabSize() const; // highest id + 1, counting added tokens
    std::optional<int> tokenToId(std::string_view token) const;
    std::string idToToken(int id) const;
    bool isSpecial(int id) const;
    const std::vector<AddedToken>& addedTokens() const;

    // From tokenizer_config.json.
    const std::string& bosToken() const;
    const std::string& eosToken() const;
    const std::string& chatTemplate() const;

private:
    struct Impl;
    std::unique_ptr<Impl> m;
};

// Turns generated ids into text as they arrive: an incomplete UTF-8 sequence (a character split across
// byte-fallback or byte-level tokens) is held back until it completes, and the first piece keeps its leading
// space so that prompt + output reads as one text.
class StreamDecoder {
public:
    explicit StreamDecoder(const Tokenizer& tokenizer, bool skipSpecialTokens = true);
    // Returns the text that became complete with this token (possibly empty).
    std::string push(int id);
    // Whatever is still held back, with invalid bytes replaced by U+FFFD.
    std::string flush();

private:
    const Tokenizer& m_tokenizer;
    bool m_skipSpecial;
    std::string m_pending;
};

} // namespace together
