// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include <sys/types.h>

namespace together::test {

// Machines on a LAN, made of Linux network namespaces: each host gets a namespace with `lo` up and an `eth0`
// (10.77.0.N/24, broadcast 10.77.0.255, N = 1, 2, ... in the order of addHost) whose veth peer is a port of
// a bridge `br0` in a private "switch" namespace. Both veth ends are created directly in their namespaces:
// nothing is ever attached to the root namespace, so no packet (no beacon) reaches a real network.
//
// Names: namespaces are tgt<pid>-<lab>-sw (the switch) and tgt<pid>-<lab>-h<N> (hosts); the switch-side veth
// ends are tv<pid % 100000>x<k>, k counting over the whole process (at most 15 characters).
//
// Cleanup (RAII, so it also runs when a test fails an ASSERT): the destructor SIGKILLs every process it
// spawned that still runs, with its process group, and every other process that still lives in one of its
// namespaces (a daemon that left the group); reaps its children; and deletes every namespace it made (which
// removes the veths). Namespaces left by a test process that died without cleaning up (tgt<pid>-... whose
// pid is gone) are swept, with the processes still inside them, when the next NetLab is made.
class NetLab {
public:
    struct Host {
        std::string ns;   // namespace name
        std::string ip;   // 10.77.0.N
        std::string name; // the tag given
    };

    NetLab();
    ~NetLab();
    NetLab(const NetLab&) = delete;
    NetLab& operator=(const NetLab&) = delete;

    // True when namespaces can be made here (root, iproute2): it makes and deletes a throwaway one. Otherwise
    // false, and `why` says what is missing.
    static bool available(std::string* why);

    Host addHost(const std::string& tag);
    // Runs argv inside the host's namespace (posix_spawn of `ip netns exec NS argv...`, in a process group of
    // its own). argv[0] is looked up in $PATH. `env`: extra "K=V" entries on top of the test's environment.
    // Output files ("" inherits the test's) are truncated first.
    pid_t spawn(const Host& host, const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                const std::string& stdoutFile = "", const std::string& stderrFile = "");
    // Signals a process this lab spawned and has not reaped yet (other pids are ignored: a reaped pid may
    // already belong to someone else).
    void kill(pid_t pid, int signal);
    // Waits for a process this lab spawned: its exit status (128 + signal when killed by one), or -1 when it
    // did not end within `timeout` (or is not a child of this lab).
    int wait(pid_t pid, std::chrono::milliseconds timeout);
    // Runs fn on a new thread that has entered the host's network namespace and returns when fn does
    // (rethrowing what it threw). Sockets fn makes, and threads it starts, belong to that namespace; such
    // sockets keep it after fn returns and may be used from any thread.
    void runIn(const Host& host, const std::function<void()>& fn);
    // Namespace of the switch (where br0 is): a capture on br0 there sees every host's traffic.
    const std::string& switchNamespace() const { return m_switch; }
    const std::vector<Host>& hosts() const { return m_hosts; }

private:
    void cleanup();

    std::string m_prefix;
    std::string m_switch;
    std::vector<Host> m_hosts;
    std::mutex m_mutex;
    std::vector<pid_t> m_pids; // spawned, not reaped yet
    int m_next = 1;
};

// Runs a shell command; throws Error with its output when it fails.
void sh(const std::string& command);

} // namespace together::test
