// SPDX-License-Identifier: MIT
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace together::test {

// A user-space TCP proxy for fault and latency tests (the kernel here has no netem): connections accepted on
// its own port are forwarded to `target`, with a delay, a bandwidth cap, stalls and cuts that take effect on
// live connections. It records what each side sent, per connection in accept order (a recorded call can
// then be replayed).
//
// Namespaces: the listening socket is made by the constructor, and every other socket by threads the
// constructor starts (the acceptor, which starts one thread per connection). On Linux a thread inherits the
// network namespace of the thread that creates it, so all of the proxy lives in the namespace of the thread
// that constructs it: construct it inside NetLab::runIn to put it in a host of the lab. It may be used and
// destroyed from any thread.
//
// Masters and shards dial through it with $TOGETHER_TEST_DIAL_VIA="target=proxy-address" (core/rpc.h).
class TcpProxy {
public:
    // target: "ipv4-or-name:port", resolved now. listenHost: an IPv4 address; the port is ephemeral.
    explicit TcpProxy(std::string target, std::string listenHost = "127.0.0.1");
    ~TcpProxy(); // closes every connection (abruptly) and joins every thread
    TcpProxy(const TcpProxy&) = delete;
    TcpProxy& operator=(const TcpProxy&) = delete;

    std::string address() const; // "host:port" it listens on
    uint16_t port() const { return m_port; }

    // Each chunk read is written on no earlier than `oneWay` after it was read, in order, in each direction.
    void setDelay(std::chrono::milliseconds oneWay);
    // At most this many bytes per second in each direction of each connection; 0 = unlimited.
    void setBandwidth(uint64_t bytesPerSecond);
    // While on, nothing is written in either direction; connections stay open and bytes queue up.
    void stall(bool on);
    // Resets (RST) every open connection, on both sides; returns once they are closed. New connections are
    // still accepted.
    void cut();
    // While on, new connections are reset as soon as they are accepted (open ones go on).
    void refuse(bool on);

    // Per connection, in accept order: every byte the client sent / the server sent (at most 64 MiB in all
    // for each of the two).
    std::vector<std::string> clientBytes() const;
    std::vector<std::string> serverBytes() const;
    uint64_t bytesForwarded() const; // written on, both directions, all connections
    size_t connections() const;      // accepted and forwarded so far (refused ones are not counted)

private:
    struct Connection;
    void acceptLoop();
    void serve(const std::shared_ptr<Connection>& c);
    void wakeAll();

    std::string m_target;
    std::string m_host;
    std::vector<char> m_targetAddress; // a sockaddr
    int m_listen = -1;
    int m_wake = -1; // eventfd: the acceptor's
    uint16_t m_port = 0;
    std::atomic<bool> m_stop{false};
    std::atomic<int64_t> m_delayMs{0};
    std::atomic<uint64_t> m_bandwidth{0};
    std::atomic<bool> m_stalled{false};
    std::atomic<bool> m_refusing{false};
    std::atomic<uint64_t> m_forwarded{0};
    std::atomic<uint64_t> m_recorded[2] = {0, 0};
    mutable std::mutex m_mutex;
    std::vector<std::shared_ptr<Connection>> m_connections;
    std::vector<std::thread> m_threads;
    std::thread m_acceptor;
};

} // namespace together::test
