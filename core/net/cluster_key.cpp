// SPDX-License-Identifier: MIT
#include "net/cluster_key.h"

#include "base/error.h"
#include "base/files.h"
#include "base/hex.h"
#include "base/user_dirs.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

#include <fcntl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

namespace together {

namespace {

constexpr size_t kKeyBytes = 32;
constexpr size_t kKeySymbols = 52;   // ceil(256 / 5)
constexpr size_t kCheckSymbols = 4;  // 20 bits
constexpr const char* kAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"; // Crockford: no I, L, O, U

int symbolValue(char c)
{
    if (c >= 'a' && c <= 'z')
        c = static_cast<char>(c - 'a' + 'A');
    if (c == 'O')
        c = '0';
    if (c == 'I' || c == 'L')
        c = '1';
    const char* p = std::strchr(kAlphabet, c);
    return c != '\0' && p ? static_cast<int>(p - kAlphabet) : -1;
}

// 20 bits of SHA-256("together cluster key check" || key), as 4 symbols.
std::string checkSymbols(const std::string& key)
{
    static const std::string label = "together cluster key check";
    unsigned char h[32];
    unsigned int n = 0;
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), nullptr);
    EVP_DigestUpdate(md, label.data(), label.size());
    EVP_DigestUpdate(md, key.data(), key.size());
    EVP_DigestFinal_ex(md, h, &n);
    EVP_MD_CTX_free(md);
    const uint32_t bits = (uint32_t(h[0]) << 12) | (uint32_t(h[1]) << 4) | (h[2] >> 4);
    std::string s;
    for (int i = 3; i >= 0; --i)
        s += kAlphabet[(bits >> (5 * i)) & 31];
    return s;
}

bool parseHex(std::string_view h, std::string& out)
{
    if (h.size() != 2 * kKeyBytes)
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

} // namespace

ClusterKey ClusterKey::generate()
{
    ClusterKey k;
    k.m_bytes.resize(kKeyBytes);
    if (RAND_bytes(reinterpret_cast<unsigned char*>(k.m_bytes.data()), static_cast<int>(kKeyBytes)) != 1)
        throw Error("cannot get random bytes for a cluster key");
    return k;
}

ClusterKey ClusterKey::fromText(std::string_view text)
{
    std::string compact;
    for (char c : text)
        if (c != ' ' && c != '-' && c != '\t' && c != '\n' && c != '\r')
            compact += c;
    ClusterKey k;
    if (parseHex(compact, k.m_bytes)) // key files of together 0.1
        return k;
    if (compact.size() != kKeySymbols + kCheckSymbols)
        throw Error("a cluster key has " + std::to_string(kKeySymbols + kCheckSymbols) + " letters and digits (14 groups of 4); got " +
                    std::to_string(compact.size()));
    std::string bytes;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < kKeySymbols; ++i) {
        int v = symbolValue(compact[i]);
        if (v < 0)
            throw Error(std::string("a cluster key has no '") + compact[i] + "' (it uses 0-9 and A-Z without I, L, O, U)");
        acc = (acc << 5) | static_cast<uint32_t>(v);
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            bytes.push_back(static_cast<char>((acc >> bits) & 0xff));
        }
    }
    std::string check;
    for (size_t i = kKeySymbols; i < compact.size(); ++i) {
        int v = symbolValue(compact[i]);
        if (v < 0)
            throw Error(std::string("a cluster key has no '") + compact[i] + "' (it uses 0-9 and A-Z without I, L, O, U)");
        check += kAlphabet[v];
    }
    if ((acc & ((1u << bits) - 1)) != 0 || bytes.size() != kKeyBytes || check != checkSymbols(bytes))
        throw Error("this is not the cluster key: its last group does not match the rest (a typo?)");
    k.m_bytes = bytes;
    return k;
}

std::string ClusterKey::text() const
{
    std::string s;
    uint32_t acc = 0;
    int bits = 0;
    for (unsigned char b : m_bytes) {
        acc = (acc << 8) | b;
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            s += kAlphabet[(acc >> bits) & 31];
        }
    }
    if (bits > 0)
        s += kAlphabet[(acc << (5 - bits)) & 31];
    s += checkSymbols(m_bytes);
    std::string grouped;
    for (size_t i = 0; i < s.size(); ++i) {
        if (i && i % 4 == 0)
            grouped += '-';
        grouped += s[i];
    }
    return grouped;
}

std::string ClusterKey::fingerprint() const
{
    static const std::string label = "together cluster key fingerprint v1";
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_sha256(), m_bytes.data(), static_cast<int>(m_bytes.size()), reinterpret_cast<const unsigned char*>(label.data()),
         label.size(), out, &len);
    return toHex(std::string_view(reinterpret_cast<const char*>(out), 8));
}

ClusterKey ClusterKey::fromFile(const std::string& path)
{
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw Error("cluster key file " + path + ": " + std::strerror(errno) +
                    (errno == ENOENT ? " (make a key with together-cli keygen, or start a worker without --key-file to type one)" : ""));
    if (st.st_mode & (S_IRWXG | S_IRWXO))
        throw Error("cluster key file " + path + " can be read by other users (mode " + [&] {
            char m[8];
            std::snprintf(m, sizeof m, "%03o", st.st_mode & 0777);
            return std::string(m);
        }() + "): chmod 600 it");
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#')
            continue;
        try {
            return fromText(line);
        } catch (const Error& e) {
            throw Error("cluster key file " + path + ": " + e.what());
        }
    }
    throw Error("cluster key file " + path + " holds no key (make one with together-cli keygen)");
}

void ClusterKey::writeFile(const std::string& path, AtomicFile::Existing existing) const
{
    std::filesystem::path p(path);
    if (p.has_parent_path())
        makePrivateDirs(p.parent_path().string());
    const std::string body = "# together cluster key: give it only to your own machines\n" + text() + "\n";
    try {
        atomicWrite(path, body, 0600, existing);
    } catch (const Error& e) {
        std::error_code ec;
        if (existing == AtomicFile::Existing::Keep && std::filesystem::exists(path, ec))
            throw Error("cannot create key file " + path + ": it exists (refusing to overwrite an existing key)");
        throw;
    }
}

std::string defaultKeyFile() { return configDir() + "/cluster.key"; }

ClusterKey readKeyFromTerminal(const std::string& prompt)
{
    FILE* tty = std::fopen("/dev/tty", "r+");
    if (!tty)
        throw Error("no terminal to ask for the cluster key on");
    // The key is a secret: it is not shown as it is typed (its check group catches typos).
    termios saved {};
    const bool isTerminal = ::tcgetattr(::fileno(tty), &saved) == 0;
    if (isTerminal) {
        termios quiet = saved;
        quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
        quiet.c_lflag |= ECHONL;
        ::tcsetattr(::fileno(tty), TCSAFLUSH, &quiet);
    }
    std::optional<ClusterKey> key;
    std::string lastError;
    for (int attempt = 0; attempt < 3 && !key; ++attempt) {
        std::fprintf(tty, "%s", prompt.c_str());
        std::fflush(tty);
        char buf[512];
        if (!std::fgets(buf, sizeof buf, tty))
            break;
        try {
            key = ClusterKey::fromText(buf);
        } catch (const Error& e) {
            lastError = e.what();
            std::fprintf(tty, "%s\n", e.what());
        }
    }
    if (isTerminal)
        ::tcsetattr(::fileno(tty), TCSAFLUSH, &saved);
    std::fclose(tty);
    if (!key)
        throw Error("no cluster key was entered" + (lastError.empty() ? std::string() : ": " + lastError));
    return *key;
}

} // namespace together
