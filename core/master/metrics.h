// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace together {

// What one rank did in one step, measured inside that rank's process. Times in that process's wall clock
// (microseconds since the Unix epoch, system_clock), durations in ms.
struct RankStepRecord {
    int stage = 0;
    int rank = 0;
    std::string worker;        // "host:port" of its daemon, for names
    int64_t startUs = 0;       // when it began this step's compute
    double computeMs = 0;      // its layers, without all-reduce time
    int allReduces = 0;
    double allReduceMs = 0;
    uint64_t allReduceBytes = 0;
    std::vector<std::pair<int64_t, int64_t>> allReduceSpans; // [startUs, endUs] of each all-reduce (may be empty)
    double samplingMs = 0;     // last stage rank 0 only
    // The link this rank sent the step's output over: to the next stage, or (last stage rank 0) the sampled
    // token back to stage 0. linkMs < 0: not measured.
    std::string linkName;      // e.g. "stage 0 -> 1" or "stage 2 -> 0 (token)"; empty: no link
    int64_t linkStartUs = 0;
    double linkMs = -1;
    uint64_t linkBytes = 0;
};

struct StepRecord {
    uint64_t generation = 0;
    uint64_t step = 0;          // 0 = the prefill (or its last chunk), then one per token
    int inputTokens = 0;
    int token = -1;
    double endToEndMs = 0;      // time of the whole step (measured in one process)
    double tokensPerSecond = 0; // 1000 / endToEndMs for decode steps; input tokens per second for the prefill
    std::vector<RankStepRecord> ranks;
    // Derived helpers:
    double computeMs() const;   // sum over stages of the slowest rank's computeMs + allReduceMs
    double samplingMs() const;  // sum of ranks' samplingMs
    double communicationMs() const; // max(0, endToEndMs - computeMs() - samplingMs())
};

struct LinkSummary {
    std::string name;   // a pipeline link by linkName, or "all-reduce stage S" for stage S's tensor-parallel group
    size_t samples = 0;
    double p50Ms = 0, p95Ms = 0, meanMs = 0;
    double bytesPerStep = 0; // mean bytes per step
};

// The session's records, kept in memory (bounded: the most recent 100000 steps).
//
// Every duration here was measured inside one process, so none depends on how well two clocks agree; only
// chromeTraceJson() places events from different machines on one time axis.
class SessionMetrics {
public:
    void add(StepRecord record);
    std::vector<StepRecord> records(size_t last = 0) const; // oldest first; `last` > 0: only the newest that many
    std::vector<StepRecord> generation(uint64_t generation) const;
    // p50/p95 per pipeline link and per tensor-parallel group's all-reduce (per step: the group's slowest
    // rank's allReduceMs, bytes of rank 0), in a stable order (stage order, links before all-reduces);
    // `decodeOnly` leaves out step 0 of each generation.
    // When several ranks send over links with the same name in one step (tensor-parallel stages), that
    // step's sample is the slowest send and the sum of their bytes. A link not measured (linkMs < 0) and a
    // stage without all-reduces (TP 1) add no sample.
    std::vector<LinkSummary> links(bool decodeOnly = true) const;
    // p50 of end-to-end, compute, communication and sampling ms over decode steps (and of their
    // tokensPerSecond); `steps` counts them.
    struct Totals { size_t steps = 0; double endToEndMs = 0, computeMs = 0, communicationMs = 0, samplingMs = 0, tokensPerSecond = 0; };
    Totals totals() const;
    // Thread-safe: add() is called from a controller thread while a GUI reads.

private:
    static constexpr size_t kMaxSteps = 100000;
    static constexpr size_t kStepsWithSpans = 4096; // all-reduce spans are kept for the most recent steps only

    mutable std::mutex m_mutex;
    std::deque<StepRecord> m_records; // oldest first, at most kMaxSteps
};

// Nearest-rank percentile of unsorted values (p in [0, 100]); 0 for an empty vector.
double percentile(std::vector<double> values, double p);

// A worker's clock relative to the master's: offsetUs = worker clock - master clock, estimated from
// request/reply round trips with the minimum-RTT filter: the sample with the smallest round trip wins, and its
// uncertainty is half that round trip.
//
// Why that bound holds: the worker read its clock at some master time t between send and receive, so the
// true offset is workerUs - t, and the midpoint estimate is off by at most half the round trip whatever the
// asymmetry of the two directions. Drift between the clocks is not modelled: the offset only aligns a view.
class ClockOffset {
public:
    // masterSendUs/masterRecvUs: the master's wall clock around the call; workerUs: the worker's wall clock in the reply.
    // A sample whose receive precedes its send (the master's clock stepped back) is ignored.
    void addSample(int64_t masterSendUs, int64_t workerUs, int64_t masterRecvUs);
    bool known() const;
    int64_t offsetUs() const;      // 0 when not known()
    int64_t uncertaintyUs() const; // half the best round trip, rounded up; 0 when not known()

private:
    bool m_known = false;
    int64_t m_bestRttUs = 0;
    int64_t m_offsetUs = 0;
};

// Chrome trace JSON (the "Trace Event Format" that chrome://tracing and Perfetto open): one process ("pid") per
// rank named "stage S rank R (worker)", with thread name; complete events ("ph":"X") for compute, each
// all-reduce (nested inside compute), and each link send; a counter or instant per token; timestamps in µs
// relative to the earliest event, each rank's times shifted onto the master's clock by subtracting its worker's
// offset. The metadata ("otherData" object) records for each worker its offset and uncertainty in µs, and a
// sentence saying the offsets come from heartbeat round trips (minimum-RTT filter) and only align this view.
// `offsets` maps RankStepRecord::worker to its ClockOffset (a missing or unknown one: offset 0, uncertainty
// "unknown").
//
// Layout: each rank's process has thread 1 "compute" (compute spans, all-reduces inside them, sampling after
// them) and thread 2 "send" (link sends). The rank that sampled (else the last stage's rank 0) carries an
// instant event "token <id>" and a "tokens per second" counter at the end of each step's sampling.
std::string chromeTraceJson(const std::vector<StepRecord>& records, const std::map<std::string, ClockOffset>& offsets);

} // namespace together
