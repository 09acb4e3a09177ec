// SPDX-License-Identifier: MIT
#include "text/sampler.h"

#include "base/error.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace together {

Sampler::Sampler(const SamplingParams& params)
    : m_params(params)
    , m_rng(params.seed)
{
}

std::vector<std::pair<int, float>> Sampler::topLogits(const float* logits, size_t n, size_t k)
{
    k = std::min(k, n);
    std::vector<int> idx(n);
    std::iota(idx.begin(), idx.end(), 0);
    auto better = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    std::partial_sort(idx.begin(), idx.begin() + static_cast<long>(k), idx.end(), better);
    std::vector<std::pair<int, float>> out;
    for (size_t i = 0; i < k; ++i)
        out.emplace_back(idx[i], logits[idx[i]]);
    return out;
}

int Sampler::sample(const float* logits, size_t n)
{
    // A model whose weights hold infinities or NaNs (a hostile or broken file: a block scale of f16 infinity)
    // gives logits no token can be chosen from: named, never a token picked at random.
    for (size_t i = 0; i < n; ++i)
        if (!std::isfinite(logits[i]))
            throw Error("the model's output is not a number (logit " + std::to_string(i) + " is " + std::to_string(logits[i]) +
                        "): its weights hold infinities or NaNs");
    if (m_params.temperature <= 0.0)
        return topLogits(logits, n, 1).front().first;
    // Candidates sorted by logit; top-k cuts the list, then softmax at the temperature, then top-p.
    size_t k = m_params.topK > 0 ? std::min<size_t>(static_cast<size_t>(m_params.topK), n) : n;
    auto cand = topLogits(logits, n, k);
    const double invT = 1.0 / m_params.temperature;
    const double maxL = cand.front().second;
    std::vector<double> p(cand.size());
    double sum = 0;
    for (size_t i = 0; i < cand.size(); ++i) {
        p[i] = std::exp((cand[i].second - maxL) * invT);
        sum += p[i];
    }
    size_t keep = cand.size();
    if (m_params.topP < 1.0) {
        double acc = 0;
        for (size_t i = 0; i < cand.size(); ++i) {
            acc += p[i] / sum;
            if (acc >= m_params.topP) {
                keep = i + 1;
                break;
            }
        }
    }
    double total = std::accumulate(p.begin(), p.begin() + static_cast<long>(keep), 0.0);
    std::uniform_real_distribution<double> u(0.0, total);
    double r = u(m_rng);
    for (size_t i = 0; i < keep; ++i) {
        r -= p[i];
        if (r <= 0)
            return cand[i].first;
    }
    return cand[keep - 1].first;
}

} // namespace together
