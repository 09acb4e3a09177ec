// SPDX-License-Identifier: MIT
#pragma once

#include "text/sampler.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace together {

class Tokenizer;

// Where one step's time went on one shard (distributed runs).
struct ShardTiming {
    int stage = 0;
    int rank = 0;
    double computeMs = 0;    // its layers, without all-reduce waits
    double allReduceMs = 0;  // inside all-reduces
    int allReduces = 0;
    double downstreamMs = 0; // waiting for the next stage (its work plus the hops)
};

// What one forward step returns: the sampled next token and the highest logits (for traces and checks).
struct StepOutput {
    int token = -1;
    std::vector<std::pair<int, float>> top; // (id, logit), highest first
    std::vector<ShardTiming> timings;       // empty for a single process
};

// Something that runs the model: the local engine, or later a whole cluster. `step` feeds `tokens` at
// positions [startPos, startPos + tokens.size()), appends them to its KV cache, and samples the token after
// the last one. Implementations throw Error when they cannot continue (a dead worker, a full cache).
class TokenStepper {
public:
    virtual ~TokenStepper() = default;
    virtual StepOutput step(const std::vector<int>& tokens, int64_t startPos) = 0;
    // Positions the stepper can hold (max_position_embeddings or the cache size).
    virtual int64_t contextLimit() const = 0;
};

struct GenerationParams {
    int maxTokens = 256;
    std::vector<int64_t> eosIds;
    std::vector<std::string> stopStrings;
};

enum class StopReason {
    Eos,
    StopString,
    MaxTokens,
    ContextFull,
    Stopped, // by the user
};
const char* stopReasonText(StopReason r);

struct GenerationResult {
    std::vector<int> tokens; // generated ids, including a final EOS if one ended it
    std::string text;        // streamed text (what onText received), cut before any stop string
    StopReason reason = StopReason::MaxTokens;
    int64_t promptTokens = 0;
    double prefillSeconds = 0;
    double decodeSeconds = 0; // time of steps after the first
    int64_t decodeSteps = 0;
};

// Holds back the tail of streamed text that might turn into a stop string, and cuts at the first stop
// string found.
class StopStringFilter {
public:
    explicit StopStringFilter(std::vector<std::string> stops);
    // Returns text that is safe to emit; sets `stopped` when a stop string completed.
    std::string push(const std::string& text, bool& stopped);
    std::string flush(); // what was held back, at the end of generation

private:
    std::vector<std::string> m_stops;
    std::string m_held;
};

// The master's view of an answer, token by token, shared by the local loop below and the cluster ring:
// decodes text as it becomes complete UTF-8, ends at EOS, a stop string or max tokens, and never lets text
// past a stop string out.
class TokenTracker {
public:
    TokenTracker(const Tokenizer& tokenizer, const GenerationParams& params);
    ~TokenTracker();
    // Takes the next sampled token; returns the text that became safe to show (often empty). Afterwards
    // done() says whether the answer ended with it. Tokens pushed after done() are ignored.
    std::string push(int token);
    // The answer ended for another reason (context full, stopped by the user): returns what was held back,
    // unless a stop string cut it.
    std::string finish(StopReason reason);
    bool done() const { return m_done; }
    StopReason reason() const { return m_reason; }
    const std::vector<int>& tokens() const { return m_tokens; }
    const std::string& text() const { return m_text; }
    const GenerationParams& params() const { return m_params; }

private:
    std::string emit(std::string s);
    GenerationParams m_params;
    std::unique_ptr<class StreamDecoder> m_decoder;
    StopStringFilter m_stops;
    std::vector<int> m_tokens;
    std::string m_text;
    bool m_done = false;
    bool m_finished = false;
    StopReason m_reason = StopReason::MaxTokens;
};

// The generation loop shared by every front end: prefill the prompt in one step, then one token per step
// until EOS, a stop string, max tokens or a full context. Text is streamed through `onText` as it becomes
// complete UTF-8. `trace`, when set, gets one JSON line per step:
//   {"step": i, "pos": p, "n_input": n, "token": id, "top": [[id, logit], ...]}
// where pos is the position of the last input token (whose logits were sampled) and n_input how many
// tokens that step fed.
GenerationResult generate(TokenStepper& stepper, const Tokenizer& tokenizer, const std::vector<int>& promptIds,
                          int64_t startPos, const GenerationParams& params,
                          const std::function<void(const std::string&)>& onText, std::ostream* trace);

} // namespace together
