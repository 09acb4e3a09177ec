// SPDX-License-Identifier: MIT
#include "text/run_options.h"

#include "base/error.h"
#include "base/files.h"
#include "base/json.h"
#include "base/user_dirs.h"
#include "model/model_config.h"
#include "model/random_model.h"
#include "text/chat.h"
#include "text/tokenizer.h"

#include <chrono>
#include <cstdio>
#include <fstream>

#include <unistd.h>
#include <cstdlib>
#include <filesystem>

namespace together {

namespace fs = std::filesystem;

std::vector<CliArgs::Spec> runFlagSpecs()
{
    return {
        {"model"}, {"prompt"}, {"messages"}, {"chat", false}, {"max-tokens"}, {"temperature"}, {"top-k"}, {"top-p"}, {"seed"},
        {"stop", true, true}, {"dtype"}, {"threads"}, {"trace"}, {"ignore-eos", false},
    };
}

RunOptions parseRunOptions(const CliArgs& args, bool promptRequired)
{
    RunOptions o;
    o.modelDir = args.get("model");
    if (o.modelDir.empty()) {
        o.modelDir = ensureDefaultModel();
        std::fprintf(stderr,
                     "together: no --model given; using the built-in random-weight model in %s.\n"
                     "          Random weights produce noise: point --model at a Hugging Face model folder\n"
                     "          (config.json, model.safetensors, tokenizer.json) for real text.\n",
                     o.modelDir.c_str());
    }
    if (args.has("prompt") && args.has("messages"))
        throw Error("give --prompt or --messages, not both");
    if (promptRequired && !args.has("prompt") && !args.has("messages"))
        throw Error("--prompt TEXT (or --messages FILE.json) is required");
    o.prompt = args.get("prompt");
    o.messagesFile = args.get("messages");
    o.chat = args.has("chat") || !o.messagesFile.empty();
    o.generation.maxTokens = args.getInt("max-tokens", 256);
    if (o.generation.maxTokens < 1)
        throw Error("--max-tokens must be at least 1");
    o.generation.stopStrings = args.all("stop");
    o.dtype = args.get("dtype");
    o.threads = args.getInt("threads", 0);
    if (o.threads < 0)
        throw Error("--threads must be positive");
    o.traceFile = args.get("trace");

    // Sampling: flags, else generation_config.json, else llama.cpp-like defaults.
    GenerationDefaults defaults = GenerationDefaults::fromDirectory(o.modelDir);
    ModelConfig config = ModelConfig::fromDirectory(o.modelDir);
    SamplingParams& s = o.sampling;
    if (defaults.doSample && !*defaults.doSample) {
        s.temperature = 0;
    } else if (defaults.doSample) {
        s.temperature = defaults.temperature.value_or(1.0);
        s.topK = defaults.topK.value_or(50);
        s.topP = defaults.topP.value_or(1.0);
    }
    s.temperature = args.getDouble("temperature", s.temperature);
    s.topK = args.getInt("top-k", s.topK);
    s.topP = args.getDouble("top-p", s.topP);
    if (s.temperature < 0)
        throw Error("--temperature must be >= 0");
    if (s.topP <= 0 || s.topP > 1)
        throw Error("--top-p must be in (0, 1]");
    s.seed = args.has("seed") ? args.getU64("seed", 0)
                              : static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());

    o.generation.eosIds = !defaults.eosTokenIds.empty() ? defaults.eosTokenIds : config.eosTokenIds;
    if (args.has("ignore-eos")) // benchmarks and tests: always generate --max-tokens
        o.generation.eosIds.clear();
    return o;
}

std::vector<int> promptIds(const Tokenizer& tokenizer, const RunOptions& options, std::string* warning)
{
    if (!options.chat)
        return tokenizer.encode(options.prompt, /*addSpecialTokens=*/true);
    nlohmann::json messages = nlohmann::json::array({{{"role", "user"}, {"content", options.prompt}}});
    if (!options.messagesFile.empty()) {
        messages = parseUntrustedJson(readTextFile(options.messagesFile), options.messagesFile);
    }
    ChatPrompt p = renderChat(tokenizer, messages, true);
    if (p.usedFallbackTemplate && warning)
        *warning = "this model has no chat_template in tokenizer_config.json; using a plain \"User: ... Assistant:\" "
                   "format, which the model may not follow";
    return encodeChat(tokenizer, p);
}

GenerationResult runAndReport(TokenStepper& stepper, const Tokenizer& tokenizer, const std::vector<int>& ids, int64_t startPos,
                              const RunOptions& options, std::ostream* trace, const std::string& setup)
{
    GenerationResult r = generate(stepper, tokenizer, ids, startPos, options.generation,
                                  [](const std::string& s) {
                                      std::fwrite(s.data(), 1, s.size(), stdout);
                                      std::fflush(stdout);
                                  },
                                  trace);
    if (::isatty(STDOUT_FILENO)) // end the line for a person; scripts get exactly the generated text
        std::fputc('\n', stdout);
    std::fflush(stdout);
    printSpeedLine(r, setup, options.sampling.seed);
    return r;
}

void printSpeedLine(const GenerationResult& r, const std::string& setup, uint64_t seed)
{
    const double prefillTps = r.prefillSeconds > 0 ? static_cast<double>(r.promptTokens) / r.prefillSeconds : 0;
    const double decodeTps = r.decodeSeconds > 0 ? static_cast<double>(r.decodeSteps) / r.decodeSeconds : 0;
    std::fprintf(stderr,
                 "together: %zu tokens generated, stopped by %s | prompt %lld tokens at %.1f tokens/s | decode %.2f tokens/s | %s, "
                 "seed %llu\n",
                 r.tokens.size(), stopReasonText(r.reason), static_cast<long long>(r.promptTokens), prefillTps, decodeTps, setup.c_str(),
                 static_cast<unsigned long long>(seed));
}

} // namespace together
