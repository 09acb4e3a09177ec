// SPDX-License-Identifier: MIT
#include "master/metrics.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <map>
#include <random>
#include <set>

using namespace together;
using json = nlohmann::json;

namespace {

RankStepRecord rankRecord(int stage, int rank, const std::string& worker)
{
    RankStepRecord r;
    r.stage = stage;
    r.rank = rank;
    r.worker = worker;
    return r;
}

TEST(Percentile, NearestRank)
{
    std::vector<double> v = {7, 3, 10, 1, 9, 2, 8, 5, 4, 6}; // 1..10, unsorted
    EXPECT_EQ(percentile(v, 50), 5);
    EXPECT_EQ(percentile(v, 95), 10);
    EXPECT_EQ(percentile(v, 0), 1);
    EXPECT_EQ(percentile(v, 100), 10);
    EXPECT_EQ(percentile(v, 10), 1);
    EXPECT_EQ(percentile(v, 11), 2);
    EXPECT_EQ(percentile({42}, 95), 42);
    EXPECT_EQ(percentile({}, 50), 0);
}

TEST(StepRecord, CommunicationIsWhatComputeAndSamplingLeave)
{
    StepRecord s;
    s.endToEndMs = 40;
    auto a = rankRecord(0, 0, "a:1");
    a.computeMs = 10;
    a.allReduceMs = 2; // 12
    auto b = rankRecord(0, 1, "b:1");
    b.computeMs = 9;
    b.allReduceMs = 4; // 13: the slower rank of stage 0
    auto c = rankRecord(1, 0, "c:1");
    c.computeMs = 20;
    c.samplingMs = 1.5;
    s.ranks = {a, b, c};
    EXPECT_DOUBLE_EQ(s.computeMs(), 13 + 20);
    EXPECT_DOUBLE_EQ(s.samplingMs(), 1.5);
    EXPECT_DOUBLE_EQ(s.communicationMs(), 40 - 33 - 1.5);

    s.endToEndMs = 30; // less than compute + sampling (clocks of different processes): never negative
    EXPECT_DOUBLE_EQ(s.communicationMs(), 0);

    StepRecord empty;
    empty.endToEndMs = 7;
    EXPECT_DOUBLE_EQ(empty.computeMs(), 0);
    EXPECT_DOUBLE_EQ(empty.communicationMs(), 7);
}

// Three stages: TP 2, TP 2, TP 1. Generation 7 has a prefill (step 0, huge numbers) and decode steps 1..10;
// generation 8 only a prefill.
StepRecord pipelineStep(uint64_t generation, uint64_t k)
{
    const bool prefill = k == 0;
    StepRecord s;
    s.generation = generation;
    s.step = k;
    s.inputTokens = prefill ? 100 : 1;
    s.token = static_cast<int>(k);
    s.endToEndMs = prefill ? 5000 : 50 + static_cast<double>(k);
    s.tokensPerSecond = 1000 / s.endToEndMs;

    auto s0r0 = rankRecord(0, 0, "a:1");
    s0r0.allReduces = 4;
    s0r0.allReduceMs = prefill ? 1000 : 2.0 * static_cast<double>(k);
    s0r0.allReduceBytes = prefill ? 1000000 : 4096;
    s0r0.linkName = "stage 0 -> 1";
    s0r0.linkMs = prefill ? 1000 : static_cast<double>(k);
    s0r0.linkBytes = prefill ? 100000 : 1000;
    auto s0r1 = rankRecord(0, 1, "b:1");
    s0r1.allReduces = 4;
    s0r1.allReduceMs = prefill ? 1 : 21 - 2.0 * static_cast<double>(k);
    s0r1.allReduceBytes = 8; // not rank 0's: not counted

    // Both ranks of stage 1 send over the same link: the slower send counts, the bytes add up.
    auto s1r0 = rankRecord(1, 0, "c:1");
    s1r0.allReduces = 2;
    s1r0.allReduceMs = prefill ? 1000 : 3.0 * static_cast<double>(k);
    s1r0.allReduceBytes = 512;
    s1r0.linkName = "stage 1 -> 2";
    s1r0.linkMs = prefill ? 1000 : static_cast<double>(k) + 10;
    s1r0.linkBytes = 100;
    auto s1r1 = s1r0;
    s1r1.rank = 1;
    s1r1.worker = "d:1";
    s1r1.linkMs = prefill ? 1000 : static_cast<double>(k) + 20;

    auto s2r0 = rankRecord(2, 0, "e:1"); // TP 1: no all-reduce group
    s2r0.samplingMs = 0.25;
    s2r0.linkName = "stage 2 -> 0 (token)";
    s2r0.linkMs = k == 3 ? -1 : (prefill ? 1000 : 0.5); // step 3: not measured
    s2r0.linkBytes = 4;

    // Ranks in no particular order: the summary order must not depend on it.
    s.ranks = {s2r0, s1r1, s0r1, s1r0, s0r0};
    return s;
}

void addPipelineSession(SessionMetrics& m)
{
    for (uint64_t k = 0; k <= 10; ++k)
        m.add(pipelineStep(7, k));
    m.add(pipelineStep(8, 0));
}

TEST(SessionMetrics, LinksPerPipelineLinkAndAllReduceGroup)
{
    SessionMetrics m;
    addPipelineSession(m);
    auto links = m.links();
    ASSERT_EQ(links.size(), 5u);
    EXPECT_EQ(links[0].name, "stage 0 -> 1");
    EXPECT_EQ(links[1].name, "all-reduce stage 0");
    EXPECT_EQ(links[2].name, "stage 1 -> 2");
    EXPECT_EQ(links[3].name, "all-reduce stage 1");
    EXPECT_EQ(links[4].name, "stage 2 -> 0 (token)");

    // stage 0 -> 1: 1..10 ms.
    EXPECT_EQ(links[0].samples, 10u);
    EXPECT_DOUBLE_EQ(links[0].p50Ms, 5);
    EXPECT_DOUBLE_EQ(links[0].p95Ms, 10);
    EXPECT_DOUBLE_EQ(links[0].meanMs, 5.5);
    EXPECT_DOUBLE_EQ(links[0].bytesPerStep, 1000);

    // The slower of 2k and 21 - 2k: 19 17 15 13 11 12 14 16 18 20, neither rank's own series.
    EXPECT_EQ(links[1].samples, 10u);
    EXPECT_DOUBLE_EQ(links[1].p50Ms, 15);
    EXPECT_DOUBLE_EQ(links[1].p95Ms, 20);
    EXPECT_DOUBLE_EQ(links[1].meanMs, 15.5);
    EXPECT_DOUBLE_EQ(links[1].bytesPerStep, 4096);

    // Two senders: max(k + 10, k + 20), 100 + 100 bytes.
    EXPECT_EQ(links[2].samples, 10u);
    EXPECT_DOUBLE_EQ(links[2].p50Ms, 25);
    EXPECT_DOUBLE_EQ(links[2].p95Ms, 30);
    EXPECT_DOUBLE_EQ(links[2].bytesPerStep, 200);

    EXPECT_EQ(links[3].samples, 10u);
    EXPECT_DOUBLE_EQ(links[3].p50Ms, 15);
    EXPECT_DOUBLE_EQ(links[3].p95Ms, 30);
    EXPECT_DOUBLE_EQ(links[3].bytesPerStep, 512);

    // Step 3 was not measured.
    EXPECT_EQ(links[4].samples, 9u);
    EXPECT_DOUBLE_EQ(links[4].p50Ms, 0.5);
    EXPECT_DOUBLE_EQ(links[4].p95Ms, 0.5);
    EXPECT_DOUBLE_EQ(links[4].bytesPerStep, 4);
}

TEST(SessionMetrics, LinksWithPrefillsIncludeStepZeroOfEveryGeneration)
{
    SessionMetrics m;
    addPipelineSession(m);
    auto links = m.links(false);
    ASSERT_EQ(links.size(), 5u);
    EXPECT_EQ(links[0].name, "stage 0 -> 1");
    // 1..10 plus two prefills of 1000 ms.
    EXPECT_EQ(links[0].samples, 12u);
    EXPECT_DOUBLE_EQ(links[0].p50Ms, 6);
    EXPECT_DOUBLE_EQ(links[0].p95Ms, 1000);
    EXPECT_DOUBLE_EQ(links[0].bytesPerStep, (10 * 1000 + 2 * 100000) / 12.0);
    EXPECT_EQ(links[1].name, "all-reduce stage 0");
    EXPECT_EQ(links[1].samples, 12u);
    EXPECT_DOUBLE_EQ(links[1].p95Ms, 1000);
    EXPECT_DOUBLE_EQ(links[1].bytesPerStep, (10 * 4096 + 2 * 1000000) / 12.0);
    EXPECT_EQ(links[4].samples, 11u);
}

TEST(SessionMetrics, TotalsOverDecodeSteps)
{
    SessionMetrics m;
    addPipelineSession(m);
    auto t = m.totals();
    EXPECT_EQ(t.steps, 10u);
    EXPECT_DOUBLE_EQ(t.endToEndMs, 55); // 51..60
    // compute: stage 0 max(2k, 21 - 2k), stage 1 3k, stage 2 0; p50 over k of that sum.
    std::vector<double> compute, communication;
    for (int k = 1; k <= 10; ++k) {
        double c = std::max(2.0 * k, 21 - 2.0 * k) + 3.0 * k;
        compute.push_back(c);
        communication.push_back(std::max(0.0, 50 + k - c - 0.25));
    }
    EXPECT_DOUBLE_EQ(t.computeMs, percentile(compute, 50));
    EXPECT_DOUBLE_EQ(t.communicationMs, percentile(communication, 50));
    EXPECT_DOUBLE_EQ(t.samplingMs, 0.25);
    EXPECT_DOUBLE_EQ(t.tokensPerSecond, 1000.0 / 56); // p50 of 1000/51 .. 1000/60

    EXPECT_EQ(SessionMetrics().totals().steps, 0u);
}

TEST(SessionMetrics, RecordsByGenerationAndBounded)
{
    SessionMetrics m;
    addPipelineSession(m);
    EXPECT_EQ(m.records().size(), 12u);
    EXPECT_EQ(m.records().front().generation, 7u);
    EXPECT_EQ(m.records().back().generation, 8u);
    auto g7 = m.generation(7);
    ASSERT_EQ(g7.size(), 11u);
    for (size_t i = 0; i < g7.size(); ++i)
        EXPECT_EQ(g7[i].step, i);
    EXPECT_EQ(m.generation(8).size(), 1u);
    EXPECT_TRUE(m.generation(9).empty());

    SessionMetrics big;
    for (uint64_t i = 0; i < 100005; ++i) {
        StepRecord s;
        s.step = i;
        big.add(std::move(s));
    }
    auto all = big.records();
    ASSERT_EQ(all.size(), 100000u);
    EXPECT_EQ(all.front().step, 5u);
    EXPECT_EQ(all.back().step, 100004u);
}

TEST(ClockOffset, MinimumRoundTripWins)
{
    const int64_t trueOffset = 123456789;
    ClockOffset c;
    EXPECT_FALSE(c.known());
    EXPECT_EQ(c.offsetUs(), 0);

    // A call from `send` that takes `there` µs to reach the worker and `back` µs to return.
    auto sample = [&](int64_t send, int64_t there, int64_t back) {
        c.addSample(send, send + there + trueOffset, send + there + back);
    };
    sample(1000000, 500, 5000); // rtt 5500, the reply slow
    ASSERT_TRUE(c.known());
    EXPECT_EQ(c.uncertaintyUs(), 2750);
    EXPECT_LE(std::llabs(c.offsetUs() - trueOffset), c.uncertaintyUs());

    sample(2000000, 100, 300); // rtt 400: replaces it
    EXPECT_EQ(c.uncertaintyUs(), 200);
    EXPECT_EQ(c.offsetUs(), trueOffset + 100 - 200);

    sample(3000000, 4000, 50); // rtt 4050: worse, ignored
    EXPECT_EQ(c.uncertaintyUs(), 200);
    EXPECT_EQ(c.offsetUs(), trueOffset - 100);

    c.addSample(4000000, 0, 3999999); // the master's clock stepped back: ignored
    EXPECT_EQ(c.offsetUs(), trueOffset - 100);

    sample(5000000, 0, 0); // a perfect round trip is exact
    EXPECT_EQ(c.uncertaintyUs(), 0);
    EXPECT_EQ(c.offsetUs(), trueOffset);
}

TEST(ClockOffset, EstimateStaysWithinItsUncertainty)
{
    std::mt19937 rng(17);
    std::uniform_int_distribution<int64_t> delay(20, 20000);
    const int64_t trueOffset = -987654;
    ClockOffset c;
    int64_t send = 1700000000000000;
    int64_t best = INT64_MAX;
    for (int i = 0; i < 2000; ++i) {
        int64_t there = delay(rng), back = delay(rng) / (i % 3 + 1); // asymmetric, now one way, now the other
        c.addSample(send, send + there + trueOffset, send + there + back);
        best = std::min(best, there + back);
        ASSERT_LE(std::llabs(c.offsetUs() - trueOffset), c.uncertaintyUs()) << "sample " << i;
        ASSERT_EQ(c.uncertaintyUs(), (best + 1) / 2);
        send += 500000;
    }
}

// Two ranks of one stage on workers whose clocks are off by different amounts; both start the step, and
// each all-reduce, at the same master time.
struct TraceFixture {
    std::vector<StepRecord> records;
    std::map<std::string, ClockOffset> offsets;
    static constexpr int64_t kMasterT0 = 1700000000000000;
    static constexpr int64_t kOffsetA = 5000;   // a:1 runs 5 ms ahead
    static constexpr int64_t kOffsetB = -3000;  // b:1 runs 3 ms behind

    TraceFixture()
    {
        offsets["a:1"].addSample(kMasterT0 - 1000, kMasterT0 - 1000 + 40 + kOffsetA, kMasterT0 - 1000 + 80);
        offsets["b:1"].addSample(kMasterT0 - 1000, kMasterT0 - 1000 + 30 + kOffsetB, kMasterT0 - 1000 + 60);
        // c:1 has no offset at all.
        for (uint64_t k = 0; k < 3; ++k) {
            const int64_t t = kMasterT0 + static_cast<int64_t>(k) * 100000;
            StepRecord s;
            s.generation = 1;
            s.step = k;
            s.token = 40 + static_cast<int>(k);
            s.endToEndMs = 20;
            s.tokensPerSecond = 50;
            for (int rank = 0; rank < 2; ++rank) {
                const int64_t off = rank == 0 ? kOffsetA : kOffsetB;
                RankStepRecord r = rankRecord(0, rank, rank == 0 ? "a:1" : "b:1");
                r.startUs = t + off;
                r.computeMs = 4;
                r.allReduces = 2;
                r.allReduceMs = 2;
                r.allReduceBytes = 2048;
                r.allReduceSpans = {{t + off + 1000, t + off + 2000}, {t + off + 4000, t + off + 5000}};
                r.linkName = "stage 0 -> 1";
                r.linkStartUs = t + off + 6000;
                r.linkMs = 0.5;
                r.linkBytes = 1024;
                s.ranks.push_back(r);
            }
            RankStepRecord last = rankRecord(1, 0, "c:1");
            last.startUs = t + 7000;
            last.computeMs = 3;
            last.samplingMs = 0.5;
            last.linkName = "stage 1 -> 0 (token)";
            last.linkStartUs = t + 10500;
            last.linkMs = 0.2;
            last.linkBytes = 4;
            s.ranks.push_back(last);
            records.push_back(s);
        }
    }
};

TEST(ChromeTrace, OneRowPerRankWithCompleteEvents)
{
    TraceFixture f;
    json trace = json::parse(chromeTraceJson(f.records, f.offsets));
    ASSERT_TRUE(trace.contains("traceEvents"));
    ASSERT_TRUE(trace["traceEvents"].is_array());

    std::map<int, std::string> processNames;
    std::set<int> pidsWithEvents;
    size_t complete = 0, tokens = 0;
    for (const json& e : trace["traceEvents"]) {
        ASSERT_TRUE(e.contains("ph"));
        ASSERT_TRUE(e.contains("pid"));
        const std::string ph = e["ph"];
        if (ph == "M" && e["name"] == "process_name") {
            const int pid = e["pid"];
            EXPECT_EQ(processNames.count(pid), 0u) << "a second process_name for pid " << pid;
            processNames[pid] = e["args"]["name"];
        }
        if (ph == "X") {
            ++complete;
            ASSERT_TRUE(e.contains("ts"));
            ASSERT_TRUE(e.contains("dur"));
            ASSERT_TRUE(e.contains("tid"));
            EXPECT_GE(e["ts"].get<double>(), 0);
            EXPECT_GE(e["dur"].get<double>(), 0);
            pidsWithEvents.insert(e["pid"].get<int>());
        }
        if (ph == "i" && e["cat"] == "token") {
            ++tokens;
            EXPECT_TRUE(e.contains("ts"));
            EXPECT_EQ(processNames.count(e["pid"].get<int>()), 1u);
        }
    }
    ASSERT_EQ(processNames.size(), 3u);
    std::set<std::string> names;
    for (const auto& [pid, name] : processNames) {
        names.insert(name);
        EXPECT_EQ(pidsWithEvents.count(pid), 1u) << name;
    }
    EXPECT_EQ(names, (std::set<std::string>{"stage 0 rank 0 (a:1)", "stage 0 rank 1 (b:1)", "stage 1 rank 0 (c:1)"}));
    // Per step: 2 × (compute, 2 all-reduces, send) + compute, sampling, send.
    EXPECT_EQ(complete, 3u * (2 * 4 + 3));
    EXPECT_EQ(tokens, 3u);

    // The earliest event is at 0.
    double earliest = 1e300;
    for (const json& e : trace["traceEvents"])
        if (e.contains("ts"))
            earliest = std::min(earliest, e["ts"].get<double>());
    EXPECT_EQ(earliest, 0);
}

TEST(ChromeTrace, AllReducesNestInsideComputeAndOffsetsAlignRanks)
{
    TraceFixture f;
    json trace = json::parse(chromeTraceJson(f.records, f.offsets));
    std::map<int, std::string> processNames;
    for (const json& e : trace["traceEvents"])
        if (e["ph"] == "M" && e["name"] == "process_name")
            processNames[e["pid"]] = e["args"]["name"];

    // By process name and step: the compute span and the all-reduce spans.
    struct Span {
        double ts, dur;
        int tid;
    };
    std::map<std::pair<std::string, uint64_t>, Span> compute;
    std::map<std::pair<std::string, uint64_t>, std::vector<Span>> allReduces;
    for (const json& e : trace["traceEvents"]) {
        if (e["ph"] != "X")
            continue;
        auto key = std::make_pair(processNames.at(e["pid"]), e["args"]["step"].get<uint64_t>());
        Span s{e["ts"].get<double>(), e["dur"].get<double>(), e["tid"].get<int>()};
        if (e["name"] == "compute")
            compute[key] = s;
        else if (e["name"] == "all-reduce")
            allReduces[key].push_back(s);
    }
    ASSERT_EQ(compute.size(), 9u);
    ASSERT_EQ(allReduces.size(), 6u);
    for (const auto& [key, spans] : allReduces) {
        ASSERT_EQ(spans.size(), 2u);
        const Span& c = compute.at(key);
        for (const Span& s : spans) {
            EXPECT_EQ(s.tid, c.tid) << key.first << " step " << key.second;
            EXPECT_GE(s.ts, c.ts) << key.first << " step " << key.second;
            EXPECT_LE(s.ts + s.dur, c.ts + c.dur) << key.first << " step " << key.second;
        }
    }

    // Both stage-0 ranks began each step at the same master time: after the shift they line up exactly,
    // though their own clocks were 8 ms apart; so do their all-reduces. Steps are 100 ms apart.
    for (uint64_t k = 0; k < 3; ++k) {
        const Span& a = compute.at({"stage 0 rank 0 (a:1)", k});
        const Span& b = compute.at({"stage 0 rank 1 (b:1)", k});
        EXPECT_EQ(a.ts, b.ts) << "step " << k;
        EXPECT_EQ(a.dur, 6000);
        EXPECT_EQ(a.ts, 100000.0 * static_cast<double>(k)); // the first compute is the earliest event
        const auto& ra = allReduces.at({"stage 0 rank 0 (a:1)", k});
        const auto& rb = allReduces.at({"stage 0 rank 1 (b:1)", k});
        for (size_t i = 0; i < 2; ++i)
            EXPECT_EQ(ra[i].ts, rb[i].ts);
        // c:1 has no offset: its times stay as they were, 7 ms after the others' master-clock start.
        EXPECT_EQ(compute.at({"stage 1 rank 0 (c:1)", k}).ts, a.ts + 7000);
    }
}

TEST(ChromeTrace, OtherDataRecordsOffsetsAndUncertainty)
{
    TraceFixture f;
    json trace = json::parse(chromeTraceJson(f.records, f.offsets));
    ASSERT_TRUE(trace.contains("otherData"));
    const json& other = trace["otherData"];
    ASSERT_TRUE(other["clockOffsets"].is_object());
    const json& clocks = other["clockOffsets"];
    ASSERT_EQ(clocks.size(), 3u);
    EXPECT_EQ(clocks["a:1"]["offsetUs"].get<int64_t>(), f.offsets["a:1"].offsetUs());
    EXPECT_EQ(clocks["a:1"]["uncertaintyUs"].get<int64_t>(), 40);
    EXPECT_EQ(clocks["b:1"]["offsetUs"].get<int64_t>(), TraceFixture::kOffsetB);
    EXPECT_EQ(clocks["b:1"]["uncertaintyUs"].get<int64_t>(), 30);
    EXPECT_EQ(clocks["c:1"]["offsetUs"].get<int64_t>(), 0);
    EXPECT_EQ(clocks["c:1"]["uncertaintyUs"], "unknown");
    const std::string note = other["clockNote"];
    EXPECT_NE(note.find("heartbeat"), std::string::npos);
    EXPECT_NE(note.find("minimum-RTT"), std::string::npos);
    EXPECT_NE(note.find("only align"), std::string::npos);
}

TEST(ChromeTrace, EmptyRecordsGiveAnEmptyTrace)
{
    json trace = json::parse(chromeTraceJson({}, {}));
    ASSERT_TRUE(trace["traceEvents"].is_array());
    EXPECT_TRUE(trace["traceEvents"].empty());
    EXPECT_TRUE(trace["otherData"]["clockOffsets"].empty());
}

} // namespace

// All-reduce spans are for the timeline of recent steps: older records keep their totals but drop the spans.
TEST(SessionMetrics, KeepsAllReduceSpansOnlyForRecentSteps)
{
    together::SessionMetrics m;
    for (uint64_t i = 0; i < 5000; ++i) {
        together::StepRecord s;
        s.step = i;
        together::RankStepRecord r;
        r.allReduces = 2;
        r.allReduceMs = 1.5;
        r.allReduceSpans = {{1, 2}, {3, 4}};
        s.ranks.push_back(r);
        m.add(s);
    }
    auto all = m.records();
    ASSERT_EQ(all.size(), 5000u);
    EXPECT_TRUE(all.front().ranks[0].allReduceSpans.empty());
    EXPECT_EQ(all.front().ranks[0].allReduceMs, 1.5);
    EXPECT_EQ(all.back().ranks[0].allReduceSpans.size(), 2u);
    EXPECT_EQ(all[5000 - 4096].ranks[0].allReduceSpans.size(), 2u);
    EXPECT_TRUE(all[5000 - 4097].ranks[0].allReduceSpans.empty());
}
