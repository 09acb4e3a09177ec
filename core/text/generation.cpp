// SPDX-License-Identifier: MIT
#include "text/generation.h"

#include "base/error.h"
#include "text/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>

namespace together {

const char* stopReasonText(StopReason r)
{
    switch (r) {
    case StopReason::Eos:
        return "end of sequence token";
    case StopReason::StopString:
        return "stop string";
    case StopReason::MaxTokens:
        return "max tokens";
    case StopReason::ContextFull:
        return "context full";
    case StopReason::Stopped:
        return "stopped";
    }
    return "?";
}

StopStringFilter::StopStringFilter(std::vector<std::string> stops)
    : m_stops(std::move(stops))
{
    m_stops.erase(std::remove(m_stops.begin(), m_stops.end(), std::string()), m_stops.end());
}

std::string StopStringFilter::push(const std::string& text, bool& stopped)
{
    stopped = false;
    m_held += text;
    size_t cut = std::string::npos;
    for (auto& s : m_stops) {
        size_t p = m_held.find(s);
        if (p != std::string::npos)
            cut = std::min(cut, p);
    }
    if (cut != std::string::npos) {
        std::string out = m_held.substr(0, cut);
        m_held.clear();
        stopped = true;
        return out;
    }
    // Keep the longest tail that is a proper prefix of some stop string.
    size_t keep = 0;
    for (auto& s : m_stops)
        for (size_t len = std::min(s.size() - 1, m_held.size()); len > keep; --len)
            if (m_held.compare(m_held.size() - len, len, s, 0, len) == 0) {
                keep = len;
                break;
            }
    std::string out = m_held.substr(0, m_held.size() - keep);
    m_held.erase(0, m_held.size() - keep);
    return out;
}

std::string StopStringFilter::flush()
{
    std::string out;
    out.swap(m_held);
    return out;
}

TokenTracker::TokenTracker(const Tokenizer& tokenizer, const GenerationParams& params)
    : m_params(params)
    , m_decoder(std::make_unique<StreamDecoder>(tokenizer))
    , m_stops(params.stopStrings)
{
}

TokenTracker::~TokenTracker() = default;

std::string TokenTracker::emit(std::string s)
{
    m_text += s;
    return s;
}

std::string TokenTracker::push(int token)
{
    if (m_done)
        return {};
    m_tokens.push_back(token);
    if (std::find(m_params.eosIds.begin(), m_params.eosIds.end(), token) != m_params.eosIds.end()) {
        m_reason = StopReason::Eos;
        return finish(StopReason::Eos);
    }
    bool stopped = false;
    std::string out = emit(m_stops.push(m_decoder->push(token), stopped));
    if (stopped) {
        m_done = true;
        m_finished = true;
        m_reason = StopReason::StopString;
        return out;
    }
    if (static_cast<int64_t>(m_tokens.size()) >= m_params.maxTokens)
        out += finish(StopReason::MaxTokens);
    return out;
}

std::string TokenTracker::finish(StopReason reason)
{
    m_done = true;
    if (m_finished)
        return {};
    m_finished = true;
    m_reason = reason;
    bool stopped = false;
    std::string out = emit(m_stops.push(m_decoder->flush(), stopped));
    if (stopped) {
        m_reason = StopReason::StopString;
        return out;
    }
    return out + emit(m_stops.flush());
}

GenerationResult generate(TokenStepper& stepper, const Tokenizer& tokenizer, const std::vector<int>& promptIds,
                          int64_t startPos, const GenerationParams& params,
                          const std::function<void(const std::string&)>& onText, std::ostream* trace)
{
    using Clock = std::chrono::steady_clock;
    if (promptIds.empty())
        throw Error("the prompt is empty: nothing to continue from");
    GenerationResult r;
    r.promptTokens = static_cast<int64_t>(promptIds.size());
    const int64_t limit = stepper.contextLimit();
    if (startPos + r.promptTokens > limit)
        throw Error("the prompt needs " + std::to_string(startPos + r.promptTokens) + " positions but the context holds " +
                    std::to_string(limit));

    TokenTracker tracker(tokenizer, params);
    auto emit = [&](const std::string& s) {
        if (!s.empty() && onText)
            onText(s);
    };
    std::vector<int> input = promptIds;
    int64_t pos = startPos;
    if (params.maxTokens <= 0)
        tracker.finish(StopReason::MaxTokens);
    for (int64_t stepIndex = 0; !tracker.done(); ++stepIndex) {
        if (pos + static_cast<int64_t>(input.size()) > limit) {
            emit(tracker.finish(StopReason::ContextFull));
            break;
        }
        auto t0 = Clock::now();
        StepOutput out = stepper.step(input, pos);
        double secs = std::chrono::duration<double>(Clock::now() - t0).count();
        if (stepIndex == 0)
            r.prefillSeconds = secs;
        else {
            r.decodeSeconds += secs;
            ++r.decodeSteps;
        }
        pos += static_cast<int64_t>(input.size());
        if (trace) {
            nlohmann::json line = {{"step", stepIndex}, {"pos", pos - 1}, {"n_input", input.size()}, {"token", out.token}};
            nlohmann::json top = nlohmann::json::array();
            for (auto& [id, logit] : out.top)
                top.push_back({id, logit});
            line["top"] = top;
            *trace << line.dump() << '\n';
            trace->flush();
        }
        emit(tracker.push(out.token));
        input.assign(1, out.token);
    }
    r.tokens = tracker.tokens();
    r.text = tracker.text();
    r.reason = tracker.reason();
    return r;
}

} // namespace together
