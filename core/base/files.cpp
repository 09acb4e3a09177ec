// SPDX-License-Identifier: MIT
#include "base/files.h"

#include "base/error.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace together {

namespace fs = std::filesystem;

namespace {

std::string reason() { return std::strerror(errno); }

void writeAll(int fd, const void* data, size_t size, const std::string& path)
{
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
        const ssize_t n = ::write(fd, p, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            throw Error("cannot write " + path + ": " + (n < 0 ? reason() : std::string("no progress")));
        p += n;
        size -= static_cast<size_t>(n);
    }
}

// Makes a rename in `folder` durable. Best effort: the file is already in place, and some filesystems cannot
// sync a folder at all.
void syncFolder(const std::string& folder)
{
    const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    ::fsync(fd);
    ::close(fd);
}

// The file a path names: a symlink there is followed (a dangling one names the file it points to).
std::string targetOf(const std::string& path)
{
    std::error_code ec;
    fs::path p = path;
    for (int hops = 0; hops < 40 && fs::is_symlink(p, ec); ++hops) {
        const fs::path to = fs::read_symlink(p, ec);
        if (ec)
            break;
        p = to.is_absolute() ? to : p.parent_path() / to;
    }
    return p.string();
}

std::string folderOf(const std::string& path)
{
    const std::string parent = fs::path(path).parent_path().string();
    return parent.empty() ? "." : parent;
}

} // namespace

std::string readTextFile(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw Error("cannot open " + path + ": " + reason());
    std::error_code ec;
    if (!fs::is_regular_file(path, ec))
        throw Error(path + " is not a regular file");
    const auto size = fs::file_size(path, ec);
    if (!ec && size > kMaxTextFileBytes)
        throw Error(path + " is larger than " + std::to_string(kMaxTextFileBytes >> 20) + " MiB");
    std::string text;
    char buf[1 << 16];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) {
        text.append(buf, static_cast<size_t>(in.gcount()));
        if (text.size() > kMaxTextFileBytes)
            throw Error(path + " is larger than " + std::to_string(kMaxTextFileBytes >> 20) + " MiB");
    }
    if (in.bad())
        throw Error("cannot read " + path + ": " + reason());
    return text;
}

AtomicFile::AtomicFile(std::string path, mode_t mode)
    : m_path(std::move(path))
    , m_target(targetOf(m_path))
    , m_mode(mode & ~currentUmask() & 07777)
{
    const std::string name = fs::path(m_target).filename().string();
    if (name.empty() || name == "." || name == "..")
        throw Error("cannot write " + m_path + ": not a file name");
    struct stat st {};
    if (::stat(m_target.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
        // A device or a FIFO: written in place.
        m_fd = ::open(m_target.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
        if (m_fd < 0)
            throw Error("cannot write " + m_path + ": " + reason());
        return;
    }
    m_temporary = folderOf(m_target) + "/." + name + ".XXXXXX.tmp";
    m_fd = ::mkostemps(m_temporary.data(), 4, O_CLOEXEC);
    if (m_fd < 0)
        throw Error("cannot write " + m_path + ": cannot create a temporary file beside it: " + reason());
    if (::fchmod(m_fd, m_mode) != 0) {
        const std::string why = reason();
        discard();
        throw Error("cannot write " + m_path + ": " + why);
    }
}

AtomicFile::~AtomicFile() { discard(); }

void AtomicFile::discard()
{
    if (m_fd < 0)
        return;
    ::close(m_fd);
    if (!m_temporary.empty())
        ::unlink(m_temporary.c_str());
    m_fd = -1;
}

void AtomicFile::write(const void* data, size_t size)
{
    if (m_fd < 0)
        throw Error("cannot write " + m_path + ": the file is already committed or discarded");
    try {
        writeAll(m_fd, data, size, m_path);
    } catch (...) {
        discard();
        throw;
    }
}

void AtomicFile::sync()
{
    if (m_fd < 0)
        throw Error("cannot write " + m_path + ": the file is already committed or discarded");
    if (::fsync(m_fd) != 0 && !m_temporary.empty()) {
        const std::string why = reason();
        discard();
        throw Error("cannot write " + m_path + ": " + why);
    }
}

void AtomicFile::commit(Existing existing)
{
    sync();
    if (m_temporary.empty()) { // written in place
        if (existing == Existing::Keep) {
            discard();
            throw Error("cannot create " + m_path + ": it exists (refusing to overwrite it)");
        }
        ::close(m_fd);
        m_fd = -1;
        return;
    }
    if (existing == Existing::Keep) {
        keepExisting();
    } else if (::rename(m_temporary.c_str(), m_target.c_str()) != 0) {
        const std::string why = reason();
        discard();
        throw Error("cannot replace " + m_path + ": " + why);
    }
    ::close(m_fd);
    m_fd = -1;
    syncFolder(folderOf(m_target));
}

// link(2) puts the temporary in place only if nothing is there, atomically. Where the filesystem has no hard
// links, the file is created with O_EXCL (still only if nothing is there) and the bytes copied into it.
void AtomicFile::keepExisting()
{
    if (::link(m_temporary.c_str(), m_target.c_str()) == 0) {
        ::unlink(m_temporary.c_str());
        return;
    }
    const int err = errno;
    if (err != EPERM && err != EOPNOTSUPP && err != ENOSYS && err != EMLINK) {
        discard();
        throw Error("cannot create " + m_path + ": " + std::strerror(err) + (err == EEXIST ? " (refusing to overwrite it)" : ""));
    }
    const int out = ::open(m_target.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, m_mode);
    if (out < 0) {
        const int e = errno;
        discard();
        throw Error("cannot create " + m_path + ": " + std::strerror(e) + (e == EEXIST ? " (refusing to overwrite it)" : ""));
    }
    try {
        char buf[1 << 16];
        for (off_t at = 0;;) {
            const ssize_t n = ::pread(m_fd, buf, sizeof buf, at);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                throw Error("cannot write " + m_path + ": " + reason());
            if (n == 0)
                break;
            writeAll(out, buf, static_cast<size_t>(n), m_path);
            at += n;
        }
        if (::fsync(out) != 0)
            throw Error("cannot write " + m_path + ": " + reason());
    } catch (...) {
        ::close(out);
        ::unlink(m_target.c_str());
        discard();
        throw;
    }
    ::close(out);
    ::unlink(m_temporary.c_str());
}

bool AtomicFile::isTemporaryName(const std::string& name)
{
    // "." + file name + "." + 6 characters + ".tmp"
    return name.size() >= 1 + 1 + 1 + 6 + 4 && name[0] == '.' && name.compare(name.size() - 4, 4, ".tmp") == 0 &&
           name[name.size() - 11] == '.';
}

void atomicWrite(const std::string& path, std::string_view bytes, mode_t mode, AtomicFile::Existing existing)
{
    AtomicFile f(path, mode);
    f.write(bytes);
    f.commit(existing);
}

mode_t currentUmask()
{
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);)
        if (line.rfind("Umask:", 0) == 0)
            return static_cast<mode_t>(std::stoul(line.substr(6), nullptr, 8));
    return 022;
}

TempDir::TempDir(const std::string& tag, const std::string& parent)
{
    std::error_code ec;
    const fs::path base = parent.empty() ? fs::temp_directory_path(ec) : fs::path(parent);
    if (ec)
        throw Error("cannot find the temporary folder: " + ec.message());
    std::string tmpl = (base / ("together-" + tag + "-XXXXXX")).string();
    if (!::mkdtemp(tmpl.data()))
        throw Error("cannot create a temporary folder in " + base.string() + ": " + reason());
    m_path = tmpl;
}

TempDir::~TempDir() { remove(); }

TempDir::TempDir(TempDir&& other) noexcept
    : m_path(std::move(other.m_path))
{
    other.m_path.clear();
}

TempDir& TempDir::operator=(TempDir&& other) noexcept
{
    if (this != &other) {
        remove();
        m_path = std::move(other.m_path);
        other.m_path.clear();
    }
    return *this;
}

std::string TempDir::release()
{
    std::string p = std::move(m_path);
    m_path.clear();
    return p;
}

void TempDir::remove()
{
    if (m_path.empty())
        return;
    std::error_code ec;
    fs::remove_all(m_path, ec);
    m_path.clear();
}

FileLock::FileLock(const std::string& path)
    : FileLock(path, true, nullptr)
{
}

FileLock::FileLock(const std::string& path, bool wait, bool* taken)
{
    m_fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (m_fd < 0)
        throw Error("cannot open the lock " + path + ": " + reason());
    while (::flock(m_fd, LOCK_EX | (wait ? 0 : LOCK_NB)) != 0) {
        if (errno == EINTR)
            continue;
        const int err = errno;
        ::close(m_fd);
        m_fd = -1;
        if (!wait && err == EWOULDBLOCK) {
            *taken = false;
            return;
        }
        throw Error("cannot lock " + path + ": " + std::strerror(err));
    }
    if (taken)
        *taken = true;
}

FileLock::~FileLock()
{
    if (m_fd >= 0)
        ::close(m_fd); // releases the lock
}

std::unique_ptr<FileLock> FileLock::tryLock(const std::string& path)
{
    bool taken = false;
    std::unique_ptr<FileLock> lock(new FileLock(path, false, &taken));
    if (!taken)
        return nullptr;
    return lock;
}

} // namespace together
