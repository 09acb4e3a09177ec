// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

namespace together {

// The commands about a model's files, run here without workers:
//   tokenize, detokenize   text to token ids and back with the model's tokenizer
//   chat-template          the model's chat template rendered over an OpenAI-style messages file
//   models                 model folders and the Hugging Face cache: what each is, and whether and why it can run
//   make-model             a random-weight model in Hugging Face files, of a named shape (tests, benchmarks)
// Each takes the command's arguments (after its name) and returns the exit status; bad input throws Error.
int runTokenize(const std::vector<std::string>& args);
int runDetokenize(const std::vector<std::string>& args);
int runChatTemplate(const std::vector<std::string>& args);
int runModels(const std::vector<std::string>& args);
int runMakeModel(const std::vector<std::string>& args);

} // namespace together
