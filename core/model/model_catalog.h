// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace together {

// What a model folder is and whether together can run it, for a person picking one (the app's model list,
// `together-cli models`).
struct ModelEntry {
    std::string path;          // the folder, or the GGUF file (for Ollama, its blob)
    std::string name;          // "TinyLlama-1.1B-Chat-v1.0" (from a Hugging Face cache entry) or the folder's name
    std::string architecture;  // config.json's, "" when unreadable
    uint64_t weightBytes = 0;  // the safetensors files, as stored
    uint64_t parameters = 0;   // elements of every tensor (0 when the headers could not be read)
    std::string dtype;         // the checkpoint's ("bf16", "f32", ...; "" when unknown)
    bool hasChatTemplate = false;
    uint64_t neededBytes = 0;  // the whole model at `dtype` on one machine, with a 4096-position context
    bool runnable = false;
    std::string reason;        // why it cannot run (or why it may not fit); "" when runnable
};

// Reads a model folder's config, tokenizer files and safetensors headers, or a GGUF file's header (never the
// weights). `availableBytes`: the memory the cluster has for it in all (0: unknown); a model needing more is marked
// not runnable with the numbers. Never throws: a bad folder or file becomes an entry with its reason.
ModelEntry describeModelFolder(const std::string& dir, const std::string& dtype = "", uint64_t availableBytes = 0);

// The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.
std::string huggingFaceHubDir();

// Every snapshot of every model in a hub cache (models--ORG--NAME/snapshots/REVISION), newest revision
// first per model, sorted by name. A missing cache is an empty list.
std::vector<ModelEntry> scanHuggingFaceCache(const std::string& hubDir, const std::string& dtype = "", uint64_t availableBytes = 0);

// Where people keep models, each with what it holds: the Hugging Face cache (folders and GGUF files in them),
// Ollama's store ($OLLAMA_MODELS, ~/.ollama/models, /usr/share/ollama/.ollama/models; named as Ollama names them,
// "llama3.2:3b"), LM Studio's (~/.lmstudio/models, ~/.cache/lm-studio/models) and llama.cpp's cache ($LLAMA_CACHE
// or ~/.cache/llama.cpp). Stores that do not exist are left out.
struct ModelStore {
    std::string name; // "Ollama"
    std::string root;
    std::vector<ModelEntry> entries;
};
std::vector<ModelStore> scanModelStores(const std::string& dtype = "", uint64_t availableBytes = 0);

} // namespace together
