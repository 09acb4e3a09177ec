// SPDX-License-Identifier: MIT
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>

namespace together {

// The shared secret of a cluster: 32 random bytes, stored as 64 hex digits in a file of mode 0600.
class ClusterKey {
public:
    static ClusterKey fromFile(const std::string& path); // throws Error naming the problem
    // Writes a new random key; refuses to overwrite an existing file.
    static void generateFile(const std::string& path);
    const std::string& bytes() const { return m_bytes; }

private:
    std::string m_bytes;
};

// Proof of the key for one call, without the key: "<unix ms>.<nonce hex>.<hmac hex>" where the HMAC-SHA256
// covers "<method>\n<unix ms>\n<nonce hex>". Sent as metadata "x-together-auth".
constexpr const char* kAuthMetadata = "x-together-auth";
std::string makeAuthProof(const ClusterKey& key, std::string_view method);
void addAuth(grpc::ClientContext& context, const ClusterKey& key, std::string_view method);

// Server side: checks the proof, the time window and that the nonce is fresh.
class AuthVerifier {
public:
    explicit AuthVerifier(ClusterKey key, std::chrono::seconds window = std::chrono::seconds(120));
    grpc::Status verify(const grpc::ServerContext& context, std::string_view method);

private:
    ClusterKey m_key;
    std::chrono::seconds m_window;
    std::mutex m_mutex;
    std::unordered_set<std::string> m_seen;
    std::deque<std::pair<int64_t, std::string>> m_seenOrder;
};

} // namespace together
