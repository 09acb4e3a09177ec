// SPDX-License-Identifier: MIT
#pragma once

#include "base/host_info.h"
#include "net/credentials.h"
#include "wire/beacon.h"

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace together {

// What the master knows about each worker daemon, and whether it can be used.
enum class WorkerState {
    Checking,    // seen, the authenticated Hello has not answered yet
    Ready,
    Busy,        // serving another master's launch
    Refused,     // another cluster key, or another protocol version (the reason says which)
    Unreachable, // seen, but its port does not answer (the reason names the port)
    Gone,        // no beacon for 5 s
};
const char* workerStateName(WorkerState s);

struct DiscoveredWorker {
    std::string id;      // the daemon's stable worker id ("" until a manually added worker answers)
    std::string host;    // its host name
    std::string address; // host:port the master uses: of the advertised addresses, the one with the lowest round trip
    std::vector<std::string> addresses; // every address it advertises (IPv4)
    uint16_t port = 0;
    WorkerState state = WorkerState::Checking;
    std::string reason; // why it is not usable (empty when ready)
    uint32_t cores = 0;
    uint64_t memoryTotalBytes = 0;
    uint64_t memoryFreeBytes = 0;
    uint32_t maxThreads = 0;      // donated
    uint64_t maxMemoryBytes = 0;  // donated; 0 = whatever is free
    uint32_t protocol = 0;
    std::string keyFingerprint;
    std::string softwareVersion;
    std::vector<std::string> cpuFlags;
    double rttMs = -1;            // Hello round trip on `address`; -1 until measured
    std::optional<double> readGbps; // all donated threads, measured by the daemon's calibration; empty until then
    bool calibrating = false;       // the daemon is still measuring
    std::map<std::string, double> decodeGbps; // dtype -> the engine's one-row matvec, all donated threads (GB/s)
    bool manual = false;          // added by address (broadcast does not reach it), remembered
};

// The master's view of the workers on the LAN. Three sources: beacons (broadcast each second by daemons, and
// at once in answer to this master's probes), workers added by address, and authenticated Hellos, which are
// the only source of truth: a beacon's claims (identity, addresses) take effect only once a Hello over mutual
// TLS at that address confirms them. Hello checks run on their own threads; a worker is re-checked every 2 s
// (free memory, busy) and when its beacon changes.
class Discovery {
public:
    struct Options {
        uint16_t port = kDefaultDiscoveryPort;
        std::string interfaces;         // as --discovery-interfaces ("" = every non-loopback interface)
        bool broadcast = true;          // false: only the workers added by address
        std::vector<std::string> manual; // host:port
        std::chrono::milliseconds goneAfter{5000};
        std::chrono::milliseconds helloTimeout{2000};
    };
    // Called on a discovery thread whenever a worker's state, reason or address changes.
    using Listener = std::function<void(const DiscoveredWorker&)>;

    Discovery(std::shared_ptr<const Credentials> credentials, Options options, Listener listener = {});
    // At most this many workers are listed (a home has a handful; beacons are unauthenticated), and at most
    // kMaxConcurrentChecks Hello checks run at once.
    static constexpr size_t kMaxWorkers = 64;
    static constexpr size_t kMaxConcurrentChecks = 8;
    ~Discovery();
    Discovery(const Discovery&) = delete;
    Discovery& operator=(const Discovery&) = delete;

    void add(const std::string& address);
    // In a stable order: the order they were first seen.
    std::vector<DiscoveredWorker> workers() const;
    // Waits until no worker is Checking, or the deadline passes.
    void settle(std::chrono::steady_clock::time_point deadline) const;

private:
    struct Entry;
    void receiveLoop();
    void checkLoop();
    void onBeacon(const BeaconInfo& beacon, const std::string& sourceIp, const std::vector<NetInterface>& chosen);
    void check(Entry& entry);
    void publish(Entry& e, const DiscoveredWorker& before);

    std::shared_ptr<const Credentials> m_credentials;
    Options m_options;
    Listener m_listener;
    mutable std::mutex m_mutex;
    mutable std::condition_variable m_changed;
    std::vector<std::unique_ptr<Entry>> m_entries;
    bool m_stop = false;
    std::unique_ptr<UdpSocket> m_beacons; // bound to the discovery port
    std::unique_ptr<UdpSocket> m_probes;  // ephemeral: probes out, answers in
    std::thread m_receiver;
    std::thread m_checker;
};

// "host:port", adding the default port 7600 when there is none; throws Error on anything else.
std::string normalizeWorkerAddress(const std::string& address);

// Workers added by address, remembered in $config/workers.json (core/user_dirs.h).
std::vector<std::string> rememberedWorkers();
void rememberWorker(const std::string& address);
void forgetWorker(const std::string& address);

} // namespace together
