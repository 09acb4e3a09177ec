// SPDX-License-Identifier: MIT
// Cluster::generate: one generation through the ring. The master opens the last stage's token stream (Observe),
// gives the prompt to every stage-0 rank (Start), then reads tokens, acknowledging each (the ring runs at most
// `window` tokens ahead of the acknowledgements) until the ring ends the answer or the master stops it.
#include "master/cluster.h"

#include "base/error.h"
#include "master/cluster_parts.h"
#include "model/shard_spec.h"
#include "wire/checks.h"

#include <atomic>

namespace together {

using namespace cluster_parts;

namespace {

v1::StartRequest startRequest(const RingRequest& request, uint64_t generation)
{
    v1::StartRequest start;
    auto* h = start.mutable_header();
    h->set_generation(generation);
    h->mutable_sampling()->set_temperature(request.sampling.temperature);
    h->mutable_sampling()->set_top_k(request.sampling.topK);
    h->mutable_sampling()->set_top_p(request.sampling.topP);
    h->mutable_sampling()->set_seed(request.sampling.seed);
    h->set_new_sequence(request.newSequence);
    h->set_max_tokens(request.maxTokens);
    for (auto id : request.eosIds)
        h->add_eos_ids(static_cast<int32_t>(id));
    h->set_window(request.window);
    h->set_top_logits(request.topLogits);
    start.set_start_pos(request.startPos);
    for (int t : request.tokens)
        start.add_tokens(t);
    return start;
}

RingToken tokenOf(const v1::ObserveEvent& ev)
{
    RingToken t;
    t.index = ev.token().step();
    t.token = ev.token().token();
    t.pos = ev.token().pos();
    t.inputTokens = static_cast<int>(ev.token().input_tokens());
    for (int i = 0; i < ev.token().top_ids_size() && i < ev.token().top_logits_size(); ++i)
        t.top.emplace_back(ev.token().top_ids(i), ev.token().top_logits(i));
    return t;
}

} // namespace

void Cluster::startRing(const v1::StartRequest& start)
{
    std::vector<Rank*> first;
    for (auto& r : m_ranks)
        if (r->stage == 0)
            first.push_back(r.get());
    parallelFor(first.size(), [&](size_t i) {
        TrackedCall call(*this, std::chrono::seconds(10));
        v1::StartReply rep;
        grpc::Status s = first[i]->stub->Start(&call.ctx, start, &rep);
        if (!s.ok())
            fail("shard " + first[i]->name() + ": " + s.error_message());
    });
}

std::string Cluster::generate(const RingRequest& request, const std::function<bool(const RingToken&)>& onToken)
{
    if (!m_launched)
        throw Error("the model is not launched");
    if (std::string f = fatal(); !f.empty())
        throw Error(f);
    if (request.tokens.empty())
        throw Error("nothing to feed: the prompt is empty");
    if (request.startPos < 0 || request.startPos + static_cast<int64_t>(request.tokens.size()) > m_contextLimit)
        throw Error("the prompt needs " + std::to_string(request.startPos + static_cast<int64_t>(request.tokens.size())) +
                    " positions but the context holds " + std::to_string(m_contextLimit));
    const uint64_t generation = ++m_generation;
    const int64_t maxRows = prefillChunkRows(m_config.hiddenSize);
    const uint64_t chunks = static_cast<uint64_t>((static_cast<int64_t>(request.tokens.size()) + maxRows - 1) / maxRows);
    {
        std::lock_guard lock(m_mutex);
        m_prefill[generation] = {chunks, 0.0};
        while (m_prefill.size() > 64)
            m_prefill.erase(m_prefill.begin());
    }
    Rank* last = nullptr;
    for (auto& r : m_ranks)
        if (r->stage + 1 == m_plan.stages.size() && r->rank == 0)
            last = r.get();

    // The master's window on the ring: opened before Start, so no token is missed (the shard queues them).
    TrackedCall observe(*this);
    auto stream = last->stub->Observe(&observe.ctx);
    std::mutex writeMutex;
    auto send = [&](uint32_t acknowledged, bool stop) {
        v1::ObserveRequest req;
        req.set_generation(generation);
        req.set_acknowledged(acknowledged);
        req.set_stop(stop);
        std::lock_guard lock(writeMutex);
        return stream->Write(req);
    };
    send(0, false);
    const auto started = Clock::now();
    startRing(startRequest(request, generation));

    std::atomic<bool> stopping{false};
    std::atomic<uint32_t> taken{0};
    {
        std::lock_guard lock(m_mutex);
        m_generating = true;
        m_lastProgress = Clock::now();
        m_stopNow = [&] {
            if (!stopping.exchange(true))
                send(taken, true);
        };
    }
    struct Idle {
        Cluster& c;
        ~Idle()
        {
            std::lock_guard lock(c.m_mutex);
            c.m_stopNow = nullptr;
            c.m_generating = false;
        }
    } idle{*this};
    std::string end;
    v1::ObserveEvent ev;
    while (end.empty()) {
        if (!stream->Read(&ev)) {
            observe.ctx.TryCancel();
            grpc::Status s = stream->Finish();
            fail("shard " + last->name() + ": the token stream ended: " + s.error_message());
        }
        if (ev.generation() != generation)
            continue;
        if (std::string bad = wire::check(ev, m_config.vocabSize, request.topLogits); !bad.empty())
            fail("shard " + last->name() + " sent a malformed token event: " + bad);
        if (!ev.error().empty())
            fail(ev.error());
        if (ev.has_token() && !stopping) {
            const RingToken t = tokenOf(ev);
            {
                std::lock_guard lock(m_mutex);
                m_lastProgress = Clock::now();
                if (t.index == 0)
                    m_prefill[generation].second = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
            }
            ++taken;
            const bool more = onToken(t);
            if (!ev.end().empty())
                end = ev.end();
            else if (!more) {
                if (!stopping.exchange(true))
                    send(taken, true);
            } else {
                send(taken, false);
            }
        } else if (!ev.end().empty()) {
            end = ev.end();
        }
    }
    {
        std::lock_guard lock(writeMutex);
        stream->WritesDone();
    }
    observe.ctx.TryCancel();
    stream->Finish();
    if (std::string f = fatal(); !f.empty())
        throw Error(f);
    return stopping ? std::string("stopped") : end;
}

} // namespace together
