// SPDX-License-Identifier: MIT
// together-cli: the headless front end. Links core only (no Qt, no libtorch).
#include "core/chat.h"
#include "core/cli_args.h"
#include "core/error.h"
#include "core/random_model.h"
#include "core/tokenizer.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>

using namespace together;

namespace {

const char* kUsage =
    "usage:\n"
    "  together-cli tokenize --model DIR --text TEXT [--no-special]\n"
    "      Prints the token ids, space-separated, on one line.\n"
    "  together-cli detokenize --model DIR --ids \"1 2 3\" [--skip-special]\n"
    "  together-cli chat-template --model DIR --messages FILE.json [--no-generation-prompt]\n"
    "      Prints the prompt the model's chat template renders for an OpenAI-style messages array.\n"
    "  together-cli make-model --out DIR [--hidden N] [--intermediate N] [--layers N] [--heads N] [--kv-heads N]\n"
    "                          [--head-dim N] [--vocab N] [--arch NAME] [--dtype f32|bf16] [--tie] [--seed S]\n"
    "                          [--logit-scale X] [--max-pos N]\n"
    "      Writes a random-weight model as real Hugging Face files (for tests and benchmarks).\n";

int tokenize(const CliArgs& a)
{
    Tokenizer t = Tokenizer::fromDirectory(a.get("model"));
    auto ids = t.encode(a.get("text"), !a.has("no-special"));
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i)
        line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
    return 0;
}

int detokenize(const CliArgs& a)
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

int chatTemplate(const CliArgs& a)
{
    Tokenizer t = Tokenizer::fromDirectory(a.get("model"));
    nlohmann::json messages;
    try {
        messages = nlohmann::json::parse(readTextFile(a.get("messages")));
    } catch (const nlohmann::json::exception& e) {
        throw Error(a.get("messages") + ": malformed JSON: " + e.what());
    }
    ChatPrompt p = renderChat(t, messages, !a.has("no-generation-prompt"));
    if (p.usedFallbackTemplate)
        std::fprintf(stderr, "together-cli: warning: the model has no chat_template; using a plain fallback format\n");
    std::fwrite(p.rendered.text.data(), 1, p.rendered.text.size(), stdout);
    return 0;
}

int makeModel(const CliArgs& a)
{
    RandomModelSpec s;
    s.architecture = a.get("arch", s.architecture);
    s.hiddenSize = a.getInt("hidden", static_cast<int>(s.hiddenSize));
    s.intermediateSize = a.getInt("intermediate", static_cast<int>(s.intermediateSize));
    s.numLayers = a.getInt("layers", static_cast<int>(s.numLayers));
    s.numHeads = a.getInt("heads", static_cast<int>(s.numHeads));
    s.numKvHeads = a.getInt("kv-heads", static_cast<int>(s.numKvHeads));
    s.headDim = a.getInt("head-dim", 0);
    s.vocabSize = a.getInt("vocab", 0);
    s.maxPositionEmbeddings = a.getInt("max-pos", static_cast<int>(s.maxPositionEmbeddings));
    s.tieWordEmbeddings = a.has("tie");
    s.seed = a.getU64("seed", 1);
    s.logitScale = a.getDouble("logit-scale", 1.0);
    std::string dt = a.get("dtype", "f32");
    if (dt == "f32")
        s.dtype = DType::F32;
    else if (dt == "bf16")
        s.dtype = DType::BF16;
    else if (dt == "f16")
        s.dtype = DType::F16;
    else
        throw Error("--dtype must be f32, bf16 or f16");
    if (!a.has("out"))
        throw Error("--out DIR is required");
    writeRandomModel(a.get("out"), s);
    std::fprintf(stderr, "wrote random-weight %s to %s\n", s.architecture.c_str(), a.get("out").c_str());
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        std::fputs(kUsage, args.empty() ? stderr : stdout);
        return args.empty() ? 2 : 0;
    }
    std::string cmd = args[0];
    std::vector<std::string> rest(args.begin() + 1, args.end());
    try {
        auto need = [](const CliArgs& a, const char* flag) {
            if (!a.has(flag))
                throw Error(std::string("--") + flag + " is required");
        };
        if (cmd == "tokenize") {
            CliArgs a(rest, {{"model"}, {"text"}, {"no-special", false}});
            need(a, "model");
            need(a, "text");
            return tokenize(a);
        }
        if (cmd == "detokenize") {
            CliArgs a(rest, {{"model"}, {"ids"}, {"skip-special", false}});
            need(a, "model");
            need(a, "ids");
            return detokenize(a);
        }
        if (cmd == "chat-template") {
            CliArgs a(rest, {{"model"}, {"messages"}, {"no-generation-prompt", false}});
            need(a, "model");
            need(a, "messages");
            return chatTemplate(a);
        }
        if (cmd == "make-model") {
            CliArgs a(rest, {{"out"}, {"hidden"}, {"intermediate"}, {"layers"}, {"heads"}, {"kv-heads"}, {"head-dim"},
                             {"vocab"}, {"arch"}, {"dtype"}, {"tie", false}, {"seed"}, {"logit-scale"}, {"max-pos"}});
            return makeModel(a);
        }
        std::fprintf(stderr, "together-cli: unknown command '%s'\n%s", cmd.c_str(), kUsage);
        return 2;
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "together-cli: error: %s\n", e.what());
        return 1;
    }
}
