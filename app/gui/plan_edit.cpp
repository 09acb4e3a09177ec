// SPDX-License-Identifier: MIT
#include "gui/plan_edit.h"

#include "base/error.h"

#include <algorithm>

namespace together::gui {

namespace {
bool sameRanks(const std::vector<PlanRank>& a, const std::vector<PlanRank>& b)
{
    return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const PlanRank& x, const PlanRank& y) {
        return x.worker == y.worker && x.threads == y.threads && x.modelDir == y.modelDir;
    });
}
} // namespace

LayerRanks layerRanks(const Plan& plan, int64_t numLayers)
{
    LayerRanks out(static_cast<size_t>(std::max<int64_t>(0, numLayers)));
    for (auto& st : plan.stages)
        for (int64_t l = std::max<int64_t>(0, st.firstLayer); l <= st.lastLayer && l < numLayers; ++l)
            if (out[l].empty()) // a layer two stages claim: the first keeps it
                out[l] = st.ranks;
    return out;
}

Plan planFromLayers(const LayerRanks& layers, const std::string& dtype)
{
    Plan plan;
    plan.dtype = dtype;
    for (size_t l = 0; l < layers.size(); ++l) {
        if (layers[l].empty())
            continue;
        const int64_t layer = static_cast<int64_t>(l);
        if (!plan.stages.empty() && plan.stages.back().lastLayer + 1 == layer && sameRanks(plan.stages.back().ranks, layers[l]))
            plan.stages.back().lastLayer = layer;
        else
            plan.stages.push_back(PlanStage{layer, layer, layers[l]});
    }
    return plan;
}

bool samePlan(const Plan& a, const Plan& b) { return a.toJson() == b.toJson(); }

int stageOf(const Plan& plan, int64_t layer)
{
    for (size_t s = 0; s < plan.stages.size(); ++s)
        if (plan.stages[s].firstLayer <= layer && layer <= plan.stages[s].lastLayer)
            return static_cast<int>(s);
    return -1;
}

Plan assignLayers(const Plan& plan, int64_t numLayers, const std::vector<int64_t>& layers, const PlanRank& to)
{
    LayerRanks per = layerRanks(plan, numLayers);
    if (layers.empty())
        return plan;
    for (int64_t l : layers)
        if (l < 0 || l >= numLayers)
            throw Error("layer " + std::to_string(l) + " does not exist (the model has " + std::to_string(numLayers) + " layers)");
    // The worker's own settings where it already runs a stage alone: the stage next to the moved layers first.
    PlanRank rank = to;
    const int64_t lo = *std::min_element(layers.begin(), layers.end()), hi = *std::max_element(layers.begin(), layers.end());
    std::vector<int64_t> order;
    for (int64_t d = 1; d <= numLayers; ++d) {
        if (lo - d >= 0)
            order.push_back(lo - d);
        if (hi + d < numLayers)
            order.push_back(hi + d);
    }
    for (int64_t l : order) {
        const auto& rs = per[static_cast<size_t>(l)];
        if (rs.size() == 1 && rs.front().worker == to.worker) {
            rank = rs.front();
            break;
        }
    }
    for (int64_t l : layers)
        per[static_cast<size_t>(l)] = {rank};
    return planFromLayers(per, plan.dtype);
}

Plan addRank(const Plan& plan, size_t stage, const PlanRank& rank)
{
    if (stage >= plan.stages.size())
        throw Error("there is no stage " + std::to_string(stage));
    Plan out = plan;
    auto& ranks = out.stages[stage].ranks;
    if (std::any_of(ranks.begin(), ranks.end(), [&](const PlanRank& r) { return r.worker == rank.worker; }))
        throw Error(rank.worker + " already runs stage " + std::to_string(stage) + " (layers " + std::to_string(plan.stages[stage].firstLayer) +
                    "-" + std::to_string(plan.stages[stage].lastLayer) + ")");
    ranks.push_back(rank);
    return out;
}

Plan removeRank(const Plan& plan, int64_t numLayers, size_t stage, const std::string& worker)
{
    if (stage >= plan.stages.size())
        throw Error("there is no stage " + std::to_string(stage));
    Plan out = plan;
    auto& ranks = out.stages[stage].ranks;
    auto it = std::find_if(ranks.begin(), ranks.end(), [&](const PlanRank& r) { return r.worker == worker; });
    if (it == ranks.end())
        throw Error(worker + " does not run stage " + std::to_string(stage));
    if (ranks.size() == 1)
        throw Error(worker + " is the only machine of stage " + std::to_string(stage) + ": drag its layers onto another machine instead");
    ranks.erase(it);
    // The stage may now be run by the same ranks as a neighbour: they join.
    return planFromLayers(layerRanks(out, numLayers), out.dtype);
}

} // namespace together::gui
