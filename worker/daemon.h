// SPDX-License-Identifier: MIT
#pragma once

#include <string>

namespace together {

struct DaemonOptions {
    std::string listen = "0.0.0.0:7600"; // the daemon's job is the LAN: all interfaces by default
    std::string keyFile;
    int reportFd = -1;
    int parentPid = 0; // set under `together-cli run --local`: die with the master
};

// `together-worker serve`: one per machine. Starts and watches shard processes for the master.
int runDaemon(const DaemonOptions& options);

} // namespace together
