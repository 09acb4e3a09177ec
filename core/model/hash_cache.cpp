// SPDX-License-Identifier: MIT
#include "model/hash_cache.h"

#include "base/files.h"
#include "base/hex.h"

#include "base/unicode.h"
#include "base/user_dirs.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace together {

namespace {

constexpr off_t kMaxFileBytes = 64 << 20; // a bigger file is not ours: it is ignored rather than read

int64_t wallClockNs()
{
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// The identity of a model file's contents as far as the cache can tell: its size and modification time.
bool fileStamp(const std::string& path, uint64_t& size, int64_t& modifiedNs)
{
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        return false;
    size = static_cast<uint64_t>(st.st_size);
    modifiedNs = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
    return true;
}

// JSON strings must be UTF-8; a path or key that is not is left out of the file rather than mangled (two
// mangled names could collide and hand one tensor's hash to another).
bool isUtf8(const std::string& s) { return unicode::sanitizeUtf8(s) == s; }

} // namespace

TensorHashCache::TensorHashCache(std::string file)
    : m_file(std::move(file))
    , m_files(read(m_file))
{
}

TensorHashCache::Records TensorHashCache::read(const std::string& file)
{
    using nlohmann::json;
    Records out;
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return out;
    std::string text;
    struct stat st {};
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= kMaxFileBytes) {
        text.resize(static_cast<size_t>(st.st_size));
        size_t done = 0;
        while (done < text.size()) {
            const ssize_t n = ::pread(fd, text.data() + done, text.size() - done, static_cast<off_t>(done));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            done += static_cast<size_t>(n);
        }
        text.resize(done);
    }
    ::close(fd);

    const json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object())
        return out;
    const auto files = j.find("files");
    if (files == j.end() || !files->is_object() || j.value("version", json()) != 1)
        return out;
    for (const auto& [path, r] : files->items()) {
        if (!r.is_object())
            continue;
        const auto size = r.find("size"), modified = r.find("mtimeNs"), used = r.find("usedNs"),
                   hashes = r.find("hashes");
        if (size == r.end() || !size->is_number_unsigned() || modified == r.end() ||
            !modified->is_number_integer() || used == r.end() || !used->is_number_integer() ||
            hashes == r.end() || !hashes->is_object())
            continue;
        FileRecord rec;
        rec.size = size->get<uint64_t>();
        rec.modifiedNs = modified->get<int64_t>();
        rec.usedNs = used->get<int64_t>();
        for (const auto& [key, hex] : hashes->items()) {
            if (!hex.is_string())
                continue;
            if (auto raw = fromHex(hex.get<std::string>()); raw && raw->size() == 32)
                rec.hashes.emplace(key, std::move(*raw));
        }
        out.emplace(path, std::move(rec));
    }
    return out;
}

std::string TensorHashCache::hash(const std::string& filePath, const std::string& key,
                                  const std::function<std::string()>& compute)
{
    uint64_t size = 0;
    int64_t modifiedNs = 0;
    const bool stamped = fileStamp(filePath, size, modifiedNs);
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        if (stamped) {
            const auto file = m_files.find(filePath);
            if (file != m_files.end() && file->second.size == size && file->second.modifiedNs == modifiedNs) {
                if (const auto h = file->second.hashes.find(key); h != file->second.hashes.end()) {
                    ++m_hits;
                    file->second.usedNs = wallClockNs();
                    ++m_changes;
                    return h->second;
                }
            }
        }
        ++m_misses;
    }
    std::string value = compute(); // unlocked: other threads hash other tensors meanwhile

    // A file that changed while it was hashed may have given a hash of neither version: not stored.
    uint64_t sizeAfter = 0;
    int64_t modifiedAfter = 0;
    if (!stamped || value.size() != 32 || !fileStamp(filePath, sizeAfter, modifiedAfter) ||
        sizeAfter != size || modifiedAfter != modifiedNs)
        return value;
    std::lock_guard<std::mutex> lock(m_mutex);
    FileRecord& rec = m_files[filePath];
    if (rec.size != size || rec.modifiedNs != modifiedNs) {
        rec.hashes.clear(); // computed for other contents of the file
        rec.size = size;
        rec.modifiedNs = modifiedNs;
    }
    rec.hashes[key] = value;
    rec.usedNs = wallClockNs();
    ++m_changes;
    return value;
}

uint64_t TensorHashCache::hits() const
{
    std::lock_guard<std::mutex> lock(m_mutex);
    return m_hits;
}

uint64_t TensorHashCache::misses() const
{
    std::lock_guard<std::mutex> lock(m_mutex);
    return m_misses;
}

void TensorHashCache::save()
{
    Records records;
    uint64_t changes = 0;
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        if (m_changes == m_savedChanges)
            return;
        records = m_files;
        changes = m_changes;
    }
    try {
        const std::filesystem::path parent = std::filesystem::path(m_file).parent_path();
        if (!parent.empty())
            makePrivateDirs(parent.string());
        // Another master may have saved hashes of other models since this one read the file: merged under the
        // lock, so two saving at once both keep theirs.
        FileLock lock(m_file + ".lock");
        for (auto& [path, rec] : read(m_file))
            records.emplace(path, std::move(rec));

        std::vector<std::pair<int64_t, const std::string*>> byUse;
        for (const auto& [path, rec] : records)
            byUse.emplace_back(rec.usedNs, &path);
        std::sort(byUse.begin(), byUse.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
        byUse.resize(std::min(byUse.size(), kMaxFiles));

        nlohmann::json files = nlohmann::json::object();
        for (const auto& [used, path] : byUse) {
            if (!isUtf8(*path))
                continue;
            const FileRecord& rec = records.at(*path);
            nlohmann::json hashes = nlohmann::json::object();
            for (const auto& [key, raw] : rec.hashes) {
                if (isUtf8(key))
                    hashes[key] = toHex(raw);
            }
            files[*path] = {
                {"size", rec.size}, {"mtimeNs", rec.modifiedNs}, {"usedNs", rec.usedNs}, {"hashes", hashes}};
        }
        atomicWrite(m_file, nlohmann::json {{"version", 1}, {"files", files}}.dump(1) + "\n", 0600);
    } catch (const std::exception&) {
        return; // only a cache: it stays unsaved, and the next save() tries again
    }
    std::lock_guard<std::mutex> lock(m_mutex);
    m_savedChanges = std::max(m_savedChanges, changes);
}

} // namespace together
