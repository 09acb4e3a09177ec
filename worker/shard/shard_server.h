// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

namespace together {

struct ShardOptions {
    std::string host = "127.0.0.1";      // the interface to bind (the daemon's address in the plan)
    std::string ports = "0";             // "LO-HI": the first free port of the range; "0": any free port
    std::string keyFile;
    std::string name;                    // its certificate name, for logs ("shard 2 1f3a...@<worker id>")
    std::vector<std::string> modelsRoots; // the only folders LoadLocalWeights may read
    int threads = 1;
    std::string owner;                   // the certificate name of the master that launched it (from the daemon)
    std::string cacheDir;                // the daemon's slice cache ("" = none)
    uint64_t cacheBytes = 0;
    int reportFd = -1;
    int parentPid = 0;
};

// `together-worker shard`: one tensor-parallel rank of one pipeline stage, started by a daemon. Serves the
// Shard and KvStore services until killed; writes "listening HOST:PORT" to the report fd when ready.
int runShard(const ShardOptions& options);

} // namespace together
