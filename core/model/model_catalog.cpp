// SPDX-License-Identifier: MIT
#include "model/model_catalog.h"

#include "base/error.h"
#include "base/files.h"
#include "base/host_info.h"
#include "base/json.h"
#include "model/gguf.h"
#include "model/gguf_model.h"
#include "model/model_config.h"
#include "model/run_dtype.h"
#include "model/safetensors.h"
#include "model/shard_spec.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <map>

namespace together {

namespace fs = std::filesystem;

namespace {

// "ORG/NAME" from ".../models--ORG--NAME/snapshots/REV", else the folder's name.
std::string nameOf(const fs::path& dir)
{
    for (auto it = dir.begin(); it != dir.end(); ++it) {
        const std::string part = it->string();
        if (part.rfind("models--", 0) == 0) {
            std::string rest = part.substr(8);
            const auto sep = rest.find("--");
            return sep == std::string::npos ? rest : rest.substr(0, sep) + "/" + rest.substr(sep + 2);
        }
    }
    return dir.filename().empty() ? dir.parent_path().filename().string() : dir.filename().string();
}

bool chatTemplateIn(const fs::path& dir)
{
    std::error_code ec;
    if (fs::is_regular_file(dir / "chat_template.jinja", ec))
        return true;
    try {
        const auto j = parseUntrustedJson(readTextFile((dir / "tokenizer_config.json").string()), (dir / "tokenizer_config.json").string());
        return j.is_object() && j.contains("chat_template") && (j["chat_template"].is_string() || j["chat_template"].is_array());
    } catch (const std::exception&) {
        return false;
    }
}

// The GGUF models under `dir`, `depth` folders down: one per model (the first part of a split one), vision
// projectors (mmproj) left out, sorted.
std::vector<fs::path> ggufFilesIn(const fs::path& dir, int depth)
{
    std::vector<fs::path> out;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (it.depth() >= depth)
            it.disable_recursion_pending();
        const std::string name = it->path().filename().string();
        if (name.size() < 6 || name.compare(name.size() - 5, 5, ".gguf") != 0 || name.rfind("mmproj", 0) == 0)
            continue;
        const std::vector<std::string> parts = ggufSplitParts(it->path().string());
        if (parts.size() > 1 && parts.front() != it->path().string())
            continue;
        if (it->is_regular_file(ec)) // follows the caches' symlinks to their blobs
            out.push_back(it->path());
    }
    std::sort(out.begin(), out.end());
    return out;
}

bool hasSafetensors(const fs::path& dir)
{
    std::error_code ec;
    for (auto& f : fs::directory_iterator(dir, ec))
        if (f.path().extension() == ".safetensors")
            return true;
    return false;
}

// llama.cpp's names of general.file_type (the quantization a file was made with).
std::string fileTypeName(int64_t t)
{
    static const std::map<int64_t, const char*> names = {
        {0, "F32"},     {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},    {7, "Q8_0"},    {8, "Q5_0"},   {9, "Q5_1"},
        {10, "Q2_K"},   {11, "Q3_K_S"}, {12, "Q3_K_M"}, {13, "Q3_K_L"}, {14, "Q4_K_S"}, {15, "Q4_K_M"}, {16, "Q5_K_S"},
        {17, "Q5_K_M"}, {18, "Q6_K"},   {32, "BF16"},
    };
    auto it = names.find(t);
    return it == names.end() ? "" : it->second;
}

// Whether together's tokenizer reads the file's vocabulary ("" when it does).
std::string vocabularyProblem(const Gguf& g)
{
    const std::string model = g.getString("tokenizer.ggml.model").value_or("");
    if (model == "llama")
        return "";
    if (model != "gpt2")
        return "its vocabulary (tokenizer.ggml.model '" + model + "') is not supported (llama and gpt2 are)";
    const std::string pre = g.getString("tokenizer.ggml.pre").value_or("default");
    for (const GgufPreTokenizer& k : ggufPreTokenizers())
        if (pre == k.name)
            return "";
    return pre == "llama3" || pre == "llama-v3" || pre == "gpt-2" ? "" : "its pre-tokenizer '" + pre + "' is not supported";
}

void describeGguf(ModelEntry& e, const std::string& path, const std::string& dtype, uint64_t availableBytes)
{
    std::error_code ec;
    e.name = fs::path(path).stem().string();
    ModelConfig config;
    try {
        const Gguf g = Gguf::open(path, false);
        for (const std::string& f : g.files())
            e.weightBytes += fs::file_size(f, ec);
        for (const auto& [name, t] : g.tensors())
            e.parameters += static_cast<uint64_t>(t.numel());
        e.dtype = fileTypeName(g.getInt("general.file_type").value_or(-1));
        if (e.dtype.empty()) {
            const std::string mix = ggufTypeMix(g); // "Q4_K 97, Q6_K 24, ...": its most used type
            e.dtype = mix.substr(0, mix.find(' '));
        }
        e.hasChatTemplate = g.getString("tokenizer.chat_template").has_value();
        config = ModelConfig::fromJsonText(ggufConfigJson(g), path);
        e.architecture = config.architecture;
        ggufTensors(g, config).tensors(); // refuses a type together does not run, naming the tensor
        if (const std::string v = vocabularyProblem(g); !v.empty()) {
            e.reason = v;
            return;
        }
    } catch (const std::exception& ex) {
        e.reason = ex.what();
        return;
    }
    const std::string runAs = !dtype.empty() ? dtype : defaultDtypeFor(path);
    e.neededBytes = static_cast<uint64_t>(
        estimateShardMemory(config, ShardSpec::whole(config), parseRunDtype(runAs), std::min<int64_t>(config.contextLimit(), 4096)).total());
    if (availableBytes > 0 && e.neededBytes > availableBytes) {
        e.reason = "too big for the machines: needs about " + formatBytes(e.neededBytes) + " at " + runAs + ", they have " + formatBytes(availableBytes) +
                   " in all";
        return;
    }
    e.runnable = true;
}

} // namespace

ModelEntry describeModelFolder(const std::string& dirText, const std::string& dtype, uint64_t availableBytes)
{
    const fs::path dir(dirText);
    ModelEntry e;
    if (Gguf::isGguf(dirText)) {
        e.path = dirText;
        describeGguf(e, dirText, dtype, availableBytes);
        return e;
    }
    e.path = dirText;
    e.name = nameOf(dir);
    std::error_code ec;
    bool anySafetensors = false, anyBin = false, anyGguf = false;
    for (auto& f : fs::directory_iterator(dir, ec)) {
        const std::string file = f.path().filename().string();
        const auto ends = [&](const std::string& s) { return file.size() >= s.size() && file.compare(file.size() - s.size(), s.size(), s) == 0; };
        if (ends(".safetensors")) {
            anySafetensors = true;
            e.weightBytes += fs::file_size(f.path(), ec); // follows the cache's symlinks to its blobs
        } else if (ends(".bin") || ends(".pth")) {
            anyBin = true;
        } else if (ends(".gguf")) {
            anyGguf = true;
        }
    }
    if (ec && !fs::is_directory(dir)) {
        e.reason = "not a folder";
        return e;
    }
    e.hasChatTemplate = chatTemplateIn(dir);
    try {
        const auto j = parseUntrustedJson(readTextFile((dir / "config.json").string()), (dir / "config.json").string());
        if (j.is_object() && j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() && j["architectures"][0].is_string())
            e.architecture = j["architectures"][0].get<std::string>();
    } catch (const std::exception&) {
    }
    ModelConfig config;
    try {
        config = ModelConfig::fromDirectory(dirText);
    } catch (const std::exception& ex) {
        e.reason = ex.what();
        return e;
    }
    if (!anySafetensors) {
        e.reason = anyGguf ? "the weights are GGUF files: open the .gguf file itself"
                   : anyBin ? "weights only in PyTorch .bin files: together reads safetensors and GGUF (convert the checkpoint)"
                            : "no .safetensors weights in the folder";
        return e;
    }
    if (!fs::is_regular_file(dir / "tokenizer.json", ec)) {
        e.reason = "no tokenizer.json (a Hugging Face fast tokenizer is needed)";
        return e;
    }
    try {
        const SafeTensors tensors = SafeTensors::open(dirText, false);
        for (auto& [name, t] : tensors.tensors()) {
            e.parameters += static_cast<uint64_t>(t.numel());
            if (e.dtype.empty())
                for (const char* c = dtypeName(t.dtype); *c; ++c)
                    e.dtype += static_cast<char>(std::tolower(static_cast<unsigned char>(*c)));
        }
    } catch (const std::exception& ex) {
        e.reason = ex.what();
        return e;
    }
    const std::string runAs = !dtype.empty() ? dtype : e.dtype == "bf16" || e.dtype == "f16" ? "bf16" : "f32";
    e.neededBytes = static_cast<uint64_t>(
        estimateShardMemory(config, ShardSpec::whole(config), parseRunDtype(runAs), std::min<int64_t>(config.contextLimit(), 4096))
            .total());
    if (availableBytes > 0 && e.neededBytes > availableBytes) {
        e.reason = "too big for the machines: needs about " + formatBytes(e.neededBytes) + " at " + runAs + ", they have " + formatBytes(availableBytes) +
                   " in all";
        return e;
    }
    e.runnable = true;
    return e;
}

std::string huggingFaceHubDir()
{
    if (const char* h = std::getenv("HF_HUB_CACHE"); h && *h)
        return h;
    if (const char* h = std::getenv("HF_HOME"); h && *h)
        return std::string(h) + "/hub";
    const char* home = std::getenv("HOME");
    return std::string(home && *home ? home : ".") + "/.cache/huggingface/hub";
}

std::vector<ModelEntry> scanHuggingFaceCache(const std::string& hubDir, const std::string& dtype, uint64_t availableBytes)
{
    std::vector<ModelEntry> out;
    std::error_code ec;
    std::vector<fs::path> models;
    for (auto& m : fs::directory_iterator(hubDir, ec))
        if (m.is_directory(ec) && m.path().filename().string().rfind("models--", 0) == 0)
            models.push_back(m.path());
    std::sort(models.begin(), models.end());
    for (auto& m : models) {
        std::vector<std::pair<fs::file_time_type, fs::path>> snapshots;
        for (auto& s : fs::directory_iterator(m / "snapshots", ec))
            if (s.is_directory(ec))
                snapshots.emplace_back(fs::last_write_time(s.path(), ec), s.path());
        std::sort(snapshots.begin(), snapshots.end(), [](auto& a, auto& b) { return a.first > b.first; });
        for (auto& [time, path] : snapshots) {
            // A repository of GGUF files (one per quantization) lists each file; a folder with safetensors too.
            const std::vector<fs::path> ggufs = ggufFilesIn(path, 2);
            if (ggufs.empty() || hasSafetensors(path))
                out.push_back(describeModelFolder(path.string(), dtype, availableBytes));
            for (const fs::path& f : ggufs) {
                ModelEntry e = describeModelFolder(f.string(), dtype, availableBytes);
                e.name = nameOf(path) + ": " + f.filename().string();
                out.push_back(std::move(e));
            }
        }
    }
    return out;
}

namespace {

std::string homeDir()
{
    const char* home = std::getenv("HOME");
    return home && *home ? home : ".";
}

// Ollama's store: manifests/HOST/NAMESPACE/MODEL/TAG name a model layer by digest; the layer is blobs/sha256-HEX.
// Shown by Ollama's names: "llama3.2:3b" for the default host and namespace.
std::vector<ModelEntry> scanOllama(const fs::path& root, const std::string& dtype, uint64_t availableBytes)
{
    std::vector<ModelEntry> out;
    std::error_code ec;
    const fs::path manifests = root / "manifests";
    for (auto it = fs::recursive_directory_iterator(manifests, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (it.depth() != 3 || !it->is_regular_file(ec))
            continue;
        const fs::path rel = fs::relative(it->path(), manifests, ec);
        std::vector<std::string> parts;
        for (const auto& p : rel)
            parts.push_back(p.string());
        if (parts.size() != 4)
            continue;
        std::string name = parts[2] + ":" + parts[3];
        if (parts[1] != "library")
            name = parts[1] + "/" + name;
        if (parts[0] != "registry.ollama.ai")
            name = parts[0] + "/" + name;
        ModelEntry e;
        try {
            const auto m = parseUntrustedJson(readTextFile(it->path().string()), it->path().string());
            std::string digest;
            for (const auto& layer : m.at("layers"))
                if (layer.value("mediaType", "") == "application/vnd.ollama.image.model")
                    digest = layer.value("digest", "");
            if (digest.rfind("sha256:", 0) != 0 || digest.size() != 71 ||
                digest.find_first_not_of("0123456789abcdef", 7) != std::string::npos)
                throw Error("the manifest names no model layer");
            e = describeModelFolder((root / "blobs" / ("sha256-" + digest.substr(7))).string(), dtype, availableBytes);
        } catch (const std::exception& ex) {
            e.path = it->path().string();
            e.reason = ex.what();
        }
        e.name = name;
        out.push_back(std::move(e));
    }
    std::sort(out.begin(), out.end(), [](const ModelEntry& a, const ModelEntry& b) { return a.name < b.name; });
    return out;
}

std::vector<ModelEntry> scanGgufFolder(const fs::path& root, int depth, const std::string& dtype, uint64_t availableBytes)
{
    std::vector<ModelEntry> out;
    for (const fs::path& f : ggufFilesIn(root, depth)) {
        ModelEntry e = describeModelFolder(f.string(), dtype, availableBytes);
        std::error_code ec;
        e.name = fs::relative(f, root, ec).string();
        out.push_back(std::move(e));
    }
    return out;
}

} // namespace

std::vector<ModelStore> scanModelStores(const std::string& dtype, uint64_t availableBytes)
{
    std::vector<ModelStore> stores;
    auto add = [&](const std::string& name, const fs::path& root, std::vector<ModelEntry> entries) {
        std::error_code ec;
        if (fs::is_directory(root, ec))
            stores.push_back({name, root.string(), std::move(entries)});
    };
    add("Hugging Face cache", huggingFaceHubDir(), scanHuggingFaceCache(huggingFaceHubDir(), dtype, availableBytes));
    std::vector<fs::path> ollama;
    if (const char* o = std::getenv("OLLAMA_MODELS"); o && *o)
        ollama.emplace_back(o);
    ollama.push_back(fs::path(homeDir()) / ".ollama/models");
    ollama.emplace_back("/usr/share/ollama/.ollama/models");
    for (const fs::path& root : ollama)
        add("Ollama", root, scanOllama(root, dtype, availableBytes));
    for (const char* lm : {".lmstudio/models", ".cache/lm-studio/models"}) {
        const fs::path root = fs::path(homeDir()) / lm;
        add("LM Studio", root, scanGgufFolder(root, 3, dtype, availableBytes));
    }
    const char* llamaCache = std::getenv("LLAMA_CACHE");
    const fs::path llama = llamaCache && *llamaCache ? fs::path(llamaCache) : fs::path(homeDir()) / ".cache/llama.cpp";
    add("llama.cpp cache", llama, scanGgufFolder(llama, 1, dtype, availableBytes));
    return stores;
}

} // namespace together
