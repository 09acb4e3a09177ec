// SPDX-License-Identifier: MIT
#pragma once

#include "daemon/service_log.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

namespace together {

struct ChildProcess;

// A daemon's shard processes: started on request, within what the machine donates, owned by a master that
// must keep renewing its launch's lease, and watched until they exit.
//
//  - Limits: a launch is refused when the threads of the running shards plus the new one pass --max-threads,
//    or their announced memory passes --max-memory, or the new shard's memory is more than the machine has
//    free. While running, a launch whose shards together hold more than the donated memory (with a 10%
//    margin) is stopped, with that reason.
//  - Leases: each launch has one, renewed by the master's heartbeat (Health). When renewals stop for longer
//    than the lease (the master crashed, was SIGSTOPped, or lost the network), the launch's shards are killed
//    and their memory freed; the daemon keeps serving.
//  - Processes are spawned from one long-lived thread: PR_SET_PDEATHSIG fires when the *thread* that started
//    a child exits, and gRPC handler threads come and go. Each shard's stderr goes into the daemon's log.
class ShardProcesses {
public:
    struct Options {
        std::string workerExecutable;
        std::string keyFile;
        std::string ports = "0";          // shard port range "LO-HI", or "0" for ephemeral ports
        std::vector<std::string> modelsRoots;
        std::string workerId;
        uint32_t maxThreads = 1;
        uint64_t maxMemoryBytes = 0;      // 0: only what is free
        std::string cacheDir;             // where shards keep the slices they received (SliceCache)
        uint64_t cacheBytes = 0;          // its size limit; 0: no cache
    };
    struct Request {
        std::string launchId;
        uint32_t index = 0; // the rank's index in the plan
        std::string bindHost;
        uint32_t threads = 1;
        uint64_t memoryBytes = 0;
        bool beyondFreeMemory = false; // forced by the user: only the donated limit holds
        std::string master; // the caller's certificate name
        std::chrono::milliseconds lease{5000};
    };
    struct Started {
        std::string address;
        pid_t pid = -1;
    };
    struct Status {
        uint32_t index = 0;
        bool running = false;
        std::string exitReason;
        uint64_t peakRssBytes = 0;
    };
    struct LaunchInfo {
        std::string id;
        std::string master;
        uint32_t shards = 0;
        uint32_t threads = 0;
        uint64_t memoryBytes = 0;
    };

    ShardProcesses(Options options, ServiceLog& log);
    ~ShardProcesses(); // kills every shard

    // Throws Error with a message for the master (a limit, a port range in use, a shard that failed).
    Started launch(const Request& request);
    uint32_t stop(const std::string& launchId, const std::string& why);
    // Renews the lease and returns the shards' states; `ended` gets why the launch ended when it did.
    std::vector<Status> renew(const std::string& launchId, std::string* ended);
    // The certificate name of the master that started the launch ("" when there is no such launch).
    std::string owner(const std::string& launchId);
    std::vector<LaunchInfo> launches() const;
    const Options& options() const { return m_options; }

private:
    using Clock = std::chrono::steady_clock;
    struct Shard {
        uint32_t index = 0;
        pid_t pid = -1; // -1 while starting
        std::string address;
        bool running = true;
        std::string exitReason;
        uint32_t threads = 0;
        uint64_t memoryBytes = 0;
        uint64_t peakRssBytes = 0;
    };
    struct Launch {
        std::string master;
        std::chrono::milliseconds lease{5000};
        Clock::time_point renewed;
        std::vector<Shard> shards;
    };
    struct Reader; // a thread copying one shard's stderr into the log
    // launch()'s steps. reserve: checks the limits and reserves the shard's threads and memory (a shard without a
    // pid yet), or throws; unreserve: takes that back after a failed start.
    void reserve(const Request& request);
    void unreserve(const Request& request);
    std::vector<std::string> shardArguments(const Request& request) const;
    // Spawns the shard on the spawner thread (see above) and waits for it.
    ChildProcess spawn(const std::vector<std::string>& args);
    // Copies the shard's stderr (`fd`, closed at its end) into the log on a Reader thread.
    void logStderr(int fd, const std::string& who);
    // Gives the reserved shard its pid and address; false when its launch was stopped while it started.
    bool adopt(const Request& request, const Started& started);
    void monitorLoop();
    void reapLocked();
    void endLocked(const std::string& launchId, const std::string& why);
    void spawnLoop();

    Options m_options;
    ServiceLog& m_log;
    mutable std::mutex m_mutex;
    std::map<std::string, Launch> m_launches;
    std::deque<std::pair<std::string, std::string>> m_ended; // recent ended launches and why
    std::vector<std::unique_ptr<Reader>> m_readers;
    std::atomic<bool> m_stop{false};
    std::thread m_monitor;
    std::mutex m_spawnMutex;
    std::condition_variable m_spawnCv;
    std::deque<std::packaged_task<void()>> m_spawnQueue;
    std::thread m_spawner;
};


} // namespace together
