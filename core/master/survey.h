// SPDX-License-Identifier: MIT
#pragma once

#include "base/sanitizers.h"

#include "master/cost_model.h"
#include "net/credentials.h"

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace together {

namespace v1 {
class HelloReply;
}

// What the master learns about a set of workers before placing a model on them: each machine's calibration
// (from its daemon's Hello, waiting while it still measures) and every pair's links, probed by the daemons
// themselves over the transports inference uses.
struct LinkMeasurement {
    std::string a, b;              // worker addresses; a probed b
    struct Sample {
        uint32_t bytes = 0;
        double streamMs = 0;       // round trip: payload there, acknowledgement back
        double allReduceMs = 0;    // two-rank all-reduce (0: not measured)
    };
    std::vector<Sample> samples;
    LinkProfile stream;            // fitted: one-way alpha, beta
    LinkProfile allReduce;         // fitted (when hasAllReduce)
    bool hasAllReduce = false;
    std::string error;             // why this pair (or its all-reduce) could not be probed
};

struct SurveyOptions {
    std::chrono::milliseconds calibrationWait{20000 * kSanitizerSlowdown}; // for daemons still calibrating
    bool probeLinks = true;
    bool allReduce = true;
    std::vector<uint32_t> sizes = {1u << 10, 16u << 10, 256u << 10, 1u << 20, 4u << 20};
    uint32_t repeats = 3;
    std::function<void(const std::string&)> progress; // a line per step, for a person watching
};

struct Survey {
    std::vector<MachineProfile> machines;
    std::vector<LinkMeasurement> links;
    double probeSeconds = 0;
    LinkTable table() const; // measured pairs; unmeasured ones fall back to 1 GbE
};

// The machine profile a daemon's Hello describes (throws Error when it has no calibration, naming why).
MachineProfile profileFromHello(const std::string& address, const v1::HelloReply& hello);

// Hellos every worker (in parallel), waits for calibrations, then probes every pair: rounds of disjoint pairs
// in parallel (a worker is in one probe at a time), so 8 workers take 7 rounds. Throws Error naming the worker
// that does not answer or cannot say what it can do.
Survey surveyWorkers(const Credentials& credentials, const std::vector<std::string>& addresses, const SurveyOptions& options = {});

// Probes the pairs of `addresses` only (e.g. a launched group again).
std::vector<LinkMeasurement> probeLinks(const Credentials& credentials, const std::vector<std::string>& addresses, const SurveyOptions& options = {});

// A table of the links, one row per pair, for people: "| a | b | alpha us | MB/s | all-reduce alpha us | MB/s |".
std::string formatLinks(const std::vector<LinkMeasurement>& links);

} // namespace together
