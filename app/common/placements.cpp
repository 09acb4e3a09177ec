// SPDX-License-Identifier: MIT
#include "common/placements.h"

#include "base/error.h"
#include "base/files.h"
#include "common/workers_command.h"
#include "net/cluster_key.h"
#include "net/discovery.h"

#include <algorithm>
#include <cstdio>
#include <set>
#include <thread>

#include <unistd.h>

namespace together {

namespace {

std::pair<int, int> parseLocal(const std::string& spec)
{
    int tp = 1, pp = 1;
    char extra = 0;
    if (std::sscanf(spec.c_str(), "tp=%d,pp=%d%c", &tp, &pp, &extra) != 2 && std::sscanf(spec.c_str(), "pp=%d,tp=%d%c", &pp, &tp, &extra) != 2)
        throw Error("--local takes tp=T,pp=P, e.g. --local tp=2,pp=1 (got '" + spec + "')");
    if (tp < 1 || pp < 1 || tp * pp > 64)
        throw Error("--local: tp and pp must be at least 1 and tp*pp at most 64");
    return {tp, pp};
}

// The ready workers discovery finds within --wait seconds (default 3), plus the remembered and --add ones.
std::vector<std::string> discoverWorkers(const std::shared_ptr<const Credentials>& credentials, const CliArgs& a,
                                         const std::function<void(const std::string&)>& progress)
{
    for (auto& w : a.all("add"))
        rememberWorker(w);
    Discovery::Options o;
    o.manual = rememberedWorkers();
    o.broadcast = !a.has("no-broadcast");
    const double wait = a.getDouble("wait", 3.0);
    if (!(wait >= 0) || wait > 600)
        throw Error("--wait takes seconds (0 to 600)");
    if (progress)
        progress(o.broadcast ? "discovering workers for " + std::to_string(static_cast<int>(wait)) + " s (key fingerprint " +
                                   credentials->keyFingerprint() + ")"
                             : std::string("asking the remembered and added workers"));
    Discovery discovery(credentials, o);
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(wait * 1000)));
    discovery.settle(std::chrono::steady_clock::now() + o.helloTimeout + std::chrono::milliseconds(500));
    std::vector<std::string> ready;
    std::string others;
    for (auto& w : discovery.workers()) {
        if (w.state == WorkerState::Ready)
            ready.push_back(w.address);
        else
            others += "\n  " + (w.address.empty() ? w.host : w.address) + ": " + workerStateName(w.state) + (w.reason.empty() ? "" : " (" + w.reason + ")");
    }
    std::sort(ready.begin(), ready.end());
    if (ready.empty())
        throw Error("no ready workers found" + (others.empty() ? std::string() : ":" + others) +
                    "\nStart `together-worker serve` on each machine with this cluster key, add one broadcast cannot reach with --add HOST:PORT, "
                    "or try it on this machine with --local-workers N");
    if (progress && !others.empty())
        progress("not used:" + others);
    return ready;
}

std::vector<std::string> planWorkers(const Plan& plan)
{
    std::vector<std::string> out;
    for (auto& st : plan.stages)
        for (auto& r : st.ranks)
            if (std::find(out.begin(), out.end(), r.worker) == out.end())
                out.push_back(r.worker);
    return out;
}

} // namespace

std::string describePlan(const Plan& plan)
{
    std::string out;
    for (auto& st : plan.stages) {
        out += (out.empty() ? "" : " | ") + std::string("layers ") + std::to_string(st.firstLayer) + "-" + std::to_string(st.lastLayer) + " on ";
        for (size_t i = 0; i < st.ranks.size(); ++i)
            out += (i ? " + " : "") + st.ranks[i].worker + " (" + std::to_string(st.ranks[i].threads) + (st.ranks[i].threads == 1 ? " thread)" : " threads)");
    }
    return out;
}

std::string PlacementSource::label() const
{
    switch (kind) {
    case Kind::Local:
        return "local " + spec;
    case Kind::PlanFile:
        return spec;
    case Kind::Auto:
        return "auto";
    }
    return {};
}

std::vector<CliArgs::Spec> placementFlagSpecs()
{
    return {{"local", true, true}, {"plan", true, true}, {"auto", false}, {"local-workers"}, {"add", true, true},
            {"wait"},              {"no-broadcast", false}, {"key-file"}, {"force", false}};
}

std::vector<PlacementSource> placementSources(const std::vector<std::string>& args, bool many)
{
    std::vector<PlacementSource> out;
    for (size_t i = 0; i < args.size(); ++i) {
        if (args[i] == "--auto")
            out.push_back({PlacementSource::Kind::Auto, ""});
        else if ((args[i] == "--local" || args[i] == "--plan") && i + 1 < args.size())
            out.push_back({args[i] == "--local" ? PlacementSource::Kind::Local : PlacementSource::Kind::PlanFile, args[++i]});
    }
    if (out.empty())
        throw Error(many ? "give at least one placement: --local tp=T,pp=P, --plan plan.json or --auto (each may repeat)"
                         : "give one of --local tp=T,pp=P, --plan plan.json or --auto");
    if (!many && out.size() > 1)
        throw Error("give only one of --local, --plan and --auto");
    return out;
}

PlacementContext PlacementContext::fromArgs(const CliArgs& args, const ModelConfig& config, const std::string& dtype, int64_t context,
                                            const std::string& tempDir, bool predict)
{
    PlacementContext pc;
    pc.config = config;
    pc.dtype = dtype;
    pc.context = context;
    pc.threads = args.getInt("threads", 0);
    pc.keyFile = args.get("key-file");
    pc.tempDir = tempDir;
    pc.args = &args;
    pc.predict = predict;
    pc.progress = [](const std::string& line) { std::fprintf(stderr, "together: %s\n", line.c_str()); };
    return pc;
}

ChosenPlacement choosePlacement(const PlacementSource& source, const PlacementContext& c)
{
    ChosenPlacement out;
    out.label = source.label();
    const CliArgs& a = *c.args;
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    auto freshKey = [&] {
        const std::string file = c.tempDir + "/cluster-" + std::to_string(::getpid()) + "-" + std::to_string(std::rand()) + ".key";
        ClusterKey::generate().writeFile(file);
        return file;
    };
    std::vector<std::string> workers;
    switch (source.kind) {
    case PlacementSource::Kind::Local: {
        auto [tp, pp] = parseLocal(source.spec);
        out.keyFile = c.keyFile.empty() ? freshKey() : c.keyFile;
        out.daemons = std::make_unique<LocalDaemons>(static_cast<size_t>(tp * pp), out.keyFile);
        // Stages run one after another, so each rank of a stage gets the cores of its share of the machine.
        out.plan = Plan::even(c.config, tp, pp, out.daemons->addresses(), c.threads > 0 ? c.threads : std::max(1, cores / tp));
        workers = out.daemons->addresses();
        break;
    }
    case PlacementSource::Kind::PlanFile:
        out.plan = Plan::fromJson(readTextFile(source.spec), source.spec);
        out.keyFile = masterKeyFile(c.keyFile);
        workers = planWorkers(out.plan);
        break;
    case PlacementSource::Kind::Auto:
        if (a.has("local-workers")) {
            const int n = a.getInt("local-workers", 2);
            if (n < 1 || n > 12)
                throw Error("--local-workers takes 1 to 12 daemons");
            out.keyFile = c.keyFile.empty() ? freshKey() : c.keyFile;
            out.daemons = std::make_unique<LocalDaemons>(static_cast<size_t>(n), out.keyFile);
            workers = out.daemons->addresses();
        } else {
            out.keyFile = masterKeyFile(c.keyFile);
        }
        break;
    }
    out.credentials = std::make_shared<const Credentials>(ClusterKey::fromFile(out.keyFile), newMasterIdentity());
    if (source.kind == PlacementSource::Kind::Auto && workers.empty())
        workers = discoverWorkers(out.credentials, a, c.progress);

    SurveyOptions so;
    so.progress = c.progress;
    const int64_t context = c.context > 0 ? std::min(c.context, c.config.contextLimit()) : c.config.contextLimit();
    if (source.kind == PlacementSource::Kind::Auto) {
        if (c.progress)
            c.progress("surveying " + std::to_string(workers.size()) + " worker(s): calibrations and links");
        out.survey = surveyWorkers(*out.credentials, workers, so);
        if (c.progress && workers.size() > 1) {
            char line[128];
            std::snprintf(line, sizeof line, "probed %zu pair(s) of links in %.1f s", out.survey->links.size(), out.survey->probeSeconds);
            c.progress(line);
        }
        AutoPlacement ap = autoPlace(c.config, c.dtype, context, out.survey->machines, out.survey->table());
        out.plan = ap.plan;
        if (c.threads > 0)
            for (auto& st : out.plan.stages)
                for (auto& r : st.ranks)
                    r.threads = c.threads;
        out.prediction = ap.prediction;
        out.explanation = ap.explanation;
        if (c.threads > 0)
            out.prediction = predict(c.config, out.plan, c.dtype, out.survey->machines, out.survey->table(), std::min<int64_t>(context, 256));
        return out;
    }
    out.plan.validate(c.config);
    if (!c.predict)
        return out;
    // A prediction for a given placement is a bonus: the run goes on without one.
    try {
        if (c.progress)
            c.progress("surveying the placement's " + std::to_string(workers.size()) + " worker(s) for a prediction");
        out.survey = surveyWorkers(*out.credentials, workers, so);
        out.prediction = predict(c.config, out.plan, c.dtype, out.survey->machines, out.survey->table(), std::min<int64_t>(context, 256));
    } catch (const std::exception& e) {
        out.note = std::string("no prediction: ") + e.what();
    }
    return out;
}

} // namespace together
