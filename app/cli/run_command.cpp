// SPDX-License-Identifier: MIT
#include "cli/run_command.h"

#include "base/cli_args.h"
#include "base/error.h"
#include "base/files.h"
#include "common/placements.h"
#include "master/cluster.h"
#include "master/controller.h"
#include "model/run_dtype.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "text/chat.h"
#include "text/run_options.h"
#include "text/tokenizer.h"

#include <nlohmann/json.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include <unistd.h>

namespace together {

namespace {

std::atomic<bool> g_interrupted{false};

void onInterrupt(int) { g_interrupted = true; }

std::string fixed(double v, int digits = 2)
{
    char b[64];
    std::snprintf(b, sizeof b, "%.*f", digits, v);
    return b;
}

// What the CLI keeps of the controller's events: it prints as they come and waits for the outcome.
struct CliSink {
    std::mutex mutex;
    std::ofstream* trace = nullptr;
    bool launchFailed = false, failed = false;
    std::string failure;
    GenerationResult result;
    std::map<size_t, std::pair<RankProgress::Phase, std::chrono::steady_clock::time_point>> lastProgress;
    uint64_t traceStep = 0;

    void onEvent(const ControllerEvent& e)
    {
        std::lock_guard lock(mutex);
        switch (e.kind) {
        case ControllerEvent::Kind::Progress:
            onProgress(e.progress);
            return;
        case ControllerEvent::Kind::Notice:
        case ControllerEvent::Kind::Log:
        case ControllerEvent::Kind::Launched:
            std::fprintf(stderr, "together: %s\n", e.text.c_str());
            return;
        case ControllerEvent::Kind::LaunchFailed:
            launchFailed = true;
            failure = e.text;
            return;
        case ControllerEvent::Kind::Token:
            onToken(e);
            return;
        case ControllerEvent::Kind::Ended:
            failed = false;
            result = e.result;
            return;
        case ControllerEvent::Kind::Failed:
            failed = true;
            failure = e.text;
            result = e.result;
            return;
        case ControllerEvent::Kind::Step:
        case ControllerEvent::Kind::Unloaded:
            return;
        }
    }

    // A line per phase change, and at most one a second while bytes move.
    void onProgress(const RankProgress& p)
    {
        auto now = std::chrono::steady_clock::now();
        auto it = lastProgress.find(p.index);
        if (it != lastProgress.end() && it->second.first == p.phase && now - it->second.second < std::chrono::seconds(1))
            return;
        lastProgress[p.index] = {p.phase, now};
        std::fprintf(stderr, "together: %s\n", describeProgress(p).c_str());
    }

    // The text to stdout; with --trace, the token and its top logits as a JSON line.
    void onToken(const ControllerEvent& e)
    {
        if (!e.text.empty()) {
            std::fwrite(e.text.data(), 1, e.text.size(), stdout);
            std::fflush(stdout);
        }
        if (trace && e.token.token >= 0) {
            nlohmann::json line = {{"step", traceStep++}, {"pos", e.token.pos}, {"n_input", e.token.inputTokens}, {"token", e.token.token}};
            nlohmann::json top = nlohmann::json::array();
            for (auto& [id, logit] : e.token.top)
                top.push_back({id, logit});
            line["top"] = top;
            *trace << line.dump() << '\n';
            trace->flush();
        }
    }
};

// Where the time of a token went, from the records the ranks measured (p50 over decode steps).
void printLinks(Controller& c)
{
    auto t = c.totals();
    if (t.steps == 0)
        return;
    std::fprintf(stderr, "together: per token (p50 of %zu steps): %s ms = compute %s + communication %s + sampling %s\n", t.steps,
                 fixed(t.endToEndMs).c_str(), fixed(t.computeMs).c_str(), fixed(t.communicationMs).c_str(), fixed(t.samplingMs).c_str());
    for (auto& l : c.linkSummary())
        std::fprintf(stderr, "together:   %s: p50 %s ms, p95 %s ms, %s bytes per step\n", l.name.c_str(), fixed(l.p50Ms, 3).c_str(),
                     fixed(l.p95Ms, 3).c_str(), fixed(l.bytesPerStep, 0).c_str());
}

// The prediction for a placement, on stderr, for a person choosing one.
void printChosen(const ChosenPlacement& chosen, bool showPlan)
{
    if (showPlan)
        std::fprintf(stderr, "together: placement: %s\n", describePlan(chosen.plan).c_str());
    if (!chosen.explanation.empty())
        std::fprintf(stderr, "together: %s\n", chosen.explanation.c_str());
    if (chosen.prediction) {
        const Prediction& p = *chosen.prediction;
        std::fprintf(stderr, "together: predicted %s ms/token (%s tokens/s) = compute %s + all-reduce %s + links %s\n", fixed(p.msPerToken).c_str(),
                     fixed(p.tokensPerSecond).c_str(), fixed(p.computeMs()).c_str(), fixed(p.allReduceMs()).c_str(), fixed(p.linkMs()).c_str());
    } else if (!chosen.note.empty()) {
        std::fprintf(stderr, "together: %s\n", chosen.note.c_str());
    }
}

std::vector<CliArgs::Spec> runFlags()
{
    auto specs = runFlagSpecs();
    for (auto& f : placementFlagSpecs())
        specs.push_back(f);
    for (const char* f : {"context", "timeline", "metrics", "window"})
        specs.push_back({f});
    specs.push_back({"interactive", false});
    specs.push_back({"failover", false});
    specs.push_back({"predict", false});
    specs.push_back({"save-plan"});
    return specs;
}

// What `run` was asked, checked before anything starts.
struct RunSetup {
    bool interactive = false;
    PlacementSource source;
    RunOptions options;
    ModelConfig config;
    std::shared_ptr<const Tokenizer> tokenizer;
    int64_t context = 0;
    int window = 4;
    std::string dtype;
};

RunSetup readSetup(const CliArgs& a, const std::vector<std::string>& args)
{
    RunSetup s;
    s.interactive = a.has("interactive");
    if (s.interactive && !a.has("chat"))
        throw Error("--interactive needs --chat (each line is a user message in the model's chat template)");
    s.source = placementSources(args, false).front();
    s.options = parseRunOptions(a, !s.interactive);
    s.config = ModelConfig::fromDirectory(s.options.modelDir);
    s.tokenizer = std::make_shared<const Tokenizer>(Tokenizer::fromDirectory(s.options.modelDir));
    s.context = a.getInt("context", 0);
    if (a.has("context") && s.context < 1)
        throw Error("--context takes a number of positions of at least 1");
    s.window = a.getInt("window", 4);
    if (s.window < 0 || s.window > 1024)
        throw Error("--window takes 0 (no limit) to 1024 tokens");
    s.dtype = !s.options.dtype.empty() ? s.options.dtype : defaultDtypeFor(s.options.modelDir);
    if (s.source.kind == PlacementSource::Kind::PlanFile && s.options.dtype.empty()) {
        const Plan p = Plan::fromJson(readTextFile(s.source.spec), s.source.spec);
        if (!p.dtype.empty())
            s.dtype = p.dtype;
    }
    if (!isRunDtype(s.dtype))
        throw Error("--dtype must be bf16, q8, q4, native or f32");
    return s;
}

ChosenPlacement choose(const RunSetup& s, const CliArgs& a, const std::string& tempDir)
{
    PlacementContext pc = PlacementContext::fromArgs(a, s.config, s.dtype, s.context, tempDir, a.has("predict"));
    pc.threads = s.options.threads;
    ChosenPlacement chosen = choosePlacement(s.source, pc);
    printChosen(chosen, s.source.kind == PlacementSource::Kind::Auto);
    if (a.has("save-plan")) {
        Plan saved = chosen.plan;
        saved.dtype = s.dtype;
        atomicWrite(a.get("save-plan"), saved.toJson() + "\n");
        std::fprintf(stderr, "together: wrote the placement to %s (run it again with --plan)\n", a.get("save-plan").c_str());
    }
    return chosen;
}

// Ctrl-C stops the answer (the shards keep a consistent cache) and then the run ends.
class InterruptWatch {
public:
    explicit InterruptWatch(Controller& controller)
        : m_thread([this, &controller] {
            while (!m_done) {
                if (g_interrupted) {
                    controller.stop();
                    controller.cancel();
                    break;
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
            }
        })
    {
    }
    ~InterruptWatch()
    {
        m_done = true;
        m_thread.join();
    }

private:
    std::atomic<bool> m_done{false};
    std::thread m_thread;
};

// The timeline and the metrics files, the per-link summary and the prediction against what was measured: written
// however the run ends.
void writeOutputs(const CliArgs& a, Controller& controller, const ChosenPlacement& chosen)
{
    controller.syncRecords();
    if (a.has("timeline")) {
        try {
            atomicWrite(a.get("timeline"), controller.chromeTrace());
        } catch (const Error& e) {
            std::fprintf(stderr, "together: %s\n", e.what());
        }
    }
    if (a.has("metrics")) {
        nlohmann::json j;
        auto t = controller.totals();
        j["totals"] = {{"steps", t.steps}, {"end_to_end_ms", t.endToEndMs}, {"compute_ms", t.computeMs}, {"communication_ms", t.communicationMs},
                       {"sampling_ms", t.samplingMs}, {"tokens_per_second", t.tokensPerSecond}};
        j["links"] = nlohmann::json::array();
        for (auto& l : controller.linkSummary())
            j["links"].push_back({{"name", l.name}, {"samples", l.samples}, {"p50_ms", l.p50Ms}, {"p95_ms", l.p95Ms}, {"mean_ms", l.meanMs},
                                  {"bytes_per_step", l.bytesPerStep}});
        j["sources"] = controller.weightSources();
        try {
            atomicWrite(a.get("metrics"), j.dump(1) + "\n");
        } catch (const Error& e) {
            std::fprintf(stderr, "together: %s\n", e.what()); // the answer stands; only this file is missing
        }
    }
    printLinks(controller);
    if (chosen.prediction && controller.totals().steps > 0) {
        const double measured = controller.totals().endToEndMs;
        std::fprintf(stderr, "together: predicted %s ms/token, measured %s (%+.0f%%)\n", fixed(chosen.prediction->msPerToken).c_str(),
                     fixed(measured).c_str(), 100.0 * (chosen.prediction->msPerToken - measured) / measured);
    }
}

// One user message per line; the conversation is re-rendered each turn and the controller prefills only the
// tokens after what the shards already hold.
template <typename Turn>
void chatOnStdin(const Tokenizer& tokenizer, uint64_t seed, Turn runTurn)
{
    nlohmann::json messages = nlohmann::json::array();
    std::string line;
    uint64_t turn = 0;
    while (!g_interrupted && std::getline(std::cin, line)) {
        if (line.empty())
            continue;
        messages.push_back({{"role", "user"}, {"content", line}});
        ChatPrompt p = renderChat(tokenizer, messages, true);
        if (p.usedFallbackTemplate && turn == 0)
            std::fprintf(stderr, "together: warning: the model has no chat_template; using a plain fallback format\n");
        GenerationResult r = runTurn(encodeChat(tokenizer, p), seed + turn++);
        std::fputc('\n', stdout);
        std::fflush(stdout);
        messages.push_back({{"role", "assistant"}, {"content", r.text}});
    }
}

} // namespace

bool runInterrupted() { return g_interrupted; }

int runCluster(const std::vector<std::string>& args)
{
    CliArgs a(args, runFlags());
    const RunSetup s = readSetup(a, args);
    const RunOptions& o = s.options;
    std::signal(SIGINT, onInterrupt);
    std::signal(SIGPIPE, SIG_IGN);
    const TempDir tmp("run");
    const ChosenPlacement chosen = choose(s, a, tmp.path());
    const Plan plan = chosen.plan;

    std::ofstream traceOut;
    if (!o.traceFile.empty()) {
        traceOut.open(o.traceFile, std::ios::trunc);
        if (!traceOut)
            throw Error("cannot write trace file " + o.traceFile);
    }
    CliSink sink;
    sink.trace = traceOut.is_open() ? &traceOut : nullptr;
    Controller controller(std::make_shared<const Credentials>(ClusterKey::fromFile(chosen.keyFile), newMasterIdentity()), s.tokenizer,
                          [&sink](const ControllerEvent& e) { sink.onEvent(e); });
    const InterruptWatch interrupts(controller);

    LaunchRequest launch;
    launch.plan = plan;
    launch.modelDir = o.modelDir;
    launch.dtype = s.dtype;
    launch.contextLength = s.context;
    launch.failover = a.has("failover");
    launch.force = a.has("force");
    controller.launch(launch);
    controller.wait();
    if (sink.launchFailed)
        throw Error(sink.failure);
    const std::string setup = s.dtype + ", " + std::to_string(plan.stages.size()) + " stage(s), " + std::to_string(plan.rankCount()) + " shard(s)";
    auto runTurn = [&](const std::vector<int>& ids, uint64_t seed) {
        GenerateRequest g;
        g.ids = ids;
        g.params = o.generation;
        g.sampling = o.sampling;
        g.sampling.seed = seed;
        g.window = static_cast<uint32_t>(s.window);
        controller.generate(g);
        controller.wait();
        if (::isatty(STDOUT_FILENO)) // end the line for a person; scripts get exactly the generated text
            std::fputc('\n', stdout);
        std::fflush(stdout);
        if (sink.failed) {
            writeOutputs(a, controller, chosen);
            throw Error(sink.failure);
        }
        printSpeedLine(sink.result, setup, seed);
        return sink.result;
    };
    if (s.interactive) {
        chatOnStdin(*s.tokenizer, o.sampling.seed, runTurn);
    } else {
        std::string warning;
        std::vector<int> ids = promptIds(*s.tokenizer, o, &warning);
        if (!warning.empty())
            std::fprintf(stderr, "together: warning: %s\n", warning.c_str());
        runTurn(ids, o.sampling.seed);
    }
    writeOutputs(a, controller, chosen);
    return g_interrupted ? 130 : 0;
}

} // namespace together
