// SPDX-License-Identifier: MIT
#include "cli/predict_command.h"

#include "base/cli_args.h"
#include "base/error.h"
#include "base/files.h"
#include "master/cost_model.h"
#include "model/model_config.h"
#include "model/plan.h"
#include "model/run_dtype.h"
#include "model/shard_spec.h"

#include <nlohmann/json.hpp>

#include <cstdio>

namespace together {

namespace {

using json = nlohmann::json;

double number(const json& j, const char* key, const std::string& where, double fallback, bool required = false)
{
    if (!j.contains(key)) {
        if (required)
            throw Error(where + ": \"" + key + "\" is missing");
        return fallback;
    }
    if (!j[key].is_number() || !(j[key].get<double>() >= 0))
        throw Error(where + ": \"" + key + "\" must be a number of at least 0");
    return j[key].get<double>();
}

std::pair<double, double> pairOf(const json& j, const std::string& where)
{
    if (!j.is_array() || j.size() != 2 || !j[0].is_number() || !j[1].is_number() || !(j[0].get<double>() > 0) ||
        !(j[1].get<double>() >= j[0].get<double>()))
        throw Error(where + ": give [one thread, all threads] in GB/s, e.g. [4.4, 8.6]");
    return {j[0].get<double>(), j[1].get<double>()};
}

LinkProfile linkOf(const json& j, const std::string& where)
{
    if (j.is_string())
        return namedLink(j.get<std::string>());
    if (!j.is_object())
        throw Error(where + ": a link is a profile name or {\"alpha_us\": A, \"beta_mbps\": B}");
    return {number(j, "alpha_us", where, 0, true), number(j, "beta_mbps", where, 0, true)};
}

// {"machines": [{"worker": "10.0.0.5:7600", "host": "desk", "threads": 4, "free_memory_gib": 12,
//                "donated_memory_gib": 0, "read_gbps": [13.7, 26.8], "matvec_gbps": {"bf16": [4.4, 8.6]},
//                "gemm_gflops": 150, "layer_overhead_us": [120, 180]}, ...],
//  "links": [{"a": "10.0.0.5:7600", "b": "10.0.0.6:7600", "alpha_us": 150, "beta_mbps": 117}],
//  "default_link": "1 GbE"}
void readMachines(const std::string& file, std::vector<MachineProfile>& machines, LinkTable& links)
{
    json j;
    try {
        j = json::parse(readTextFile(file));
    } catch (const json::exception& e) {
        throw Error(file + ": malformed JSON: " + e.what());
    }
    if (!j.is_object() || !j.contains("machines") || !j["machines"].is_array() || j["machines"].empty())
        throw Error(file + ": give {\"machines\": [...]} with at least one machine");
    for (size_t i = 0; i < j["machines"].size(); ++i) {
        const json& m = j["machines"][i];
        const std::string where = file + ": machines[" + std::to_string(i) + "]";
        if (!m.is_object() || !m.contains("worker") || !m["worker"].is_string())
            throw Error(where + ": \"worker\" (its address, as plans name it) is missing");
        MachineProfile p;
        p.worker = m["worker"].get<std::string>();
        p.host = m.contains("host") && m["host"].is_string() ? m["host"].get<std::string>() : p.worker.substr(0, p.worker.rfind(':'));
        p.threads = static_cast<uint32_t>(number(m, "threads", where, 1));
        p.freeMemoryBytes = static_cast<uint64_t>(number(m, "free_memory_gib", where, 0, true) * double(1ull << 30));
        p.donatedMemoryBytes = static_cast<uint64_t>(number(m, "donated_memory_gib", where, 0) * double(1ull << 30));
        if (!m.contains("read_gbps"))
            throw Error(where + ": \"read_gbps\" is missing");
        std::tie(p.readGBps1, p.readGBpsAll) = pairOf(m["read_gbps"], where + ".read_gbps");
        if (!m.contains("matvec_gbps") || !m["matvec_gbps"].is_object() || m["matvec_gbps"].empty())
            throw Error(where + ": \"matvec_gbps\" ({\"bf16\": [one, all], \"f32\": [...]}) is missing");
        for (auto& [dtype, v] : m["matvec_gbps"].items())
            p.matvecGBps[dtype] = pairOf(v, where + ".matvec_gbps." + dtype);
        p.gemmGFlops = number(m, "gemm_gflops", where, 0);
        if (m.contains("layer_overhead_us")) {
            const json& o = m["layer_overhead_us"];
            if (!o.is_array() || o.size() != 2 || !o[0].is_number() || !o[1].is_number() || !(o[0].get<double>() >= 0) || !(o[1].get<double>() >= 0))
                throw Error(where + ".layer_overhead_us: give [one thread, all threads] in microseconds, e.g. [120, 180]");
            p.layerOverheadMs1 = o[0].get<double>() / 1000.0;
            p.layerOverheadMsAll = o[1].get<double>() / 1000.0;
        }
        machines.push_back(p);
    }
    if (j.contains("default_link"))
        links.fallback = linkOf(j["default_link"], file + ": default_link");
    if (j.contains("links")) {
        if (!j["links"].is_array())
            throw Error(file + ": \"links\" must be an array");
        for (size_t i = 0; i < j["links"].size(); ++i) {
            const json& l = j["links"][i];
            const std::string where = file + ": links[" + std::to_string(i) + "]";
            if (!l.is_object() || !l.contains("a") || !l.contains("b") || !l["a"].is_string() || !l["b"].is_string())
                throw Error(where + ": give \"a\" and \"b\" (worker addresses)");
            links.set(l["a"].get<std::string>(), l["b"].get<std::string>(), l.contains("profile") ? linkOf(l["profile"], where) : linkOf(l, where));
        }
    }
}

void printPrediction(const Plan& plan, const Prediction& p)
{
    std::printf("| stage | layers | ranks | compute ms | all-reduces | all-reduce ms | link ms |\n|---|---|---|---|---|---|---|\n");
    for (size_t s = 0; s < p.stages.size(); ++s) {
        const auto& st = plan.stages[s];
        std::string ranks;
        for (auto& r : st.ranks)
            ranks += (ranks.empty() ? "" : " + ") + r.worker;
        std::printf("| %zu | %lld-%lld | %s | %.2f | %d | %.2f | %.2f |\n", s, static_cast<long long>(st.firstLayer),
                    static_cast<long long>(st.lastLayer), ranks.c_str(), p.stages[s].computeMs, p.stages[s].allReduces, p.stages[s].allReduceMs,
                    p.stages[s].linkMs);
    }
    std::printf("\npredicted: %.2f ms/token (%.2f tokens/s) = compute %.2f + all-reduce %.2f + links %.2f + sampling %.3f", p.msPerToken,
                p.tokensPerSecond, p.computeMs(), p.allReduceMs(), p.linkMs(), p.samplingMs);
    if (p.prefillTokensPerSecond > 0)
        std::printf("; prefill %.0f tokens/s", p.prefillTokensPerSecond);
    std::printf("\n");
}

} // namespace

int runPredict(const std::vector<std::string>& args)
{
    CliArgs a(args, {{"model"}, {"plan"}, {"auto", false}, {"machines"}, {"dtype"}, {"context"}});
    if (!a.has("model") || !a.has("machines"))
        throw Error("predict needs --model DIR and --machines FILE (see `together-cli --help`)");
    if (a.has("plan") == a.has("auto"))
        throw Error("give exactly one of --plan plan.json or --auto");
    const ModelConfig config = ModelConfig::fromDirectory(a.get("model"));
    const std::string dtype = a.get("dtype", "bf16");
    if (!isRunDtype(dtype))
        throw Error("--dtype must be bf16, q8, q4, native or f32");
    const int64_t context = a.getInt("context", static_cast<int>(std::min<int64_t>(config.contextLimit(), 4096)));
    if (context < 1)
        throw Error("--context takes a number of positions of at least 1");
    std::vector<MachineProfile> machines;
    LinkTable links;
    readMachines(a.get("machines"), machines, links);
    Plan plan;
    Prediction prediction;
    if (a.has("auto")) {
        AutoPlacement p = autoPlace(config, dtype, context, machines, links);
        plan = p.plan;
        prediction = p.prediction;
        std::printf("%s\n\n", p.explanation.c_str());
    } else {
        plan = Plan::fromJson(readTextFile(a.get("plan")), a.get("plan"));
        prediction = predict(config, plan, dtype, machines, links, std::min<int64_t>(context, 256));
        const std::string memory = checkMemory(config, plan, parseRunDtype(dtype), context, machines);
        if (!memory.empty())
            std::printf("does not fit: %s\n\n", memory.c_str());
    }
    printPrediction(plan, prediction);
    // What-if: the same placement with every link one profile.
    std::printf("\n| every link | ms/token | tokens/s | alpha µs | beta MB/s |\n|---|---|---|---|---|\n");
    for (auto& named : namedLinks()) {
        LinkTable all;
        all.fallback = named.link;
        const Prediction w = predict(config, plan, dtype, machines, all, std::min<int64_t>(context, 256));
        std::printf("| %s | %.2f | %.2f | %.0f | %.0f |\n", named.name.c_str(), w.msPerToken, w.tokensPerSecond, named.link.alphaUs,
                    named.link.betaMBps);
    }
    std::printf("\nplan: %s\n", plan.toJson().c_str());
    return 0;
}

} // namespace together
