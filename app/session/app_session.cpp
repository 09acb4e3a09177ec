// SPDX-License-Identifier: MIT
#include "session/app_session.h"

#include "base/error.h"
#include "common/workers_command.h"
#include "master/survey.h"
#include "model/gguf.h"
#include "model/random_model.h"
#include "model/run_dtype.h"
#include "model/safetensors.h"
#include "model/shard_spec.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "session/conversation.h"
#include "text/run_options.h"
#include "text/tokenizer.h"

#include <QMetaObject>

#include <filesystem>
#include <set>

#include <unistd.h>

namespace together::gui {

AppSession::AppSession(QObject* parent)
    : QObject(parent)
{
    qRegisterMetaType<together::DiscoveredWorker>();
    qRegisterMetaType<together::ControllerEvent>();
    m_pool.setMaxThreadCount(4);
    // Pool threads never expire: local daemons die with the thread that spawned them (PR_SET_PDEATHSIG
    // follows the spawning thread, not the process), and an idle pool thread would otherwise end after 30 s.
    m_pool.setExpiryTimeout(-1);
}

AppSession::~AppSession()
{
    // Order: nothing may post to this object once it is gone, so the sources of callbacks stop first.
    m_controller.reset(); // cancels what runs and stops the shards
    m_discovery.reset();
    m_pool.waitForDone();
    m_local.reset();
}

void AppSession::post(std::function<void()> onGuiThread)
{
    QMetaObject::invokeMethod(this, std::move(onGuiThread), Qt::QueuedConnection);
}

void AppSession::background(std::function<void()> work)
{
    m_pool.start(std::move(work));
}

// ---- the key ----

void AppSession::useKeyFile(const QString& path)
{
    const std::string file = path.isEmpty() ? defaultKeyFile() : path.toStdString();
    if (!path.isEmpty() && file != defaultKeyFile() && !std::filesystem::exists(file))
        throw Error("the key file " + file + " does not exist (a mistyped path? only the default one is made when missing)");
    if (!std::filesystem::exists(file)) {
        ClusterKey::generate().writeFile(file);
        Q_EMIT status("made a new cluster key in " + QString::fromStdString(file));
    }
    const ClusterKey key = ClusterKey::fromFile(file);
    m_credentials = std::make_shared<const Credentials>(key, newMasterIdentity());
    m_keyFile = QString::fromStdString(file);
    m_keyText = QString::fromStdString(key.text());
    m_keyFingerprint = QString::fromStdString(key.fingerprint());
    Q_EMIT keyChanged();
}

std::vector<int> AppSession::promptIds(const Conversation& c, bool continueLast) const
{
    if (!m_tokenizer)
        throw Error("no model is open");
    return gui::promptIds(c, *m_tokenizer, continueLast);
}

void AppSession::replaceKey()
{
    // The old key is kept beside it first (FILE.old); then the new one replaces it atomically, so a failure at any
    // point leaves a usable key file.
    const std::string file = m_keyFile.toStdString();
    std::error_code ec;
    std::filesystem::remove(file + ".old", ec);
    std::filesystem::create_hard_link(file, file + ".old", ec);
    if (ec)
        throw Error("cannot keep the old key as " + file + ".old: " + ec.message());
    const ClusterKey key = ClusterKey::generate();
    key.writeFile(file, AtomicFile::Existing::Replace);
    dropController();
    m_credentials = std::make_shared<const Credentials>(key, newMasterIdentity());
    m_keyText = QString::fromStdString(key.text());
    m_keyFingerprint = QString::fromStdString(key.fingerprint());
    // Workers under the old key now refuse this master; local workers are restarted with the new one.
    const bool hadLocal = m_local != nullptr;
    const int localCount = hadLocal ? static_cast<int>(m_local->addresses().size()) : 0;
    m_discovery.reset();
    if (hadLocal) {
        background([old = std::move(m_local)]() mutable { old.reset(); }); // stopped off the GUI thread
        m_plan = {}; // it named the local workers, which come back on other ports
        m_prediction.reset();
        Q_EMIT planChanged();
    }
    startDiscovery(m_broadcast);
    if (hadLocal)
        startLocalWorkers(localCount, m_localArgs);
    if (hasModel())
        makeController();
    Q_EMIT keyChanged();
}

// ---- workers ----

void AppSession::startDiscovery(bool broadcast)
{
    m_broadcast = broadcast;
    Discovery::Options o;
    o.broadcast = broadcast;
    try {
        o.manual = rememberedWorkers();
    } catch (const std::exception& e) {
        Q_EMIT status(QString("the remembered workers cannot be read: ") + e.what());
    }
    if (m_local)
        for (auto& a : m_local->addresses())
            o.manual.push_back(a);
    Q_EMIT workersReset();
    m_discovery = std::make_unique<Discovery>(m_credentials, o, [this](const DiscoveredWorker& w) {
        post([this, w] { Q_EMIT workerUpdated(w); });
    });
}

void AppSession::startLocalWorkers(int count, const std::vector<std::string>& daemonArgs)
{
    if (count < 1 || count > 12) {
        Q_EMIT localWorkersFailed("local workers: 1 to 12");
        return;
    }
    Q_EMIT status(QString("starting %1 local worker(s)…").arg(count));
    const std::string keyFile = m_keyFile.toStdString();
    m_localStarting = true;
    m_localArgs = daemonArgs;
    background([this, count, keyFile, daemonArgs] {
        try {
            auto daemons = std::make_shared<LocalDaemons>(static_cast<size_t>(count), keyFile, daemonArgs);
            post([this, daemons, count] {
                m_localStarting = false;
                m_local = daemons;
                for (auto& a : daemons->addresses())
                    if (m_discovery)
                        m_discovery->add(a);
                Q_EMIT status(QString("%1 local worker(s) started").arg(count));
                Q_EMIT localWorkersStarted(count);
            });
        } catch (const std::exception& e) {
            const QString why = e.what();
            post([this, why] {
                m_localStarting = false;
                Q_EMIT localWorkersFailed(why);
            });
        }
    });
}

std::vector<std::string> AppSession::localWorkers() const { return m_local ? m_local->addresses() : std::vector<std::string>{}; }

pid_t AppSession::localWorkerPid(const std::string& address) const
{
    if (!m_local)
        return -1;
    for (size_t i = 0; i < m_local->addresses().size(); ++i)
        if (m_local->addresses()[i] == address)
            return m_local->processes()[i].pid;
    return -1;
}

void AppSession::addWorker(const QString& address)
{
    const std::string a = normalizeWorkerAddress(address.trimmed().toStdString());
    if (!m_discovery)
        throw Error("discovery is not running");
    m_discovery->add(a);
    rememberWorker(a);
}

std::vector<DiscoveredWorker> AppSession::workers() const { return m_discovery ? m_discovery->workers() : std::vector<DiscoveredWorker>{}; }

std::vector<std::string> AppSession::readyWorkers() const
{
    std::vector<std::string> out;
    for (auto& w : workers())
        if (w.state == WorkerState::Ready)
            out.push_back(w.address);
    return out;
}

void AppSession::fetchLog(const QString& address)
{
    auto credentials = m_credentials;
    const std::string a = address.toStdString();
    background([this, credentials, a, address] {
        QString text;
        try {
            for (auto& l : fetchWorkerLog(*credentials, a, 200))
                text += QString::fromStdString(l.text) + "\n";
            if (text.isEmpty())
                text = "(the log is empty)";
        } catch (const std::exception& e) {
            text = QString("cannot read the log: ") + e.what();
        }
        post([this, address, text] { Q_EMIT workerLog(address, text); });
    });
}

// ---- the model ----

void AppSession::openModel(const QString& dir)
{
    const std::string d = dir.toStdString();
    const uint64_t epoch = ++m_modelEpoch;
    Q_EMIT status("reading " + dir + "…");
    background([this, d, dir, epoch] {
        try {
            ModelConfig config = ModelConfig::fromDirectory(d);
            auto tokenizer = std::make_shared<const Tokenizer>(Tokenizer::fromDirectory(d));
            const GenerationDefaults defaults = GenerationDefaults::fromDirectory(d);
            const std::vector<int64_t> eos = !defaults.eosTokenIds.empty() ? defaults.eosTokenIds : config.eosTokenIds;
            if (Gguf::isGguf(d)) // its header says now whether every tensor is there in a type together runs
                config.validate(SafeTensors::open(d, false));
            const QString dtype = QString::fromStdString(defaultDtypeFor(d));
            post([this, config, tokenizer, dir, epoch, eos, dtype] {
                if (epoch != m_modelEpoch)
                    return; // another model was opened since
                dropController();
                m_config = config;
                m_tokenizer = tokenizer;
                m_modelDir = dir;
                m_hasChatTemplate = !tokenizer->chatTemplate().empty();
                m_eosIds = eos;
                m_defaultDtype = dtype;
                m_plan = {};
                m_prediction.reset();
                makeController();
                Q_EMIT modelOpened(dir);
                Q_EMIT planChanged();
            });
        } catch (const std::exception& e) {
            const QString why = e.what();
            post([this, dir, why] { Q_EMIT modelFailed(dir, why); });
        }
    });
}

void AppSession::openDefaultModel()
{
    Q_EMIT status("writing the built-in random model…");
    background([this] {
        try {
            const QString dir = QString::fromStdString(ensureDefaultModel());
            post([this, dir] { openModel(dir); });
        } catch (const std::exception& e) {
            const QString why = e.what();
            post([this, why] { Q_EMIT modelFailed("the built-in model", why); });
        }
    });
}

void AppSession::makeController()
{
    const uint64_t epoch = ++m_controllerEpoch;
    m_launched = false;
    m_controller = std::make_unique<Controller>(m_credentials, m_tokenizer, [this, epoch](const ControllerEvent& e) {
        post([this, epoch, e] {
            if (epoch != m_controllerEpoch)
                return;
            if (e.kind == ControllerEvent::Kind::Launched)
                m_launched = true;
            else if (e.kind == ControllerEvent::Kind::LaunchFailed || e.kind == ControllerEvent::Kind::Unloaded)
                m_launched = false;
            else if (e.kind == ControllerEvent::Kind::Failed && m_controller)
                m_launched = m_controller->launched();
            Q_EMIT controllerEvent(e);
            // After a failover the model runs on another placement: show that one.
            if (e.kind == ControllerEvent::Kind::Notice && m_controller && e.text.rfind("failover: relaunched", 0) == 0) {
                m_plan = m_controller->plan();
                m_prediction.reset();
                Q_EMIT planChanged();
                Q_EMIT placementProposed("Failed over: " + QString::fromStdString(e.text.substr(10)) + ".");
            }
        });
    });
}

void AppSession::dropController()
{
    if (!m_controller)
        return;
    ++m_controllerEpoch; // its late events are dropped
    m_launched = false;
    m_lastLaunch.reset();
    Q_EMIT controllerReset();
    m_controller->cancel();
    std::shared_ptr<Controller> old(m_controller.release());
    background([old = std::move(old)]() mutable { old.reset(); }); // stopping its shards waits on the network
}

// ---- the placement ----

void AppSession::proposePlacement(const QString& dtype, int64_t context)
{
    if (!hasModel()) {
        Q_EMIT placementFailed("open a model first");
        return;
    }
    const std::vector<std::string> ready = readyWorkers();
    if (ready.empty()) {
        Q_EMIT placementFailed("no worker is ready yet");
        return;
    }
    Q_EMIT status(QString("measuring %1 worker(s) and their links for a placement…").arg(ready.size()));
    auto credentials = m_credentials;
    const ModelConfig config = m_config;
    const std::string dt = dtype.toStdString();
    const uint64_t epoch = m_modelEpoch;
    background([this, credentials, config, dt, context, ready, epoch] {
        try {
            SurveyOptions so;
            Survey survey = surveyWorkers(*credentials, ready, so);
            const int64_t ctx = context > 0 ? std::min(context, config.contextLimit()) : config.contextLimit();
            AutoPlacement ap = autoPlace(config, dt, ctx, survey.machines, survey.table());
            post([this, ap, survey, epoch] {
                if (epoch != m_modelEpoch) {
                    Q_EMIT placementFailed("another model was opened meanwhile");
                    return;
                }
                m_profiles = survey.machines;
                m_links = survey.table();
                m_plan = ap.plan;
                m_prediction = ap.prediction;
                Q_EMIT planChanged();
                Q_EMIT placementProposed(QString::fromStdString(ap.explanation));
            });
        } catch (const std::exception& e) {
            const QString why = e.what();
            post([this, why] { Q_EMIT placementFailed(why); });
        }
    });
}

void AppSession::setPlan(const Plan& plan, const QString& why)
{
    m_plan = plan;
    QString note;
    m_prediction = predictPlan(plan, nullptr, &note);
    m_predictionNote = note;
    Q_EMIT planChanged();
    if (!why.isEmpty())
        Q_EMIT status(why);
}

void AppSession::setPlanOptions(const QString& dtype, int64_t context)
{
    if (dtype == m_planDtype && context == m_planContext)
        return;
    m_planDtype = dtype;
    m_planContext = context;
    if (!m_plan.stages.empty())
        setPlan(m_plan);
}

std::optional<Prediction> AppSession::predictPlan(const Plan& plan, const LinkTable* links, QString* why) const
{
    auto fail = [&](const QString& text) -> std::optional<Prediction> {
        if (why)
            *why = text;
        return std::nullopt;
    };
    if (!hasModel() || plan.stages.empty())
        return fail("no placement");
    try {
        plan.validate(m_config);
    } catch (const std::exception& e) {
        return fail(e.what());
    }
    if (m_profiles.empty())
        return fail("the machines have not been measured yet (Auto place measures them)");
    for (auto& st : plan.stages)
        for (auto& r : st.ranks)
            if (!measured(r.worker))
                return fail(QString::fromStdString(r.worker) + " has not been measured yet (Auto place measures every ready machine)");
    try {
        const int64_t ctx = m_planContext > 0 ? std::min(m_planContext, m_config.contextLimit()) : m_config.contextLimit();
        return predict(m_config, plan, m_planDtype.toStdString(), m_profiles, links ? *links : m_links, std::min<int64_t>(256, ctx));
    } catch (const std::exception& e) {
        return fail(e.what());
    }
}

QString AppSession::planProblem(const Plan& plan) const
{
    if (!hasModel())
        return "open a model first";
    if (plan.stages.empty())
        return "there is no placement yet";
    try {
        plan.validate(m_config);
    } catch (const std::exception& e) {
        return e.what();
    }
    const auto known = workers();
    for (size_t s = 0; s < plan.stages.size(); ++s)
        for (auto& r : plan.stages[s].ranks) {
            auto it = std::find_if(known.begin(), known.end(), [&](const DiscoveredWorker& w) { return w.address == r.worker; });
            if (it == known.end())
                return QString("stage %1: %2 is not a known worker").arg(s).arg(QString::fromStdString(r.worker));
            if (it->state != WorkerState::Ready)
                return QString("stage %1: %2 is %3%4")
                    .arg(s)
                    .arg(QString::fromStdString(r.worker))
                    .arg(workerStateName(it->state))
                    .arg(it->reason.empty() ? QString() : " (" + QString::fromStdString(it->reason) + ")");
        }
    // A worker holds to the threads it donates, over all the shards it runs (its daemon refuses the rest).
    for (auto& w : known) {
        const uint32_t donated = w.maxThreads ? w.maxThreads : w.cores;
        if (!donated)
            continue;
        int asked = 0;
        QStringList where;
        for (size_t s = 0; s < plan.stages.size(); ++s)
            for (auto& r : plan.stages[s].ranks)
                if (r.worker == w.address) {
                    asked += r.threads;
                    where << QString("stage %1: %2").arg(s).arg(r.threads);
                }
        if (asked > static_cast<int>(donated))
            return QString("%1 donates %2 threads and this placement asks %3 of it (%4): lower the threads in the Stages table")
                .arg(QString::fromStdString(w.address))
                .arg(donated)
                .arg(asked)
                .arg(where.join(", "));
    }
    return {};
}

int AppSession::spareThreads(const Plan& plan, const std::string& worker, int skipStage) const
{
    for (auto& w : workers())
        if (w.address == worker) {
            int used = 0;
            for (size_t s = 0; s < plan.stages.size(); ++s)
                if (static_cast<int>(s) != skipStage)
                    for (auto& r : plan.stages[s].ranks)
                        if (r.worker == worker)
                            used += r.threads;
            return static_cast<int>(w.maxThreads ? w.maxThreads : w.cores) - used;
        }
    return 0;
}

int AppSession::defaultThreads(const std::string& worker) const
{
    for (auto& st : m_plan.stages)
        for (auto& r : st.ranks)
            if (r.worker == worker)
                return r.threads;
    for (auto& w : workers())
        if (w.address == worker)
            return static_cast<int>(std::max<uint32_t>(1, w.maxThreads ? w.maxThreads : w.cores));
    return 1;
}

bool AppSession::measured(const std::string& worker) const
{
    return std::any_of(m_profiles.begin(), m_profiles.end(), [&](const MachineProfile& m) { return m.worker == worker; });
}

std::map<std::string, uint64_t> AppSession::plannedBytes(const QString& dtype, int64_t context) const
{
    return plannedBytes(m_plan, dtype, context);
}

std::map<std::string, uint64_t> AppSession::plannedBytes(const Plan& plan, const QString& dtype, int64_t context) const
{
    std::map<std::string, uint64_t> out;
    if (!hasModel() || plan.stages.empty())
        return out;
    const int64_t ctx = context > 0 ? std::min(context, m_config.contextLimit()) : m_config.contextLimit();
    try {
        const RunDtype dt = parseRunDtype(dtype.toStdString());
        for (size_t s = 0; s < plan.stages.size(); ++s)
            for (size_t r = 0; r < plan.stages[s].ranks.size(); ++r)
                out[plan.stages[s].ranks[r].worker] +=
                    static_cast<uint64_t>(estimateShardMemory(m_config, plan.shardSpec(s, static_cast<int>(r)), dt, ctx).total());
    } catch (const std::exception&) {
        out.clear();
    }
    return out;
}

QString AppSession::memoryShortfall(const QString& dtype, int64_t context) const
{
    // The master's own check (core/cost_model), over what discovery knows of each worker: by worker what it
    // donates, by host what is free there (daemons on one machine share it).
    if (!hasModel() || m_plan.stages.empty())
        return {};
    std::vector<MachineProfile> machines;
    for (auto& w : workers()) {
        MachineProfile m;
        m.worker = w.address;
        m.host = w.host.empty() ? w.address : w.host;
        m.freeMemoryBytes = w.memoryFreeBytes;
        m.donatedMemoryBytes = w.maxMemoryBytes;
        machines.push_back(m);
    }
    const int64_t ctx = context > 0 ? std::min(context, m_config.contextLimit()) : m_config.contextLimit();
    try {
        const std::string shortfall =
            checkMemory(m_config, m_plan, parseRunDtype(dtype.toStdString()), ctx, machines);
        return shortfall.empty() ? QString() : "This placement " + QString::fromStdString(shortfall) + ".";
    } catch (const std::exception&) {
        return {}; // a worker discovery does not know (yet): the master checks again at launch
    }
}

// ---- the controller ----

void AppSession::launch(const QString& dtype, int64_t context, bool force, bool failover)
{
    if (!m_controller)
        throw Error("open a model first");
    if (m_plan.stages.empty())
        throw Error("there is no placement yet");
    LaunchRequest r;
    r.plan = m_plan;
    r.modelDir = m_modelDir.toStdString();
    r.dtype = dtype.toStdString();
    r.contextLength = context;
    r.force = force;
    r.failover = failover;
    if (failover) // any ready worker may take over, not only the placement's
        for (auto& w : readyWorkers())
            if (std::none_of(m_plan.stages.begin(), m_plan.stages.end(), [&](const PlanStage& st) {
                    return std::any_of(st.ranks.begin(), st.ranks.end(), [&](const PlanRank& rk) { return rk.worker == w; });
                }))
                r.spareWorkers.push_back(w);
    m_launched = false;
    m_lastLaunch = r;
    m_controller->launch(r);
}

void AppSession::launchPlan(const Plan& plan)
{
    if (!m_controller || !m_lastLaunch)
        throw Error("launch the model first");
    LaunchRequest r = *m_lastLaunch;
    r.plan = plan;
    r.failover = false;
    r.spareWorkers.clear();
    r.force = false;
    m_launched = false;
    m_controller->launch(r);
}

void AppSession::relaunch()
{
    if (!m_controller || !m_lastLaunch)
        throw Error("launch the model first");
    m_launched = false;
    m_controller->launch(*m_lastLaunch);
}

void AppSession::generate(const GenerateRequest& request)
{
    if (!m_controller)
        throw Error("open a model first");
    m_controller->generate(request);
}

void AppSession::stop()
{
    if (m_controller)
        m_controller->stop();
}

void AppSession::cancel()
{
    if (m_controller)
        m_controller->cancel();
}

void AppSession::unload()
{
    if (m_controller)
        m_controller->unload();
}

} // namespace together::gui
