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

void syncFolder(const std::string& folder)
{
    const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        throw Error("cannot open the folder " + folder + " to sync it: " + reason());
    const int rc = ::fsync(fd);
    const int err = errno;
    ::close(fd);
    // Some filesystems cannot sync a folder (EINVAL); the rename happened, which is what a reader needs.
    if (rc != 0 && err != EINVAL)
        throw Error("cannot sync the folder " + folder + ": " + std::strerror(err));
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
{
    const std::string name = fs::path(m_path).filename().string();
    if (name.empty() || name == "." || name == "..")
        throw Error("cannot write " + m_path + ": not a file name");
    m_temporary = folderOf(m_path) + "/." + name + ".XXXXXX.tmp";
    m_fd = ::mkostemps(m_temporary.data(), 4, O_CLOEXEC);
    if (m_fd < 0)
        throw Error("cannot write " + m_path + ": cannot create a temporary file beside it: " + reason());
    if (::fchmod(m_fd, mode) != 0) {
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

void AtomicFile::commit(Existing existing)
{
    if (m_fd < 0)
        throw Error("cannot write " + m_path + ": the file is already committed or discarded");
    if (::fsync(m_fd) != 0) {
        const std::string why = reason();
        discard();
        throw Error("cannot write " + m_path + ": " + why);
    }
    if (existing == Existing::Replace) {
        if (::rename(m_temporary.c_str(), m_path.c_str()) != 0) {
            const std::string why = reason();
            discard();
            throw Error("cannot replace " + m_path + ": " + why);
        }
    } else if (::link(m_temporary.c_str(), m_path.c_str()) != 0) { // fails when the path exists, atomically
        const int err = errno;
        discard();
        throw Error("cannot create " + m_path + ": " + std::strerror(err) + (err == EEXIST ? " (refusing to overwrite it)" : ""));
    } else {
        ::unlink(m_temporary.c_str());
    }
    ::close(m_fd);
    m_fd = -1;
    syncFolder(folderOf(m_path));
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
