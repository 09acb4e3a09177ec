// SPDX-License-Identifier: MIT
#include "model/plan.h"

#include "base/error.h"
#include "base/json.h"
#include "model/run_dtype.h"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace together {

using json = nlohmann::json;

Plan Plan::fromJson(const std::string& text, const std::string& where)
{
    json j = parseUntrustedJson(text, where);
    if (!j.is_object() || !j.contains("stages") || !j["stages"].is_array())
        throw Error(where + ": a plan is an object with a \"stages\" array");
    // Optional fields are checked for their type here, so a wrong one is named with where it is, not left to
    // surface as the JSON library's message (or, for a number, silently truncated).
    auto optionalString = [](const json& o, const char* key, const std::string& at) {
        if (!o.contains(key))
            return std::string();
        if (!o[key].is_string())
            throw Error(at + ": \"" + key + "\" must be a string");
        return o[key].get<std::string>();
    };
    Plan p;
    p.dtype = optionalString(j, "dtype", where);
    size_t si = 0;
    for (auto& s : j["stages"]) {
        const std::string at = where + ": stage " + std::to_string(si++);
        if (!s.is_object() || !s.contains("layers") || !s["layers"].is_array() || s["layers"].size() != 2 ||
            !s["layers"][0].is_number_integer() || !s["layers"][1].is_number_integer())
            throw Error(at + ": \"layers\" must be [first, last] (inclusive)");
        PlanStage st;
        st.firstLayer = s["layers"][0].get<int64_t>();
        st.lastLayer = s["layers"][1].get<int64_t>();
        if (!s.contains("ranks") || !s["ranks"].is_array())
            throw Error(at + ": \"ranks\" must be a list of {\"worker\": \"host:port\", \"threads\": N}");
        for (auto& r : s["ranks"]) {
            if (!r.is_object() || !r.contains("worker") || !r["worker"].is_string())
                throw Error(at + ": each rank needs a \"worker\" address");
            PlanRank pr;
            pr.worker = r["worker"].get<std::string>();
            if (r.contains("threads")) {
                const json& t = r["threads"];
                if (!t.is_number_integer())
                    throw Error(at + ": worker " + pr.worker + ": threads must be a whole number (got " + t.dump() + ")");
                const int64_t n = t.get<int64_t>();
                if (n < 1 || n > 1024)
                    throw Error(at + ": worker " + pr.worker + ": threads must be between 1 and 1024");
                pr.threads = static_cast<int>(n);
            }
            pr.modelDir = optionalString(r, "model_dir", at + ": worker " + pr.worker);
            st.ranks.push_back(pr);
        }
        p.stages.push_back(std::move(st));
    }
    return p;
}

std::string Plan::toJson() const
{
    json j;
    j["stages"] = json::array();
    for (auto& s : stages) {
        json ranks = json::array();
        for (auto& r : s.ranks) {
            json jr = {{"worker", r.worker}, {"threads", r.threads}};
            if (!r.modelDir.empty())
                jr["model_dir"] = r.modelDir;
            ranks.push_back(jr);
        }
        j["stages"].push_back({{"layers", {s.firstLayer, s.lastLayer}}, {"ranks", ranks}});
    }
    if (!dtype.empty())
        j["dtype"] = dtype;
    return j.dump(2);
}

Plan Plan::even(const ModelConfig& config, int tp, int pp, const std::vector<std::string>& workers, int threadsPerRank)
{
    if (tp < 1 || pp < 1)
        throw Error("tp and pp must be at least 1");
    if (pp > config.numLayers)
        throw Error("pp=" + std::to_string(pp) + " is more stages than the model's " + std::to_string(config.numLayers) + " layers");
    if (workers.size() < static_cast<size_t>(tp * pp))
        throw Error("the plan needs " + std::to_string(tp * pp) + " workers, " + std::to_string(workers.size()) + " given");
    Plan p;
    int64_t first = 0;
    size_t w = 0;
    for (int s = 0; s < pp; ++s) {
        const int64_t n = config.numLayers / pp + (s < config.numLayers % pp ? 1 : 0);
        PlanStage st;
        st.firstLayer = first;
        st.lastLayer = first + n - 1;
        first += n;
        for (int r = 0; r < tp; ++r)
            st.ranks.push_back({workers[w++], threadsPerRank, {}});
        p.stages.push_back(st);
    }
    return p;
}

void Plan::validate(const ModelConfig& config, const std::vector<std::string>& knownWorkers) const
{
    if (stages.empty())
        throw Error("the plan has no stages");
    if (!dtype.empty() && !isRunDtype(dtype))
        throw Error("plan dtype must be bf16, q8 or f32, got '" + dtype + "'");
    int64_t next = 0;
    for (size_t i = 0; i < stages.size(); ++i) {
        const PlanStage& s = stages[i];
        const std::string at = "stage " + std::to_string(i);
        if (s.firstLayer > s.lastLayer)
            throw Error(at + ": layer range [" + std::to_string(s.firstLayer) + ", " + std::to_string(s.lastLayer) + "] is empty");
        if (s.firstLayer > next)
            throw Error("layers " + std::to_string(next) + ".." + std::to_string(s.firstLayer - 1) + " are not covered by any stage");
        if (s.firstLayer < next)
            throw Error(at + ": layers " + std::to_string(s.firstLayer) + ".." + std::to_string(std::min(next - 1, s.lastLayer)) +
                        " overlap the previous stage");
        if (s.lastLayer >= config.numLayers)
            throw Error(at + ": layer " + std::to_string(s.lastLayer) + " does not exist (the model has " +
                        std::to_string(config.numLayers) + " layers, 0.." + std::to_string(config.numLayers - 1) + ")");
        next = s.lastLayer + 1;
        if (s.ranks.empty())
            throw Error(at + ": no ranks");
        try {
            checkTensorParallel(config, static_cast<int>(s.ranks.size()));
        } catch (const Error& e) {
            throw Error(at + ": " + e.what());
        }
        for (auto& r : s.ranks) {
            if (r.threads < 1 || r.threads > 1024)
                throw Error(at + ": worker " + r.worker + ": threads must be between 1 and 1024");
            if (r.worker.find(':') == std::string::npos)
                throw Error(at + ": worker '" + r.worker + "' must be host:port");
            if (!knownWorkers.empty() && std::find(knownWorkers.begin(), knownWorkers.end(), r.worker) == knownWorkers.end())
                throw Error(at + ": unknown worker " + r.worker);
        }
    }
    if (next < config.numLayers)
        throw Error("layers " + std::to_string(next) + ".." + std::to_string(config.numLayers - 1) + " are not covered by any stage");
}

ShardSpec Plan::shardSpec(size_t stage, int rank) const
{
    const PlanStage& s = stages.at(stage);
    return ShardSpec{s.firstLayer, s.lastLayer, rank, static_cast<int>(s.ranks.size()), stage == 0, stage + 1 == stages.size()};
}

size_t Plan::rankCount() const
{
    size_t n = 0;
    for (auto& s : stages)
        n += s.ranks.size();
    return n;
}

} // namespace together
