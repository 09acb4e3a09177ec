// SPDX-License-Identifier: MIT
#include "base/error.h"
#include "model/random_model.h"
#include "test_support.h"
#include "text/generation.h"
#include "text/tokenizer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sstream>

using namespace together;

namespace {

// Plays back a fixed token sequence, recording what it was fed.
class ScriptedStepper : public TokenStepper {
public:
    ScriptedStepper(std::vector<int> script, int64_t limit)
        : m_script(std::move(script))
        , m_limit(limit)
    {
    }
    StepOutput step(const std::vector<int>& tokens, int64_t startPos) override
    {
        fed.push_back({startPos, tokens});
        StepOutput o;
        o.token = m_script.at(m_next++);
        o.top = {{o.token, 1.0f}};
        return o;
    }
    int64_t contextLimit() const override { return m_limit; }
    std::vector<std::pair<int64_t, std::vector<int>>> fed;

private:
    std::vector<int> m_script;
    size_t m_next = 0;
    int64_t m_limit;
};

class Generation : public ::testing::Test {
protected:
    void SetUp() override
    {
        dir = test::writeTinyModel("gen");
        tok = std::make_unique<Tokenizer>(Tokenizer::fromDirectory(dir));
    }
    std::vector<int> ids(const std::string& s) { return tok->encode(s, false); }
    std::string dir;
    std::unique_ptr<Tokenizer> tok;
};

TEST_F(Generation, PrefillOnceThenOneTokenPerStepUntilEos)
{
    auto words = ids(" hello world");
    int eos = *tok->tokenToId("<|im_end|>");
    std::vector<int> script = words;
    script.push_back(eos);
    ScriptedStepper st(script, 100);
    GenerationParams p;
    p.eosIds = {eos};
    std::string streamed;
    std::ostringstream trace;
    auto r = generate(st, *tok, {1, 2, 3}, 0, p, [&](const std::string& s) { streamed += s; }, &trace);
    EXPECT_EQ(r.reason, StopReason::Eos);
    EXPECT_EQ(streamed, " hello world");
    EXPECT_EQ(r.text, streamed);
    ASSERT_EQ(st.fed.size(), words.size() + 1);
    EXPECT_EQ(st.fed[0].second, (std::vector<int>{1, 2, 3}));
    EXPECT_EQ(st.fed[1].first, 3);
    EXPECT_EQ(st.fed[1].second.size(), 1u);
    // one JSON line per step with position, token and top logits
    std::istringstream lines(trace.str());
    std::string first;
    std::getline(lines, first);
    auto j = nlohmann::json::parse(first);
    EXPECT_EQ(j["pos"], 2);
    EXPECT_EQ(j["n_input"], 3);
    EXPECT_EQ(j["token"], words[0]);
}

TEST_F(Generation, StopStringsAreCutAndNeverPartiallyPrinted)
{
    auto script = ids(" one two. STOP here");
    ScriptedStepper st(script, 100);
    GenerationParams p;
    p.stopStrings = {"STOP"};
    std::string streamed;
    auto r = generate(st, *tok, {1}, 0, p, [&](const std::string& s) { streamed += s; }, nullptr);
    EXPECT_EQ(r.reason, StopReason::StopString);
    EXPECT_EQ(streamed, " one two. ");
}

TEST_F(Generation, MaxTokensAndContextLimit)
{
    ScriptedStepper st(ids(" a b c d e f g h i j k l m n o p"), 100);
    GenerationParams p;
    p.maxTokens = 3;
    auto r = generate(st, *tok, {1}, 0, p, nullptr, nullptr);
    EXPECT_EQ(r.reason, StopReason::MaxTokens);
    EXPECT_EQ(r.tokens.size(), 3u);

    ScriptedStepper small(ids(" a b c d e f g h i j k l m n o p"), 5);
    GenerationParams q;
    auto r2 = generate(small, *tok, {1, 2}, 0, q, nullptr, nullptr);
    EXPECT_EQ(r2.reason, StopReason::ContextFull);
    EXPECT_EQ(r2.tokens.size(), 4u); // positions 0..4 filled; the token after the last position is still shown

    ScriptedStepper tiny({1}, 2);
    EXPECT_THROW(generate(tiny, *tok, {1, 2, 3}, 0, q, nullptr, nullptr), Error);
}

TEST(StopStringFilter, HoldsBackPossiblePrefixes)
{
    StopStringFilter f({"</end>"});
    bool stopped = false;
    EXPECT_EQ(f.push("abc</e", stopped), "abc");
    EXPECT_FALSE(stopped);
    EXPECT_EQ(f.push("x", stopped), "</ex");
    EXPECT_EQ(f.push("</en", stopped), "");
    EXPECT_EQ(f.push("d>tail", stopped), "");
    EXPECT_TRUE(stopped);
}

} // namespace
