// SPDX-License-Identifier: MIT
#pragma once
// Checks of the protobuf messages peers send, made before anything in a message is used or allocated for.
//
// Every daemon, shard and master call that takes a message from the network runs one of these first; each
// returns what is wrong ("" when the message is within limits), and the caller answers with it. They hold the
// limits in one place, so the handlers (worker/, core/master/cluster.cpp) and the fuzz target (fuzz/fuzz_peer_messages)
// check the same thing. The key (mutual TLS) keeps strangers out before any of this; these keep a key holder
// — a compromised machine, a buggy build — from crashing a process or making it allocate without bound.

#include <cstdint>
#include <string>
#include <vector>

#include "model/safetensors.h"
#include "proto/together.pb.h"

namespace together {

struct ModelConfig;

namespace wire {

constexpr int kMaxEosIds = 64;
constexpr uint32_t kMaxTopLogits = 64;
constexpr uint32_t kMaxWindow = 1024;
constexpr int kMaxPeers = 64;          // next-stage and token addresses of one rank
constexpr int kMaxTensorParallel = 64; // ranks of one stage
constexpr int kMaxStages = 256;
constexpr size_t kMaxAddressBytes = 256;
constexpr size_t kMaxStoreKeyBytes = 1024, kMaxStoreValueBytes = 1 << 20;
constexpr int kMaxStoreKeysAsked = 1024;
constexpr uint32_t kMaxProbeSizes = 12, kMaxProbeRepeats = 8, kMinProbeBytes = 1024, kMaxProbeBytes = 4u << 20;
constexpr int kMaxRecordsPerReply = 2000;
constexpr int kMaxSpansPerRecord = 2 * 4096; // start and end of each all-reduce of a step
constexpr size_t kMaxReplyTextBytes = 64 << 10; // activity, error and end texts the master shows
// A daemon's Hello, within what the app's machine list shows.
constexpr size_t kMaxHostnameBytes = 255;                // a DNS name's limit
constexpr size_t kMaxNameBytes = 64;                     // worker id, software version, address, launch id
constexpr int kMaxHelloAddresses = 64, kMaxCpuFlags = 64, kMaxLaunches = 1024;
constexpr size_t kMaxCpuFlagBytes = 32;
constexpr int kMaxMatvecRates = 16;                      // calibration's rates, one per kernel path and dtype
constexpr size_t kMaxCpuTextBytes = 256;                 // calibration's CPU model and kernel path

// What a shard knows of itself when it checks what arrives.
struct ShardLimits {
    int64_t contextLimit = 0;
    int64_t vocabSize = 0;
    int64_t hiddenSize = 0;
    bool firstStage = false;
};

bool validLaunchId(const std::string& id);
bool plausibleAddress(const std::string& hostPort);

// ---- the worker's side: from the master or from shards of the same launch ----

std::string check(const v1::GenerationHeader& h);
std::string check(const v1::StartRequest& req, const ShardLimits& shard);
std::string check(const v1::PipeMessage& m, const ShardLimits& shard);
// A shard's place in the plan against the model it was given (ranks, stages, layers, context).
std::string check(const v1::ShardConfig& req, const ModelConfig& model);
std::string check(const v1::ConnectRequest& req);
// The first chunk of a tensor against the shape this shard's slice has; on success `out` holds its type (a dtype,
// or a ggml block type for a native run) and
// the size of the whole tensor in bytes (what the receiver may allocate).
struct FirstChunk {
    TensorType type;
    uint64_t bytes = 0;
};
std::string checkFirstChunk(const v1::WeightChunk& chunk, const std::vector<int64_t>& sliceShape, FirstChunk& out);
std::string check(const v1::LaunchShardRequest& req);
std::string check(const v1::ProbeLinkRequest& req);
std::string check(const v1::ProbeAllReduceRequest& req);
std::string check(const v1::KvSetRequest& req);
std::string check(const v1::KvGetRequest& req);

// ---- the master's side: from workers ----

// A daemon's Hello: names, flags, addresses and launches within sizes the app can show.
std::string check(const v1::HelloReply& rep);
// A token event of a generation that asked for `topLogits` pairs.
std::string check(const v1::ObserveEvent& ev, int64_t vocabSize, uint32_t topLogits);
std::string check(const v1::StatusReply& rep);

} // namespace wire
} // namespace together
