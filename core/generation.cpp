// SPDX-License-Identifier: MIT
#include "core/generation.h"

#include "core/error.h"
#include "core/tokenizer.h"

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

    StreamDecoder decoder(tokenizer);
    StopStringFilter stops(params.stopStrings);
    auto emit = [&](const std::string& s) {
        if (s.empty())
            return;
        r.text += s;
        if (onText)
            onText(s);
    };

    std::vector<int> input = promptIds;
    int64_t pos = startPos;
    bool stopped = false;
    for (int64_t stepIndex = 0; !stopped; ++stepIndex) {
        if (static_cast<int64_t>(r.tokens.size()) >= params.maxTokens) {
            r.reason = StopReason::MaxTokens;
            break;
        }
        if (pos + static_cast<int64_t>(input.size()) > limit) {
            r.reason = StopReason::ContextFull;
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
            if (!out.timings.empty()) {
                nlohmann::json t = nlohmann::json::array();
                for (auto& x : out.timings)
                    t.push_back({{"stage", x.stage}, {"rank", x.rank}, {"compute_ms", x.computeMs}, {"allreduce_ms", x.allReduceMs},
                                 {"allreduces", x.allReduces}, {"downstream_ms", x.downstreamMs}});
                line["timings"] = t;
            }
            *trace << line.dump() << '\n';
            trace->flush();
        }
        r.tokens.push_back(out.token);
        if (std::find(params.eosIds.begin(), params.eosIds.end(), out.token) != params.eosIds.end()) {
            r.reason = StopReason::Eos;
            break;
        }
        emit(stops.push(decoder.push(out.token), stopped));
        if (stopped) {
            r.reason = StopReason::StopString;
            break;
        }
        input.assign(1, out.token);
    }
    if (!stopped) {
        emit(stops.push(decoder.flush(), stopped));
        if (stopped)
            r.reason = StopReason::StopString;
        else
            emit(stops.flush());
    }
    return r;
}

} // namespace together
