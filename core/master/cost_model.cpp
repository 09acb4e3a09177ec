// SPDX-License-Identifier: MIT
#include "master/cost_model.h"

#include "base/error.h"
#include "model/shard_spec.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <optional>
#include <set>

namespace together {

namespace {

RunDtype dtypeOf(const std::string& dtype) { return parseRunDtype(dtype); }

std::string gib(double bytes)
{
    char b[32];
    std::snprintf(b, sizeof b, "%.1f GiB", bytes / double(1ull << 30));
    return b;
}

std::string fixed(double v, int digits = 1)
{
    char b[32];
    std::snprintf(b, sizeof b, "%.*f", digits, v);
    return b;
}

const MachineProfile& machineFor(const std::vector<MachineProfile>& machines, const std::string& worker)
{
    for (auto& m : machines)
        if (m.worker == worker)
            return m;
    throw Error("no calibration for worker " + worker);
}

// The engine's one-row matrix-vector rate (bytes/s) of `threads` threads on `m`: linear in threads up to
// the all-thread measurement.
double matvecRate(const MachineProfile& m, const std::string& dtype, int threads)
{
    auto it = m.matvecGBps.find(dtype);
    if (it == m.matvecGBps.end() && dtype == "q4") // a daemon of an older version: q8's byte rate stands in
        it = m.matvecGBps.find("q8");
    if (it == m.matvecGBps.end() || it->second.first <= 0)
        throw Error("worker " + m.worker + " has no measured speed for " + dtype);
    const double one = it->second.first, all = std::max(it->second.second, one);
    const int t = std::clamp(threads, 1, static_cast<int>(std::max<uint32_t>(1, m.threads)));
    return std::min(one * t, all) * 1e9;
}

// The calibrated format whose byte rate a run's matrices get: a native run's by the model's bits per weight (the
// block kernels of 4- to 6-bit types run at about q4's rate, Q8_0 at q8's, f16/bf16 at bf16's).
std::string speedKey(const ModelConfig& c, const std::string& dtype)
{
    if (parseRunDtype(dtype) != RunDtype::Native)
        return dtype;
    const double bits = c.nativeBitsPerWeight();
    return bits <= 7 ? "q4" : bits <= 9 ? "q8" : bits <= 16 ? "bf16" : "f32";
}

// Bytes of the KV cache one token attends to on a shard (keys and values of its KV heads, f32).
double kvReadBytes(const ModelConfig& c, const ShardSpec& s, int64_t positions)
{
    const int64_t layers = s.lastLayer - s.firstLayer + 1;
    return 2.0 * static_cast<double>(layers * shardDims(c, s.tpRank, s.tpSize).kvHeads * c.headDim * 4) * static_cast<double>(positions);
}

// An all-reduce of `bytes` per rank over `n` ranks (recursive halving-doubling, as gloo runs it): 2 log2(n)
// rounds of latency, and each rank sends and receives about 2 (n-1)/n of the buffer.
double allReduceMs(double bytes, int n, const LinkProfile& link)
{
    if (n <= 1)
        return 0;
    const double rounds = 2.0 * std::ceil(std::log2(static_cast<double>(n)));
    return rounds * link.alphaUs / 1000.0 + (link.betaMBps > 0 ? 2.0 * (n - 1) / n * bytes / (link.betaMBps * 1000.0) : 0.0);
}

const LinkProfile kLoopback{30, 3000};

} // namespace

const std::vector<NamedLink>& namedLinks()
{
    // One-way latency and throughput a gRPC stream over TCP sees (not the wire's raw rate): loopback as
    // measured here (tests/bench_links at 0 ms: ~0.2-0.4 ms per message with the ack, most of it
    // scheduling), Ethernet at ~94% of its line rate with switch and stack latency, Wi-Fi 5 at a typical
    // home throughput and its much larger latency.
    static const std::vector<NamedLink> links = {
        {"loopback", kLoopback},
        {"10 GbE", {60, 1100}},
        {"2.5 GbE", {100, 290}},
        {"1 GbE", {150, 117}},
        {"Wi-Fi 5", {2000, 40}},
    };
    return links;
}

LinkProfile namedLink(const std::string& name)
{
    std::string known;
    for (auto& l : namedLinks()) {
        if (l.name == name)
            return l.link;
        known += (known.empty() ? "" : ", ") + l.name;
    }
    throw Error("no link profile named '" + name + "' (known: " + known + ")");
}

LinkProfile LinkTable::between(const std::string& a, const std::string& b) const
{
    if (a == b)
        return kLoopback;
    auto it = pairs.find(std::minmax(a, b));
    return it == pairs.end() ? fallback : it->second;
}

void LinkTable::set(const std::string& a, const std::string& b, LinkProfile link) { pairs[std::minmax(a, b)] = link; }

LinkProfile LinkTable::forAllReduce(const std::string& a, const std::string& b) const
{
    if (a == b)
        return kLoopback;
    auto it = allReducePairs.find(std::minmax(a, b));
    return it == allReducePairs.end() ? between(a, b) : it->second;
}

void LinkTable::setAllReduce(const std::string& a, const std::string& b, LinkProfile link) { allReducePairs[std::minmax(a, b)] = link; }

LinkProfile fitLink(const std::vector<std::pair<double, double>>& samples)
{
    if (samples.empty())
        throw Error("no link samples to fit");
    // Weighted by 1/time^2: the fit minimises relative error, so the small payloads (a few microseconds) set the
    // latency and the large ones (milliseconds) the throughput; plain least squares lets the noise of a 4 MiB
    // transfer swamp the latency.
    double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (auto& [x, y] : samples) {
        const double w = 1.0 / std::max(1e-6, y * y);
        sw += w;
        sx += w * x;
        sy += w * y;
        sxx += w * x * x;
        sxy += w * x * y;
    }
    const double det = sw * sxx - sx * sx;
    double slope = det > 0 ? (sw * sxy - sx * sy) / det : 0; // ms per byte
    double intercept = (sy - slope * sx) / sw;
    const auto largest = *std::max_element(samples.begin(), samples.end());
    if (!(slope > 0)) { // flat: the largest payload's time is all throughput
        slope = largest.second / std::max(1.0, largest.first);
        intercept = std::min_element(samples.begin(), samples.end())->second;
    }
    LinkProfile l;
    l.alphaUs = std::max(1.0, intercept * 1000.0 / 2.0);
    l.betaMBps = 1.0 / (slope * 1000.0);
    return l;
}

double Prediction::computeMs() const
{
    double s = 0;
    for (auto& x : stages)
        s += x.computeMs;
    return s;
}

double Prediction::allReduceMs() const
{
    double s = 0;
    for (auto& x : stages)
        s += x.allReduceMs;
    return s;
}

double Prediction::linkMs() const
{
    double s = 0;
    for (auto& x : stages)
        s += x.linkMs;
    return s;
}

Prediction predict(const ModelConfig& config, const Plan& plan, const std::string& dtype, const std::vector<MachineProfile>& machines,
                   const LinkTable& links, int64_t positions, int64_t promptTokens)
{
    plan.validate(config);
    const RunDtype dt = dtypeOf(dtype);
    Prediction p;
    bool prefillKnown = true;
    double prefillSeconds = 0;
    const size_t S = plan.stages.size();
    for (size_t si = 0; si < S; ++si) {
        const PlanStage& st = plan.stages[si];
        const int tp = static_cast<int>(st.ranks.size());
        Prediction::Stage out;
        // Ranks of one stage run at once: those on one host share its all-thread bandwidth.
        std::map<std::string, double> hostDemand, hostCap;
        std::vector<double> rates;
        for (auto& r : st.ranks) {
            const MachineProfile& m = machineFor(machines, r.worker);
            const double rate = matvecRate(m, speedKey(config, dtype), r.threads);
            rates.push_back(rate);
            hostDemand[m.host] += rate;
            const auto it = m.matvecGBps.find(speedKey(config, dtype));
            const double allThreads = it != m.matvecGBps.end() ? it->second.second : 0;
            hostCap[m.host] = std::max(hostCap[m.host], std::max(allThreads, m.readGBpsAll) * 1e9);
        }
        double stagePrefill = 0;
        for (int r = 0; r < tp; ++r) {
            const MachineProfile& m = machineFor(machines, st.ranks[static_cast<size_t>(r)].worker);
            const double share = std::min(1.0, hostCap[m.host] / std::max(1.0, hostDemand[m.host]));
            const ShardSpec spec = plan.shardSpec(si, r);
            const double bytes = static_cast<double>(decodeBytesPerToken(config, spec, dt)) + kvReadBytes(config, spec, positions);
            const int threads = st.ranks[static_cast<size_t>(r)].threads;
            const double overheadMs = (threads <= 1 ? m.layerOverheadMs1 : m.layerOverheadMsAll) * static_cast<double>(st.lastLayer - st.firstLayer + 1);
            const double ms = bytes / (rates[static_cast<size_t>(r)] * share) * 1000.0 + overheadMs;
            if (ms > out.computeMs) {
                out.computeMs = ms;
                out.slowestRank = m.worker + " (stage " + std::to_string(si) + " rank " + std::to_string(r) + ")";
            }
            if (m.gemmGFlops > 0) {
                const double params = static_cast<double>(decodeBytesPerToken(config, spec, dt)) / bytesPerWeight(dt, config.nativeBitsPerWeight());
                const double threadsShare = std::min(1.0, static_cast<double>(st.ranks[static_cast<size_t>(r)].threads) / std::max<uint32_t>(1, m.threads));
                stagePrefill = std::max(stagePrefill, 2.0 * params * static_cast<double>(promptTokens) / (m.gemmGFlops * 1e9 * threadsShare * share));
            } else {
                prefillKnown = false;
            }
        }
        // The group's all-reduces, over its slowest pair of links.
        LinkProfile worst{0, std::numeric_limits<double>::infinity()};
        for (int a = 0; a < tp; ++a)
            for (int b = a + 1; b < tp; ++b) {
                const LinkProfile l = links.forAllReduce(st.ranks[static_cast<size_t>(a)].worker, st.ranks[static_cast<size_t>(b)].worker);
                worst.alphaUs = std::max(worst.alphaUs, l.alphaUs);
                worst.betaMBps = std::min(worst.betaMBps, l.betaMBps);
            }
        for (auto& c : shardCollectives(config, plan.shardSpec(si, 0), 1)) {
            const double bytes = static_cast<double>(c.floats) * 4;
            ++out.allReduces;
            out.allReduceBytes += static_cast<uint64_t>(bytes);
            out.allReduceMs += allReduceMs(bytes, tp, worst);
        }
        for (auto& c : shardCollectives(config, plan.shardSpec(si, 0), promptTokens))
            stagePrefill += allReduceMs(static_cast<double>(c.floats) * 4, tp, worst) / 1000.0;
        // The hidden state to the next stage (rank i feeds ranks j with j % tp == i), or the sampled token from
        // the last stage's rank 0 to every stage-0 rank.
        if (si + 1 < S) {
            const auto& next = plan.stages[si + 1].ranks;
            out.linkBytes = static_cast<uint64_t>(config.hiddenSize) * 4;
            for (size_t j = 0; j < next.size(); ++j) {
                const LinkProfile l = links.between(st.ranks[j % static_cast<size_t>(tp)].worker, next[j].worker);
                out.linkMs = std::max(out.linkMs, l.ms(static_cast<double>(out.linkBytes)));
                stagePrefill += l.ms(static_cast<double>(out.linkBytes) * static_cast<double>(promptTokens)) / 1000.0 / static_cast<double>(next.size());
            }
        } else {
            out.linkBytes = 16;
            const auto& firsts = plan.stages[0].ranks;
            for (size_t j = S == 1 ? 1 : 0; j < firsts.size(); ++j) // a one-stage plan's rank 0 feeds itself
                out.linkMs = std::max(out.linkMs, links.between(st.ranks[0].worker, firsts[j].worker).ms(16));
        }
        prefillSeconds += stagePrefill;
        p.stages.push_back(out);
    }
    // Sampling reads the logits once on the last stage's rank 0.
    const MachineProfile& sampler = machineFor(machines, plan.stages.back().ranks[0].worker);
    p.samplingMs = static_cast<double>(config.vocabSize) * 4 / (std::max(0.1, sampler.readGBps1) * 1e9) * 1000.0;
    p.msPerToken = p.computeMs() + p.allReduceMs() + p.linkMs() + p.samplingMs;
    p.tokensPerSecond = p.msPerToken > 0 ? 1000.0 / p.msPerToken : 0;
    p.prefillTokensPerSecond = prefillKnown && prefillSeconds > 0 ? static_cast<double>(promptTokens) / prefillSeconds : 0;
    return p;
}

std::string checkMemory(const ModelConfig& config, const Plan& plan, RunDtype dtype, int64_t contextLimit, const std::vector<MachineProfile>& machines)
{
    // By worker (what it donates) and by host (what is free there: its daemons share it).
    std::map<std::string, double> byWorker, byHost;
    for (size_t si = 0; si < plan.stages.size(); ++si)
        for (size_t ri = 0; ri < plan.stages[si].ranks.size(); ++ri) {
            const MachineProfile& m = machineFor(machines, plan.stages[si].ranks[ri].worker);
            const double need = static_cast<double>(estimateShardMemory(config, plan.shardSpec(si, static_cast<int>(ri)), dtype, contextLimit).total());
            byWorker[m.worker] += need;
            byHost[m.host] += need;
        }
    for (auto& m : machines) {
        auto w = byWorker.find(m.worker);
        if (w == byWorker.end())
            continue;
        const double hostNeed = byHost[m.host];
        if (w->second > static_cast<double>(m.usableMemoryBytes()) || hostNeed > static_cast<double>(m.freeMemoryBytes))
            return "needs about " + gib(std::max(w->second, hostNeed)) + ", " + m.host + " has " + gib(static_cast<double>(m.freeMemoryBytes)) + " free" +
                   (m.donatedMemoryBytes ? " (" + gib(static_cast<double>(m.donatedMemoryBytes)) + " donated)" : std::string());
    }
    return {};
}

namespace {

struct Candidate {
    Plan plan;
    Prediction prediction;
    std::string shape; // "PP3", "TP2", "TP2 x PP2"
};

// Layers for stages in order, fastest stage first: each takes as many layers as its memory holds, so a token
// spends its time on the fastest machines (stages of one sequence run one after another: moving a layer to a
// slower stage only adds to the sum). Nullopt when the layers do not fit.
std::optional<std::vector<int64_t>> fillLayers(const ModelConfig& c, RunDtype dt, int64_t context, const std::vector<std::vector<const MachineProfile*>>& groups)
{
    const size_t S = groups.size();
    std::vector<int64_t> capacity(S, 0);
    for (size_t s = 0; s < S; ++s) {
        // The most layers this stage's every rank can hold, with the embedding on the first and the head on the last.
        const int tp = static_cast<int>(groups[s].size());
        int64_t best = 0;
        for (int64_t n = 1; n <= c.numLayers; ++n) {
            bool fits = true;
            std::map<std::string, double> host;
            for (int r = 0; r < tp && fits; ++r) {
                ShardSpec spec{0, n - 1, r, tp, s == 0, s + 1 == S};
                const double need = static_cast<double>(estimateShardMemory(c, spec, dt, context).total());
                host[groups[s][static_cast<size_t>(r)]->host] += need;
                fits = need <= static_cast<double>(groups[s][static_cast<size_t>(r)]->usableMemoryBytes());
            }
            for (auto& [h, need] : host)
                for (auto* m : groups[s])
                    if (m->host == h)
                        fits = fits && need <= static_cast<double>(m->freeMemoryBytes);
            if (!fits)
                break;
            best = n;
        }
        capacity[s] = best;
    }
    std::vector<int64_t> layers(S, 1);
    int64_t left = c.numLayers - static_cast<int64_t>(S);
    if (left < 0)
        return std::nullopt;
    for (size_t s = 0; s < S; ++s)
        if (capacity[s] < 1)
            return std::nullopt;
    for (size_t s = 0; s < S && left > 0; ++s) {
        const int64_t more = std::min(left, capacity[s] - 1);
        layers[s] += more;
        left -= more;
    }
    if (left > 0)
        return std::nullopt;
    return layers;
}

} // namespace

namespace {

using Group = std::vector<const MachineProfile*>; // the ranks of one stage

// The groupings of a set of machines (in speed order) worth trying: one rank per stage; one tensor-parallel group;
// pairs.
std::vector<std::vector<Group>> groupingsOf(const Group& set)
{
    std::vector<std::vector<Group>> groupings;
    std::vector<Group> pp;
    for (auto* m : set)
        pp.push_back({m});
    groupings.push_back(pp);
    if (set.size() > 1)
        groupings.push_back({set});
    if (set.size() > 2 && set.size() % 2 == 0) {
        std::vector<Group> pairs;
        for (size_t i = 0; i < set.size(); i += 2)
            pairs.push_back({set[i], set[i + 1]});
        groupings.push_back(pairs);
    }
    return groupings;
}

// The plan of `groups` (stages in order) with layers filled fastest-first, if the model can split that way and it
// fits, with its prediction.
std::optional<Candidate> candidateFor(const ModelConfig& config, const std::string& dtype, int64_t contextLimit, const std::vector<Group>& groups,
                                      const std::vector<MachineProfile>& machines, const LinkTable& links)
{
    const RunDtype dt = dtypeOf(dtype);
    for (auto& g : groups)
        if (g.size() > 1) {
            try {
                checkTensorParallel(config, static_cast<int>(g.size()));
            } catch (const Error&) {
                return std::nullopt;
            }
            if (!blockAlignmentProblem(config, static_cast<int>(g.size()), dt).empty())
                return std::nullopt;
        }
    if (groups.size() > static_cast<size_t>(config.numLayers))
        return std::nullopt;
    auto layers = fillLayers(config, dt, contextLimit, groups);
    if (!layers)
        return std::nullopt;
    Candidate cand;
    int64_t first = 0;
    int maxTp = 1;
    for (size_t s = 0; s < groups.size(); ++s) {
        PlanStage st;
        st.firstLayer = first;
        st.lastLayer = first + (*layers)[s] - 1;
        first = st.lastLayer + 1;
        // Ranks of one group on one host run at once: they split its threads (no oversubscription).
        std::map<std::string, uint32_t> onHost;
        for (auto* m : groups[s])
            ++onHost[m->host];
        for (auto* m : groups[s])
            st.ranks.push_back({m->worker, static_cast<int>(std::max<uint32_t>(1, m->threads / onHost[m->host])), ""});
        maxTp = std::max(maxTp, static_cast<int>(groups[s].size()));
        cand.plan.stages.push_back(st);
    }
    cand.plan.dtype = dtype;
    if (!checkMemory(config, cand.plan, dt, contextLimit, machines).empty())
        return std::nullopt;
    cand.prediction = predict(config, cand.plan, dtype, machines, links, std::min<int64_t>(contextLimit, 256));
    cand.shape = maxTp > 1 && groups.size() > 1 ? "TP" + std::to_string(maxTp) + " x PP" + std::to_string(groups.size())
                 : maxTp > 1                   ? "TP" + std::to_string(maxTp)
                                               : "PP" + std::to_string(groups.size());
    return cand;
}

// The numbers when nothing fits: what the model needs against what the machines have in all.
Error noPlacementFits(const ModelConfig& config, const std::string& dtype, int64_t contextLimit, const std::vector<MachineProfile>& machines)
{
    double need = 0, have = 0;
    need = static_cast<double>(estimateShardMemory(config, ShardSpec::whole(config), dtypeOf(dtype), contextLimit).total());
    std::set<std::string> hosts;
    for (auto& m : machines)
        if (hosts.insert(m.host).second)
            have += static_cast<double>(m.usableMemoryBytes());
    return Error("no placement fits: the model needs about " + gib(need) + " at " + dtype + " with a context of " + std::to_string(contextLimit) +
                 " (plus " + gib(static_cast<double>(kShardRuntimeBytes)) + " per extra machine), and the " + std::to_string(hosts.size()) +
                 " machine(s) have " + gib(have) + " free or donated in all");
}

// Why the best candidate (candidates sorted, the best first): its stages and prediction, and the best of the other
// kind (with or without tensor parallelism).
std::string explain(const std::vector<Candidate>& candidates, size_t machines)
{
    const Plan& plan = candidates[0].plan;
    const Prediction& p = candidates[0].prediction;
    std::string e = candidates[0].shape + ": ";
    for (size_t s = 0; s < plan.stages.size(); ++s) {
        const auto& st = plan.stages[s];
        e += (s ? "; " : "") + std::string("layers ") + std::to_string(st.firstLayer) + "-" + std::to_string(st.lastLayer) + " on ";
        for (size_t r = 0; r < st.ranks.size(); ++r)
            e += (r ? " + " : "") + st.ranks[r].worker;
    }
    e += ". Predicted " + fixed(p.msPerToken) + " ms/token (" + fixed(p.tokensPerSecond) + " tokens/s): compute " + fixed(p.computeMs()) +
         ", all-reduce " + fixed(p.allReduceMs()) + ", links " + fixed(p.linkMs()) + " ms.";
    if (plan.stages.size() > 1)
        e += " Layers go to the fastest machines first, each taking what its memory holds: the stages of one token run one after "
             "another, so a layer on a slower machine only adds time.";
    // Why tensor parallelism is on or off: the best candidate of the other kind.
    const bool tpOn = candidates[0].shape.rfind("TP", 0) == 0;
    for (size_t i = 1; i < candidates.size(); ++i) {
        const bool tp = candidates[i].shape.rfind("TP", 0) == 0;
        if (tp == tpOn)
            continue;
        const Prediction& q = candidates[i].prediction;
        if (tpOn)
            e += " Tensor parallelism pays here: without it the best is " + candidates[i].shape + " at " + fixed(q.msPerToken) + " ms/token.";
        else
            e += " Tensor parallelism does not pay: the best with it (" + candidates[i].shape + ") predicts " + fixed(q.msPerToken) +
                 " ms/token, its all-reduces alone " + fixed(q.allReduceMs()) + " ms.";
        break;
    }
    if (plan.rankCount() < machines)
        e += " " + std::to_string(machines - plan.rankCount()) + " worker(s) left out: adding them predicts no gain.";
    return e;
}

} // namespace

AutoPlacement autoPlace(const ModelConfig& config, const std::string& dtype, int64_t contextLimit, const std::vector<MachineProfile>& machines,
                        const LinkTable& links)
{
    if (machines.empty())
        throw Error("no workers to place the model on");
    if (machines.size() > 12)
        throw Error("auto placement considers at most 12 workers");
    dtypeOf(dtype); // a bad dtype is refused before anything is tried
    // Fastest first (all-thread matvec rate at this dtype).
    Group byspeed;
    for (auto& m : machines)
        byspeed.push_back(&m);
    std::stable_sort(byspeed.begin(), byspeed.end(), [&](auto* a, auto* b) {
        return matvecRate(*a, speedKey(config, dtype), static_cast<int>(a->threads)) > matvecRate(*b, speedKey(config, dtype), static_cast<int>(b->threads));
    });
    // Every subset of the machines, in every grouping worth trying.
    std::vector<Candidate> candidates;
    const size_t n = byspeed.size();
    for (uint32_t mask = 1; mask < (1u << n); ++mask) {
        Group set;
        for (size_t i = 0; i < n; ++i)
            if (mask & (1u << i))
                set.push_back(byspeed[i]);
        for (auto& groups : groupingsOf(set))
            if (auto cand = candidateFor(config, dtype, contextLimit, groups, machines, links))
                candidates.push_back(std::move(*cand));
    }
    if (candidates.empty())
        throw noPlacementFits(config, dtype, contextLimit, machines);
    // Lowest ms/token; on a tie (within 2%) fewer machines.
    std::stable_sort(candidates.begin(), candidates.end(), [&](const Candidate& a, const Candidate& b) {
        const double x = a.prediction.msPerToken, y = b.prediction.msPerToken;
        if (std::abs(x - y) > 0.02 * std::min(x, y))
            return x < y;
        return a.plan.rankCount() < b.plan.rankCount();
    });
    AutoPlacement out;
    out.plan = candidates[0].plan;
    out.prediction = candidates[0].prediction;
    out.explanation = explain(candidates, machines.size());
    return out;
}

} // namespace together
