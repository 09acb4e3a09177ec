// SPDX-License-Identifier: MIT
#include "tests/net_lab.h"

#include "core/error.h"
#include "tests/test_support.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace together::test {

void sh(const std::string& command)
{
    std::string out, err;
    int rc = runCommand(command, &out, &err);
    if (rc != 0)
        throw Error("`" + command + "` failed (" + std::to_string(rc) + "): " + err + out);
}

namespace {

std::vector<std::string> namespaces()
{
    std::string out;
    runCommand("ip netns list 2>/dev/null", &out);
    std::vector<std::string> names;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);) {
        std::string name = line.substr(0, line.find(' '));
        if (!name.empty())
            names.push_back(name);
    }
    return names;
}

// Deletes namespaces of earlier test processes that died without cleaning up.
void sweepStale()
{
    for (auto& n : namespaces()) {
        if (n.rfind("tgt", 0) != 0)
            continue;
        const size_t dash = n.find('-');
        if (dash == std::string::npos)
            continue;
        const std::string pid = n.substr(3, dash - 3);
        if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos)
            continue;
        if (::kill(std::stoi(pid), 0) != 0 && errno == ESRCH)
            runCommand("ip netns del " + n + " 2>/dev/null", nullptr);
    }
}

} // namespace

bool NetLab::available(std::string* why)
{
    if (::geteuid() != 0) {
        if (why)
            *why = "network namespaces need root (ip netns add)";
        return false;
    }
    const std::string probe = "tgt" + std::to_string(::getpid()) + "-probe";
    std::string out, err;
    if (runCommand("ip netns add " + probe, &out, &err) != 0) {
        if (why)
            *why = "cannot make a network namespace here: " + err;
        return false;
    }
    runCommand("ip netns del " + probe, &out, &err);
    return true;
}

NetLab::NetLab()
{
    sweepStale();
    static int labs = 0;
    m_prefix = "tgt" + std::to_string(::getpid()) + "-" + std::to_string(labs++);
    m_switch = m_prefix + "-sw";
    sh("ip netns add " + m_switch);
    sh("ip -n " + m_switch + " link add br0 type bridge && ip -n " + m_switch + " link set br0 up");
}

NetLab::~NetLab()
{
    for (pid_t p : m_pids)
        if (::waitpid(p, nullptr, WNOHANG) == 0) {
            ::kill(-p, SIGKILL); // its process group: `ip netns exec` and what it runs
            ::kill(p, SIGKILL);
            ::waitpid(p, nullptr, 0);
        }
    for (auto& h : m_hosts)
        runCommand("ip netns del " + h.ns + " 2>/dev/null", nullptr);
    runCommand("ip netns del " + m_switch + " 2>/dev/null", nullptr);
}

NetLab::Host NetLab::addHost(const std::string& tag)
{
    const int n = m_next++;
    Host h;
    h.name = tag;
    h.ns = m_prefix + "-h" + std::to_string(n);
    h.ip = "10.77.0." + std::to_string(n);
    // veth names are limited to 15 characters and live in the root namespace for a moment: make them unique.
    const std::string veth = "tv" + std::to_string(::getpid() % 100000) + "x" + std::to_string(n), peer = veth + "p";
    sh("ip netns add " + h.ns);
    m_hosts.push_back(h);
    sh("ip -n " + h.ns + " link set lo up");
    sh("ip link add " + veth + " type veth peer name " + peer);
    sh("ip link set " + veth + " netns " + h.ns + " && ip link set " + peer + " netns " + m_switch);
    sh("ip -n " + m_switch + " link set " + peer + " master br0 && ip -n " + m_switch + " link set " + peer + " up");
    sh("ip -n " + h.ns + " link set " + veth + " name eth0 && ip -n " + h.ns + " addr add " + h.ip + "/24 brd 10.77.0.255 dev eth0 && ip -n " +
       h.ns + " link set eth0 up");
    return h;
}

pid_t NetLab::spawn(const Host& host, const std::vector<std::string>& argv, const std::vector<std::string>& env,
                    const std::string& stdoutFile, const std::string& stderrFile)
{
    std::vector<std::string> args = {"/usr/sbin/ip", "netns", "exec", host.ns};
    if (::access(args[0].c_str(), X_OK) != 0)
        args[0] = "/sbin/ip";
    args.insert(args.end(), argv.begin(), argv.end());
    std::vector<char*> a;
    for (auto& s : args)
        a.push_back(s.data());
    a.push_back(nullptr);
    std::vector<std::string> envStrings;
    for (char** e = environ; *e; ++e)
        envStrings.push_back(*e);
    envStrings.insert(envStrings.end(), env.begin(), env.end());
    std::vector<char*> envp;
    for (auto& s : envStrings)
        envp.push_back(s.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (!stdoutFile.empty())
        posix_spawn_file_actions_addopen(&fa, 1, stdoutFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (!stderrFile.empty())
        posix_spawn_file_actions_addopen(&fa, 2, stderrFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP); // its own group, killed whole at cleanup
    posix_spawnattr_setpgroup(&attr, 0);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, a[0], &fa, &attr, a.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0)
        throw Error("cannot start " + args[0] + ": " + std::strerror(rc));
    m_pids.push_back(pid);
    return pid;
}

void NetLab::kill(pid_t pid, int signal) { ::kill(pid, signal); }

int NetLab::wait(pid_t pid, std::chrono::milliseconds timeout)
{
    int status = 0;
    if (!waitFor([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, timeout))
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void NetLab::runIn(const Host& host, const std::function<void()>& fn)
{
    std::string error;
    std::thread t([&] {
        const int fd = ::open(("/var/run/netns/" + host.ns).c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) {
            error = "cannot enter namespace " + host.ns + ": " + std::strerror(errno);
            if (fd >= 0)
                ::close(fd);
            return;
        }
        ::close(fd);
        try {
            fn();
        } catch (const std::exception& e) {
            error = e.what();
        }
    });
    t.join();
    if (!error.empty())
        throw Error(error);
}

} // namespace together::test
