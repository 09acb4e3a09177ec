// SPDX-License-Identifier: MIT
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace together {

// Discovery's UDP side (proto: DiscoveryPacket). Daemons announce themselves with beacons; masters probe.
// Everything in a beacon is a claim: the master confirms it with an authenticated Hello before acting on it.

constexpr uint16_t kDefaultDiscoveryPort = 7601;
constexpr size_t kMaxDiscoveryPacket = 1400;
// What a beacon may hold: the worker id and hostname, the version, and the addresses it lists.
constexpr size_t kMaxBeaconNameBytes = 64, kMaxBeaconVersionBytes = 32, kMaxBeaconAddresses = 16;
// Probes smaller than this are ignored: a beacon (names and addresses within the limits above) is smaller, so
// an answer is never larger than the question.
constexpr size_t kMinProbeBytes = 1024;

struct BeaconInfo {
    std::string workerId;
    std::string hostname;
    std::vector<std::string> addresses; // IPv4
    uint16_t grpcPort = 0;
    uint32_t protocol = 0;
    uint32_t cores = 0;
    uint64_t memoryTotalBytes = 0;
    std::string keyFingerprint;
    std::string softwareVersion;
};

struct DiscoveryMessage {
    enum class Kind {
        Invalid,
        Beacon,
        Probe,
    };
    Kind kind = Kind::Invalid;
    BeaconInfo beacon;
};

std::string encodeBeacon(const BeaconInfo& beacon);
// A probe is padded to kMaxDiscoveryPacket bytes: never smaller than the beacon it asks for.
std::string encodeProbe();
// Anything malformed, oversized, without the magic, or with implausible fields is Kind::Invalid: text must be
// printable ASCII, addresses IPv4 unicast (not loopback, multicast or broadcast), the fingerprint 16 hex
// digits, and a probe at least kMinProbeBytes long.
DiscoveryMessage decodeDiscovery(const void* data, size_t size);

// A UDP socket for discovery: IPv4, SO_BROADCAST, and with SO_REUSEADDR when bound to a fixed port (a daemon
// and a master on one machine both listen on the discovery port; Linux hands broadcasts to each).
class UdpSocket {
public:
    // port 0: an ephemeral port. Throws Error naming the port when it cannot bind.
    explicit UdpSocket(uint16_t port);
    ~UdpSocket();
    UdpSocket(const UdpSocket&) = delete;
    UdpSocket& operator=(const UdpSocket&) = delete;

    void sendTo(const std::string& ip, uint16_t port, const std::string& bytes);
    struct Received {
        std::string bytes;
        std::string sourceIp;
        uint16_t sourcePort = 0;
        int interfaceIndex = 0; // where it arrived
    };
    // Waits up to `timeout` for one datagram.
    bool receive(Received& out, std::chrono::milliseconds timeout);
    int fd() const { return m_fd; }
    uint16_t port() const { return m_port; }

private:
    int m_fd = -1;
    uint16_t m_port = 0;
};

// The daemon's side: a beacon to each chosen interface's broadcast address every second, and an answer to a
// master's probe at once (unicast, only to probes that arrived on a chosen interface, at most 20 a second).
class BeaconAnnouncer {
public:
    struct Options {
        uint16_t port = kDefaultDiscoveryPort;
        std::string interfaces; // as --discovery-interfaces: "" = every non-loopback interface
        std::function<BeaconInfo()> beacon; // called for each beacon: addresses change (DHCP, Wi-Fi)
        std::function<void(const std::string&)> log;
    };
    explicit BeaconAnnouncer(Options options); // throws Error when the port cannot be bound
    ~BeaconAnnouncer();

private:
    void run();
    Options m_options;
    UdpSocket m_socket;
    std::atomic<bool> m_stop{false};
    std::thread m_thread;
};

} // namespace together
