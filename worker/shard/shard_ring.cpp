// SPDX-License-Identifier: MIT
#include "shard/shard_ring.h"

#include "base/error.h"
#include "engine/gloo_comm.h"
#include "engine/llama_model.h"
#include "model/shard_spec.h"
#include "shard/out_pipe.h"
#include "shard/shard_status.h"
#include "shard/shard_weights.h"
#include "text/sampler.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace together {

namespace {

using Clock = std::chrono::steady_clock;

// A failure talking to a peer: the peer may be the one at fault.
struct PeerError : Error {
    using Error::Error;
};

} // namespace

ShardRing::ShardRing(const Credentials& credentials, ShardWeights& weights, ShardStatus& status)
    : m_credentials(credentials)
    , m_weights(weights)
    , m_status(status)
{
}

ShardRing::~ShardRing() { shutdown(); }

void ShardRing::shutdown()
{
    m_queue.shutdown();
    m_tokens.wake();
    if (m_runner.joinable())
        m_runner.join();
    m_next.clear();
    m_tokenPipes.clear();
}

void ShardRing::connect(const v1::ConnectRequest& req)
{
    const ShardSpec& spec = m_weights.spec();
    m_status.setActivity("joining the tensor-parallel group");
    if (spec.tpSize > 1) {
        auto timeout = std::chrono::milliseconds(req.collective_timeout_ms() ? req.collective_timeout_ms() : 600000);
        m_comm = std::make_unique<GlooCommunicator>(m_credentials, req.store_address(), m_weights.launchId() + "/stage" + std::to_string(m_weights.stage()),
                                                    req.gloo_host(), spec.tpRank, spec.tpSize, timeout, req.busy_poll());
        m_weights.model().setCommunicator(m_comm.get());
    }
    m_status.setActivity("opening pipeline links");
    for (auto& a : req.next_addresses())
        m_next.push_back(std::make_unique<OutPipe>(m_credentials, a, m_status));
    for (auto& a : req.token_addresses())
        m_tokenPipes.push_back(std::make_unique<OutPipe>(m_credentials, a, m_status));
    m_feedSelf = req.feed_self();
}

void ShardRing::startRunner()
{
    m_connected = true;
    m_status.setActivity("idle");
    m_runner = std::thread([this] { run(); });
}

bool ShardRing::start(const v1::StartRequest& req)
{
    const auto& h = req.header();
    const int64_t n = req.tokens_size();
    const int64_t maxRows = prefillChunkRows(m_weights.config().hiddenSize);
    std::vector<Work> items;
    for (int64_t done = 0; done < n; done += maxRows) {
        Work w;
        w.generation = h.generation();
        w.step = items.size();
        w.startPos = req.start_pos() + done;
        w.sample = done + maxRows >= n;
        if (done == 0)
            w.header = h;
        w.tokens.assign(req.tokens().begin() + done, req.tokens().begin() + std::min(n, done + maxRows));
        items.push_back(std::move(w));
    }
    return m_queue.startGeneration(h.generation(), std::move(items));
}

// The ring's worker: one step at a time, in arrival order.
void ShardRing::run()
{
    setComputeThreads(m_weights.threads()); // OpenMP's thread count is per calling thread
    const ShardSpec& spec = m_weights.spec();
    for (;;) {
        Work w;
        const bool more = m_queue.pop(w, [&] {
            m_status.setActivity(!spec.firstStage ? "waiting for stage " + std::to_string(m_weights.stage() - 1)
                                 : m_generation == 0 ? std::string("idle")
                                                     : "waiting for a token from the last stage, or a new prompt");
        });
        if (!more)
            return;
        if (!m_status.error().empty())
            continue; // a failed rank computes nothing more; the master stops the launch
        try {
            process(w);
        } catch (const PeerError& e) {
            failRank(w, m_weights.me() + ": " + e.what(), true);
        } catch (const std::exception& e) {
            failRank(w, m_weights.me() + ": " + e.what(), false);
        }
    }
}

// The rank computes nothing more; the master hears it from Status (and the token stream) and stops the launch.
void ShardRing::failRank(const Work& w, const std::string& message, bool peerFailed)
{
    m_status.setError(message, peerFailed);
    std::fprintf(stderr, "%s\n", message.c_str());
    if (m_weights.spec().lastStage && m_weights.spec().tpRank == 0) {
        v1::ObserveEvent ev;
        ev.set_generation(w.generation);
        ev.set_error(message);
        m_tokens.push(std::move(ev));
    }
}

void ShardRing::process(Work& w)
{
    if (!beginStep(w))
        return; // a token of a generation that was stopped: nothing to do
    int64_t rows = 0;
    v1::RankRecord rec;
    const at::Tensor out = compute(w, rows, rec);
    if (!m_weights.spec().lastStage) {
        forward(w, out, rec);
        return;
    }
    if (m_weights.spec().tpRank != 0 || !w.sample) {
        m_status.addRecord(rec, 0);
        return;
    }
    sample(w, out, rows, rec);
}

// A new generation's header resets the runner (and, on the last stage's rank 0, the sampler); then the step must
// be the next one of the running generation. False for a step of an older generation (one that was stopped).
bool ShardRing::beginStep(const Work& w)
{
    if (w.header) {
        if (w.generation <= m_generation)
            throw Error("generation " + std::to_string(w.generation) + " arrived after generation " + std::to_string(m_generation));
        m_generation = w.generation;
        m_tokens.seen(w.generation);
        m_header = *w.header;
        m_promptStart = w.startPos;
        m_nextStep = 0;
        m_produced = 0;
        if (m_weights.spec().lastStage && m_weights.spec().tpRank == 0 && (m_header.new_sequence() || !m_sampler)) {
            SamplingParams p;
            p.temperature = m_header.sampling().temperature();
            p.topK = m_header.sampling().top_k();
            p.topP = m_header.sampling().top_p() > 0 ? m_header.sampling().top_p() : 1.0;
            p.seed = m_header.sampling().seed();
            m_sampler = std::make_unique<Sampler>(p);
        }
    }
    if (w.generation != m_generation)
        return false;
    if (w.step != m_nextStep)
        throw Error("desynchronised: expected step " + std::to_string(m_nextStep) + " of generation " + std::to_string(m_generation) + ", got " +
                    std::to_string(w.step));
    ++m_nextStep;
    m_status.setActivity("computing step " + std::to_string(w.step) + " of generation " + std::to_string(w.generation));
    KvCache& cache = m_weights.cache();
    if (w.startPos > cache.length())
        throw Error("start position " + std::to_string(w.startPos) + " is past the " + std::to_string(cache.length()) + " cached positions");
    cache.truncate(w.startPos);
    return true;
}

// The step on this rank's layers (and its all-reduces): its output, its input's row count, and the record's
// times so far.
at::Tensor ShardRing::compute(const Work& w, int64_t& rows, v1::RankRecord& rec)
{
    at::Tensor input;
    if (m_weights.spec().firstStage) {
        input = at::tensor(w.tokens, at::kLong);
        rows = static_cast<int64_t>(w.tokens.size());
    } else {
        rows = w.rows;
        input = at::empty({rows, m_weights.config().hiddenSize}, at::kFloat);
        std::memcpy(input.data_ptr<float>(), w.hidden.data(), w.hidden.size());
    }
    rec.set_generation(w.generation);
    rec.set_step(w.step);
    rec.set_input_tokens(static_cast<uint32_t>(rows));
    rec.set_start_us(wallMicros());
    rec.set_link_us(-1);
    rec.set_end_to_end_us(-1);
    rec.set_token(-1);
    const auto t0 = Clock::now();
    at::Tensor out;
    try {
        out = m_weights.model().forwardShard(input, m_weights.cache());
    } catch (const std::exception& e) {
        if (m_comm && std::string(e.what()).find("all-reduce failed") != std::string::npos)
            throw PeerError(e.what());
        throw;
    }
    const auto t1 = Clock::now();
    if (m_comm) {
        auto u = m_comm->take();
        rec.set_allreduces(u.calls);
        rec.set_allreduce_us(static_cast<uint64_t>(u.seconds * 1e6));
        rec.set_allreduce_bytes(u.bytes);
        for (auto& [a, b] : u.spans) {
            rec.add_allreduce_spans(a);
            rec.add_allreduce_spans(b);
        }
    }
    rec.set_compute_us(micros(t1 - t0) - std::min<uint64_t>(micros(t1 - t0), rec.allreduce_us()));
    return out;
}

// Not the last stage: the hidden state goes to every rank of the next stage this rank feeds.
void ShardRing::forward(const Work& w, const at::Tensor& out, v1::RankRecord& rec)
{
    const uint32_t stage = m_weights.stage();
    v1::PipeMessage msg;
    msg.set_generation(w.generation);
    msg.set_step(w.step);
    msg.set_start_pos(w.startPos);
    if (w.header)
        *msg.mutable_header() = *w.header;
    msg.set_rows(static_cast<uint32_t>(out.size(0)));
    msg.set_hidden(std::string(reinterpret_cast<const char*>(out.data_ptr<float>()), static_cast<size_t>(out.numel()) * 4));
    msg.set_sample(w.sample);
    rec.set_link("stage " + std::to_string(stage) + " -> " + std::to_string(stage + 1));
    rec.set_link_bytes(msg.hidden().size() * m_next.size());
    rec.set_link_start_us(wallMicros());
    const uint64_t seq = m_status.addRecord(rec, static_cast<int>(m_next.size()));
    m_status.setActivity("sending step " + std::to_string(w.step) + " to stage " + std::to_string(stage + 1));
    for (auto& p : m_next)
        if (!p->send(msg, seq))
            throw PeerError("the link to stage " + std::to_string(stage + 1) + " at " + p->address() + " broke");
}

// The last stage's rank 0: sample, report, and feed the token back to stage 0 unless the answer ended.
void ShardRing::sample(const Work& w, const at::Tensor& out, int64_t rows, v1::RankRecord& rec)
{
    const auto s0 = Clock::now();
    const float* p = out.data_ptr<float>();
    const size_t n = static_cast<size_t>(out.numel());
    const int token = m_sampler->sample(p, n);
    v1::ObserveEvent ev;
    ev.set_generation(w.generation);
    auto* te = ev.mutable_token();
    te->set_step(m_produced);
    te->set_token(token);
    te->set_pos(w.startPos + rows - 1);
    te->set_input_tokens(static_cast<uint32_t>(m_produced == 0 ? w.startPos + rows - m_promptStart : rows));
    for (auto& [id, logit] : Sampler::topLogits(p, n, std::min<uint32_t>(m_header.top_logits(), 64))) {
        te->add_top_ids(id);
        te->add_top_logits(logit);
    }
    const auto s1 = Clock::now();
    rec.set_sampling_us(micros(s1 - s0));
    rec.set_token(token);
    rec.set_end_to_end_us(m_produced > 0 ? static_cast<int64_t>(micros(s1 - m_lastSample)) : -1);
    m_lastSample = s1;
    ++m_produced;
    const int64_t nextPos = w.startPos + rows;
    std::string end;
    if (std::find(m_header.eos_ids().begin(), m_header.eos_ids().end(), token) != m_header.eos_ids().end())
        end = "eos";
    else if (m_header.max_tokens() > 0 && m_produced >= m_header.max_tokens())
        end = "max tokens";
    else if (nextPos >= m_weights.contextLimit())
        end = "context full";
    const bool stopped = m_tokens.stopped(w.generation);
    if (end.empty() && stopped)
        end = "stopped";
    ev.set_end(end);
    if (!end.empty()) {
        m_status.addRecord(rec, 0);
        m_tokens.push(std::move(ev));
        return;
    }
    m_tokens.push(std::move(ev));
    // Run ahead of the master by at most `window` tokens.
    if (m_header.window() > 0) {
        m_status.setActivity("waiting for the master to take token " + std::to_string(m_produced - m_header.window()));
        if (m_tokens.waitForWindow(w.generation, m_produced, m_header.window())) {
            m_status.addRecord(rec, 0);
            v1::ObserveEvent stop;
            stop.set_generation(w.generation);
            stop.set_end("stopped");
            m_tokens.push(std::move(stop));
            return;
        }
    }
    feedBack(w, token, nextPos, rec);
}

// The sampled token goes back to every stage-0 rank as the next step, over the token pipes, or straight into
// this rank's own queue in a one-stage ring.
void ShardRing::feedBack(const Work& w, int token, int64_t nextPos, v1::RankRecord& rec)
{
    v1::PipeMessage msg;
    msg.set_generation(w.generation);
    msg.set_step(m_nextStep);
    msg.set_start_pos(nextPos);
    msg.add_tokens(token);
    msg.set_sample(true);
    if (!m_tokenPipes.empty()) {
        rec.set_link("stage " + std::to_string(m_weights.stage()) + " -> 0 (token)");
        rec.set_link_bytes(msg.ByteSizeLong() * m_tokenPipes.size());
        rec.set_link_start_us(wallMicros());
    }
    const uint64_t seq = m_status.addRecord(rec, static_cast<int>(m_tokenPipes.size()));
    if (m_feedSelf) {
        Work next;
        next.generation = w.generation;
        next.step = m_nextStep;
        next.startPos = nextPos;
        next.sample = true;
        next.tokens.assign(1, token);
        m_queue.pushOwn(std::move(next));
    }
    for (auto& pipe : m_tokenPipes)
        if (!pipe->send(msg, seq))
            throw PeerError("the link back to stage 0 at " + pipe->address() + " broke");
}

} // namespace together
