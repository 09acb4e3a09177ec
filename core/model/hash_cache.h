// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>

namespace together {

// The master's cache of per-tensor SHA-256, so a relaunch does not rehash gigabytes. Hashes are grouped by
// the model file they were computed from and trusted only while that file's size and modification time (in
// nanoseconds) are what they were when the hashes were computed. The file, hashes hex-encoded:
//
//   {"version": 1, "files": {"/models/x/model.safetensors": {"size": N, "mtimeNs": N, "usedNs": N,
//                                                            "hashes": {"<key>": "<64 hex>", ...}}, ...}}
//
// usedNs is the wall-clock time the file's hashes were last asked for: the least recently used files are
// dropped beyond kMaxFiles.
class TensorHashCache {
public:
    static constexpr size_t kMaxFiles = 64;

    // A JSON file (e.g. cacheDir() + "/tensor-hashes.json"); missing or corrupt file = empty cache (never
    // throws on read).
    explicit TensorHashCache(std::string file);

    // The hash stored for `key` (e.g. tensor name + slice bounds) of `filePath`, valid only while that file's
    // size and modification time are what they were when it was stored; else computes it with `compute`
    // (returns 32 raw bytes), stores it and returns it. A hash is stored only when the file did not change
    // while it was computed. Thread-safe (the master hashes ranks in parallel): `compute` runs without the
    // lock, so two threads asking for the same missing key at once may both compute it.
    std::string hash(const std::string& filePath, const std::string& key,
                     const std::function<std::string()>& compute);

    uint64_t hits() const;
    uint64_t misses() const;

    // Writes the file atomically (temporary + rename, mode 0600, its folder created 0700) if anything changed
    // (a hash stored, or hashes used); keeps at most the kMaxFiles most recently used model files' entries.
    // Entries another process saved meanwhile for files this one did not use are kept. Errors writing are
    // ignored (it is only a cache).
    void save();

private:
    struct FileRecord {
        uint64_t size = 0;
        int64_t modifiedNs = 0;
        int64_t usedNs = 0;
        std::map<std::string, std::string> hashes; // key -> 32 raw bytes
    };
    using Records = std::map<std::string, FileRecord>;

    // The records in `file`; empty for a missing, oversized or corrupt file. Malformed records are skipped.
    static Records read(const std::string& file);

    std::string m_file;
    mutable std::mutex m_mutex;
    Records m_files;
    uint64_t m_hits = 0;
    uint64_t m_misses = 0;
    uint64_t m_changes = 0; // bumped by every change; save() writes when it differs from m_savedChanges
    uint64_t m_savedChanges = 0;
};

} // namespace together
