// SPDX-License-Identifier: MIT
#pragma once

// Files the programs read and keep: one way to read a text file, one way to replace a file (every state file:
// caches, calibration, workers.json, keys, conversations, settings, plans, and what the CLI writes), one way to
// make a temporary folder, one way to lock a file across processes.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <sys/types.h>

namespace together {

// A whole text file (JSON of a model folder, a plan, messages). Refuses what is not a regular file (a symlink
// to /dev/zero in a downloaded folder would never end) and files over kMaxTextFileBytes, naming the path.
constexpr size_t kMaxTextFileBytes = size_t{256} << 20;
std::string readTextFile(const std::string& path);

// A file replaced as a whole. It is written to a temporary file with a unique name beside it (created with
// O_EXCL; the name is ".<file name>.<6 random characters>.tmp", so concurrent writers never share one), then
// commit() fsyncs it, renames it over the path and fsyncs the folder: a reader sees the old file or the new one,
// never a part, and after commit() returns a crash or a power cut keeps the new one (the folder's fsync is best
// effort: the file is in place when it fails). Destroyed without commit(), or after a failed write, the
// temporary file is removed and the old file is untouched. Errors are Error naming the path and the reason.
//
//  - A symlink is followed: the file it points to is the one replaced (a settings file linked from a dotfiles
//    folder stays a link).
//  - A path that is not a regular file nor a folder (/dev/stdout, a FIFO) is written in place: there is nothing
//    to replace atomically, and a temporary file cannot go beside it.
//  - The new file's permission bits are `mode` less the process's umask, as open(2) would make them (0600 for
//    keys); what the old file had is not kept, nor its hard links (a replaced file is a new inode).
class AtomicFile {
public:
    AtomicFile(std::string path, mode_t mode);
    ~AtomicFile();
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;

    void write(const void* data, size_t size);
    void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
    // fsync now (commit() does it too): a writer that must hold a lock while it commits syncs a large file first.
    void sync();
    // What commit() does when the path exists: replace it, or keep it and fail (a key is never overwritten; the
    // new file then appears whole or not at all, and two writers racing cannot both succeed). Keep uses link(2);
    // where the filesystem has no hard links (vfat, some network mounts) it creates the file with O_EXCL and
    // copies the bytes into it instead.
    enum class Existing { Replace, Keep };
    void commit(Existing existing = Existing::Replace);

    int fd() const { return m_fd; } // the temporary file's (e.g. to flock it while it is written)
    const std::string& path() const { return m_path; }
    const std::string& temporaryPath() const { return m_temporary; }
    // Whether a folder entry's name is an AtomicFile's temporary file (what a crashed writer leaves behind).
    static bool isTemporaryName(const std::string& name);

private:
    void discard();
    void keepExisting();
    std::string m_path;     // as given, for messages
    std::string m_target;   // what is replaced: the path, or the file a symlink there points to
    std::string m_temporary; // "" when writing in place
    mode_t m_mode = 0644;
    int m_fd = -1;
};

// The whole file in one call: AtomicFile, write, commit.
void atomicWrite(const std::string& path, std::string_view bytes, mode_t mode = 0644,
                 AtomicFile::Existing existing = AtomicFile::Existing::Replace);

// The process's umask, read without changing it (umask(2) would, for every thread).
mode_t currentUmask();

// A folder with a unique name, "<parent>/together-<tag>-XXXXXX" (mkdtemp: mode 0700), removed with everything
// in it when the object is destroyed. `parent` "" is the system's temporary folder ($TMPDIR, else /tmp).
class TempDir {
public:
    explicit TempDir(const std::string& tag, const std::string& parent = {});
    ~TempDir();
    TempDir(TempDir&& other) noexcept;
    TempDir& operator=(TempDir&& other) noexcept;
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const std::string& path() const { return m_path; }
    // Keeps the folder (the caller now owns it) and returns its path.
    std::string release();

private:
    void remove();
    std::string m_path;
};

// An exclusive lock on `path` (created 0600 if missing, never followed if a symlink), held while the object
// lives: flock(2), so it is released when the process dies, and two FileLocks of one process exclude each other
// too. Waits for the lock; throws Error naming the path when it cannot be taken.
class FileLock {
public:
    explicit FileLock(const std::string& path);
    ~FileLock();
    FileLock(const FileLock&) = delete;
    FileLock& operator=(const FileLock&) = delete;
    // Without waiting: null when another holder has it.
    static std::unique_ptr<FileLock> tryLock(const std::string& path);
    int fd() const { return m_fd; }

private:
    FileLock(const std::string& path, bool wait, bool* taken);
    int m_fd = -1;
};

} // namespace together
