// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include <sys/types.h>

namespace together::test {

// Machines on a LAN, made of Linux network namespaces: each host gets a namespace with `lo` up and an `eth0`
// (10.77.0.N/24, broadcast 10.77.0.255) whose veth peer is a port of a bridge in a private "switch"
// namespace. Nothing is attached to the root namespace, so no packet (no beacon) reaches a real network.
//
// Cleanup: the destructor SIGKILLs every process it spawned that still runs and deletes every namespace it
// made (which removes the veths), also when a test fails an ASSERT. Namespaces left by a run that was itself
// killed (named tgt<pid>-... with a dead pid) are swept when the next NetLab is made.
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

    // True when namespaces can be made here (root, iproute2); otherwise `why` says what is missing.
    static bool available(std::string* why);

    Host addHost(const std::string& tag);
    // Runs argv inside the host's namespace (through `ip netns exec`). `env`: extra "K=V" entries. Output
    // files: "" inherits the test's.
    pid_t spawn(const Host& host, const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                const std::string& stdoutFile = "", const std::string& stderrFile = "");
    void kill(pid_t pid, int signal);
    // Exit status, or -1 when it did not exit within `timeout`.
    int wait(pid_t pid, std::chrono::milliseconds timeout);
    // Runs fn on a thread that has entered the host's network namespace; sockets it makes (and threads it
    // starts) live there. Returns when fn returns.
    void runIn(const Host& host, const std::function<void()>& fn);
    // Namespace of the switch (where the bridge is): a capture on br0 there sees every host's traffic.
    const std::string& switchNamespace() const { return m_switch; }

private:
    std::string m_prefix;
    std::string m_switch;
    std::vector<Host> m_hosts;
    std::vector<pid_t> m_pids;
    int m_next = 1;
};

// Runs a shell command; throws Error with its output when it fails.
void sh(const std::string& command);

} // namespace together::test
