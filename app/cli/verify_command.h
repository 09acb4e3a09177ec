// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

namespace together {

// `together-cli verify`: runs a placement and a reference of the same model for N greedy steps and says
// whether the token ids agree and how far the logits are apart. The reference is the whole model on one of
// the placement's machines; when none can hold it, the placement's own stages with each tensor-parallel group
// run by one machine (the split within stages is checked; a plan without tensor parallelism has nothing
// smaller to compare against, and verify says so).
int runVerify(const std::vector<std::string>& args);

} // namespace together
