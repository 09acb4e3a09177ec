// SPDX-License-Identifier: MIT
#include "base/error.h"
#include "model/model_config.h"
#include "model/plan.h"

#include <gtest/gtest.h>

using namespace together;

namespace {

ModelConfig model()
{
    return ModelConfig::fromJsonText(R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":100,
        "num_hidden_layers":6,"num_attention_heads":8,"num_key_value_heads":2,"vocab_size":100})",
                                     "c");
}

std::string errorOf(const std::string& planJson, const std::vector<std::string>& known = {})
{
    try {
        Plan::fromJson(planJson, "plan.json").validate(model(), known);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

TEST(Plan, ValidPlanAndShardSpecs)
{
    Plan p = Plan::fromJson(R"({"stages":[{"layers":[0,1],"ranks":[{"worker":"a:1","threads":2},{"worker":"b:1"}]},
                                          {"layers":[2,5],"ranks":[{"worker":"c:1"}]}],"dtype":"f32"})",
                            "plan.json");
    EXPECT_NO_THROW(p.validate(model(), {"a:1", "b:1", "c:1"}));
    EXPECT_EQ(p.rankCount(), 3u);
    EXPECT_EQ(p.dtype, "f32");
    ShardSpec s = p.shardSpec(0, 1);
    EXPECT_EQ(s.tpSize, 2);
    EXPECT_EQ(s.tpRank, 1);
    EXPECT_TRUE(s.firstStage);
    EXPECT_FALSE(s.lastStage);
    EXPECT_TRUE(p.shardSpec(1, 0).holdsHead());
    // round trip through JSON
    Plan q = Plan::fromJson(p.toJson(), "x");
    EXPECT_EQ(q.toJson(), p.toJson());
}

TEST(Plan, SpecificErrors)
{
    EXPECT_NE(errorOf(R"({"stages":[{"layers":[0,1],"ranks":[{"worker":"a:1"}]},{"layers":[3,5],"ranks":[{"worker":"b:1"}]}]})")
                  .find("layers 2..2 are not covered"),
              std::string::npos);
    EXPECT_NE(errorOf(R"({"stages":[{"layers":[0,3],"ranks":[{"worker":"a:1"}]},{"layers":[2,5],"ranks":[{"worker":"b:1"}]}]})")
                  .find("layers 2..3 overlap"),
              std::string::npos);
    EXPECT_NE(errorOf(R"({"stages":[{"layers":[0,4],"ranks":[{"worker":"a:1"}]}]})").find("layers 5..5 are not covered"),
              std::string::npos);
    EXPECT_NE(errorOf(R"({"stages":[{"layers":[0,6],"ranks":[{"worker":"a:1"}]}]})").find("layer 6 does not exist"), std::string::npos);
    EXPECT_NE(errorOf(R"({"stages":[{"layers":[0,5],"ranks":[{"worker":"a:1"},{"worker":"b:1"},{"worker":"c:1"}]}]})")
                  .find("does not divide the 8 attention heads"),
              std::string::npos);
    EXPECT_NE(errorOf(R"({"stages":[{"layers":[0,5],"ranks":[{"worker":"z:9"}]}]})", {"a:1"}).find("unknown worker z:9"),
              std::string::npos);
    EXPECT_NE(errorOf(R"({"stages":[{"layers":[0,5],"ranks":[]}]})").find("no ranks"), std::string::npos);
    EXPECT_NE(errorOf(R"({"stages":[{"layers":[0,5],"ranks":[{"worker":"nohostport"}]}]})").find("host:port"), std::string::npos);
    EXPECT_NE(errorOf(R"({"stages":[{"layers":[0,5],"ranks":[{"worker":"a:1","threads":0}]}]})").find("threads"), std::string::npos);
    EXPECT_NE(errorOf(R"({"stages":[{"layers":[0],"ranks":[{"worker":"a:1"}]}]})").find("[first, last]"), std::string::npos);
    EXPECT_NE(errorOf("{nope").find("malformed JSON"), std::string::npos);
}

TEST(Plan, EvenSplit)
{
    Plan p = Plan::even(model(), 2, 4, {"a:1", "b:1", "c:1", "d:1", "e:1", "f:1", "g:1", "h:1"}, 1);
    ASSERT_EQ(p.stages.size(), 4u);
    EXPECT_EQ(p.stages[0].firstLayer, 0);
    EXPECT_EQ(p.stages[0].lastLayer, 1); // 6 layers over 4 stages: 2, 2, 1, 1
    EXPECT_EQ(p.stages[1].lastLayer, 3);
    EXPECT_EQ(p.stages[3].firstLayer, 5);
    EXPECT_EQ(p.stages[3].ranks[1].worker, "h:1");
    EXPECT_NO_THROW(p.validate(model()));
    EXPECT_THROW(Plan::even(model(), 2, 7, {}, 1), Error);
    EXPECT_THROW(Plan::even(model(), 2, 2, {"a:1"}, 1), Error);
}

} // namespace
