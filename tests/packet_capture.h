// SPDX-License-Identifier: MIT
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

namespace together::test {

// Every frame that crosses one interface, as raw bytes (AF_PACKET, link-layer headers included): for
// checking what travels in clear. It captures in the network namespace of the thread that constructs it
// (make it inside NetLab::runIn to capture a lab host's loopback, or a host's eth0). On `lo` each packet
// shows twice (out and in). At most 512 MiB are kept; later frames are dropped. Needs CAP_NET_RAW.
class PacketCapture {
public:
    explicit PacketCapture(const std::string& interface);
    ~PacketCapture(); // stops
    PacketCapture(const PacketCapture&) = delete;
    PacketCapture& operator=(const PacketCapture&) = delete;

    // True when packet sockets can be opened here; otherwise false, and `why` says why.
    static bool available(std::string* why);
    // Stops capturing, after taking in the frames the kernel already queued. Idempotent.
    void stop();
    std::string bytes() const; // every frame so far, concatenated
    uint64_t size() const;
    bool contains(std::string_view needle) const;

private:
    bool readFrame(bool wait);

    int m_fd = -1;
    std::atomic<bool> m_stop{false};
    bool m_joined = false;
    std::mutex m_stopMutex;
    mutable std::mutex m_mutex;
    std::string m_bytes;
    std::string m_frame;
    std::thread m_thread;
};

} // namespace together::test
