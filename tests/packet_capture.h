// SPDX-License-Identifier: MIT
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

namespace together::test {

// Every frame that crosses one interface, as raw bytes (AF_PACKET): for checking what travels in clear.
// It captures in the network namespace of the thread that constructs it (make it inside NetLab::runIn to
// capture a lab host's loopback). On `lo` each packet shows twice (out and in). Needs CAP_NET_RAW.
class PacketCapture {
public:
    explicit PacketCapture(const std::string& interface);
    ~PacketCapture();
    PacketCapture(const PacketCapture&) = delete;
    PacketCapture& operator=(const PacketCapture&) = delete;

    static bool available(std::string* why);
    void stop();
    std::string bytes() const;
    uint64_t size() const;
    bool contains(std::string_view needle) const;

private:
    int m_fd = -1;
    std::atomic<bool> m_stop{false};
    mutable std::mutex m_mutex;
    std::string m_bytes;
    std::thread m_thread;
};

} // namespace together::test
