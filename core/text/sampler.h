// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace together {

struct SamplingParams {
    double temperature = 0.8; // <= 0: greedy
    int topK = 40;            // <= 0: off
    double topP = 0.95;       // >= 1: off
    uint64_t seed = 0;
};

// Picks the next token from logits: temperature, then top-k, then top-p (nucleus), then a seeded draw.
// Greedy (temperature 0) takes the highest logit, the lowest id on a tie.
class Sampler {
public:
    explicit Sampler(const SamplingParams& params);
    int sample(const float* logits, size_t n);

    // The k highest logits with their ids, highest first (ties: lower id first).
    static std::vector<std::pair<int, float>> topLogits(const float* logits, size_t n, size_t k);

private:
    SamplingParams m_params;
    std::mt19937_64 m_rng;
};

} // namespace together
