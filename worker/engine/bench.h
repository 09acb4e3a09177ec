// SPDX-License-Identifier: MIT
#pragma once

#include "engine/llama_model.h"

#include <string>
#include <vector>

namespace together {

// `together-worker bench`: single-process prefill/decode speed on a TinyLlama-1.1B-shaped random model, per
// dtype (bf16, q8, f32), decode kernel path and thread count, next to the read bandwidth measured in the same
// run; with --accuracy, how far bf16 and q8 logits are from f32's.
int runBench(const std::vector<std::string>& args);

// How far a run at `dtype` is from f32 on the same model: both models step in lockstep over `steps` greedy
// steps chosen by f32 (so every step compares the same context), after `prompt`.
struct DtypeAccuracy {
    int steps = 0;
    int top1Agree = 0;          // steps where the dtype's argmax is f32's
    double maxLogitError = 0;   // max over steps and vocabulary of |logit − f32 logit|
    double maxLogit = 0;        // max |f32 logit|, for scale
    double minF32Margin = 1e30; // smallest gap between f32's top two logits over the steps
};
DtypeAccuracy compareWithF32(const std::string& modelDir, ComputeType dtype, const std::vector<int>& prompt, int steps);

} // namespace together
