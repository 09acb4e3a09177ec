// SPDX-License-Identifier: MIT
#pragma once

#include "model/plan.h"

#include <cstdint>
#include <string>
#include <vector>

namespace together::gui {

// The placement board's edits, as pure functions of a plan. The board thinks in layers: each layer is run by
// an ordered list of ranks (one machine each); consecutive layers run by the same ranks form a pipeline
// stage. Every edit goes plan -> per-layer ranks -> edit -> plan, so stages follow from the order: moving a
// middle layer away splits its stage, moving it back joins them again. A layer no rank runs leaves a gap,
// which Plan::validate names.
using LayerRanks = std::vector<std::vector<PlanRank>>;

LayerRanks layerRanks(const Plan& plan, int64_t numLayers);
Plan planFromLayers(const LayerRanks& layers, const std::string& dtype);

// Whether two plans are the same placement (stages, ranks, threads, folders, dtype).
bool samePlan(const Plan& a, const Plan& b);

// The stage that runs `layer`, or -1.
int stageOf(const Plan& plan, int64_t layer);

// `layers` run by `to` alone (leaving whatever tensor-parallel group ran them). When `to.worker` already runs a
// rank of the plan (the nearest stage first), that rank's threads and model folder are kept, so layers moved
// away and back join their stage again.
Plan assignLayers(const Plan& plan, int64_t numLayers, const std::vector<int64_t>& layers, const PlanRank& to);
// `rank` joins stage `stage` as one more tensor-parallel rank. Throws Error when it already runs that stage.
Plan addRank(const Plan& plan, size_t stage, const PlanRank& rank);
// `worker` leaves stage `stage`. Throws Error when it is the stage's only rank (its layers would run nowhere).
Plan removeRank(const Plan& plan, int64_t numLayers, size_t stage, const std::string& worker);

} // namespace together::gui
