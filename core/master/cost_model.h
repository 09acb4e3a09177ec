// SPDX-License-Identifier: MIT
#pragma once

#include "model/model_config.h"
#include "model/plan.h"
#include "model/run_dtype.h"
#include "model/safetensors.h"

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace together {

// What a worker machine can do, as its daemon measured it (or as a test or a what-if assumes).
struct MachineProfile {
    std::string worker;          // daemon address, as plans name it
    std::string host;            // machines with the same host share its memory bandwidth and memory
    uint32_t threads = 1;        // compute threads it donates
    uint64_t freeMemoryBytes = 0;
    uint64_t donatedMemoryBytes = 0; // serve --max-memory; 0: only what is free
    double readGBps1 = 0;        // memory read bandwidth, one thread
    double readGBpsAll = 0;      // with every donated thread
    // The engine's one-row matrix-vector product, in weight bytes read per second, per dtype ("f32", "bf16"),
    // with one thread and with every donated thread.
    std::map<std::string, std::pair<double, double>> matvecGBps;
    double gemmGFlops = 0;       // the engine's prefill matrix products, all donated threads (0: unknown)
    // A decoder layer's fixed cost per decode step beyond its bytes (dispatch, thread fork/join), one thread
    // and every donated thread, ms (0: unknown).
    double layerOverheadMs1 = 0, layerOverheadMsAll = 0;

    uint64_t usableMemoryBytes() const { return donatedMemoryBytes ? std::min(freeMemoryBytes, donatedMemoryBytes) : freeMemoryBytes; }
};

// A link between two workers: time(bytes) = alpha + bytes / beta.
struct LinkProfile {
    double alphaUs = 0;  // latency of a small message, one way
    double betaMBps = 0; // throughput, MB/s (10^6 bytes)
    double ms(double bytes) const { return alphaUs / 1000.0 + (betaMBps > 0 ? bytes / (betaMBps * 1000.0) : 0.0); }
};

// The what-if profiles, with the alpha and beta assumed for each (one way, as a gRPC stream over TCP sees it).
struct NamedLink {
    std::string name;
    LinkProfile link;
};
const std::vector<NamedLink>& namedLinks(); // loopback, 10 GbE, 2.5 GbE, 1 GbE, Wi-Fi 5
// Throws Error naming the known profiles when `name` is none of them.
LinkProfile namedLink(const std::string& name);

// Links between workers, by address pair (either order); `fallback` for pairs not measured (and for ranks on
// one worker: loopback). Two transports per pair: the pipeline's gRPC stream (`pairs`) and the tensor-parallel
// all-reduce over gloo (`allReducePairs`, in the same terms: one round's latency and the throughput, so that a
// two-rank all-reduce of B bytes takes 2 alpha + B / beta); a pair without an all-reduce measurement uses its
// stream's.
struct LinkTable {
    LinkProfile fallback{1000, 100};
    std::map<std::pair<std::string, std::string>, LinkProfile> pairs;
    std::map<std::pair<std::string, std::string>, LinkProfile> allReducePairs;
    LinkProfile between(const std::string& a, const std::string& b) const;
    LinkProfile forAllReduce(const std::string& a, const std::string& b) const;
    void set(const std::string& a, const std::string& b, LinkProfile link);
    void setAllReduce(const std::string& a, const std::string& b, LinkProfile link);
};

// Fits samples of (bytes, round-trip or two-rank all-reduce ms) to time = 2 alpha + bytes / beta by least
// squares (alpha, one way, at least 1 us; a flat or noisy slope gives the throughput of the largest sample).
LinkProfile fitLink(const std::vector<std::pair<double, double>>& bytesAndMs);

// Where a token's time goes, predicted.
struct Prediction {
    struct Stage {
        double computeMs = 0;   // the slowest rank's layers (reading its weights at its share of bandwidth)
        int allReduces = 0;     // per token, from the shard spec
        double allReduceMs = 0;
        uint64_t allReduceBytes = 0; // per rank
        double linkMs = 0;      // to the next stage, or the token back to stage 0 from the last
        uint64_t linkBytes = 0;
        std::string slowestRank; // "worker (stage s rank r)"
    };
    std::vector<Stage> stages;
    double samplingMs = 0;
    double msPerToken = 0;            // decode
    double tokensPerSecond = 0;       // decode
    double prefillTokensPerSecond = 0; // for a prompt of `promptTokens`; 0 when a machine's gemmGFlops is unknown
    double computeMs() const;
    double allReduceMs() const;
    double linkMs() const;
};

// Predicts decode ms/token (and prefill tokens/s) of `plan` from the machines' calibrations and the links.
// Bytes read per token and the all-reduces come from the engine's shard spec (decodeBytesPerToken,
// shardCollectives); ranks on one host share its all-thread bandwidth. `positions`: the KV cache length a
// token attends to (its reads are added). Throws Error for a worker with no profile or no speed for `dtype`.
Prediction predict(const ModelConfig& config, const Plan& plan, const std::string& dtype, const std::vector<MachineProfile>& machines,
                   const LinkTable& links, int64_t positions = 256, int64_t promptTokens = 128);

// Memory each worker of `plan` would need (weights at `dtype`, KV cache for `contextLimit`, runtime), and
// whether it fits: "" or "needs about X GiB, HOST has Y GiB free (Z GiB donated)" for the first that does not.
std::string checkMemory(const ModelConfig& config, const Plan& plan, RunDtype dtype, int64_t contextLimit, const std::vector<MachineProfile>& machines);

// The placement with the lowest predicted ms/token that fits in memory: contiguous layer ranges balanced by
// each machine's measured speed (capped by its memory), and tensor-parallel groups only where the prediction
// says they pay (fast links). `explanation` says why in a few sentences. Throws Error with the numbers when
// no placement over these machines fits.
struct AutoPlacement {
    Plan plan;
    Prediction prediction;
    std::string explanation;
};
AutoPlacement autoPlace(const ModelConfig& config, const std::string& dtype, int64_t contextLimit, const std::vector<MachineProfile>& machines,
                        const LinkTable& links);

} // namespace together
