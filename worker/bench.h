// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

namespace together {

// `together-worker bench`: single-process prefill/decode speed on a TinyLlama-1.1B-shaped random model,
// bf16 and f32, 1 and 2 threads, next to the read bandwidth measured in the same run.
int runBench(const std::vector<std::string>& args);

} // namespace together
