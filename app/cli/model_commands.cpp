// SPDX-License-Identifier: MIT
#include "cli/model_commands.h"

#include "base/cli_args.h"
#include "base/error.h"
#include "base/files.h"
#include "base/host_info.h"
#include "base/json.h"
#include "model/gguf_model.h"
#include "model/model_catalog.h"
#include "model/random_model.h"
#include "text/chat.h"
#include "text/tokenizer.h"

#include <nlohmann/json.hpp>

#include <cstdio>

namespace together {

namespace {

void need(const CliArgs& a, const char* flag)
{
    if (!a.has(flag))
        throw Error(std::string("--") + flag + " is required");
}

std::string fixed(double v, int digits = 2)
{
    char b[64];
    std::snprintf(b, sizeof b, "%.*f", digits, v);
    return b;
}

int tokenizeWith(const CliArgs& a)
{
    Tokenizer t = Tokenizer::fromDirectory(a.get("model"));
    auto ids = t.encode(a.get("text"), !a.has("no-special"));
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i)
        line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
    return 0;
}

int detokenizeWith(const CliArgs& a)
{
    Tokenizer t = Tokenizer::fromDirectory(a.get("model"));
    std::vector<int> ids;
    std::string s = a.get("ids");
    size_t i = 0;
    while (i < s.size()) {
        while (i < s.size() && (s[i] == ' ' || s[i] == ','))
            ++i;
        size_t j = i;
        while (j < s.size() && s[j] != ' ' && s[j] != ',')
            ++j;
        if (j > i) {
            try {
                ids.push_back(std::stoi(s.substr(i, j - i)));
            } catch (...) {
                throw Error("--ids: '" + s.substr(i, j - i) + "' is not a token id");
            }
        }
        i = j;
    }
    std::string text = t.decode(ids, a.has("skip-special"));
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::printf("\n");
    return 0;
}

int chatTemplateWith(const CliArgs& a)
{
    Tokenizer t = Tokenizer::fromDirectory(a.get("model"));
    const nlohmann::json messages = parseUntrustedJson(readTextFile(a.get("messages")), a.get("messages"));
    ChatPrompt p = renderChat(t, messages, !a.has("no-generation-prompt"));
    if (p.usedFallbackTemplate)
        std::fprintf(stderr, "together-cli: warning: the model has no chat_template; using a plain fallback format\n");
    std::fwrite(p.rendered.text.data(), 1, p.rendered.text.size(), stdout);
    return 0;
}

// --type for GGUF output: the types make-model writes.
GgmlType ggufWriteType(const std::string& name)
{
    for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K})
        if (name == ggmlTypeName(t))
            return t;
    throw Error("--type must be F32, F16, BF16, Q8_0, Q4_0 or Q4_K");
}

int makeModelWith(const CliArgs& a)
{
    RandomModelSpec s = modelShape(a.get("shape", "default"));
    s.architecture = a.get("arch", s.architecture);
    s.hiddenSize = a.getInt("hidden", static_cast<int>(s.hiddenSize));
    s.intermediateSize = a.getInt("intermediate", static_cast<int>(s.intermediateSize));
    s.numLayers = a.getInt("layers", static_cast<int>(s.numLayers));
    s.numHeads = a.getInt("heads", static_cast<int>(s.numHeads));
    s.numKvHeads = a.getInt("kv-heads", static_cast<int>(s.numKvHeads));
    s.headDim = a.getInt("head-dim", static_cast<int>(s.headDim));
    s.vocabSize = a.getInt("vocab", static_cast<int>(s.vocabSize));
    s.maxPositionEmbeddings = a.getInt("max-pos", static_cast<int>(s.maxPositionEmbeddings));
    s.tieWordEmbeddings = s.tieWordEmbeddings || a.has("tie");
    s.seed = a.getU64("seed", s.seed);
    s.logitScale = a.getDouble("logit-scale", s.logitScale);
    if (a.has("dtype")) {
        const std::string dt = a.get("dtype");
        if (dt == "f32")
            s.dtype = DType::F32;
        else if (dt == "bf16")
            s.dtype = DType::BF16;
        else if (dt == "f16")
            s.dtype = DType::F16;
        else
            throw Error("--dtype must be f32, bf16 or f16");
    }
    if (!a.has("out"))
        throw Error("--out DIR is required");
    const std::string format = a.get("format", "safetensors");
    if (format == "gguf") {
        const GgmlType type = ggufWriteType(a.get("type", "F16"));
        TempDir folder("together-make-model");
        writeRandomModel(folder.path(), s);
        exportGguf(folder.path(), a.get("out"), type);
        std::fprintf(stderr, "wrote random-weight %s as GGUF (%s) to %s\n", s.architecture.c_str(), ggmlTypeName(type), a.get("out").c_str());
        return 0;
    }
    if (format != "safetensors")
        throw Error("--format must be safetensors or gguf");
    writeRandomModel(a.get("out"), s);
    std::fprintf(stderr, "wrote random-weight %s to %s\n", s.architecture.c_str(), a.get("out").c_str());
    return 0;
}

} // namespace

int runTokenize(const std::vector<std::string>& args)
{
    CliArgs a(args, {{"model"}, {"text"}, {"no-special", false}});
    need(a, "model");
    need(a, "text");
    return tokenizeWith(a);
}

int runDetokenize(const std::vector<std::string>& args)
{
    CliArgs a(args, {{"model"}, {"ids"}, {"skip-special", false}});
    need(a, "model");
    need(a, "ids");
    return detokenizeWith(a);
}

int runChatTemplate(const std::vector<std::string>& args)
{
    CliArgs a(args, {{"model"}, {"messages"}, {"no-generation-prompt", false}});
    need(a, "model");
    need(a, "messages");
    return chatTemplateWith(a);
}

int runMakeModel(const std::vector<std::string>& args)
{
    CliArgs a(args, {{"out"}, {"shape"}, {"hidden"}, {"intermediate"}, {"layers"}, {"heads"}, {"kv-heads"}, {"head-dim"},
                     {"vocab"}, {"arch"}, {"dtype"}, {"tie", false}, {"seed"}, {"logit-scale"}, {"max-pos"}, {"format"}, {"type"}});
    return makeModelWith(a);
}

int runModels(const std::vector<std::string>& args)
{
    CliArgs a(args, {{"hub"}, {"model", true, true}, {"dtype"}, {"json", false}});
    std::vector<std::pair<std::string, ModelEntry>> list; // store, entry
    for (auto& d : a.all("model"))
        list.emplace_back("", describeModelFolder(d, a.get("dtype")));
    const std::string hub = a.get("hub", huggingFaceHubDir());
    for (auto& store : scanModelStores(a.get("dtype")))
        if (!(a.has("hub") && store.name == "Hugging Face cache"))
            for (auto& e : store.entries)
                list.emplace_back(store.name, e);
    if (a.has("hub"))
        for (auto& e : scanHuggingFaceCache(hub, a.get("dtype")))
            list.emplace_back("Hugging Face cache", e);
    for (auto& [store, e] : list) {
        if (a.has("json")) {
            nlohmann::json j = {{"store", store}, {"path", e.path}, {"name", e.name}, {"architecture", e.architecture}, {"weight_bytes", e.weightBytes},
                                {"parameters", e.parameters}, {"dtype", e.dtype}, {"chat_template", e.hasChatTemplate},
                                {"needed_bytes", e.neededBytes}, {"runnable", e.runnable}, {"reason", e.reason}};
            std::printf("%s\n", j.dump().c_str());
        } else {
            const double p = static_cast<double>(e.parameters);
            const std::string params = p >= 1e9 ? fixed(p / 1e9) + "B" : p >= 1e6 ? fixed(p / 1e6, 1) + "M" : fixed(p / 1e3, 0) + "K";
            std::printf("%-40s %-20s %10s %7s %-5s %-4s %s\n    %s\n", e.name.c_str(), e.architecture.empty() ? "?" : e.architecture.c_str(),
                        formatBytes(e.weightBytes).c_str(), params.c_str(), e.dtype.empty() ? "?" : e.dtype.c_str(),
                        e.hasChatTemplate ? "chat" : "base", e.runnable ? "can run" : ("cannot run: " + e.reason).c_str(), e.path.c_str());
        }
    }
    if (list.empty())
        std::fprintf(stderr, "together: no models in %s, Ollama's, LM Studio's or llama.cpp's folders; give one with --model DIR|FILE.gguf\n",
                     hub.c_str());
    return 0;
}

} // namespace together
