// SPDX-License-Identifier: MIT
#include "net_lab.h"

#include "base/error.h"
#include "test_support.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <exception>
#include <map>
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
    std::string out;
    const int rc = runCommand("{ " + command + " ; } 2>&1", &out);
    if (rc != 0)
        throw Error("`" + command + "` failed (" + std::to_string(rc) + "): " + out);
}

namespace {

// Every name in this process gets a number of its own, so that labs made one after another (or at once)
// never collide.
std::atomic<int> g_namespaces{0};
std::atomic<int> g_ports{0};

std::string ownPrefix() { return "tgt" + std::to_string(::getpid()) + "-"; }

std::vector<std::string> namespaces()
{
    std::string out;
    runCommand("ip netns list 2>/dev/null", &out);
    std::vector<std::string> names;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);) {
        std::string name = line.substr(0, line.find(' ')); // "name (id: 3)"
        if (!name.empty())
            names.push_back(name);
    }
    return names;
}

std::vector<pid_t> pidsIn(const std::string& ns)
{
    std::string out;
    runCommand("ip netns pids " + ns + " 2>/dev/null", &out);
    std::vector<pid_t> pids;
    std::istringstream in(out);
    for (long p; in >> p;)
        if (p > 0 && p != ::getpid())
            pids.push_back(static_cast<pid_t>(p));
    return pids;
}

// SIGKILLs what still runs inside `ns` (never this process), then deletes it.
void destroyNamespace(const std::string& ns)
{
    for (pid_t p : pidsIn(ns))
        ::kill(p, SIGKILL);
    runCommand("ip netns del " + ns + " 2>/dev/null", nullptr);
}

// Deletes the namespaces of earlier test processes that died without cleaning up (tgt<pid>-... whose pid
// no longer exists), and the processes they left inside.
void sweepStale()
{
    for (auto& n : namespaces()) {
        if (n.rfind("tgt", 0) != 0)
            continue;
        const size_t dash = n.find('-');
        if (dash == std::string::npos || dash == 3 || dash > 12)
            continue;
        const std::string pid = n.substr(3, dash - 3);
        if (pid.find_first_not_of("0123456789") != std::string::npos)
            continue;
        if (::kill(static_cast<pid_t>(std::stol(pid)), 0) != 0 && errno == ESRCH)
            destroyNamespace(n);
    }
}

// A tag made safe for a namespace name (and a shell command).
std::string cleanTag(const std::string& tag)
{
    std::string t;
    for (char c : tag)
        if (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')
            t += c;
    if (t.size() > 24)
        t.resize(24);
    return t.empty() ? "host" : t;
}

std::string ipBinary()
{
    for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
        if (::access(p, X_OK) == 0)
            return p;
    return "ip";
}

} // namespace

bool NetLab::available(std::string* why)
{
    static std::once_flag once;
    static bool ok = false;
    static std::string reason;
    std::call_once(once, [] {
        if (::geteuid() != 0) {
            reason = "network namespaces need root (ip netns add)";
            return;
        }
        // A namespace, a bridge and a veth pair in it: the kernel features a lab needs.
        const std::string probe = ownPrefix() + "probe";
        try {
            sh("ip netns add " + probe);
        } catch (const std::exception& e) {
            reason = std::string("cannot make a network namespace here: ") + e.what();
            return;
        }
        try {
            sh("ip -n " + probe + " link add tprobe0 type bridge && ip -n " + probe + " link add tprobe1 type veth peer name tprobe2");
            ok = true;
        } catch (const std::exception& e) {
            reason = std::string("cannot make a bridge or a veth pair in a namespace: ") + e.what();
        }
        runCommand("ip netns del " + probe + " 2>/dev/null", nullptr);
    });
    if (!ok && why)
        *why = reason;
    return ok;
}

NetLab::NetLab()
{
    sweepStale();
    m_prefix = ownPrefix();
    m_switch = m_prefix + std::to_string(g_namespaces++) + "-switch";
    sh("ip netns add " + m_switch);
    try {
        sh("ip -n " + m_switch + " link add br0 type bridge");
        sh("ip -n " + m_switch + " link set br0 up");
    } catch (...) {
        cleanup();
        throw;
    }
}

NetLab::~NetLab() { cleanup(); }

void NetLab::cleanup()
{
    std::vector<pid_t> pids;
    {
        std::lock_guard lock(m_mutex);
        pids.swap(m_pids);
    }
    // Unreaped children keep their pid (and so their group id): signalling them cannot hit a stranger.
    for (pid_t p : pids) {
        ::kill(-p, SIGKILL);
        ::kill(p, SIGKILL);
    }
    // Whatever else lives in the lab (a daemon that made a session of its own), then the namespaces.
    for (auto& h : m_hosts)
        destroyNamespace(h.ns);
    destroyNamespace(m_switch);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (pid_t p : pids)
        while (::waitpid(p, nullptr, WNOHANG) == 0 && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

NetLab::Host NetLab::addHost(const std::string& tag)
{
    const int n = m_next;
    if (n > 254)
        throw Error("a lab has at most 254 hosts");
    ++m_next;
    Host h;
    h.name = tag;
    h.ns = m_prefix + std::to_string(g_namespaces++) + "-" + cleanTag(tag);
    h.ip = "10.77.0." + std::to_string(n);
    // The switch's port: interface names have at most 15 characters ("tv" + 5 + "x" + up to 7).
    const std::string port = "tv" + std::to_string(::getpid() % 100000) + "x" + std::to_string(g_ports++);
    sh("ip netns add " + h.ns);
    m_hosts.push_back(h); // the destructor deletes it from now on
    sh("ip -n " + h.ns + " link set lo up");
    // Both ends are made in their namespaces: the pair never appears in the root namespace.
    sh("ip -n " + h.ns + " link add eth0 type veth peer name " + port + " netns " + m_switch);
    sh("ip -n " + m_switch + " link set " + port + " master br0");
    sh("ip -n " + m_switch + " link set " + port + " up");
    sh("ip -n " + h.ns + " addr add " + h.ip + "/24 brd 10.77.0.255 dev eth0");
    sh("ip -n " + h.ns + " link set eth0 up");
    return h;
}

pid_t NetLab::spawn(const Host& host, const std::vector<std::string>& argv, const std::vector<std::string>& env,
                    const std::string& stdoutFile, const std::string& stderrFile)
{
    if (argv.empty())
        throw Error("NetLab::spawn: empty argv");
    std::vector<std::string> args = {ipBinary(), "netns", "exec", host.ns};
    args.insert(args.end(), argv.begin(), argv.end());
    std::vector<char*> a;
    for (auto& s : args)
        a.push_back(s.data());
    a.push_back(nullptr);

    // The test's environment, with `env` added (an entry of `env` replaces one of the same name).
    std::map<std::string, std::string> extra;
    for (auto& e : env)
        extra[e.substr(0, e.find('='))] = e;
    std::vector<std::string> envStrings;
    for (char** e = environ; *e; ++e) {
        const std::string s = *e;
        if (!extra.count(s.substr(0, s.find('='))))
            envStrings.push_back(s);
    }
    for (auto& [k, e] : extra)
        envStrings.push_back(e);
    std::vector<char*> envp;
    for (auto& s : envStrings)
        envp.push_back(s.data());
    envp.push_back(nullptr);

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (!stdoutFile.empty())
        posix_spawn_file_actions_addopen(&fa, 1, stdoutFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (!stderrFile.empty())
        posix_spawn_file_actions_addopen(&fa, 2, stderrFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    // A process group of its own (killed whole at cleanup), no blocked signal, SIGPIPE at its default.
    sigset_t none, pipe;
    sigemptyset(&none);
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &pipe);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, a[0], &fa, &attr, a.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0)
        throw Error("cannot start " + args[0] + " netns exec " + argv[0] + ": " + std::strerror(rc));
    std::lock_guard lock(m_mutex);
    m_pids.push_back(pid);
    return pid;
}

void NetLab::kill(pid_t pid, int signal)
{
    std::lock_guard lock(m_mutex);
    if (std::find(m_pids.begin(), m_pids.end(), pid) != m_pids.end())
        ::kill(pid, signal);
}

int NetLab::wait(pid_t pid, std::chrono::milliseconds timeout)
{
    {
        std::lock_guard lock(m_mutex);
        if (std::find(m_pids.begin(), m_pids.end(), pid) == m_pids.end())
            return -1;
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    for (;;) {
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            return -1;
        if (std::chrono::steady_clock::now() >= deadline)
            return -1;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    {
        std::lock_guard lock(m_mutex);
        m_pids.erase(std::remove(m_pids.begin(), m_pids.end(), pid), m_pids.end());
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

void NetLab::runIn(const Host& host, const std::function<void()>& fn)
{
    std::exception_ptr failure;
    std::thread t([&] {
        try {
            const std::string path = "/var/run/netns/" + host.ns;
            const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                throw Error("cannot open " + path + ": " + std::strerror(errno));
            const int rc = ::setns(fd, CLONE_NEWNET);
            const int err = errno;
            ::close(fd);
            if (rc != 0)
                throw Error("cannot enter namespace " + host.ns + ": " + std::strerror(err));
            fn();
        } catch (...) {
            failure = std::current_exception();
        }
    });
    t.join();
    if (failure)
        std::rethrow_exception(failure);
}

} // namespace together::test
