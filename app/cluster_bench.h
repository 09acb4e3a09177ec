// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

namespace together {

// `together-cli bench-cluster`: decode speed of one model across local worker processes in several
// placements, measured side by side in one run, with all-reduce and hop times and each shard's memory.
int runClusterBench(const std::vector<std::string>& args);

} // namespace together
