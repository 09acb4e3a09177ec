// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

namespace together {

// `together-cli run`: the master. Chooses the placement (--local, --plan or --auto), launches it through the
// Controller, prints the answer as it streams and, at the end, where a token's time went; --interactive keeps the
// conversation and reads one user message per line. Ctrl-C stops the answer, then the run ends (exit 130).
int runCluster(const std::vector<std::string>& args);

// Whether Ctrl-C was pressed during `run` (the exit status is then 130, whatever else happened).
bool runInterrupted();

} // namespace together
