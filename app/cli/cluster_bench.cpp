// SPDX-License-Identifier: MIT
#include "cli/cluster_bench.h"

#include "common/bench_table.h"

#include "base/cli_args.h"
#include "base/error.h"
#include "base/files.h"
#include "base/host_info.h"
#include "base/process.h"
#include "common/placements.h"
#include "master/cluster.h"
#include "master/metrics.h"
#include "model/random_model.h"
#include "model/run_dtype.h"
#include "model/shard_spec.h"
#include "text/run_options.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <unistd.h>

namespace together {

namespace fs = std::filesystem;

namespace {

using Row = BenchRow;

std::string fmt(double v, int digits)
{
    char b[64];
    std::snprintf(b, sizeof b, "%.*f", digits, v);
    return b;
}

struct Options {
    int promptTokens = 128;
    int decodeTokens = 64;
    int64_t context = 0;
    std::string dtype;
    bool force = false;
};

Row measure(const std::string& modelDir, const PlacementSource& source, const CliArgs& args, const Options& o, const std::string& tempDir,
            const std::string& tag)
{
    auto say = [&](const std::string& line) { std::fprintf(stderr, "together: %s %s\n", tag.c_str(), line.c_str()); };
    const ModelConfig config = ModelConfig::fromDirectory(modelDir);
    std::string dtype = o.dtype;
    if (source.kind == PlacementSource::Kind::PlanFile && dtype.empty()) {
        const Plan p = Plan::fromJson(readTextFile(source.spec), source.spec);
        dtype = p.dtype;
    }
    if (dtype.empty())
        dtype = defaultDtypeFor(modelDir);
    if (!isRunDtype(dtype))
        throw Error("--dtype must be bf16, q8, q4, native or f32");
    const int64_t context = std::min<int64_t>(config.contextLimit(), o.context > 0 ? o.context : std::max<int64_t>(1024, o.promptTokens + o.decodeTokens + 16));
    if (o.promptTokens + o.decodeTokens + 16 > context)
        throw Error("the prompt and the decode tokens need " + std::to_string(o.promptTokens + o.decodeTokens + 16) +
                    " positions; the context is " + std::to_string(context) + " (--context, --prompt-tokens, --tokens)");

    PlacementContext pc = PlacementContext::fromArgs(args, config, dtype, context, tempDir, true);
    pc.progress = say; // each line names the placement being measured
    say("placing");
    ChosenPlacement chosen = choosePlacement(source, pc);
    if (!chosen.explanation.empty())
        say(chosen.explanation);
    if (!chosen.note.empty())
        say(chosen.note);

    Row r;
    r.model = benchModelName(modelDir);
    r.placement = chosen.label;
    setBenchPlacement(r, chosen.plan);
    r.dtype = dtype;
    for (size_t s = 0; s < chosen.plan.stages.size(); ++s)
        for (size_t k = 0; k < chosen.plan.stages[s].ranks.size(); ++k)
            r.estimateMiB = std::max(r.estimateMiB, static_cast<double>(estimateShardMemory(config, chosen.plan.shardSpec(s, static_cast<int>(k)),
                                                                                            parseRunDtype(dtype), context)
                                                                            .total()) /
                                                        1048576.0);
    r.promptTokens = o.promptTokens;
    r.decodeTokens = o.decodeTokens;

    SessionMetrics metrics;
    Cluster::Callbacks callbacks;
    callbacks.step = [&metrics](const StepRecord& s) { metrics.add(s); };
    std::map<size_t, RankProgress::Phase> phases;
    std::mutex sayMutex;
    callbacks.progress = [&](const RankProgress& p) {
        std::lock_guard lock(sayMutex);
        auto it = phases.find(p.index);
        if (it != phases.end() && it->second == p.phase)
            return;
        phases[p.index] = p.phase;
        say(describeProgress(p));
    };
    Cluster cluster(chosen.credentials, callbacks);
    struct StopOnExit {
        Cluster& c;
        ~StopOnExit() { c.stop(); }
    } stopOnExit{cluster};
    cluster.launch(chosen.plan, modelDir, dtype, context, o.force);

    // Warm-up (first-touch of weights and caches), then the measured generation: a prompt of random ids and
    // `decodeTokens` greedy tokens, never stopped by an end-of-sequence token.
    RingRequest warm;
    for (int i = 0; i < 8; ++i)
        warm.tokens.push_back(1 + (i * 7919) % static_cast<int>(std::max<int64_t>(1, config.vocabSize - 1)));
    warm.sampling.temperature = 0;
    warm.maxTokens = 2;
    say("warming up");
    cluster.generate(warm, [](const RingToken&) { return true; });
    RingRequest run = warm;
    run.tokens.clear();
    for (int i = 0; i < o.promptTokens; ++i)
        run.tokens.push_back(1 + (i * 104729 + 17) % static_cast<int>(std::max<int64_t>(1, config.vocabSize - 1)));
    run.maxTokens = static_cast<uint32_t>(o.decodeTokens + 1);
    run.window = 0;
    say("prefill of " + std::to_string(o.promptTokens) + " tokens, then " + std::to_string(o.decodeTokens) + " decode steps");
    const bool tty = ::isatty(STDERR_FILENO);
    const auto start = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point first, last;
    uint64_t seen = 0;
    cluster.generate(run, [&](const RingToken& t) {
        const auto now = std::chrono::steady_clock::now();
        (t.index == 0 ? first : last) = now;
        seen = t.index + 1;
        if (tty && t.index % 8 == 0)
            std::fprintf(stderr, "\rtogether: %s %llu/%d tokens", tag.c_str(), static_cast<unsigned long long>(t.index), o.decodeTokens);
        return true;
    });
    if (tty)
        std::fprintf(stderr, "\r\033[K");
    if (seen < static_cast<uint64_t>(o.decodeTokens + 1))
        throw Error("the generation ended after " + std::to_string(seen) + " of " + std::to_string(o.decodeTokens + 1) + " tokens");
    cluster.syncRecords();
    r.ttftMs = std::chrono::duration<double, std::milli>(first - start).count();
    r.prefillTps = r.ttftMs > 0 ? o.promptTokens / (r.ttftMs / 1000.0) : 0;
    const double secs = std::chrono::duration<double>(last - first).count();
    r.decodeTps = secs > 0 ? o.decodeTokens / secs : 0;
    uint64_t generation = 0;
    for (auto& s : metrics.records())
        generation = std::max(generation, s.generation);
    splitBenchSteps(metrics.generation(generation), r);
    if (chosen.prediction) {
        r.predicted = true;
        r.predictedMs = chosen.prediction->msPerToken;
        r.errorPct = 100.0 * (r.predictedMs - r.msPerToken) / r.msPerToken;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(700)); // one more heartbeat for peak RSS
    for (auto& m : cluster.shardMemory())
        r.peakRssMiB = std::max(r.peakRssMiB, static_cast<double>(m.peakRssBytes) / 1048576.0);
    say("done: decode " + fmt(r.decodeTps, 2) + " tokens/s, " + fmt(r.msPerToken, 2) + " ms/token" +
        (r.predicted ? " (predicted " + fmt(r.predictedMs, 2) + ")" : ""));
    return r;
}

} // namespace

int runBench(const std::vector<std::string>& rawArgs)
{
    auto specs = placementFlagSpecs();
    for (const char* f : {"tokens", "prompt-tokens", "dtype", "threads", "context", "out", "cache", "layers"})
        specs.push_back({f});
    specs.push_back({"model", true, true});
    specs.push_back({"seed-table", false});
    CliArgs args(rawArgs, specs);
    Options o;
    o.decodeTokens = args.getInt("tokens", 64);
    o.promptTokens = args.getInt("prompt-tokens", 128);
    if (o.decodeTokens < 2 || o.decodeTokens > 100000)
        throw Error("--tokens takes 2 to 100000 decode steps");
    if (o.promptTokens < 1 || o.promptTokens > 1000000)
        throw Error("--prompt-tokens takes at least 1 token");
    o.context = args.getInt("context", 0);
    if (args.has("context") && o.context < 1)
        throw Error("--context takes a number of positions of at least 1");
    o.dtype = args.get("dtype");
    o.force = args.has("force");

    std::vector<std::string> models = args.all("model");
    if (models.empty()) {
        models.push_back(ensureBenchModel(args.get("cache", fs::path(defaultModelDir()).parent_path().string()), args.getInt("layers", 22)));
        std::fprintf(stderr, "together: no --model given; using the benchmark model in %s (TinyLlama-1.1B's shape, random weights)\n",
                     models.front().c_str());
    }
    const bool anyPlacement = std::any_of(rawArgs.begin(), rawArgs.end(), [](const std::string& s) { return s == "--local" || s == "--plan" || s == "--auto"; });
    std::vector<PlacementSource> sources;
    if (!anyPlacement) // the old bench-cluster's comparison
        sources = {{PlacementSource::Kind::Local, "tp=1,pp=1"}, {PlacementSource::Kind::Local, "tp=2,pp=1"}, {PlacementSource::Kind::Local, "tp=1,pp=2"}};
    else
        sources = placementSources(rawArgs, true);

    const TempDir scratch("bench");
    const std::string& tmpl = scratch.path();

    std::vector<Row> rows;
    std::vector<std::string> failures, names;
    const size_t total = models.size() * sources.size();
    size_t index = 0;
    for (auto& model : models) {
        names.push_back(benchModelName(model));
        for (auto& source : sources) {
            const std::string tag = "[" + std::to_string(++index) + "/" + std::to_string(total) + " " + names.back() + ", " + source.label() + "]";
            try {
                rows.push_back(measure(model, source, args, o, tmpl, tag));
            } catch (const std::exception& e) {
                std::fprintf(stderr, "together: %s failed: %s\n", tag.c_str(), e.what());
                failures.push_back(names.back() + ", " + source.label() + ": " + e.what());
            }
            if (!rows.empty()) {
                const Row& base = rows.front();
                Row& r = rows.back();
                r.efficiency = base.decodeTps > 0 ? 100.0 * (r.decodeTps / base.decodeTps) / (static_cast<double>(r.machines) / base.machines) : 0;
            }
        }
    }
    const std::string md = benchMarkdown(rows, failures,
                                         "Each row: a prompt of " + std::to_string(o.promptTokens) + " tokens, then " +
                                             std::to_string(o.decodeTokens) + " greedy decode steps, after a warm-up.",
                                         args.has("seed-table"), names);
    if (args.has("out")) {
        const std::string prefix = args.get("out");
        atomicWrite(prefix + ".md", md);
        atomicWrite(prefix + ".csv", benchCsv(rows));
        std::fprintf(stderr, "together: wrote %s.md and %s.csv\n", prefix.c_str(), prefix.c_str());
    } else {
        std::fputs(md.c_str(), stdout);
    }
    return failures.empty() ? 0 : 1;
}

} // namespace together
