// SPDX-License-Identifier: MIT
#pragma once

#include "proto/together.grpc.pb.h"

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>

namespace together {

// gloo's rendezvous store as a gRPC service (over the mutual TLS every peer already uses): a shard serves
// it for its tensor-parallel group, a daemon for its link probes. Bounded: gloo stores a few address records
// per rank and pair, so the store refuses more than 10000 keys or 8 MiB, keys over 1 KiB and values over
// 1 MiB. `admit` decides who may use it (an error status refuses the call).
class KvStoreService final : public v1::KvStore::Service {
public:
    using Admit = std::function<grpc::Status(const grpc::ServerContext&)>;
    explicit KvStoreService(Admit admit);

    grpc::Status Set(grpc::ServerContext* ctx, const v1::KvSetRequest* req, v1::KvSetReply*) override;
    // Waits up to the request's timeout (at most 120 s) for every key.
    grpc::Status Get(grpc::ServerContext* ctx, const v1::KvGetRequest* req, v1::KvGetReply* rep) override;
    // Forgets the keys that start with `prefix` (a finished probe's).
    void erasePrefix(const std::string& prefix);

private:
    Admit m_admit;
    std::mutex m_mutex;
    std::condition_variable m_changed;
    std::map<std::string, std::string> m_kv;
    uint64_t m_bytes = 0;
    static constexpr uint64_t kMaxBytes = 8 << 20;
};

} // namespace together
