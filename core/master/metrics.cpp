// SPDX-License-Identifier: MIT
#include "master/metrics.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <tuple>

namespace together {

namespace {

using json = nlohmann::json;

// Ranks report their own numbers: keep a NaN or infinity out of sums and out of the JSON (where it would
// become null).
double finite(double v) { return std::isfinite(v) ? v : 0.0; }

bool isDecode(const StepRecord& r) { return r.step != 0; }

} // namespace

double StepRecord::computeMs() const
{
    std::map<int, double> slowest; // stage -> its slowest rank's layers plus all-reduces
    for (const RankStepRecord& r : ranks) {
        double ms = finite(r.computeMs) + finite(r.allReduceMs);
        auto [it, inserted] = slowest.emplace(r.stage, ms);
        if (!inserted)
            it->second = std::max(it->second, ms);
    }
    double sum = 0;
    for (const auto& [stage, ms] : slowest)
        sum += ms;
    return sum;
}

double StepRecord::samplingMs() const
{
    double sum = 0;
    for (const RankStepRecord& r : ranks)
        sum += finite(r.samplingMs);
    return sum;
}

double StepRecord::communicationMs() const
{
    return std::max(0.0, finite(endToEndMs) - computeMs() - samplingMs());
}

double percentile(std::vector<double> values, double p)
{
    if (values.empty())
        return 0;
    // Nearest rank: the smallest value with at least p% of the values at or below it.
    p = std::clamp(finite(p), 0.0, 100.0);
    const size_t n = values.size();
    size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(n)));
    rank = std::clamp<size_t>(rank, 1, n);
    auto nth = values.begin() + static_cast<long>(rank - 1);
    std::nth_element(values.begin(), nth, values.end());
    return *nth;
}

void SessionMetrics::add(StepRecord record)
{
    std::lock_guard<std::mutex> lock(m_mutex);
    if (m_records.size() >= kMaxSteps)
        m_records.pop_front();
    m_records.push_back(std::move(record));
    // Each all-reduce's span is only for the timeline of recent tokens: older steps keep their totals. (Two
    // all-reduces per layer on every rank would otherwise grow to hundreds of MB over a long session.)
    if (m_records.size() > kStepsWithSpans)
        for (auto& r : m_records[m_records.size() - kStepsWithSpans - 1].ranks)
            std::vector<std::pair<int64_t, int64_t>>().swap(r.allReduceSpans);
}

std::vector<StepRecord> SessionMetrics::records(size_t last) const
{
    std::lock_guard<std::mutex> lock(m_mutex);
    const size_t skip = last > 0 && m_records.size() > last ? m_records.size() - last : 0;
    return {m_records.begin() + static_cast<std::ptrdiff_t>(skip), m_records.end()};
}

std::vector<StepRecord> SessionMetrics::generation(uint64_t generation) const
{
    std::lock_guard<std::mutex> lock(m_mutex);
    std::vector<StepRecord> out;
    for (const StepRecord& r : m_records)
        if (r.generation == generation)
            out.push_back(r);
    return out;
}

std::vector<LinkSummary> SessionMetrics::links(bool decodeOnly) const
{
    // One series per link name and per stage's all-reduce group, each step adding at most one sample.
    struct Series {
        int stage = 0;
        int kind = 0; // 0: pipeline link, 1: all-reduce (sorts after the stage's links)
        std::vector<double> ms;
        double bytes = 0;
    };
    std::map<std::string, Series> series;
    auto seriesFor = [&](const std::string& name, int stage, int kind) -> Series& {
        auto [it, inserted] = series.try_emplace(name);
        if (inserted) {
            it->second.stage = stage;
            it->second.kind = kind;
        } else {
            it->second.stage = std::min(it->second.stage, stage);
        }
        return it->second;
    };

    std::lock_guard<std::mutex> lock(m_mutex);
    for (const StepRecord& step : m_records) {
        if (decodeOnly && !isDecode(step))
            continue;
        struct Sample {
            int stage = 0;
            double ms = 0;
            double bytes = 0;
        };
        std::map<std::string, Sample> linkSteps; // link name -> slowest send, total bytes
        std::map<int, Sample> groupSteps;        // stage -> slowest all-reduce, rank 0's bytes
        for (const RankStepRecord& r : step.ranks) {
            if (!r.linkName.empty() && r.linkMs >= 0 && std::isfinite(r.linkMs)) {
                auto [it, inserted] = linkSteps.try_emplace(r.linkName, Sample{r.stage, r.linkMs, 0});
                Sample& s = it->second;
                s.stage = std::min(s.stage, r.stage);
                s.ms = std::max(s.ms, r.linkMs);
                s.bytes += static_cast<double>(r.linkBytes);
            }
            if (r.allReduces > 0 || !r.allReduceSpans.empty()) {
                auto [it, inserted] = groupSteps.try_emplace(r.stage, Sample{r.stage, finite(r.allReduceMs), 0});
                Sample& s = it->second;
                s.ms = std::max(s.ms, finite(r.allReduceMs));
                if (r.rank == 0)
                    s.bytes = static_cast<double>(r.allReduceBytes);
            }
        }
        for (const auto& [name, s] : linkSteps) {
            Series& out = seriesFor(name, s.stage, 0);
            out.ms.push_back(s.ms);
            out.bytes += s.bytes;
        }
        for (const auto& [stage, s] : groupSteps) {
            Series& out = seriesFor("all-reduce stage " + std::to_string(stage), stage, 1);
            out.ms.push_back(s.ms);
            out.bytes += s.bytes;
        }
    }

    std::vector<std::pair<std::tuple<int, int, std::string>, LinkSummary>> sorted;
    for (auto& [name, s] : series) {
        LinkSummary l;
        l.name = name;
        l.samples = s.ms.size();
        l.meanMs = std::accumulate(s.ms.begin(), s.ms.end(), 0.0) / static_cast<double>(l.samples);
        l.bytesPerStep = s.bytes / static_cast<double>(l.samples);
        l.p50Ms = percentile(s.ms, 50);
        l.p95Ms = percentile(std::move(s.ms), 95);
        sorted.emplace_back(std::make_tuple(s.stage, s.kind, name), std::move(l));
    }
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<LinkSummary> out;
    for (auto& [key, l] : sorted)
        out.push_back(std::move(l));
    return out;
}

SessionMetrics::Totals SessionMetrics::totals() const
{
    std::vector<double> endToEnd, compute, communication, sampling, rate;
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        for (const StepRecord& r : m_records) {
            if (!isDecode(r))
                continue;
            endToEnd.push_back(finite(r.endToEndMs));
            compute.push_back(r.computeMs());
            communication.push_back(r.communicationMs());
            sampling.push_back(r.samplingMs());
            rate.push_back(finite(r.tokensPerSecond));
        }
    }
    Totals t;
    t.steps = endToEnd.size();
    t.endToEndMs = percentile(std::move(endToEnd), 50);
    t.computeMs = percentile(std::move(compute), 50);
    t.communicationMs = percentile(std::move(communication), 50);
    t.samplingMs = percentile(std::move(sampling), 50);
    t.tokensPerSecond = percentile(std::move(rate), 50);
    return t;
}

void ClockOffset::addSample(int64_t masterSendUs, int64_t workerUs, int64_t masterRecvUs)
{
    if (masterRecvUs < masterSendUs)
        return;
    const int64_t rtt = masterRecvUs - masterSendUs;
    if (m_known && rtt >= m_bestRttUs)
        return;
    m_known = true;
    m_bestRttUs = rtt;
    m_offsetUs = workerUs - (masterSendUs + rtt / 2);
}

bool ClockOffset::known() const { return m_known; }

int64_t ClockOffset::offsetUs() const { return m_known ? m_offsetUs : 0; }

// The midpoint is rounded down, so the error can reach rtt/2 rounded up.
int64_t ClockOffset::uncertaintyUs() const { return m_known ? (m_bestRttUs + 1) / 2 : 0; }

namespace {

constexpr int kComputeTid = 1;
constexpr int kSendTid = 2;

double usOf(double ms) { return std::max(0.0, finite(ms)) * 1000.0; }

// One process per (stage, rank, worker), numbered in stage and rank order; a rank relaunched on another worker gets
// a row of its own, since its times come from another clock.
using RankKey = std::tuple<int, int, std::string>;

std::map<RankKey, int> rankProcesses(const std::vector<StepRecord>& records)
{
    std::map<RankKey, int> pids;
    for (const StepRecord& step : records)
        for (const RankStepRecord& r : step.ranks)
            pids.emplace(RankKey{r.stage, r.rank, r.worker}, 0);
    int nextPid = 1;
    for (auto& [key, pid] : pids)
        pid = nextPid++;
    return pids;
}

// The token belongs to the rank that sampled it, else to the last stage's rank 0.
const RankStepRecord* samplerOf(const StepRecord& step)
{
    const RankStepRecord* sampler = nullptr;
    for (const RankStepRecord& r : step.ranks) {
        if (r.samplingMs > 0)
            return &r;
        if (r.rank == 0 && (!sampler || r.stage > sampler->stage))
            sampler = &r;
    }
    return sampler;
}

// Events with absolute master-clock times first; made relative to the earliest once all are known.
class TraceEvents {
public:
    void push(json j, double tsUs)
    {
        m_earliest = std::min(m_earliest, tsUs);
        m_events.push_back({std::move(j), tsUs});
    }
    void appendTo(json& trace)
    {
        for (Event& e : m_events) {
            e.j["ts"] = static_cast<int64_t>(std::llround(e.tsUs - m_earliest));
            trace.push_back(std::move(e.j));
        }
    }

    // One rank's events of one step, on the master's clock (`shift`: the worker's offset): its compute span with
    // the all-reduces nested in it, sampling, its send on its link, and the token when it sampled it.
    void addRank(const StepRecord& step, const RankStepRecord& r, int pid, double shift, bool sampled)
    {
        const json stepArgs = {{"generation", step.generation}, {"step", step.step}};
        // The compute span covers the layers and the all-reduces between them; widened if a reported all-reduce
        // falls outside it, so that every all-reduce nests.
        double begin = static_cast<double>(r.startUs);
        double end = begin + usOf(r.computeMs) + usOf(r.allReduceMs);
        for (const auto& [s, e] : r.allReduceSpans) {
            begin = std::min(begin, static_cast<double>(s));
            end = std::max(end, static_cast<double>(std::max(s, e)));
        }
        json args = stepArgs;
        args["inputTokens"] = step.inputTokens;
        args["computeMs"] = finite(r.computeMs);
        args["allReduceMs"] = finite(r.allReduceMs);
        args["allReduces"] = r.allReduces;
        push({{"name", "compute"}, {"cat", "compute"}, {"ph", "X"}, {"pid", pid}, {"tid", kComputeTid}, {"dur", end - begin}, {"args", args}},
             begin - shift);
        for (size_t i = 0; i < r.allReduceSpans.size(); ++i) {
            const auto& [s, e] = r.allReduceSpans[i];
            json a = stepArgs;
            a["index"] = i;
            if (r.allReduces > 0)
                a["bytes"] = r.allReduceBytes / static_cast<uint64_t>(r.allReduces);
            push({{"name", "all-reduce"}, {"cat", "all-reduce"}, {"ph", "X"}, {"pid", pid},
                  {"tid", kComputeTid}, {"dur", static_cast<double>(std::max<int64_t>(0, e - s))}, {"args", a}},
                 static_cast<double>(s) - shift);
        }
        double sampledAt = end;
        if (r.samplingMs > 0) {
            push({{"name", "sampling"}, {"cat", "sampling"}, {"ph", "X"}, {"pid", pid}, {"tid", kComputeTid},
                  {"dur", usOf(r.samplingMs)}, {"args", stepArgs}},
                 end - shift);
            sampledAt = end + usOf(r.samplingMs);
        }
        if (!r.linkName.empty() && r.linkMs >= 0) {
            json a = stepArgs;
            a["bytes"] = r.linkBytes;
            push({{"name", r.linkName}, {"cat", "link"}, {"ph", "X"}, {"pid", pid}, {"tid", kSendTid}, {"dur", usOf(r.linkMs)}, {"args", a}},
                 static_cast<double>(r.linkStartUs) - shift);
        }
        if (sampled && step.token >= 0) {
            json a = stepArgs;
            a["token"] = step.token;
            a["endToEndMs"] = finite(step.endToEndMs);
            push({{"name", "token " + std::to_string(step.token)}, {"cat", "token"}, {"ph", "i"}, {"s", "p"},
                  {"pid", pid}, {"tid", kComputeTid}, {"args", a}},
                 sampledAt - shift);
            push({{"name", "tokens per second"}, {"ph", "C"}, {"pid", pid}, {"args", {{"tokens/s", finite(step.tokensPerSecond)}}}},
                 sampledAt - shift);
        }
    }

private:
    struct Event {
        json j;
        double tsUs = 0; // master clock
    };
    std::vector<Event> m_events;
    double m_earliest = std::numeric_limits<double>::infinity();
};

// A process, and its compute and send rows, per rank.
void appendProcesses(json& trace, const std::map<RankKey, int>& pids)
{
    for (const auto& [key, pid] : pids) {
        const auto& [stage, rank, worker] = key;
        std::string name = "stage " + std::to_string(stage) + " rank " + std::to_string(rank);
        if (!worker.empty())
            name += " (" + worker + ")";
        trace.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", name}}}});
        trace.push_back({{"name", "process_sort_index"}, {"ph", "M"}, {"pid", pid}, {"args", {{"sort_index", pid}}}});
        trace.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", kComputeTid}, {"args", {{"name", "compute"}}}});
        trace.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", kSendTid}, {"args", {{"name", "send"}}}});
    }
}

// Each worker's clock offset and its uncertainty, as the trace was aligned with them.
json clockOffsetsOf(const std::map<RankKey, int>& pids, const std::map<std::string, ClockOffset>& offsets)
{
    json clocks = json::object();
    for (const auto& [key, pid] : pids) {
        const std::string& worker = std::get<2>(key);
        if (worker.empty() || clocks.contains(worker))
            continue;
        auto it = offsets.find(worker);
        if (it != offsets.end() && it->second.known())
            clocks[worker] = {{"offsetUs", it->second.offsetUs()}, {"uncertaintyUs", it->second.uncertaintyUs()}};
        else
            clocks[worker] = {{"offsetUs", 0}, {"uncertaintyUs", "unknown"}};
    }
    return clocks;
}

} // namespace

std::string chromeTraceJson(const std::vector<StepRecord>& records, const std::map<std::string, ClockOffset>& offsets)
{
    auto offsetOf = [&](const std::string& worker) -> int64_t {
        auto it = offsets.find(worker);
        return it != offsets.end() && it->second.known() ? it->second.offsetUs() : 0;
    };
    const std::map<RankKey, int> pids = rankProcesses(records);
    TraceEvents events;
    for (const StepRecord& step : records) {
        const RankStepRecord* sampler = samplerOf(step);
        for (const RankStepRecord& r : step.ranks)
            events.addRank(step, r, pids.at(RankKey{r.stage, r.rank, r.worker}), static_cast<double>(offsetOf(r.worker)), &r == sampler);
    }
    json trace = json::array();
    appendProcesses(trace, pids);
    events.appendTo(trace);
    json other = {
        {"clockOffsets", clockOffsetsOf(pids, offsets)},
        {"clockNote",
         "Each worker's times were shifted onto the master's clock by subtracting its offsetUs (worker clock minus "
         "master clock), estimated from heartbeat round trips with a minimum-RTT filter (uncertainty: half the "
         "fastest round trip). The offsets only align this view: every duration was measured within one process."},
        {"steps", records.size()},
    };
    return json{{"traceEvents", trace}, {"displayTimeUnit", "ms"}, {"otherData", other}}.dump();
}

} // namespace together
