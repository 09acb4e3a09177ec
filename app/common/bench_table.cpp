// SPDX-License-Identifier: MIT
#include "common/bench_table.h"

#include "common/placements.h"

#include "base/error.h"
#include "base/host_info.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

namespace together {

namespace fs = std::filesystem;

namespace {
std::string fmt(double v, int digits)
{
    char b[64];
    std::snprintf(b, sizeof b, "%.*f", digits, v);
    return b;
}

std::string csvField(const std::string& s)
{
    if (s.find_first_of(",\"\n") == std::string::npos)
        return s;
    std::string out = "\"";
    for (char c : s)
        out += c == '"' ? std::string("\"\"") : std::string(1, c);
    return out + "\"";
}

std::string mdField(std::string s)
{
    for (size_t i = 0; (i = s.find('|', i)) != std::string::npos; i += 2)
        s.replace(i, 1, "\\|");
    return s;
}

std::string hostCpu()
{
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos)
            return line.substr(line.find(':') + 2);
    return "unknown CPU";
}

} // namespace

// "TinyLlama-1.1B" from a Hugging Face cache snapshot (models--ORG--NAME/snapshots/HASH), else the folder's name.

void setBenchPlacement(BenchRow& r, const Plan& plan)
{
    r.layout = describePlan(plan);
    r.pp = static_cast<int>(plan.stages.size());
    r.tp = 1;
    std::set<std::string> workers;
    std::vector<int> threads;
    for (auto& st : plan.stages) {
        r.tp = std::max(r.tp, static_cast<int>(st.ranks.size()));
        for (auto& rk : st.ranks) {
            workers.insert(rk.worker);
            threads.push_back(rk.threads);
        }
    }
    r.machines = static_cast<int>(workers.size());
    r.threads.clear();
    if (!threads.empty() && std::all_of(threads.begin(), threads.end(), [&](int t) { return t == threads.front(); }))
        r.threads = std::to_string(threads.front());
    else
        for (size_t i = 0; i < threads.size(); ++i)
            r.threads += (i ? "/" : "") + std::to_string(threads[i]);
}

std::string benchModelName(const std::string& dir)
{
    const fs::path p = fs::weakly_canonical(fs::path(dir));
    for (auto it = p.begin(); it != p.end(); ++it) {
        const std::string part = it->string();
        if (part.rfind("models--", 0) == 0)
            return part.substr(part.rfind("--") + 2);
    }
    fs::path q = p.filename().empty() ? p.parent_path() : p;
    // A folder named like "hf" or "model" says less than the one holding it: "stories260K/hf".
    const std::string name = q.filename().string();
    if (name.size() <= 3 || name == "model" || name == "weights")
        return q.parent_path().filename().string() + "/" + name;
    return name;
}

std::string seedTableCell(double tokensPerSecond)
{
    if (!(tokensPerSecond > 0))
        return "-";
    if (tokensPerSecond >= 1)
        return fmt(tokensPerSecond, tokensPerSecond >= 100 ? 0 : 1) + " tokens/s";
    const double seconds = 1.0 / tokensPerSecond;
    return "1 token / " + fmt(seconds, seconds >= 10 ? 0 : 1) + " s";
}

static const std::vector<std::string> kColumns = {
    "model",          "placement",       "TP",        "PP",          "machines",     "dtype",           "threads",
    "prefill tok/s",  "decode tok/s",    "TTFT ms",   "ms/token",    "compute ms",   "all-reduce ms",   "links ms",
    "scaling efficiency %", "predicted ms/token", "prediction error %", "peak RSS MiB", "estimated MiB", "layout"};

std::vector<std::string> benchCells(const BenchRow& r)
{
    return {r.model,
            r.placement,
            std::to_string(r.tp),
            std::to_string(r.pp),
            std::to_string(r.machines),
            r.dtype,
            r.threads,
            fmt(r.prefillTps, 1),
            fmt(r.decodeTps, 2),
            fmt(r.ttftMs, 1),
            fmt(r.msPerToken, 2),
            fmt(r.computeMs, 2),
            fmt(r.allReduceMs, 2),
            fmt(r.linksMs, 2),
            fmt(r.efficiency, 0),
            r.predicted ? fmt(r.predictedMs, 2) : "n/a",
            r.predicted ? (r.errorPct >= 0 ? "+" : "") + fmt(r.errorPct, 1) : "n/a",
            fmt(r.peakRssMiB, 0),
            fmt(r.estimateMiB, 0),
            r.layout};
}

// The measured generation's decode steps: the p50 of each part of a token's time.

void splitBenchSteps(const std::vector<StepRecord>& steps, BenchRow& r)
{
    std::vector<double> e2e, compute, ar, links;
    for (auto& s : steps) {
        if (s.step == 0)
            continue;
        // Per stage, the rank that took longest (its layers and all-reduces together) sets the stage's time;
        // its own split is the stage's split (the slowest compute and the slowest all-reduce are different
        // ranks: the rank that computes longest waits least in the all-reduce).
        std::map<int, const RankStepRecord*> slowest;
        for (auto& x : s.ranks) {
            auto& w = slowest[x.stage];
            if (!w || x.computeMs + x.allReduceMs > w->computeMs + w->allReduceMs)
                w = &x;
        }
        double c = 0, a = 0;
        for (auto& [stage, x] : slowest) {
            c += x->computeMs;
            a += x->allReduceMs;
        }
        e2e.push_back(s.endToEndMs);
        compute.push_back(c + s.samplingMs());
        ar.push_back(a);
        links.push_back(std::max(0.0, s.endToEndMs - c - a - s.samplingMs()));
    }
    if (e2e.empty())
        throw Error("the shards reported no decode steps");
    r.msPerToken = percentile(e2e, 50);
    r.computeMs = percentile(compute, 50);
    r.allReduceMs = percentile(ar, 50);
    r.linksMs = percentile(links, 50);
}

std::string benchMarkdown(const std::vector<BenchRow>& rows, const std::vector<std::string>& failures, const std::string& runs, bool seedTable,
                          const std::vector<std::string>& models)
{
    std::ostringstream md;
    const std::time_t now = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    md << "# together bench\n\n"
       << date << " on " << hostName() << " (" << hostCpu() << ", " << std::thread::hardware_concurrency() << " CPUs). " << runs << "\n\n";
    md << "|";
    for (auto& c : kColumns)
        md << " " << c << " |";
    md << "\n|";
    for (size_t i = 0; i < kColumns.size(); ++i)
        md << (i < 2 || i == 5 || i == 6 || i + 1 == kColumns.size() ? "---|" : "---:|");
    md << "\n";
    for (auto& r : rows) {
        md << "|";
        for (auto& c : benchCells(r))
            md << " " << mdField(c) << " |";
        md << "\n";
    }
    md << "\nTTFT: from sending the prompt to the first token (prefill tok/s = prompt / TTFT). ms/token and its parts are p50s over "
          "the decode steps, from the ranks' own records: each stage's slowest rank (layers and all-reduces together) splits "
          "into compute (with sampling) and all-reduce (transfer and waiting for the other ranks), links (the rest: pipeline hops, the token's way back to stage 0, scheduling). "
          "Scaling efficiency: the decode speed-up over the first row divided by the ratio of machines. Prediction error: "
          "(predicted - measured) / measured. Peak RSS and the estimate: the largest shard.\n";
    if (!failures.empty()) {
        md << "\nNot measured:\n\n";
        for (auto& f : failures)
            md << "- " << f << "\n";
    }
    if (seedTable) {
        // The original together-LLM table: columns models, rows TP sizes ("base" = one machine), each cell the
        // fastest decode of that TP size.
        std::set<int> tps;
        for (auto& r : rows)
            tps.insert(r.tp);
        md << "\n## In the layout of the original together-LLM table\n\n| TP |";
        for (auto& m : models)
            md << " " << mdField(m) << " |";
        md << "\n|---|";
        for (size_t i = 0; i < models.size(); ++i)
            md << "---|";
        md << "\n";
        for (int tp : tps) {
            md << "| " << (tp == 1 ? std::string("base") : std::to_string(tp)) << " |";
            for (auto& m : models) {
                double best = 0;
                for (auto& r : rows)
                    if (r.tp == tp && r.model == m)
                        best = std::max(best, r.decodeTps);
                md << " " << seedTableCell(best) << " |";
            }
            md << "\n";
        }
        md << "\nEach cell: the fastest decode among the placements of that tensor-parallel size (any number of pipeline stages); "
              "\"-\": not run. The original's only filled cell was TP 2, LLaMA3-8B: \"1 token / 10 s\".\n";
    }
    return md.str();
}

std::string benchCsv(const std::vector<BenchRow>& rows)
{
    std::ostringstream out;
    for (size_t i = 0; i < kColumns.size(); ++i)
        out << (i ? "," : "") << csvField(kColumns[i]);
    out << "\n";
    for (auto& r : rows) {
        auto c = benchCells(r);
        for (size_t i = 0; i < c.size(); ++i)
            out << (i ? "," : "") << csvField(c[i]);
        out << "\n";
    }
    return out.str();
}

const std::vector<std::string>& benchColumns() { return kColumns; }

} // namespace together
