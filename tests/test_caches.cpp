// SPDX-License-Identifier: MIT
// The worker's slice cache (entries on disk, checked on the way back in, LRU eviction, shared by processes)
// and the master's tensor-hash cache (valid while the model file is unchanged, persistent, thread-safe).
#include "base/error.h"
#include "model/hash_cache.h"
#include "shard/slice_cache.h"
#include "test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace together;
namespace fs = std::filesystem;

namespace {

std::string sha256(const void* data, size_t n)
{
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data, n, out, &len, EVP_sha256(), nullptr);
    return std::string(reinterpret_cast<const char*>(out), len);
}

std::string sha256(const std::string& s) { return sha256(s.data(), s.size()); }

CachedTensor makeTensor(const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
                        uint32_t seed)
{
    CachedTensor t;
    t.name = name;
    t.dtype = dtype;
    t.shape = std::move(shape);
    size_t n = dtype == "F32" ? 4 : 2;
    for (int64_t d : t.shape)
        n *= static_cast<size_t>(d);
    std::mt19937 rng(seed);
    t.bytes.resize(n);
    for (auto& b : t.bytes)
        b = static_cast<std::byte>(rng());
    t.sha256 = sha256(t.bytes.data(), t.bytes.size());
    return t;
}

// A slice of three tensors, one of each dtype, different for each seed.
std::vector<CachedTensor> makeSlice(uint32_t seed, int64_t rows = 8)
{
    return {makeTensor("layers.0.q.weight", "F32", {rows, 16}, seed * 3),
            makeTensor("layers.0.norm.weight", "F16", {16}, seed * 3 + 1),
            makeTensor("layers.0.down.weight", "BF16", {16, rows}, seed * 3 + 2)};
}

std::vector<const CachedTensor*> views(const std::vector<CachedTensor>& slice)
{
    std::vector<const CachedTensor*> out;
    for (auto& t : slice)
        out.push_back(&t);
    return out;
}

std::map<std::string, std::string> expectedOf(const std::vector<CachedTensor>& slice)
{
    std::map<std::string, std::string> out;
    for (auto& t : slice)
        out[t.name] = t.sha256;
    return out;
}

std::string keyOf(const std::vector<CachedTensor>& slice,
                  const std::string& description = "layers 0-1, tp 0/1, f32")
{
    std::vector<std::pair<std::string, std::string>> hashes;
    for (auto& t : slice)
        hashes.emplace_back(t.name, t.sha256);
    return SliceCache::key("{\"model_type\": \"llama\"}", description, hashes);
}

std::string entryFile(const std::string& dir, const std::string& key) { return dir + "/" + key + ".slice"; }

std::string readFile(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

void writeFile(const std::string& path, const std::string& text)
{
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
}

// An entry file with a header of our choosing (for hostile files): magic, length, JSON, data.
std::string handMadeEntry(const std::string& header, const std::string& data, uint64_t headerLength)
{
    std::string out = "TGSLICE1";
    for (int i = 0; i < 8; ++i)
        out += static_cast<char>(headerLength >> (8 * i));
    return out + header + data;
}

// Files in the cache folder that are neither an entry nor the lock: what a store left behind.
size_t tempFilesIn(const std::string& dir)
{
    size_t n = 0;
    for (auto& e : fs::directory_iterator(dir)) {
        const std::string name = e.path().filename().string();
        n += name != "lock" && !(name.size() > 6 && name.compare(name.size() - 6, 6, ".slice") == 0);
    }
    return n;
}

void expectSameSlice(const std::vector<CachedTensor>& want, const std::vector<CachedTensor>& got)
{
    ASSERT_EQ(want.size(), got.size());
    for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ(want[i].name, got[i].name);
        EXPECT_EQ(want[i].dtype, got[i].dtype);
        EXPECT_EQ(want[i].shape, got[i].shape);
        EXPECT_EQ(want[i].sha256, got[i].sha256);
        EXPECT_TRUE(want[i].bytes == got[i].bytes) << want[i].name;
    }
}

} // namespace

TEST(SliceCache, StoresAndLoadsSliceWithPrivateModes)
{
    const std::string dir = test::makeTempDir("slice-cache") + "/nested/cache";
    SliceCache cache(dir, 1 << 20);
    struct stat st {};
    ASSERT_EQ(::stat(dir.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);

    const auto slice = makeSlice(1);
    const std::string key = keyOf(slice);
    EXPECT_FALSE(cache.load(key, expectedOf(slice))); // a plain miss
    cache.store(key, views(slice));
    ASSERT_EQ(::stat(entryFile(dir, key).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_EQ(cache.totalBytes(), static_cast<uint64_t>(st.st_size));
    EXPECT_EQ(tempFilesIn(dir), 0u);

    const auto got = cache.load(key, expectedOf(slice));
    ASSERT_TRUE(got);
    expectSameSlice(slice, *got);
    // A second cache object on the same folder (another shard process) sees it too.
    const auto again = SliceCache(dir, 1 << 20).load(key, expectedOf(slice));
    ASSERT_TRUE(again);
    expectSameSlice(slice, *again);
}

TEST(SliceCache, CorruptedByteIsMissAndEntryRemoved)
{
    const std::string dir = test::makeTempDir("slice-cache");
    SliceCache cache(dir, 1 << 20);
    const auto slice = makeSlice(2);
    const std::string key = keyOf(slice);
    const std::string file = entryFile(dir, key);
    cache.store(key, views(slice));
    const std::string good = readFile(file);
    // A byte in the data (first and last tensor), in the JSON header, in the header length, in the magic.
    for (size_t pos : {good.size() - 1, good.size() - 200, size_t(40), size_t(9), size_t(0)}) {
        std::string bad = good;
        bad[pos] = static_cast<char>(bad[pos] ^ 0x5a);
        writeFile(file, bad);
        EXPECT_FALSE(cache.load(key, expectedOf(slice))) << "byte " << pos;
        EXPECT_FALSE(fs::exists(file)) << "byte " << pos;
    }
    writeFile(file, good);
    EXPECT_TRUE(cache.load(key, expectedOf(slice)));
}

TEST(SliceCache, TruncatedOrExtendedFileIsMiss)
{
    const std::string dir = test::makeTempDir("slice-cache");
    SliceCache cache(dir, 1 << 20);
    const auto slice = makeSlice(3);
    const std::string key = keyOf(slice);
    const std::string file = entryFile(dir, key);
    cache.store(key, views(slice));
    const std::string good = readFile(file);
    for (size_t len :
         {size_t(0), size_t(7), size_t(15), size_t(16), size_t(60), good.size() / 2, good.size() - 1}) {
        writeFile(file, good.substr(0, len));
        EXPECT_FALSE(cache.load(key, expectedOf(slice))) << "length " << len;
        EXPECT_FALSE(fs::exists(file)) << "length " << len;
    }
    writeFile(file, good + "x");
    EXPECT_FALSE(cache.load(key, expectedOf(slice)));
    EXPECT_FALSE(fs::exists(file));
}

TEST(SliceCache, WrongExpectedHashIsMiss)
{
    const std::string dir = test::makeTempDir("slice-cache");
    SliceCache cache(dir, 1 << 20);
    const auto slice = makeSlice(4);
    const std::string key = keyOf(slice);
    cache.store(key, views(slice));
    auto expected = expectedOf(slice);
    expected["layers.0.norm.weight"][5] ^= 1;
    EXPECT_FALSE(cache.load(key, expected));
    EXPECT_FALSE(fs::exists(entryFile(dir, key)));
    EXPECT_EQ(cache.totalBytes(), 0u);

    // A tensor stored with a hash that does not match its bytes is caught by hashing again.
    auto lying = slice;
    lying[0].bytes[3] ^= std::byte {1};
    cache.store(key, views(lying));
    EXPECT_FALSE(cache.load(key, expectedOf(slice)));
    EXPECT_FALSE(fs::exists(entryFile(dir, key)));
}

TEST(SliceCache, NameSetMismatchIsMiss)
{
    const std::string dir = test::makeTempDir("slice-cache");
    SliceCache cache(dir, 1 << 20);
    const auto slice = makeSlice(5);
    const std::string key = keyOf(slice);

    cache.store(key, views(slice));
    auto fewer = expectedOf(slice);
    fewer.erase("layers.0.q.weight");
    EXPECT_FALSE(cache.load(key, fewer));
    EXPECT_FALSE(fs::exists(entryFile(dir, key)));

    cache.store(key, views(slice));
    auto more = expectedOf(slice);
    more["layers.0.k.weight"] = std::string(32, '\1');
    EXPECT_FALSE(cache.load(key, more));
    EXPECT_FALSE(fs::exists(entryFile(dir, key)));

    cache.store(key, views(slice));
    auto renamed = expectedOf(slice);
    renamed["layers.0.k.weight"] = renamed["layers.0.q.weight"];
    renamed.erase("layers.0.q.weight");
    EXPECT_FALSE(cache.load(key, renamed));
    EXPECT_FALSE(fs::exists(entryFile(dir, key)));
}

TEST(SliceCache, HostileEntriesAreMissesNotCrashes)
{
    const std::string dir = test::makeTempDir("slice-cache");
    SliceCache cache(dir, 1 << 20);
    const auto slice = makeSlice(6);
    const std::string key = keyOf(slice);
    const std::string file = entryFile(dir, key);
    const auto& t = slice[1]; // F16 [16]: 32 bytes
    const std::string data(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
    std::string hex;
    for (unsigned char c : t.sha256) {
        static const char* d = "0123456789abcdef";
        hex += d[c >> 4];
        hex += d[c & 15];
    }
    const std::map<std::string, std::string> expected = {{t.name, t.sha256}};
    // The header of an entry holding `t`, with the fields given.
    const auto headerOf = [&](const std::string& shape, const std::string& offset, const std::string& size,
                              const std::string& entryKey) {
        return "{\"key\":\"" + entryKey + "\",\"tensors\":[{\"name\":\"" + t.name +
               "\",\"dtype\":\"F16\",\"shape\":" + shape + ",\"offset\":" + offset + ",\"size\":" + size +
               ",\"sha256\":\"" + hex + "\"}]}";
    };
    const auto entryOf = [&](const std::string& shape, const std::string& offset, const std::string& size,
                             const std::string& body, const std::string& entryKey) {
        const std::string h = headerOf(shape, offset, size, entryKey);
        return handMadeEntry(h, body, h.size());
    };
    // The hand-made well-formed entry loads: the cases below differ from it in one thing each.
    const std::string valid = headerOf("[16]", "0", "32", key);
    writeFile(file, handMadeEntry(valid, data, valid.size()));
    ASSERT_TRUE(cache.load(key, expected));

    const std::string padded = data + std::string(8, '\0');
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"huge header length", handMadeEntry(valid, data, uint64_t(1) << 62)},
        {"header length past the end", handMadeEntry(valid, data, valid.size() + data.size() + 1)},
        {"header not JSON", handMadeEntry("{oops", data, 5)},
        {"header an array", handMadeEntry("[]", data, 2)},
        {"size near 2^64", entryOf("[16]", "0", "18446744073709551615", data, key)},
        {"shape overflowing", entryOf("[4294967296, 4294967296, 4]", "0", "32", data, key)},
        {"negative dimension", entryOf("[-16]", "0", "32", data, key)},
        {"offset past the data", entryOf("[16]", "8", "32", padded, key)},
        {"size not matching the shape", entryOf("[8]", "0", "32", data, key)},
        {"another key", entryOf("[16]", "0", "32", data, std::string(64, 'a'))},
    };
    for (const auto& [what, bytes] : cases) {
        writeFile(file, bytes);
        EXPECT_FALSE(cache.load(key, expected)) << what;
        EXPECT_FALSE(fs::exists(file)) << what;
    }
    // A symbolic link where an entry should be: a miss, never followed, and removed.
    fs::create_symlink("/etc/passwd", file);
    EXPECT_FALSE(cache.load(key, expected));
    EXPECT_FALSE(fs::is_symlink(file));
}

TEST(SliceCache, EvictsLeastRecentlyUsedToStayUnderMax)
{
    const auto a = makeSlice(10), b = makeSlice(11), c = makeSlice(12), d = makeSlice(13);
    const std::string probeDir = test::makeTempDir("slice-cache-probe");
    SliceCache probe(probeDir, 1 << 20);
    probe.store(keyOf(a), views(a));
    const uint64_t entryBytes = probe.totalBytes();
    ASSERT_GT(entryBytes, 1000u);

    // Room for two entries, not three.
    const std::string dir = test::makeTempDir("slice-cache");
    SliceCache cache(dir, entryBytes * 2 + entryBytes / 2);
    cache.store(keyOf(a), views(a));
    cache.store(keyOf(b), views(b));
    EXPECT_EQ(cache.totalBytes(), 2 * entryBytes);
    ASSERT_TRUE(cache.load(keyOf(a), expectedOf(a))); // a is now more recent than b
    cache.store(keyOf(c), views(c));
    EXPECT_LE(cache.totalBytes(), cache.maxBytes());
    EXPECT_TRUE(fs::exists(entryFile(dir, keyOf(a))));
    EXPECT_FALSE(fs::exists(entryFile(dir, keyOf(b))));
    EXPECT_TRUE(fs::exists(entryFile(dir, keyOf(c))));

    // Without a touch the oldest goes: now a.
    cache.store(keyOf(d), views(d));
    EXPECT_LE(cache.totalBytes(), cache.maxBytes());
    EXPECT_FALSE(fs::exists(entryFile(dir, keyOf(a))));
    EXPECT_TRUE(cache.load(keyOf(c), expectedOf(c)));
    EXPECT_TRUE(cache.load(keyOf(d), expectedOf(d)));
}

TEST(SliceCache, SliceBiggerThanMaxIsNotStored)
{
    const auto small = makeSlice(20, 2), big = makeSlice(21, 64);
    const std::string probeDir = test::makeTempDir("slice-cache-probe");
    SliceCache probe(probeDir, 1 << 20);
    probe.store(keyOf(small), views(small));
    const uint64_t smallBytes = probe.totalBytes();

    const std::string dir = test::makeTempDir("slice-cache");
    SliceCache cache(dir, smallBytes + 100);
    cache.store(keyOf(small), views(small));
    cache.store(keyOf(big), views(big)); // neither stored nor evicting what is there
    EXPECT_FALSE(fs::exists(entryFile(dir, keyOf(big))));
    EXPECT_FALSE(cache.load(keyOf(big), expectedOf(big)));
    EXPECT_EQ(cache.totalBytes(), smallBytes);
    EXPECT_TRUE(cache.load(keyOf(small), expectedOf(small)));
    EXPECT_EQ(tempFilesIn(dir), 0u);
}

TEST(SliceCache, ZeroMaxDisablesCache)
{
    const std::string dir = test::makeTempDir("slice-cache") + "/never";
    SliceCache cache(dir, 0);
    const auto slice = makeSlice(30);
    cache.store(keyOf(slice), views(slice));
    EXPECT_FALSE(cache.load(keyOf(slice), expectedOf(slice)));
    EXPECT_EQ(cache.totalBytes(), 0u);
    EXPECT_EQ(cache.maxBytes(), 0u);
    EXPECT_FALSE(fs::exists(dir));
}

TEST(SliceCache, KeyIsHexAndUnambiguousAndOnlyHexKeysAreUsed)
{
    const std::vector<std::pair<std::string, std::string>> h1 = {{"a", std::string(32, 'x')},
                                                                 {"b", std::string(32, 'y')}};
    const std::vector<std::pair<std::string, std::string>> h2 = {{"b", std::string(32, 'y')},
                                                                 {"a", std::string(32, 'x')}};
    const std::string k = SliceCache::key("model", "slice", h1);
    EXPECT_TRUE(SliceCache::isValidKey(k)) << k;
    EXPECT_EQ(k, SliceCache::key("model", "slice", h1));
    EXPECT_NE(k, SliceCache::key("model", "slice", h2)); // order counts
    EXPECT_NE(k, SliceCache::key("models", "lice", h1)); // field boundaries count
    EXPECT_NE(k, SliceCache::key("model", "slice", {h1[0]}));
    EXPECT_NE(SliceCache::key("", "", {{"ab", "c"}}), SliceCache::key("", "", {{"a", "bc"}}));

    const std::string dir = test::makeTempDir("slice-cache");
    SliceCache cache(dir, 1 << 20);
    const auto slice = makeSlice(40);
    std::string upper = keyOf(slice);
    for (auto& ch : upper)
        ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    for (const std::string& bad :
         {std::string("../../etc/passwd"), std::string(), keyOf(slice).substr(1), keyOf(slice) + "0",
          std::string(63, 'a') + "/", std::string(63, 'a') + "g"}) {
        EXPECT_FALSE(SliceCache::isValidKey(bad)) << bad;
        EXPECT_THROW(cache.store(bad, views(slice)), Error) << bad;
        EXPECT_THROW(cache.load(bad, expectedOf(slice)), Error) << bad;
    }
    if (upper != keyOf(slice)) {
        EXPECT_THROW(cache.store(upper, views(slice)), Error);
    }
    EXPECT_EQ(cache.totalBytes(), 0u);
}

TEST(SliceCache, RejectsMalformedTensorsOnStore)
{
    const std::string dir = test::makeTempDir("slice-cache");
    SliceCache cache(dir, 1 << 20);
    auto slice = makeSlice(50);
    const std::string key = keyOf(slice);
    auto badDtype = slice;
    badDtype[0].dtype = "I64";
    EXPECT_THROW(cache.store(key, views(badDtype)), Error);
    auto badSize = slice;
    badSize[0].bytes.pop_back();
    EXPECT_THROW(cache.store(key, views(badSize)), Error);
    auto badHash = slice;
    badHash[0].sha256 = "short";
    EXPECT_THROW(cache.store(key, views(badHash)), Error);
    auto twice = slice;
    twice[1].name = twice[0].name;
    EXPECT_THROW(cache.store(key, views(twice)), Error);
    EXPECT_EQ(cache.totalBytes(), 0u);
    EXPECT_EQ(tempFilesIn(dir), 0u);
}

TEST(SliceCache, ConcurrentProcessesLeaveConsistentCache)
{
    const std::string probeDir = test::makeTempDir("slice-cache-probe");
    SliceCache probe(probeDir, 1 << 20);
    const auto first = makeSlice(100);
    probe.store(keyOf(first), views(first));
    const uint64_t entryBytes = probe.totalBytes();

    // Four processes store and load 12 slices each from a pool of 16 (so they overlap) in a folder with room
    // for 5: stores, evictions and touches interleave.
    const std::string dir = test::makeTempDir("slice-cache");
    const uint64_t maxBytes = entryBytes * 5 + entryBytes / 2;
    constexpr int kProcesses = 4, kPool = 16;
    std::vector<pid_t> children;
    for (int p = 0; p < kProcesses; ++p) {
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            int status = 0;
            try {
                SliceCache cache(dir, maxBytes);
                std::mt19937 rng(static_cast<uint32_t>(p));
                for (int i = 0; i < 12; ++i) {
                    const auto slice = makeSlice(100 + static_cast<uint32_t>(rng() % kPool));
                    cache.store(keyOf(slice), views(slice));
                    const auto other = makeSlice(100 + static_cast<uint32_t>(rng() % kPool));
                    if (auto got = cache.load(keyOf(other), expectedOf(other));
                        got && got->at(0).bytes != other[0].bytes)
                        status = 2;
                }
            } catch (...) {
                status = 1;
            }
            ::_exit(status);
        }
        children.push_back(pid);
    }
    for (pid_t pid : children) {
        int status = 0;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
    }
    SliceCache cache(dir, maxBytes);
    EXPECT_LE(cache.totalBytes(), maxBytes);
    EXPECT_EQ(tempFilesIn(dir), 0u);
    // Every entry left is whole: it loads and nothing is removed.
    int entries = 0;
    for (uint32_t s = 100; s < 100 + kPool; ++s) {
        const auto slice = makeSlice(s);
        if (!fs::exists(entryFile(dir, keyOf(slice))))
            continue;
        ++entries;
        const auto got = cache.load(keyOf(slice), expectedOf(slice));
        ASSERT_TRUE(got) << s;
        expectSameSlice(slice, *got);
    }
    EXPECT_GE(entries, 1);
    EXPECT_LE(entries, 5);
    size_t files = 0;
    for (auto& e : fs::directory_iterator(dir))
        files += e.path().extension() == ".slice";
    EXPECT_EQ(files, static_cast<size_t>(entries));
}

TEST(SliceCache, StoreWaitsForTheFolderLock)
{
    // The protocol between processes sharing the folder (documented in slice_cache.h): an flock on DIR/lock.
    const std::string dir = test::makeTempDir("slice-cache");
    SliceCache cache(dir, 1 << 20);
    const auto slice = makeSlice(60);
    const int lockFd = ::open((dir + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(lockFd, 0);
    ASSERT_EQ(::flock(lockFd, LOCK_EX), 0);
    std::atomic<bool> stored {false};
    std::thread writer([&] {
        cache.store(keyOf(slice), views(slice));
        stored = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_FALSE(stored);
    EXPECT_FALSE(fs::exists(entryFile(dir, keyOf(slice)))); // written to a temporary file, not yet renamed
    ::flock(lockFd, LOCK_UN);
    writer.join();
    ::close(lockFd);
    EXPECT_TRUE(stored);
    EXPECT_TRUE(cache.load(keyOf(slice), expectedOf(slice)));
    EXPECT_EQ(tempFilesIn(dir), 0u);
}

namespace {

// A counting compute function: the hash of `text`.
struct Counter {
    std::atomic<int> calls {0};
    std::function<std::string()> of(const std::string& text)
    {
        return [this, text] {
            ++calls;
            return sha256(text);
        };
    }
};

void setModifiedTime(const std::string& path, time_t seconds, long nanoseconds)
{
    const timespec times[2] = {{0, UTIME_OMIT}, {seconds, nanoseconds}};
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

} // namespace

TEST(TensorHashCache, ComputesOncePerKeyOfAnUnchangedFile)
{
    const std::string dir = test::makeTempDir("hash-cache");
    const std::string model = dir + "/model.safetensors";
    writeFile(model, "weights");
    TensorHashCache cache(dir + "/tensor-hashes.json");
    Counter c;
    EXPECT_EQ(cache.hash(model, "q[0:8]", c.of("q")), sha256("q"));
    EXPECT_EQ(cache.hash(model, "q[0:8]", c.of("q")), sha256("q"));
    EXPECT_EQ(c.calls, 1);
    EXPECT_EQ(cache.hits(), 1u);
    EXPECT_EQ(cache.misses(), 1u);
    EXPECT_EQ(cache.hash(model, "q[8:16]", c.of("q2")), sha256("q2"));
    EXPECT_EQ(c.calls, 2);
}

TEST(TensorHashCache, RecomputesAfterTheFileChanges)
{
    const std::string dir = test::makeTempDir("hash-cache");
    const std::string model = dir + "/model.safetensors";
    writeFile(model, "weights");
    setModifiedTime(model, 1700000000, 100);
    TensorHashCache cache(dir + "/tensor-hashes.json");
    Counter c;
    cache.hash(model, "k", c.of("v1"));
    cache.hash(model, "k", c.of("v1"));
    EXPECT_EQ(c.calls, 1);

    setModifiedTime(model, 1700000000, 101); // one nanosecond later, same size
    EXPECT_EQ(cache.hash(model, "k", c.of("v2")), sha256("v2"));
    EXPECT_EQ(c.calls, 2);
    EXPECT_EQ(cache.hash(model, "k", c.of("v2")), sha256("v2"));
    EXPECT_EQ(c.calls, 2);

    writeFile(model, "weights!"); // another size, the same modification time
    setModifiedTime(model, 1700000000, 101);
    EXPECT_EQ(cache.hash(model, "k", c.of("v3")), sha256("v3"));
    EXPECT_EQ(c.calls, 3);

    // A file changed while it was hashed: the hash is returned but not kept.
    const auto changingFile = [&] {
        ++c.calls;
        writeFile(model, "weights changed meanwhile");
        return sha256("mixed");
    };
    EXPECT_EQ(cache.hash(model, "other", changingFile), sha256("mixed"));
    EXPECT_EQ(cache.hash(model, "other", c.of("fresh")), sha256("fresh"));
    EXPECT_EQ(c.calls, 5);
}

TEST(TensorHashCache, PersistsAcrossInstancesThroughSave)
{
    const std::string dir = test::makeTempDir("hash-cache");
    const std::string model = dir + "/model.safetensors";
    const std::string file = dir + "/sub/tensor-hashes.json";
    writeFile(model, "weights");
    Counter c;
    {
        TensorHashCache cache(file);
        cache.save(); // nothing changed: nothing written
        EXPECT_FALSE(fs::exists(file));
        cache.hash(model, "a", c.of("a"));
        cache.hash(model, "b", c.of("b"));
        cache.save();
    }
    struct stat st {};
    ASSERT_EQ(::stat(file.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    const auto j = nlohmann::json::parse(readFile(file));
    EXPECT_EQ(j["files"][model]["hashes"]["a"],
              "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb");
    {
        TensorHashCache cache(file);
        EXPECT_EQ(cache.hash(model, "a", c.of("a")), sha256("a"));
        EXPECT_EQ(cache.hash(model, "b", c.of("b")), sha256("b"));
        EXPECT_EQ(c.calls, 2);
        EXPECT_EQ(cache.hits(), 2u);
    }
    // A changed model file invalidates what was saved for it.
    writeFile(model, "new weights");
    TensorHashCache cache(file);
    EXPECT_EQ(cache.hash(model, "a", c.of("a")), sha256("a"));
    EXPECT_EQ(c.calls, 3);
}

TEST(TensorHashCache, SaveKeepsWhatAnotherMasterSaved)
{
    const std::string dir = test::makeTempDir("hash-cache");
    const std::string file = dir + "/tensor-hashes.json";
    const std::string model1 = dir + "/one.safetensors", model2 = dir + "/two.safetensors";
    writeFile(model1, "one");
    writeFile(model2, "two");
    Counter c;
    TensorHashCache first(file), second(file);
    first.hash(model1, "k", c.of("1"));
    second.hash(model2, "k", c.of("2"));
    first.save();
    second.save();
    TensorHashCache reread(file);
    EXPECT_EQ(reread.hash(model1, "k", c.of("x")), sha256("1"));
    EXPECT_EQ(reread.hash(model2, "k", c.of("x")), sha256("2"));
    EXPECT_EQ(c.calls, 2);
}

TEST(TensorHashCache, CorruptFileIsEmptyCache)
{
    const std::string dir = test::makeTempDir("hash-cache");
    const std::string model = dir + "/model.safetensors";
    const std::string file = dir + "/tensor-hashes.json";
    writeFile(model, "weights");
    const std::string hex64(64, 'a');
    for (const std::string& text :
         {std::string("{not json"), std::string("[]"), std::string("\xff\xfe\x00garbage", 10), std::string(),
          std::string("{\"version\":1,\"files\":{\"" + model + "\":{\"size\":\"x\"}}}"),
          std::string("{\"version\":1,\"files\":{\"" + model +
                      "\":{\"size\":7,\"mtimeNs\":1,\"usedNs\":1,"
                      "\"hashes\":{\"k\":\"zz\"}}}}"),
          std::string("{\"version\":2,\"files\":{}}")}) {
        writeFile(file, text);
        TensorHashCache cache(file);
        Counter c;
        EXPECT_EQ(cache.hash(model, "k", c.of("k")), sha256("k")) << text;
        EXPECT_EQ(c.calls, 1) << text;
        cache.save(); // replaces the corrupt file with a good one
        TensorHashCache reread(file);
        EXPECT_EQ(reread.hash(model, "k", c.of("k")), sha256("k")) << text;
        EXPECT_EQ(c.calls, 1) << text;
    }
    // A folder where the file should be: empty, and saving fails quietly.
    fs::remove(file);
    fs::create_directory(file);
    TensorHashCache cache(file);
    Counter c;
    cache.hash(model, "k", c.of("k"));
    cache.save();
    EXPECT_EQ(c.calls, 1);
}

TEST(TensorHashCache, KeepsTheMostRecentlyUsedFiles)
{
    const std::string dir = test::makeTempDir("hash-cache");
    const std::string file = dir + "/tensor-hashes.json";
    const size_t n = TensorHashCache::kMaxFiles + 6;
    Counter c;
    {
        TensorHashCache cache(file);
        for (size_t i = 0; i < n; ++i) {
            const std::string model = dir + "/model-" + std::to_string(i);
            writeFile(model, "w");
            cache.hash(model, "k", c.of("k"));
        }
        cache.save();
    }
    const auto j = nlohmann::json::parse(readFile(file));
    EXPECT_EQ(j["files"].size(), TensorHashCache::kMaxFiles);
    for (size_t i = 0; i < n; ++i)
        EXPECT_EQ(j["files"].contains(dir + "/model-" + std::to_string(i)), i >= 6) << i;
}

TEST(TensorHashCache, ThreadsHashInParallel)
{
    const std::string dir = test::makeTempDir("hash-cache");
    const std::string file = dir + "/tensor-hashes.json";
    std::vector<std::string> models;
    for (int m = 0; m < 4; ++m) {
        models.push_back(dir + "/model-" + std::to_string(m));
        writeFile(models.back(), "weights " + std::to_string(m));
    }
    TensorHashCache cache(file);
    Counter c;
    constexpr int kThreads = 8, kKeys = 50;
    std::atomic<int> wrong {0};
    const auto work = [&](int t) {
        for (int k = 0; k < kKeys; ++k) {
            const std::string& model = models[(t + k) % models.size()];
            const std::string key = "t" + std::to_string(t) + "k" + std::to_string(k);
            if (cache.hash(model, key, c.of(model + key)) != sha256(model + key))
                ++wrong;
            if (k % 10 == 0)
                cache.save();
        }
    };
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back(work, t);
    for (auto& th : threads)
        th.join();
    EXPECT_EQ(wrong, 0);
    EXPECT_EQ(c.calls, kThreads * kKeys);
    EXPECT_EQ(cache.misses(), static_cast<uint64_t>(kThreads * kKeys));

    // A second pass from as many threads hits every time, and so does a fresh instance after save().
    threads.clear();
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back(work, t);
    for (auto& th : threads)
        th.join();
    EXPECT_EQ(wrong, 0);
    EXPECT_EQ(c.calls, kThreads * kKeys);
    EXPECT_EQ(cache.hits(), static_cast<uint64_t>(kThreads * kKeys));
    cache.save();
    TensorHashCache reread(file);
    for (int t = 0; t < kThreads; ++t) {
        for (int k = 0; k < kKeys; ++k) {
            const std::string& model = models[(t + k) % models.size()];
            const std::string key = "t" + std::to_string(t) + "k" + std::to_string(k);
            EXPECT_EQ(reread.hash(model, key, c.of("unused")), sha256(model + key));
        }
    }
    EXPECT_EQ(c.calls, kThreads * kKeys);
}
