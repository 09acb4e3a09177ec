// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

#include <cstdint>
#include <string>
#include <vector>

namespace together {

class Credentials;

// `together-cli workers`: what discovery sees (core/discovery.h), printed as a table or JSON lines.
int runWorkers(const std::vector<std::string>& args);
// `together-cli worker-log ADDRESS`: a daemon's recent log (WorkerControl.RecentLog).
int runWorkerLog(const std::vector<std::string>& args);
// A daemon's most recent log lines ("HH:MM:SS text"), oldest first; throws Error naming the worker.
struct WorkerLogLine {
    uint64_t sequence = 0;
    std::string text; // with its local time in front
};
std::vector<WorkerLogLine> fetchWorkerLog(const Credentials& credentials, const std::string& address, uint32_t maxLines, uint64_t after = 0);
// The cluster key file a master uses: --key-file, else the stored one; throws Error saying how to make one.
std::string masterKeyFile(const std::string& given);

} // namespace together
