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
// its own port are forwarded to `target`, with delay, a bandwidth cap, stalls and cuts that take effect on live
// connections. It records what each client sent, in accept order (a recorded call can then be replayed).
//
// Its sockets live in the network namespace of the thread that constructs it (make it inside
// NetLab::runIn to put it in a host of the lab). Masters and shards dial through it with
// $TOGETHER_TEST_DIAL_VIA="target=proxy-address" (core/rpc.h).
class TcpProxy {
public:
    explicit TcpProxy(std::string target, std::string listenHost = "127.0.0.1");
    ~TcpProxy();
    TcpProxy(const TcpProxy&) = delete;
    TcpProxy& operator=(const TcpProxy&) = delete;

    std::string address() const; // host:port it listens on

    void setDelay(std::chrono::milliseconds oneWay); // each direction
    void setBandwidth(uint64_t bytesPerSecond);      // each direction; 0 = unlimited
    void stall(bool on);                             // hold every byte (connections stay open)
    void cut();                                      // reset every open connection
    void refuse(bool on);                            // close new connections at once

    std::vector<std::string> clientBytes() const; // per connection, what the client sent
    std::vector<std::string> serverBytes() const; // per connection, what the server sent
    uint64_t bytesForwarded() const;

private:
    struct Connection;
    void acceptLoop();
    void pump(std::shared_ptr<Connection> c, bool fromClient);

    std::string m_target;
    std::string m_host;
    int m_listen = -1;
    int m_port = 0;
    std::atomic<bool> m_stop{false};
    std::atomic<int64_t> m_delayMs{0};
    std::atomic<uint64_t> m_bandwidth{0};
    std::atomic<bool> m_stalled{false};
    std::atomic<bool> m_refusing{false};
    std::atomic<uint64_t> m_forwarded{0};
    mutable std::mutex m_mutex;
    std::vector<std::shared_ptr<Connection>> m_connections;
    std::vector<std::thread> m_threads;
    std::thread m_acceptor;
};

} // namespace together::test
