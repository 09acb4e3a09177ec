// SPDX-License-Identifier: MIT
#pragma once

#include "base/cli_args.h"
#include "text/generation.h"
#include "text/sampler.h"

#include <string>
#include <vector>

namespace together {

class Tokenizer;

// The generation flags shared by `together-worker generate` and `together-cli run`:
//   --model DIR (--prompt TEXT | --messages FILE.json) [--chat] [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
//   [--stop TEXT]... [--dtype bf16|q8|f32] [--threads N] [--trace FILE]
struct RunOptions {
    std::string modelDir;
    std::string prompt;
    std::string messagesFile; // --messages: an OpenAI-style conversation to continue (implies --chat)
    bool chat = false;
    GenerationParams generation;
    SamplingParams sampling;
    std::string dtype; // "" = the machine's default
    int threads = 0;   // 0 = all cores
    std::string traceFile;
};

std::vector<CliArgs::Spec> runFlagSpecs();
// Runs one generation, streaming the text to stdout and writing the trace; prints the speed line to stderr.
GenerationResult runAndReport(TokenStepper& stepper, const Tokenizer& tokenizer, const std::vector<int>& ids, int64_t startPos,
                              const RunOptions& options, std::ostream* trace, const std::string& setup);
// The speed line at the end of a run (stderr): tokens, stop reason, prompt and decode tokens/s, setup, seed.
void printSpeedLine(const GenerationResult& result, const std::string& setup, uint64_t seed);
// Reads flags. Without --model, the built-in default model is written (once) and used, with a notice on
// stderr that its output is noise. Fills unset sampling settings from the model's generation_config.json (greedy when it says
// do_sample false) and the EOS ids from the config files. Throws Error naming a bad value.
RunOptions parseRunOptions(const CliArgs& args, bool promptRequired = true);

// Token ids for the prompt: the model's chat template around one user message with --chat, else the text
// with the tokenizer's own special tokens (BOS). `warning` receives a note when the fallback template is used.
std::vector<int> promptIds(const Tokenizer& tokenizer, const RunOptions& options, std::string* warning);

} // namespace together
