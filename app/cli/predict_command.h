// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

namespace together {

// `together-cli predict`: the cost model on machine profiles from a JSON file (until daemons calibrate
// themselves): a placement's predicted ms/token and where it goes, with every link replaced by each named
// profile (what-if), or the auto placement and why.
int runPredict(const std::vector<std::string>& args);

} // namespace together
