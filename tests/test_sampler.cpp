// SPDX-License-Identifier: MIT
#include "text/sampler.h"

#include "base/error.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

using namespace together;

namespace {

TEST(Sampler, GreedyTakesTheMaxLowestIdOnTies)
{
    std::vector<float> l = {1, 5, 3, 5};
    Sampler s({0.0, 40, 0.95, 1});
    EXPECT_EQ(s.sample(l.data(), l.size()), 1);
}

TEST(Sampler, TopKOneIsGreedyAtAnyTemperature)
{
    std::vector<float> l = {1, 2, 9, 3};
    Sampler s({5.0, 1, 1.0, 7});
    for (int i = 0; i < 20; ++i)
        EXPECT_EQ(s.sample(l.data(), l.size()), 2);
}

TEST(Sampler, TinyTopPKeepsOnlyTheBest)
{
    std::vector<float> l = {1, 2, 3, 2.9f};
    Sampler s({1.0, 0, 0.01, 3});
    for (int i = 0; i < 20; ++i)
        EXPECT_EQ(s.sample(l.data(), l.size()), 2);
}

TEST(Sampler, SeededAndFollowsTheDistribution)
{
    std::vector<float> l = {0.0f, std::log(3.0f)}; // p = 0.25, 0.75
    Sampler a({1.0, 0, 1.0, 42}), b({1.0, 0, 1.0, 42});
    int ones = 0;
    for (int i = 0; i < 4000; ++i) {
        int x = a.sample(l.data(), l.size());
        EXPECT_EQ(x, b.sample(l.data(), l.size()));
        ones += x;
    }
    EXPECT_NEAR(ones / 4000.0, 0.75, 0.04);
}

TEST(Sampler, TopKRestrictsTheCandidates)
{
    std::vector<float> l = {5, 4.9f, 0, 0, 0, 0};
    Sampler s({100.0, 2, 1.0, 9}); // very flat, but only ids 0 and 1 may come out
    std::map<int, int> seen;
    for (int i = 0; i < 200; ++i)
        ++seen[s.sample(l.data(), l.size())];
    EXPECT_EQ(seen.size(), 2u);
    EXPECT_TRUE(seen.count(0) && seen.count(1));
}

TEST(Sampler, TopLogitsOrder)
{
    std::vector<float> l = {1, 3, 2, 3};
    auto t = Sampler::topLogits(l.data(), l.size(), 3);
    ASSERT_EQ(t.size(), 3u);
    EXPECT_EQ(t[0].first, 1);
    EXPECT_EQ(t[1].first, 3);
    EXPECT_EQ(t[2].first, 2);
}

} // namespace

// A model whose weights hold an infinity or a NaN: no token is chosen from its output, at any temperature.
TEST(Sampler, ANonFiniteLogitIsNamedNotSampled)
{
    std::vector<float> logits = {0.5f, 1.0f, std::nanf(""), 0.2f};
    for (double t : {0.0, 0.8}) {
        SamplingParams p;
        p.temperature = t;
        Sampler s(p);
        try {
            s.sample(logits.data(), logits.size());
            FAIL() << "a NaN logit was sampled from";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("logit 2 is nan"), std::string::npos) << e.what();
        }
    }
    logits[2] = INFINITY;
    Sampler s(SamplingParams{});
    EXPECT_THROW(s.sample(logits.data(), logits.size()), Error);
}
