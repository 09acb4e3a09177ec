// SPDX-License-Identifier: MIT
#include "daemon/service_unit.h"

#include "base/error.h"
#include "base/files.h"
#include "base/user_dirs.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <pwd.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace fs = std::filesystem;

namespace together {

namespace {

// systemd's command-line quoting (systemd.syntax(7), systemd.service(5)): every argument double-quoted, with
// backslash and quote escaped, and % and $ doubled so systemd expands neither specifiers nor variables.
std::string quoteForSystemd(const std::string& arg)
{
    std::string out = "\"";
    for (char c : arg) {
        if (c == '\\' || c == '"')
            out += '\\';
        if (c == '%' || c == '$')
            out += c;
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
            throw Error("a service argument holds a control character (a line break?): refusing to write the unit");
        out += c;
    }
    return out + "\"";
}

void run(const std::vector<std::string>& argv, const std::string& hint)
{
    std::vector<char*> a;
    std::vector<std::string> copy = argv;
    for (auto& s : copy)
        a.push_back(s.data());
    a.push_back(nullptr);
    pid_t pid = -1;
    int rc = ::posix_spawnp(&pid, a[0], nullptr, nullptr, a.data(), environ);
    std::string cmd;
    for (auto& s : argv)
        cmd += (cmd.empty() ? "" : " ") + s;
    if (rc != 0)
        throw Error("cannot run " + cmd + ": " + std::strerror(rc) + hint);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        throw Error(cmd + " failed" + hint);
}

std::string userName()
{
    if (passwd* pw = ::getpwuid(::getuid()))
        return pw->pw_name;
    if (const char* u = std::getenv("USER"))
        return u;
    throw Error("cannot tell this user's name for loginctl enable-linger");
}

} // namespace

std::string defaultUserUnitDir()
{
    if (const char* x = std::getenv("XDG_CONFIG_HOME"); x && *x)
        return std::string(x) + "/systemd/user";
    const char* h = std::getenv("HOME");
    if (!h || !*h)
        throw Error("$HOME is not set: give --unit-dir");
    return std::string(h) + "/.config/systemd/user";
}

std::string serviceUnitText(const std::string& executable, const std::vector<std::string>& serveArgs)
{
    std::string exec = quoteForSystemd(executable) + " serve";
    for (auto& a : serveArgs)
        exec += " " + quoteForSystemd(a);
    return "# Written by together-worker install-service; remove with together-worker uninstall-service.\n"
           "[Unit]\n"
           "Description=together worker daemon (this machine's share of a home LLM cluster)\n"
           "Wants=network-online.target\n"
           "After=network-online.target\n"
           "\n"
           "[Service]\n"
           "Type=simple\n"
           "ExecStart=" + exec + "\n"
           "Restart=on-failure\n"
           "RestartSec=3\n"
           "# The shards are children of the daemon: stopping the unit stops them too.\n"
           "KillMode=control-group\n"
           "TimeoutStopSec=10\n"
           "# Room for many connections: a full file table would stop the listener.\n"
           "LimitNOFILE=65536\n"
           "\n"
           "[Install]\n"
           "WantedBy=default.target\n";
}

std::string installService(const ServiceUnitOptions& o)
{
    if (o.executable.empty() || o.executable[0] != '/')
        throw Error("install-service: the worker's path must be absolute");
    const std::string dir = o.unitDir.empty() ? defaultUserUnitDir() : o.unitDir;
    fs::create_directories(dir);
    const std::string file = dir + "/" + kServiceUnitName;
    atomicWrite(file, serviceUnitText(o.executable, o.serveArgs));
    if (!o.enable)
        return file;
    const std::string hint = " (is this a systemd machine with a user session? the unit is written to " + file + ")";
    run({"systemctl", "--user", "daemon-reload"}, hint);
    run({"systemctl", "--user", "enable", "--now", kServiceUnitName}, hint);
    // Linger: the user's services start at boot, without anyone logging in.
    run({"loginctl", "enable-linger", userName()}, " (the worker runs while you are logged in; ask an administrator to run "
                                                   "`loginctl enable-linger " + userName() + "` so it starts at boot)");
    return file;
}

void uninstallService(const std::string& unitDir, bool disable)
{
    const std::string dir = unitDir.empty() ? defaultUserUnitDir() : unitDir;
    const std::string file = dir + "/" + kServiceUnitName;
    if (disable && fs::exists(file))
        run({"systemctl", "--user", "disable", "--now", kServiceUnitName}, "");
    std::error_code ec;
    fs::remove(file, ec);
    if (disable)
        run({"systemctl", "--user", "daemon-reload"}, "");
}

} // namespace together
