// SPDX-License-Identifier: MIT
#pragma once

#include <string>

namespace together {

struct ShardOptions {
    std::string listen = "127.0.0.1:0"; // host:port; port 0 picks a free one
    std::string keyFile;
    int threads = 1;
    int reportFd = -1;
    int parentPid = 0;
};

// `together-worker shard`: one tensor-parallel rank of one pipeline stage, started by a daemon. Serves the
// Shard and KvStore services until killed; writes "listening HOST:PORT" to the report fd when ready.
int runShard(const ShardOptions& options);

} // namespace together
