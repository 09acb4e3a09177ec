// SPDX-License-Identifier: MIT
// The step records of a launch: each rank measures its own steps (compute, all-reduces, the link it sent on,
// sampling) and returns them with Status; here they are merged per (generation, step) into StepRecords once
// every rank's has arrived.
#include "master/cluster.h"

#include "master/cluster_parts.h"

#include <algorithm>

namespace together {

using namespace cluster_parts;

namespace cluster_parts {

RankStepRecord fromProto(const v1::RankRecord& r)
{
    RankStepRecord x;
    x.startUs = r.start_us();
    x.computeMs = r.compute_us() / 1000.0;
    x.allReduces = static_cast<int>(r.allreduces());
    x.allReduceMs = r.allreduce_us() / 1000.0;
    x.allReduceBytes = r.allreduce_bytes();
    for (int i = 0; i + 1 < r.allreduce_spans_size(); i += 2)
        x.allReduceSpans.emplace_back(r.allreduce_spans(i), r.allreduce_spans(i + 1));
    x.samplingMs = r.sampling_us() / 1000.0;
    x.linkName = r.link();
    x.linkStartUs = r.link_start_us();
    x.linkMs = r.link_us() < 0 ? -1 : r.link_us() / 1000.0;
    x.linkBytes = r.link_bytes();
    return x;
}

} // namespace cluster_parts

void Cluster::addRecords(std::vector<Incoming> records)
{
    std::vector<StepRecord> complete;
    {
        std::lock_guard lock(m_mutex);
        for (auto& in : records) {
            auto& p = m_partial[in.key];
            p.ranks.push_back(std::move(in.record));
            if (in.endToEndUs >= 0)
                p.endToEndUs = in.endToEndUs;
            if (in.token >= 0)
                p.token = in.token;
            p.inputTokens = std::max(p.inputTokens, in.inputTokens);
            if (p.ranks.size() < m_ranks.size())
                continue;
            StepRecord s;
            s.generation = in.key.first;
            const auto pre = m_prefill.find(s.generation);
            const uint64_t chunks = pre == m_prefill.end() ? 1 : std::max<uint64_t>(1, pre->second.first);
            s.step = in.key.second + 1 >= chunks ? in.key.second + 1 - chunks : 0;
            s.inputTokens = p.inputTokens;
            s.token = p.token;
            if (p.endToEndUs >= 0)
                s.endToEndMs = p.endToEndUs / 1000.0;
            else if (s.step == 0 && pre != m_prefill.end() && in.key.second + 1 == chunks)
                s.endToEndMs = pre->second.second; // the prefill, as the master timed it
            if (s.endToEndMs > 0)
                s.tokensPerSecond = (s.step == 0 ? s.inputTokens : 1) * 1000.0 / s.endToEndMs;
            std::sort(p.ranks.begin(), p.ranks.end(), [](auto& x, auto& y) { return std::tie(x.stage, x.rank) < std::tie(y.stage, y.rank); });
            s.ranks = std::move(p.ranks);
            m_partial.erase(in.key);
            complete.push_back(std::move(s));
        }
        while (m_partial.size() > 4096)
            m_partial.erase(m_partial.begin());
    }
    if (m_cb.step)
        for (auto& s : complete)
            m_cb.step(s);
}

void Cluster::syncRecords()
{
    if (m_ranks.empty() || !m_launched)
        return;
    // The last records of a generation wait for their links' acknowledgements: ask until every rank has
    // answered with all of them, or briefly.
    for (int attempt = 0; attempt < 10; ++attempt) {
        parallelFor(m_ranks.size(), [&](size_t i) { pollOnce(*m_ranks[i]); });
        std::lock_guard lock(m_mutex);
        if (m_partial.empty())
            return;
        (void)attempt;
    }
}

} // namespace together
