// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace together {

// One weight tensor of a slice, as a worker received it from the master.
struct CachedTensor {
    std::string name;
    std::string dtype; // "F32" | "F16" | "BF16" (as in safetensors), or a ggml block type ("Q4_K") of a native run
    std::vector<int64_t> shape;
    std::string sha256; // 32 raw bytes: SHA-256 of `bytes`
    std::vector<std::byte> bytes;
};

// A worker's on-disk cache of the weight slices it received from a master, so relaunching the same placement
// skips the network transfer. Each entry is one file, DIR/<key>.slice (mode 0600):
//
//   "TGSLICE1"                 8 bytes, the format and its version
//   header length              8 bytes, little-endian
//   header                     JSON: {"key": KEY, "tensors": [{"name", "dtype", "shape", "offset", "size",
//                                     "sha256" (hex)}, ...]}; offsets count from the start of the data
//   data                       every tensor's bytes, in header order, back to back, ending the file
//
// Entries are untrusted on the way back in (the disk may be corrupt, the folder tampered with): every size
// and offset is checked against the file before anything is allocated, and every tensor is hashed again.
// Several shard processes of one machine share the folder at once: store, eviction and the touch of a hit are
// serialised by an flock(2) on DIR/lock; reads run unlocked (an entry evicted while being read stays readable
// through the open file). Least recently used = oldest modification time; a hit sets it to now.
class SliceCache {
public:
    // `dir` is created (mode 0700) if missing; throws Error naming it if that fails. maxBytes 0 disables the
    // cache: store does nothing, load misses, and the folder is not touched.
    SliceCache(std::string dir, uint64_t maxBytes);

    // Lower-case hex SHA-256 over the model's identity (e.g. its config.json text), a description of the
    // slice (layers, tensor-parallel rank/size, dtype) and the (tensor name, sha256) list in order. Every
    // field is length-prefixed, so no two different inputs give the same key.
    static std::string key(const std::string& modelIdentity, const std::string& sliceDescription,
                           const std::vector<std::pair<std::string, std::string>>& tensorHashes);

    // Stores the slice under `key`: written to a temporary file in `dir`, fsync'd, renamed (so a crash never
    // leaves a half entry), file mode 0600. Then evicts least-recently-used entries until the total is at
    // most maxBytes. A slice whose file would be larger than maxBytes is not stored. Throws Error on I/O
    // failure with a message naming the file, and for a malformed key or tensor (unknown dtype, bytes not
    // matching the shape, a hash not 32 bytes, a repeated name).
    void store(const std::string& key, const std::vector<const CachedTensor*>& tensors);

    // The slice if present and intact: each tensor's bytes hashed again and compared with its stored hash and
    // with `expected` (name -> 32-byte sha256; the set of names must match exactly). Any mismatch, truncation
    // or malformed file: the entry is deleted and nullopt returned (never throws for a bad entry; throws
    // Error only for a malformed key). A hit marks the entry most recently used. `shapes` (name -> shape), when
    // given, is what the caller's slice must be: an entry claiming other shapes is refused before anything is
    // allocated (a sparse file can claim any size at no disk cost).
    std::optional<std::vector<CachedTensor>> load(const std::string& key, const std::map<std::string, std::string>& expected,
                                                  const std::map<std::string, std::vector<int64_t>>& shapes = {});

    uint64_t totalBytes() const; // bytes of all entries on disk
    uint64_t maxBytes() const { return m_maxBytes; }
    const std::string& dir() const { return m_dir; }

    // 64 lower-case hex digits (what key() returns): the only names that become file names.
    static bool isValidKey(const std::string& key);

private:
    std::string entryPath(const std::string& key) const;
    // With the folder lock held: removes entries, oldest first, until the total is at most maxBytes, and
    // temporary files that crashed writers left behind.
    void evictLocked();

    std::string m_dir;
    uint64_t m_maxBytes = 0;
};

} // namespace together
