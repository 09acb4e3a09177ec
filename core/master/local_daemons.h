// SPDX-License-Identifier: MIT
#pragma once

#include "base/process.h"

#include <string>
#include <vector>

namespace together {

// Worker daemons on loopback, one per simulated machine (`together-cli run --local`, tests), started with
// `serve --local`: no discovery beacons, shard ports from the ephemeral range, a private state folder each
// (removed with them). They die with this process (PR_SET_PDEATHSIG) even if it is killed; normally the
// destructor stops them. `extraArgs` go to every daemon (e.g. --models-root DIR).
class LocalDaemons {
public:
    LocalDaemons(size_t count, const std::string& keyFile, const std::vector<std::string>& extraArgs = {});
    ~LocalDaemons();
    LocalDaemons(const LocalDaemons&) = delete;
    LocalDaemons& operator=(const LocalDaemons&) = delete;
    const std::vector<std::string>& addresses() const { return m_addresses; }
    const std::vector<ChildProcess>& processes() const { return m_children; }
    // together-worker next to this executable, or $TOGETHER_WORKER.
    static std::string workerExecutable();

private:
    void stopAll();
    std::vector<std::string> m_addresses;
    std::vector<ChildProcess> m_children;
    std::string m_stateRoot;
};

} // namespace together
