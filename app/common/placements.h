// SPDX-License-Identifier: MIT
#pragma once

#include "base/cli_args.h"
#include "base/process.h"
#include "master/cost_model.h"
#include "master/local_daemons.h"
#include "master/survey.h"
#include "model/model_config.h"
#include "model/plan.h"
#include "net/credentials.h"

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace together {

// Where a run or a bench gets its placement: `--local tp=T,pp=P` (daemons started here, one per rank, on a
// fresh key), `--plan FILE` (the workers it names, with the stored or given key), or `--auto` (the workers
// found, or --local-workers N started here, surveyed and placed by the cost model).
struct PlacementSource {
    enum class Kind { Local, PlanFile, Auto };
    Kind kind = Kind::Local;
    std::string spec; // "tp=2,pp=1" or the plan file
    std::string label() const;
};

// The flags every command that places a model shares (for CliArgs specs).
std::vector<CliArgs::Spec> placementFlagSpecs();

struct ChosenPlacement {
    std::string label;
    Plan plan;
    std::string keyFile;
    std::shared_ptr<const Credentials> credentials;
    std::unique_ptr<LocalDaemons> daemons; // started for this placement; stopped with it
    std::optional<Survey> survey;          // the plan's workers: calibrations and links (empty when they could not say)
    std::optional<Prediction> prediction;
    std::string explanation;               // --auto: why this placement
    std::string note;                      // why there is no prediction
};

struct PlacementContext {
    ModelConfig config;
    std::string dtype;
    int64_t context = 0;    // KV positions (0: the model's own limit)
    int threads = 0;        // --threads (0: the cores each rank's share of the machine)
    std::string keyFile;    // --key-file
    std::string tempDir;    // for keys of local daemons
    const CliArgs* args = nullptr; // discovery flags for --auto: --add, --wait, --no-broadcast, --local-workers
    bool predict = true;    // survey the workers of a given placement for a prediction (--auto always does)
    std::function<void(const std::string&)> progress;

    // A command's context from its flags (--threads, --key-file and the discovery flags), with progress lines on
    // stderr ("together: ...").
    static PlacementContext fromArgs(const CliArgs& args, const ModelConfig& config, const std::string& dtype, int64_t context,
                                     const std::string& tempDir, bool predict);
};

// One line for people: "layers 0-10 on A (2 threads) + B (2 threads) | layers 11-21 on C (2 threads)".
std::string describePlan(const Plan& plan);

// Parses `--local SPEC` / `--plan F` / `--auto` (repeatable where `many`) from `args`, in the order given.
std::vector<PlacementSource> placementSources(const std::vector<std::string>& rawArgs, bool many);

// Starts, finds and surveys what the source needs, and the plan it runs. Throws Error with the reason.
ChosenPlacement choosePlacement(const PlacementSource& source, const PlacementContext& context);

} // namespace together
