// SPDX-License-Identifier: MIT
#include "base/user_dirs.h"

#include "base/error.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <sys/stat.h>

namespace fs = std::filesystem;

namespace together {

namespace {

std::string userDir(const char* overrideVar, const char* xdgVar, const char* homeRelative)
{
    if (const char* d = std::getenv(overrideVar); d && *d)
        return d;
    if (const char* x = std::getenv(xdgVar); x && *x)
        return (fs::path(x) / "together").string();
    if (const char* h = std::getenv("HOME"); h && *h)
        return (fs::path(h) / homeRelative / "together").string();
    return (fs::temp_directory_path() / "together").string();
}

} // namespace

std::string configDir() { return userDir("TOGETHER_CONFIG_DIR", "XDG_CONFIG_HOME", ".config"); }
std::string stateDir() { return userDir("TOGETHER_STATE_DIR", "XDG_STATE_HOME", ".local/state"); }
std::string cacheDir() { return userDir("TOGETHER_CACHE_DIR", "XDG_CACHE_HOME", ".cache"); }

void makePrivateDirs(const std::string& dir)
{
    fs::path p = fs::absolute(dir);
    fs::path built;
    for (const auto& part : p) {
        built /= part;
        if (::mkdir(built.c_str(), 0700) != 0 && errno != EEXIST)
            throw Error("cannot create folder " + built.string() + ": " + std::strerror(errno));
    }
    if (!fs::is_directory(p))
        throw Error(p.string() + " exists and is not a folder");
}

void checkModelFolderAllowed(const std::string& path, const std::vector<std::string>& roots)
{
    if (roots.empty())
        throw Error("this worker reads no model folders of its own (start it with --models-root DIR to allow " + path + ")");
    std::error_code ec;
    const fs::path real = fs::canonical(path, ec);
    if (ec)
        throw Error("model folder " + path + " on this worker: " + ec.message());
    // Only folders and regular files: a FIFO or a device would block or feed endless bytes.
    if (!fs::is_directory(real) && !fs::is_regular_file(real))
        throw Error(path + " on this worker is neither a folder nor a regular file");
    for (auto& r : roots) {
        auto rel = real.lexically_relative(r);
        if (!rel.empty() && *rel.begin() != "..")
            return;
    }
    std::string list;
    for (auto& r : roots)
        list += (list.empty() ? "" : ", ") + r;
    throw Error(path + (real.string() != path ? " (" + real.string() + ")" : std::string()) +
                " is outside the model folders this worker allows (--models-root " + list + ")");
}

} // namespace together
