// SPDX-License-Identifier: MIT
#include "core/auth.h"

#include "core/error.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace together {

namespace {

std::string toHex(const unsigned char* p, size_t n)
{
    static const char* d = "0123456789abcdef";
    std::string s;
    for (size_t i = 0; i < n; ++i) {
        s += d[p[i] >> 4];
        s += d[p[i] & 15];
    }
    return s;
}

bool fromHex(const std::string& h, std::string& out)
{
    if (h.size() % 2)
        return false;
    out.clear();
    for (size_t i = 0; i < h.size(); i += 2) {
        auto v = [](char c) -> int {
            if (c >= '0' && c <= '9')
                return c - '0';
            if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
            if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
            return -1;
        };
        int a = v(h[i]), b = v(h[i + 1]);
        if (a < 0 || b < 0)
            return false;
        out.push_back(static_cast<char>(a * 16 + b));
    }
    return true;
}

int64_t nowMs()
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string hmacHex(const std::string& key, const std::string& msg)
{
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(msg.data()), msg.size(),
         out, &len);
    return toHex(out, len);
}

} // namespace

ClusterKey ClusterKey::fromFile(const std::string& path)
{
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw Error("cluster key file " + path + ": " + std::strerror(errno));
    if (st.st_mode & (S_IRWXG | S_IRWXO))
        throw Error("cluster key file " + path + " is readable by other users (mode " + std::to_string(st.st_mode & 0777) +
                    "): chmod 600 it");
    std::ifstream in(path);
    std::string hex;
    in >> hex;
    ClusterKey k;
    if (!fromHex(hex, k.m_bytes) || k.m_bytes.size() < 16)
        throw Error("cluster key file " + path + " does not hold a key (64 hex digits; make one with together-cli keygen)");
    return k;
}

void ClusterKey::generateFile(const std::string& path)
{
    unsigned char b[32];
    if (RAND_bytes(b, sizeof b) != 1)
        throw Error("cannot get random bytes for a key");
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        throw Error("cannot create key file " + path + ": " + std::strerror(errno) +
                    (errno == EEXIST ? " (refusing to overwrite an existing key)" : ""));
    std::string line = toHex(b, sizeof b) + "\n";
    ssize_t n = ::write(fd, line.data(), line.size());
    ::close(fd);
    if (n != static_cast<ssize_t>(line.size()))
        throw Error("cannot write key file " + path);
}

std::string makeAuthProof(const ClusterKey& key, std::string_view method)
{
    unsigned char nonce[16];
    RAND_bytes(nonce, sizeof nonce);
    const std::string ts = std::to_string(nowMs());
    const std::string n = toHex(nonce, sizeof nonce);
    return ts + "." + n + "." + hmacHex(key.bytes(), std::string(method) + "\n" + ts + "\n" + n);
}

void addAuth(grpc::ClientContext& context, const ClusterKey& key, std::string_view method)
{
    context.AddMetadata(kAuthMetadata, makeAuthProof(key, method));
}

AuthVerifier::AuthVerifier(ClusterKey key, std::chrono::seconds window)
    : m_key(std::move(key))
    , m_window(window)
{
}

grpc::Status AuthVerifier::verify(const grpc::ServerContext& context, std::string_view method)
{
    const auto& md = context.client_metadata();
    auto it = md.find(kAuthMetadata);
    if (it == md.end())
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "refused: the call carries no proof of the cluster key");
    std::string proof(it->second.data(), it->second.size());
    size_t a = proof.find('.'), b = proof.find('.', a == std::string::npos ? 0 : a + 1);
    if (a == std::string::npos || b == std::string::npos || proof.size() > 256)
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "refused: malformed proof of the cluster key");
    std::string ts = proof.substr(0, a), nonce = proof.substr(a + 1, b - a - 1), mac = proof.substr(b + 1);
    int64_t t = 0;
    try {
        t = std::stoll(ts);
    } catch (...) {
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "refused: malformed proof of the cluster key");
    }
    std::string expected = hmacHex(m_key.bytes(), std::string(method) + "\n" + ts + "\n" + nonce);
    if (expected.size() != mac.size() || CRYPTO_memcmp(expected.data(), mac.data(), mac.size()) != 0)
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "refused: wrong cluster key");
    const int64_t now = nowMs();
    const int64_t windowMs = std::chrono::duration_cast<std::chrono::milliseconds>(m_window).count();
    if (t < now - windowMs || t > now + windowMs)
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                            "refused: the caller's clock differs from this worker's by " + std::to_string((t - now) / 1000) +
                                " s (more than " + std::to_string(windowMs / 1000) + " s)");
    std::lock_guard lock(m_mutex);
    while (!m_seenOrder.empty() && m_seenOrder.front().first < now - 2 * windowMs) {
        m_seen.erase(m_seenOrder.front().second);
        m_seenOrder.pop_front();
    }
    if (!m_seen.insert(nonce).second)
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "refused: replayed call (nonce already used)");
    m_seenOrder.emplace_back(now, nonce);
    return grpc::Status::OK;
}

} // namespace together
