// SPDX-License-Identifier: MIT
#include "master/controller.h"

#include "base/error.h"
#include "text/tokenizer.h"

#include <algorithm>
#include <chrono>

namespace together {

namespace {

using Clock = std::chrono::steady_clock;

size_t commonPrefix(const std::vector<int>& a, const std::vector<int>& b)
{
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n])
        ++n;
    return n;
}

StopReason reasonFromRing(const std::string& end)
{
    if (end == "eos")
        return StopReason::Eos;
    if (end == "context full")
        return StopReason::ContextFull;
    if (end == "stopped")
        return StopReason::Stopped;
    return StopReason::MaxTokens;
}

} // namespace

const char* eventKindName(ControllerEvent::Kind k)
{
    switch (k) {
    case ControllerEvent::Kind::Progress:
        return "progress";
    case ControllerEvent::Kind::Launched:
        return "launched";
    case ControllerEvent::Kind::LaunchFailed:
        return "launch failed";
    case ControllerEvent::Kind::Token:
        return "token";
    case ControllerEvent::Kind::Step:
        return "step";
    case ControllerEvent::Kind::Ended:
        return "ended";
    case ControllerEvent::Kind::Failed:
        return "failed";
    case ControllerEvent::Kind::Notice:
        return "notice";
    case ControllerEvent::Kind::Log:
        return "log";
    case ControllerEvent::Kind::Unloaded:
        return "unloaded";
    }
    return "?";
}

Controller::Controller(std::shared_ptr<const Credentials> credentials, std::shared_ptr<const Tokenizer> tokenizer, Listener listener)
    : m_credentials(std::move(credentials))
    , m_tokenizer(std::move(tokenizer))
    , m_listener(std::move(listener))
{
    m_thread = std::thread([this] { loop(); });
}

Controller::~Controller()
{
    cancel();
    {
        std::lock_guard lock(m_mutex);
        m_quit = true;
    }
    m_cv.notify_all();
    m_thread.join();
    std::shared_ptr<Cluster> c;
    {
        std::lock_guard lock(m_mutex);
        c = std::move(m_cluster);
    }
    if (c)
        c->stop();
}

void Controller::emit(ControllerEvent e)
{
    if (m_listener)
        m_listener(e);
}

void Controller::post(std::function<void()> op)
{
    {
        std::lock_guard lock(m_mutex);
        m_queue.push_back(std::move(op));
    }
    m_cv.notify_all();
}

void Controller::loop()
{
    for (;;) {
        std::function<void()> op;
        {
            std::unique_lock lock(m_mutex);
            m_busy = false;
            m_cv.notify_all();
            m_cv.wait(lock, [&] { return m_quit || !m_queue.empty(); });
            if (m_quit)
                return;
            op = std::move(m_queue.front());
            m_queue.pop_front();
            m_busy = true;
        }
        op();
    }
}

void Controller::wait()
{
    std::unique_lock lock(m_mutex);
    m_cv.wait(lock, [&] { return m_queue.empty() && !m_busy; });
}

void Controller::launch(LaunchRequest request)
{
    post([this, request = std::move(request)] { doLaunch(request); });
}

void Controller::generate(GenerateRequest request)
{
    {
        std::lock_guard lock(m_mutex);
        m_stop = false;
    }
    post([this, request = std::move(request)] { doGenerate(request); });
}

void Controller::stop()
{
    std::shared_ptr<Cluster> c;
    {
        std::lock_guard lock(m_mutex);
        m_stop = true;
        c = m_cluster;
    }
    if (c)
        c->requestStop(); // at once, even while no token arrives (a long prefill, a stalled ring)
}

void Controller::cancel()
{
    std::shared_ptr<Cluster> c;
    {
        std::lock_guard lock(m_mutex);
        m_queue.clear();
        ++m_cancelEpoch;
        m_stop = true;
        c = m_cluster;
    }
    if (c)
        c->cancel("cancelled by the user");
}

void Controller::unload()
{
    post([this] {
        std::shared_ptr<Cluster> c;
        {
            std::lock_guard lock(m_mutex);
            c = std::move(m_cluster);
        }
        if (c)
            c->stop();
        m_held.clear();
        ControllerEvent e;
        e.kind = ControllerEvent::Kind::Unloaded;
        emit(e);
    });
}

std::unique_ptr<Cluster> Controller::newCluster()
{
    Cluster::Callbacks cb;
    cb.log = [this](const std::string& m) {
        ControllerEvent e;
        e.kind = ControllerEvent::Kind::Log;
        e.text = m;
        emit(e);
    };
    cb.progress = [this](const RankProgress& p) {
        ControllerEvent e;
        e.kind = ControllerEvent::Kind::Progress;
        e.progress = p;
        emit(e);
    };
    cb.step = [this](const StepRecord& s) {
        m_metrics.add(s);
        ControllerEvent e;
        e.kind = ControllerEvent::Kind::Step;
        e.step = s;
        emit(e);
    };
    return std::make_unique<Cluster>(m_credentials, cb);
}

void Controller::doLaunch(const LaunchRequest& request)
{
    std::shared_ptr<Cluster> old;
    uint64_t epoch;
    {
        std::lock_guard lock(m_mutex);
        old = std::move(m_cluster);
        epoch = m_cancelEpoch;
    }
    if (old)
        old->stop();
    m_held.clear();
    std::shared_ptr<Cluster> c = newCluster();
    {
        std::lock_guard lock(m_mutex);
        if (epoch != m_cancelEpoch)
            c->cancel("cancelled by the user");
        m_cluster = c;
    }
    try {
        c->launch(request.plan, request.modelDir, request.dtype, request.contextLength, request.force);
        m_launch = request;
        ControllerEvent e;
        e.kind = ControllerEvent::Kind::Launched;
        e.text = request.dtype + ", " + std::to_string(request.plan.stages.size()) + " stage(s), " + std::to_string(request.plan.rankCount()) +
                 " shard(s), context " + std::to_string(c->contextLimit());
        emit(e);
    } catch (const std::exception& ex) {
        c->stop(); // nothing stays running after a failed or cancelled launch
        {
            std::lock_guard lock(m_mutex);
            if (m_cluster == c)
                m_cluster.reset();
        }
        ControllerEvent e;
        e.kind = ControllerEvent::Kind::LaunchFailed;
        e.text = ex.what();
        emit(e);
    }
}

void Controller::doGenerate(const GenerateRequest& request)
{
    std::shared_ptr<Cluster> c;
    {
        std::lock_guard lock(m_mutex);
        c = m_cluster;
    }
    TokenTracker tracker(*m_tokenizer, request.params);
    GenerationResult result;
    auto failWith = [&](const std::string& why) {
        result.tokens = tracker.tokens();
        result.text = tracker.text();
        ControllerEvent e;
        e.kind = ControllerEvent::Kind::Failed;
        e.text = why;
        e.result = result;
        emit(e);
    };
    if (!c || !c->launched()) {
        failWith("the model is not launched");
        return;
    }
    if (request.ids.empty()) {
        failWith("the prompt is empty: nothing to continue from");
        return;
    }
    result.promptTokens = static_cast<int64_t>(request.ids.size());
    if (request.params.maxTokens <= 0) {
        tracker.finish(StopReason::MaxTokens);
        result.reason = StopReason::MaxTokens;
        ControllerEvent e;
        e.kind = ControllerEvent::Kind::Ended;
        e.result = result;
        emit(e);
        return;
    }

    std::vector<int> ids = request.ids;
    bool newSequence = true;
    Clock::time_point started, firstToken, lastToken;
    for (;;) {
        // Feed only what the shards do not hold yet.
        size_t keep = commonPrefix(m_held, ids);
        if (keep == ids.size()) // something must be fed to get logits
            --keep;
        RingRequest ring;
        ring.tokens.assign(ids.begin() + static_cast<long>(keep), ids.end());
        ring.startPos = static_cast<int64_t>(keep);
        ring.sampling = request.sampling;
        ring.newSequence = newSequence;
        ring.maxTokens = static_cast<uint32_t>(request.params.maxTokens - static_cast<int>(tracker.tokens().size()));
        ring.eosIds = request.params.eosIds;
        ring.window = request.window;
        // The caches hold at least this much once the ring starts (the prompt); refined below.
        m_held.assign(ids.begin(), ids.begin() + static_cast<long>(keep));
        const size_t before = tracker.tokens().size();
        try {
            started = Clock::now();
            const std::string end = c->generate(ring, [&](const RingToken& t) {
                const auto now = Clock::now();
                if (tracker.tokens().empty()) {
                    firstToken = now;
                    result.prefillSeconds = std::chrono::duration<double>(now - started).count();
                }
                lastToken = now;
                ControllerEvent e;
                e.kind = ControllerEvent::Kind::Token;
                e.token = t;
                e.text = tracker.push(t.token);
                emit(e);
                std::lock_guard lock(m_mutex);
                return !tracker.done() && !m_stop;
            });
            if (!tracker.done()) {
                ControllerEvent e;
                e.kind = ControllerEvent::Kind::Token;
                e.token.token = -1;
                e.text = tracker.finish(reasonFromRing(end));
                if (!e.text.empty())
                    emit(e);
            }
            // The shards fed every token they produced but the last: the prompt and all answer tokens but the
            // last one the master took are in their caches (possibly more, which the next turn cuts off).
            m_held = ids;
            const auto& toks = tracker.tokens();
            if (toks.size() > before)
                m_held.insert(m_held.end(), toks.begin() + static_cast<long>(before), toks.end() - 1);
            break;
        } catch (const std::exception& ex) {
            m_held.clear();
            std::string failure;
            c = failOver(*c, ex.what(), failure);
            if (!c) {
                failWith(failure);
                return;
            }
            // The conversation and the answer so far are fed again, and the answer goes on.
            ids = request.ids;
            ids.insert(ids.end(), tracker.tokens().begin(), tracker.tokens().end());
            newSequence = false;
            if (tracker.tokens().empty())
                newSequence = true;
        }
    }
    result.tokens = tracker.tokens();
    result.text = tracker.text();
    result.reason = tracker.reason();
    if (result.tokens.size() > 1) {
        result.decodeSteps = static_cast<int64_t>(result.tokens.size()) - 1;
        result.decodeSeconds = std::chrono::duration<double>(lastToken - firstToken).count();
    }
    ControllerEvent e;
    e.kind = ControllerEvent::Kind::Ended;
    e.result = result;
    emit(e);
}

std::shared_ptr<Cluster> Controller::failOver(Cluster& failed, const std::string& why, std::string& failure)
{
    const std::string dead = failed.failedWorker();
    bool cancelled;
    {
        std::lock_guard lock(m_mutex);
        cancelled = m_stop;
    }
    if (!m_launch.failover || cancelled || dead.empty()) {
        failed.stop();
        failure = why;
        return nullptr;
    }
    // The same model over the workers still alive.
    std::vector<std::string> alive;
    for (auto& st : m_launch.plan.stages)
        for (auto& r : st.ranks)
            if (r.worker != dead && std::find(alive.begin(), alive.end(), r.worker) == alive.end())
                alive.push_back(r.worker);
    for (auto& w : m_launch.spareWorkers)
        if (w != dead && std::find(alive.begin(), alive.end(), w) == alive.end())
            alive.push_back(w);
    failed.stop();
    if (alive.empty()) {
        failure = why + "; no other worker is left to fail over to";
        return nullptr;
    }
    const ModelConfig& config = failed.config();
    LaunchRequest next = m_launch;
    const int pp = static_cast<int>(std::min<size_t>(alive.size(), static_cast<size_t>(config.numLayers)));
    next.plan = Plan::even(config, 1, pp, alive, m_launch.plan.stages[0].ranks[0].threads);
    next.plan.dtype = m_launch.plan.dtype;
    {
        ControllerEvent e;
        e.kind = ControllerEvent::Kind::Notice;
        e.text = why + " -- failing over: placing the model on the " + std::to_string(pp) + " worker(s) still alive and continuing the answer";
        emit(e);
    }
    std::shared_ptr<Cluster> fresh = newCluster();
    {
        std::lock_guard lock(m_mutex);
        m_cluster = fresh;
    }
    try {
        fresh->launch(next.plan, next.modelDir, next.dtype, next.contextLength, next.force);
    } catch (const std::exception& lex) {
        fresh->stop();
        failure = why + "; failover failed: " + lex.what();
        return nullptr;
    }
    m_launch = next;
    ControllerEvent e;
    e.kind = ControllerEvent::Kind::Notice;
    e.text = "failover: relaunched on " + std::to_string(pp) + " worker(s); continuing the answer";
    emit(e);
    return fresh;
}

void Controller::syncRecords()
{
    std::shared_ptr<Cluster> c;
    {
        std::lock_guard lock(m_mutex);
        c = m_cluster;
    }
    if (c) {
        try {
            c->syncRecords();
        } catch (const std::exception&) {
        }
    }
}

bool Controller::launched()
{
    std::lock_guard lock(m_mutex);
    return m_cluster && m_cluster->launched();
}

std::vector<StepRecord> Controller::records() { return m_metrics.records(); }
std::vector<LinkSummary> Controller::linkSummary() { return m_metrics.links(true); }
SessionMetrics::Totals Controller::totals() { return m_metrics.totals(); }

std::string Controller::chromeTrace(size_t lastSteps)
{
    std::shared_ptr<Cluster> c;
    {
        std::lock_guard lock(m_mutex);
        c = m_cluster;
    }
    return chromeTraceJson(m_metrics.records(lastSteps), c ? c->clockOffsets() : std::map<std::string, ClockOffset>{});
}

std::vector<Cluster::ShardMemory> Controller::shardMemory()
{
    std::shared_ptr<Cluster> c;
    {
        std::lock_guard lock(m_mutex);
        c = m_cluster;
    }
    return c ? c->shardMemory() : std::vector<Cluster::ShardMemory>{};
}

std::vector<std::string> Controller::weightSources()
{
    std::shared_ptr<Cluster> c;
    {
        std::lock_guard lock(m_mutex);
        c = m_cluster;
    }
    return c ? c->weightSources() : std::vector<std::string>{};
}

Plan Controller::plan() { return m_launch.plan; }

} // namespace together
