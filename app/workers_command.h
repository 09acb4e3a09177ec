// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

namespace together {

// `together-cli workers`: what discovery sees (core/discovery.h), printed as a table or JSON lines.
int runWorkers(const std::vector<std::string>& args);
// `together-cli worker-log ADDRESS`: a daemon's recent log (WorkerControl.RecentLog).
int runWorkerLog(const std::vector<std::string>& args);
// The cluster key file a master uses: --key-file, else the stored one; throws Error saying how to make one.
std::string masterKeyFile(const std::string& given);

} // namespace together
