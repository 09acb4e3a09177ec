// SPDX-License-Identifier: MIT
#pragma once

#include "model/model_config.h"
#include "model/shard_spec.h"

#include <string>
#include <vector>

namespace together {

// A placement: ordered pipeline stages, each an inclusive layer range and the tensor-parallel ranks that
// run it. JSON form:
//   {"stages": [{"layers": [0, 10], "ranks": [{"worker": "192.168.1.20:7600", "threads": 2,
//                                              "model_dir": "/models/llama"}, ...]}, ...],   (model_dir optional)
//    "dtype": "bf16"}                                      (dtype optional: one per run, whole cluster)
struct PlanRank {
    std::string worker; // daemon address host:port
    int threads = 1;
    std::string modelDir; // "model_dir": a copy of the model on that machine to load from instead of streaming
};

struct PlanStage {
    int64_t firstLayer = 0;
    int64_t lastLayer = 0;
    std::vector<PlanRank> ranks;
};

struct Plan {
    std::vector<PlanStage> stages;
    std::string dtype; // "" = the master's default

    static Plan fromJson(const std::string& text, const std::string& where);
    std::string toJson() const;
    // Even split by layer count: pp stages of tp ranks, workers assigned in order (one per rank).
    static Plan even(const ModelConfig& config, int tp, int pp, const std::vector<std::string>& workers, int threadsPerRank);

    // Checks the plan against the model (and the known workers, when the list is not empty): every layer
    // covered exactly once in order, heads divisible by each stage's TP size, ranks and threads sane.
    // Throws Error with a specific message.
    void validate(const ModelConfig& config, const std::vector<std::string>& knownWorkers = {}) const;

    ShardSpec shardSpec(size_t stage, int rank) const;
    size_t rankCount() const;
};

} // namespace together
