// SPDX-License-Identifier: MIT
#include "engine/kv_store.h"

#include "wire/checks.h"

#include <algorithm>
#include <chrono>

namespace together {

KvStoreService::KvStoreService(Admit admit)
    : m_admit(std::move(admit))
{
}

grpc::Status KvStoreService::Set(grpc::ServerContext* ctx, const v1::KvSetRequest* req, v1::KvSetReply*)
{
    if (grpc::Status s = m_admit(*ctx); !s.ok())
        return s;
    if (std::string bad = wire::check(*req); !bad.empty())
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, bad);
    std::lock_guard lock(m_mutex);
    const auto old = m_kv.find(req->key());
    const uint64_t bytes = m_bytes - (old == m_kv.end() ? 0 : old->first.size() + old->second.size()) + req->key().size() + req->value().size();
    if (m_kv.size() > 10000 || bytes > kMaxBytes)
        return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "store: too many keys or bytes");
    m_bytes = bytes;
    m_kv[req->key()] = req->value();
    m_changed.notify_all();
    return grpc::Status::OK;
}

grpc::Status KvStoreService::Get(grpc::ServerContext* ctx, const v1::KvGetRequest* req, v1::KvGetReply* rep)
{
    if (grpc::Status s = m_admit(*ctx); !s.ok())
        return s;
    if (std::string bad = wire::check(*req); !bad.empty())
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, bad);
    std::unique_lock lock(m_mutex);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(std::min<uint32_t>(req->timeout_ms(), 120000));
    auto ready = [&] {
        for (auto& k : req->keys())
            if (!m_kv.count(k))
                return false;
        return true;
    };
    if (!m_changed.wait_until(lock, deadline, ready))
        return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "store: keys not set in time (a tensor-parallel peer did not join)");
    for (auto& k : req->keys())
        rep->add_values(m_kv[k]);
    return grpc::Status::OK;
}

void KvStoreService::erasePrefix(const std::string& prefix)
{
    std::lock_guard lock(m_mutex);
    for (auto it = m_kv.lower_bound(prefix); it != m_kv.end() && it->first.compare(0, prefix.size(), prefix) == 0;) {
        m_bytes -= it->first.size() + it->second.size();
        it = m_kv.erase(it);
    }
}

} // namespace together
