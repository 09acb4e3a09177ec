// SPDX-License-Identifier: MIT
#include "shard/slice_cache.h"

#include "base/hex.h"

#include "base/error.h"
#include "model/safetensors.h"
#include "base/files.h"
#include "base/user_dirs.h"

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>
#include <set>

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace together {

namespace {

constexpr char kMagic[8] = {'T', 'G', 'S', 'L', 'I', 'C', 'E', '1'};
constexpr uint64_t kPrefixBytes = 16;           // magic + header length
constexpr uint64_t kMaxHeaderBytes = 8u << 20; // far above any real slice's header; caps a hostile length
constexpr int kMaxHeaderDepth = 4;
constexpr size_t kMaxRank = 8;
constexpr const char* kEntrySuffix = ".slice";
constexpr const char* kLegacyTempPrefix = "tmp-";
constexpr const char* kLockName = "lock";
// A temporary file older than this whose writer no longer holds its lock was left by a crash.
constexpr time_t kStaleTempSeconds = 600;

// Closes the descriptor it holds.
class Fd {
public:
    explicit Fd(int fd)
        : m_fd(fd)
    {
    }
    ~Fd()
    {
        if (m_fd >= 0)
            ::close(m_fd);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    int get() const { return m_fd; }
    bool valid() const { return m_fd >= 0; }

private:
    int m_fd;
};

// The folder-wide lock every process sharing the cache takes to store, evict or touch: FileLock (flock) on
// DIR/lock, so two SliceCache objects (or threads) of one process exclude each other too.
std::string lockPath(const std::string& dir) { return dir + "/" + kLockName; }

class Sha256 {
public:
    Sha256()
        : m_ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free)
    {
        if (!m_ctx || EVP_DigestInit_ex(m_ctx.get(), EVP_sha256(), nullptr) != 1)
            throw Error("SHA-256 is not available");
    }
    void update(const void* data, size_t n) { EVP_DigestUpdate(m_ctx.get(), data, n); }
    void updateU64(uint64_t v)
    {
        unsigned char b[8];
        for (int i = 0; i < 8; ++i)
            b[i] = static_cast<unsigned char>(v >> (8 * i));
        update(b, sizeof b);
    }
    // A length-prefixed field: ("ab", "c") and ("a", "bc") hash differently.
    void field(const std::string& s)
    {
        updateU64(s.size());
        update(s.data(), s.size());
    }
    std::string digest()
    {
        unsigned char out[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        EVP_DigestFinal_ex(m_ctx.get(), out, &n);
        return std::string(reinterpret_cast<const char*>(out), n);
    }

private:
    std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> m_ctx;
};

std::string sha256(const std::vector<std::byte>& bytes)
{
    Sha256 h;
    h.update(bytes.data(), bytes.size());
    return h.digest();
}


// The byte size of a tensor of `shape` in the named type (a dtype or a ggml block type); false on an unknown
// type, a negative dimension, an overflow or a row that is not whole blocks.
bool tensorBytes(const std::vector<int64_t>& shape, const std::string& type, uint64_t& out)
{
    try {
        const std::optional<uint64_t> n = tensorTypeBytes(parseTensorType(type, "slice cache"), shape);
        if (!n)
            return false;
        out = *n;
        return true;
    } catch (const Error&) {
        return false;
    }
}

timespec now()
{
    // CLOCK_REALTIME at full resolution: UTIME_NOW uses the kernel's coarse clock, which can give two
    // operations a few milliseconds apart the same time and so blur the LRU order.
    timespec t {};
    ::clock_gettime(CLOCK_REALTIME, &t);
    return t;
}

void setModified(int fd)
{
    const timespec times[2] = {{0, UTIME_OMIT}, now()};
    ::futimens(fd, times);
}

bool readAllAt(int fd, void* data, size_t n, uint64_t offset)
{
    char* p = static_cast<char*>(data);
    while (n > 0) {
        const ssize_t r = ::pread(fd, p, std::min<size_t>(n, 1u << 30), static_cast<off_t>(offset));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false; // an error, or the file ended early
        p += r;
        n -= static_cast<size_t>(r);
        offset += static_cast<uint64_t>(r);
    }
    return true;
}

bool isEntryName(const std::string& name)
{
    const size_t suffix = std::strlen(kEntrySuffix);
    return name.size() == 64 + suffix && name.compare(64, suffix, kEntrySuffix) == 0 &&
           SliceCache::isValidKey(name.substr(0, 64));
}

struct EntryFile {
    std::string path;
    std::string name;
    uint64_t size = 0;
    timespec modified {};
};

// Lists the folder's entries (and, in `temps`, its temporary files). A folder that cannot be read lists
// nothing.
std::vector<EntryFile> listEntries(const std::string& dir, std::vector<EntryFile>* temps = nullptr)
{
    std::vector<EntryFile> out;
    std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
    if (!d)
        return out;
    while (const dirent* e = ::readdir(d.get())) {
        const std::string name = e->d_name;
        const bool entry = isEntryName(name);
        // AtomicFile's temporaries, and "tmp-…" ones an older version wrote
        const bool temp = !entry && (AtomicFile::isTemporaryName(name) || name.rfind(kLegacyTempPrefix, 0) == 0);
        if (!entry && !(temp && temps))
            continue;
        EntryFile f;
        f.name = name;
        f.path = dir + "/" + name;
        struct stat st {};
        if (::lstat(f.path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
            continue; // gone meanwhile, or not ours
        f.size = static_cast<uint64_t>(st.st_size);
        f.modified = st.st_mtim;
        (entry ? out : *temps).push_back(std::move(f));
    }
    return out;
}

bool earlier(const timespec& a, const timespec& b)
{
    return a.tv_sec != b.tv_sec ? a.tv_sec < b.tv_sec : a.tv_nsec < b.tv_nsec;
}

// Reads and checks one entry through `fd`; nullopt for anything wrong with it. Every length is checked
// against the file's size before it is allocated or read.
std::optional<std::vector<CachedTensor>> readEntry(int fd, const struct stat& st, const std::string& key,
                                                   const std::map<std::string, std::string>& expected,
                                                   const std::map<std::string, std::vector<int64_t>>& shapes)
{
    using nlohmann::json;
    if (!S_ISREG(st.st_mode) || st.st_size < static_cast<off_t>(kPrefixBytes))
        return std::nullopt;
    const uint64_t fileSize = static_cast<uint64_t>(st.st_size);
    unsigned char prefix[kPrefixBytes];
    if (!readAllAt(fd, prefix, sizeof prefix, 0) || std::memcmp(prefix, kMagic, sizeof kMagic) != 0)
        return std::nullopt;
    uint64_t headerBytes = 0;
    for (int i = 0; i < 8; ++i)
        headerBytes |= static_cast<uint64_t>(prefix[8 + i]) << (8 * i);
    if (headerBytes > kMaxHeaderBytes || headerBytes > fileSize - kPrefixBytes)
        return std::nullopt;
    std::string headerText(headerBytes, '\0');
    if (!readAllAt(fd, headerText.data(), headerText.size(), kPrefixBytes))
        return std::nullopt;
    // A real header is two levels deep (an object of tensor objects with shape arrays): deeper nesting is
    // refused while parsing, before it can balloon into a tree.
    const json header = json::parse(
        headerText,
        [](int depth, json::parse_event_t, json&) {
            if (depth > kMaxHeaderDepth)
                throw Error("slice cache header nested too deep");
            return true;
        },
        false);
    if (header.is_discarded() || !header.is_object())
        return std::nullopt;
    const auto keyIt = header.find("key");
    const auto tensorsIt = header.find("tensors");
    if (keyIt == header.end() || !keyIt->is_string() || keyIt->get<std::string>() != key ||
        tensorsIt == header.end() || !tensorsIt->is_array() || tensorsIt->size() != expected.size())
        return std::nullopt;

    const uint64_t dataStart = kPrefixBytes + headerBytes;
    const uint64_t dataBytes = fileSize - dataStart;
    uint64_t next = 0; // tensors lie back to back, in header order
    std::set<std::string> seen;
    std::vector<CachedTensor> tensors;
    std::vector<uint64_t> sizes;
    for (const json& t : *tensorsIt) {
        if (!t.is_object())
            return std::nullopt;
        const auto name = t.find("name"), dtype = t.find("dtype"), shape = t.find("shape"),
                   offset = t.find("offset"), size = t.find("size"), hash = t.find("sha256");
        if (name == t.end() || !name->is_string() || dtype == t.end() || !dtype->is_string() ||
            shape == t.end() || !shape->is_array() || shape->size() > kMaxRank || offset == t.end() ||
            !offset->is_number_unsigned() || size == t.end() || !size->is_number_unsigned() ||
            hash == t.end() || !hash->is_string())
            return std::nullopt;
        CachedTensor c;
        c.name = name->get<std::string>();
        c.dtype = dtype->get<std::string>();
        if (!seen.insert(c.name).second)
            return std::nullopt;
        for (const json& d : *shape) {
            // Non-negative integers parse as unsigned; anything above int64's range is refused.
            if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
                return std::nullopt;
            c.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
        }
        if (!shapes.empty()) {
            const auto want = shapes.find(c.name);
            if (want == shapes.end() || want->second != c.shape)
                return std::nullopt;
        }
        uint64_t bytes = 0;
        if (!tensorBytes(c.shape, c.dtype, bytes) || size->get<uint64_t>() != bytes ||
            offset->get<uint64_t>() != next || bytes > dataBytes - next)
            return std::nullopt;
        const auto raw = fromHex(hash->get<std::string>());
        const auto want = expected.find(c.name);
        if (!raw || raw->size() != 32 || want == expected.end() || want->second != *raw)
            return std::nullopt;
        c.sha256 = *raw;
        next += bytes;
        sizes.push_back(bytes);
        tensors.push_back(std::move(c));
    }
    if (next != dataBytes) // trailing bytes, or a file cut short
        return std::nullopt;

    // Only now, with every size known to fit in the file, the data is read and hashed again.
    uint64_t at = dataStart;
    for (size_t i = 0; i < tensors.size(); ++i) {
        tensors[i].bytes.resize(sizes[i]);
        if (!readAllAt(fd, tensors[i].bytes.data(), sizes[i], at) ||
            sha256(tensors[i].bytes) != tensors[i].sha256)
            return std::nullopt;
        at += sizes[i];
    }
    return tensors;
}

} // namespace

SliceCache::SliceCache(std::string dir, uint64_t maxBytes)
    : m_dir(std::move(dir))
    , m_maxBytes(maxBytes)
{
    if (m_maxBytes > 0)
        makePrivateDirs(m_dir);
}

bool SliceCache::isValidKey(const std::string& key)
{
    return key.size() == 64 && fromHex(key).has_value();
}

std::string SliceCache::key(const std::string& modelIdentity, const std::string& sliceDescription,
                            const std::vector<std::pair<std::string, std::string>>& tensorHashes)
{
    Sha256 h;
    h.field("together slice cache key v1");
    h.field(modelIdentity);
    h.field(sliceDescription);
    h.updateU64(tensorHashes.size());
    for (const auto& [name, hash] : tensorHashes) {
        h.field(name);
        h.field(hash);
    }
    return toHex(h.digest());
}

std::string SliceCache::entryPath(const std::string& key) const
{
    if (!isValidKey(key))
        throw Error("slice cache key '" + key.substr(0, 80) + "' is not 64 lower-case hex digits");
    return m_dir + "/" + key + kEntrySuffix;
}

void SliceCache::store(const std::string& key, const std::vector<const CachedTensor*>& tensors)
{
    if (m_maxBytes == 0)
        return;
    const std::string path = entryPath(key);

    nlohmann::json list = nlohmann::json::array();
    std::set<std::string> names;
    uint64_t dataBytes = 0;
    for (const CachedTensor* t : tensors) {
        if (!t)
            throw Error("slice cache entry " + path + ": a null tensor");
        uint64_t bytes = 0;
        if (t->shape.size() > kMaxRank || !tensorBytes(t->shape, t->dtype, bytes) || bytes != t->bytes.size())
            throw Error("slice cache entry " + path + ": tensor " + t->name + " has " +
                        std::to_string(t->bytes.size()) + " bytes, which does not match its shape");
        if (t->sha256.size() != 32)
            throw Error("slice cache entry " + path + ": tensor " + t->name + " has a hash of " +
                        std::to_string(t->sha256.size()) + " bytes (32 expected)");
        if (!names.insert(t->name).second)
            throw Error("slice cache entry " + path + ": tensor " + t->name + " appears twice");
        list.push_back({{"name", t->name},
                        {"dtype", t->dtype},
                        {"shape", t->shape},
                        {"offset", dataBytes},
                        {"size", bytes},
                        {"sha256", toHex(t->sha256)}});
        dataBytes += bytes;
    }
    std::string header;
    try {
        header = nlohmann::json {{"key", key}, {"tensors", list}}.dump();
    } catch (const nlohmann::json::exception& e) {
        throw Error("slice cache entry " + path + ": " + e.what()); // a name that is not UTF-8
    }
    const uint64_t fileBytes = kPrefixBytes + header.size() + dataBytes;
    if (fileBytes > m_maxBytes)
        return; // it would evict everything and still not fit

    AtomicFile file(path, 0600);
    // Held until the file is renamed: a temporary file nobody holds locked belongs to a crashed writer.
    ::flock(file.fd(), LOCK_EX);
    unsigned char prefix[kPrefixBytes];
    std::memcpy(prefix, kMagic, sizeof kMagic);
    for (int i = 0; i < 8; ++i)
        prefix[8 + i] = static_cast<unsigned char>(static_cast<uint64_t>(header.size()) >> (8 * i));
    file.write(prefix, sizeof prefix);
    file.write(header);
    for (const CachedTensor* t : tensors)
        file.write(t->bytes.data(), t->bytes.size());
    file.sync(); // before the lock: other shards of this worker store and touch entries meanwhile
    FileLock lock(lockPath(m_dir));
    setModified(file.fd()); // under the lock, so stores and touches are ordered as they happened
    file.commit();
    evictLocked();
}

void SliceCache::evictLocked()
{
    std::vector<EntryFile> temps;
    std::vector<EntryFile> entries = listEntries(m_dir, &temps);
    const timespec t = now();
    for (const EntryFile& f : temps) {
        if (t.tv_sec - f.modified.tv_sec < kStaleTempSeconds)
            continue;
        Fd fd(::open(f.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
        if (fd.valid() && ::flock(fd.get(), LOCK_EX | LOCK_NB) == 0)
            ::unlink(f.path.c_str());
    }
    std::sort(entries.begin(), entries.end(), [](const EntryFile& a, const EntryFile& b) {
        if (a.modified.tv_sec != b.modified.tv_sec || a.modified.tv_nsec != b.modified.tv_nsec)
            return earlier(a.modified, b.modified);
        return a.name < b.name;
    });
    uint64_t total = 0;
    for (const EntryFile& e : entries)
        total += e.size;
    for (const EntryFile& e : entries) {
        if (total <= m_maxBytes)
            break;
        if (::unlink(e.path.c_str()) == 0 || errno == ENOENT)
            total -= e.size;
    }
}

std::optional<std::vector<CachedTensor>> SliceCache::load(const std::string& key, const std::map<std::string, std::string>& expected,
                                                          const std::map<std::string, std::vector<int64_t>>& shapes)
{
    if (m_maxBytes == 0)
        return std::nullopt;
    const std::string path = entryPath(key);
    // Read without the lock: a store replaces the entry by rename and eviction unlinks it, and either way the
    // file open here stays whole until it is closed.
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
    struct stat st {};
    std::optional<std::vector<CachedTensor>> tensors;
    if (fd.valid() && ::fstat(fd.get(), &st) == 0) {
        // Reading an entry allocates its size: one larger than the cache itself was never stored by it (store
        // refuses those), and a sparse file can claim a terabyte. Refused before reading (found by ASan, which
        // aborts on such an allocation where a normal build threw std::bad_alloc).
        if (static_cast<uint64_t>(st.st_size) <= m_maxBytes) {
            try {
                tensors = readEntry(fd.get(), st, key, expected, shapes);
            } catch (const std::exception&) { // malformed JSON, too deep, or more than the memory holds
                tensors.reset();
            }
        }
    } else if (errno == ENOENT) {
        return std::nullopt; // a plain miss
    }
    try {
        FileLock lock(lockPath(m_dir));
        if (tensors) {
            setModified(fd.get()); // most recently used
        } else {
            // Remove the bad entry, unless another process has stored a fresh one under the key meanwhile.
            struct stat current {};
            if (::lstat(path.c_str(), &current) == 0 &&
                (!fd.valid() || (current.st_dev == st.st_dev && current.st_ino == st.st_ino)))
                ::unlink(path.c_str());
        }
    } catch (const Error&) {
        // No lock (a full disk, a read-only folder): the hit is still a hit; the bad entry stays a miss.
    }
    return tensors;
}

uint64_t SliceCache::totalBytes() const
{
    uint64_t total = 0;
    for (const EntryFile& e : listEntries(m_dir))
        total += e.size;
    return total;
}

} // namespace together
