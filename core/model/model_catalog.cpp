// SPDX-License-Identifier: MIT
#include "model/model_catalog.h"

#include "base/error.h"
#include "base/files.h"
#include "base/host_info.h"
#include "base/json.h"
#include "model/model_config.h"
#include "model/safetensors.h"
#include "model/shard_spec.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>

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

} // namespace

ModelEntry describeModelFolder(const std::string& dirText, const std::string& dtype, uint64_t availableBytes)
{
    const fs::path dir(dirText);
    ModelEntry e;
    e.path = dirText;
    e.name = nameOf(dir);
    std::error_code ec;
    bool anySafetensors = false, anyBin = false;
    for (auto& f : fs::directory_iterator(dir, ec)) {
        const std::string file = f.path().filename().string();
        const auto ends = [&](const std::string& s) { return file.size() >= s.size() && file.compare(file.size() - s.size(), s.size(), s) == 0; };
        if (ends(".safetensors")) {
            anySafetensors = true;
            e.weightBytes += fs::file_size(f.path(), ec); // follows the cache's symlinks to its blobs
        } else if (ends(".bin") || ends(".pth") || ends(".gguf")) {
            anyBin = true;
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
        e.reason = anyBin ? "weights only in PyTorch .bin / GGUF files: together reads safetensors (convert the checkpoint)"
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
        for (auto& [time, path] : snapshots)
            out.push_back(describeModelFolder(path.string(), dtype, availableBytes));
    }
    return out;
}

} // namespace together
