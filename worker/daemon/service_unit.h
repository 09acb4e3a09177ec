// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

namespace together {

// `together-worker install-service` / `uninstall-service`: a systemd *user* unit that runs `serve` with the
// given flags at every boot (linger enabled, so without a login), restarts it when it fails, and stops its
// shards with it (the unit's control group).
struct ServiceUnitOptions {
    std::string executable;             // absolute path of together-worker
    std::vector<std::string> serveArgs; // the flags after `serve`, with an absolute --key-file
    std::string unitDir;                // "" = ~/.config/systemd/user
    bool enable = true;                 // false: only write the file (tests validate it with systemd-analyze)
};

constexpr const char* kServiceUnitName = "together-worker.service";

std::string serviceUnitText(const std::string& executable, const std::vector<std::string>& serveArgs);
// Returns the unit file's path; throws Error when a step fails, naming it.
std::string installService(const ServiceUnitOptions& options);
void uninstallService(const std::string& unitDir, bool disable);
std::string defaultUserUnitDir();

} // namespace together
