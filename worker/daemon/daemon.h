// SPDX-License-Identifier: MIT
#pragma once

#include "wire/beacon.h"

#include <string>
#include <vector>

namespace together {

struct DaemonOptions {
    std::string listen = "0.0.0.0:7600"; // the daemon's job is the LAN: all interfaces by default
    std::string keyFile;                 // "" = the stored key; asked for on the terminal the first time
    std::string stateDir;                // "" = core/user_dirs stateDir(): worker id, lock, log
    std::string ports = "7610-7650";     // shard ports
    std::vector<std::string> modelsRoots; // local model folders a plan may ask shards to read; none by default
    double maxMemoryGiB = 0;             // donated memory; 0 = whatever is free
    int maxThreads = 0;                  // donated threads; 0 = every core
    bool recalibrate = false;            // measure this machine's speed again instead of using the cached result
    double cacheGiB = 4;                 // disk for slices received from masters (relaunches skip the transfer); 0 = none
    uint16_t discoveryPort = kDefaultDiscoveryPort;
    std::string discoveryInterfaces;     // "" = every non-loopback interface, "none" = no discovery
    bool local = false;                  // started by a master's --local: no discovery, any free shard ports
    int reportFd = -1;
    int parentPid = 0;                   // set by a master that starts its own daemons: die with it
};

// `together-worker serve`: one per machine. Announces itself on the LAN, and starts and watches shard
// processes for masters that hold the cluster key. Runs until SIGTERM or SIGINT; a closed terminal (SIGHUP)
// does not stop it, unless it was started by a master (--local), which it dies with.
int runDaemon(const DaemonOptions& options);

// The cluster key file a daemon uses: `given`, else the stored key, else one typed on the terminal (and then
// stored, mode 0600). Throws Error when there is none and no terminal to ask on.
std::string resolveDaemonKeyFile(const std::string& given);

} // namespace together
