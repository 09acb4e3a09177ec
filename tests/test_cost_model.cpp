// SPDX-License-Identifier: MIT
// The cost model on synthetic calibrations, against numbers computed by hand, and auto placement on
// synthetic machine sets.
#include "base/error.h"
#include "master/cost_model.h"
#include "model/shard_spec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

using namespace together;

namespace {

// hidden 64, 2 layers, 4 heads of 16 (2 KV heads), intermediate 128, vocabulary 100, untied.
ModelConfig tiny()
{
    return ModelConfig::fromJsonText(R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"max_position_embeddings":512})",
                                     "tiny");
}

// TinyLlama-1.1B's shape (no weights needed: the model predicts from shapes).
ModelConfig tinyLlama()
{
    return ModelConfig::fromJsonText(R"({"architectures":["LlamaForCausalLM"],"hidden_size":2048,"intermediate_size":5632,
        "num_hidden_layers":22,"num_attention_heads":32,"num_key_value_heads":4,"vocab_size":32000,"max_position_embeddings":2048})",
                                     "tinyllama");
}

MachineProfile machine(const std::string& worker, const std::string& host, double one, double all, uint32_t threads = 1,
                       double memoryGiB = 16)
{
    MachineProfile m;
    m.worker = worker;
    m.host = host;
    m.threads = threads;
    m.freeMemoryBytes = static_cast<uint64_t>(memoryGiB * double(1ull << 30));
    m.readGBps1 = one;
    m.readGBpsAll = all;
    m.matvecGBps["f32"] = {one, all};
    m.matvecGBps["bf16"] = {one, all};
    return m;
}

Plan plan(std::vector<std::pair<std::pair<int64_t, int64_t>, std::vector<std::string>>> stages)
{
    Plan p;
    for (auto& [layers, workers] : stages) {
        PlanStage st;
        st.firstLayer = layers.first;
        st.lastLayer = layers.second;
        for (auto& w : workers)
            st.ranks.push_back({w, 1, ""});
        p.stages.push_back(st);
    }
    return p;
}

TEST(CostModel, DecodeBytesAreTheWeightsOfTheShard)
{
    // Per layer: q 64x64, k and v 32x64, o 64x64, gate and up 128x64, down 64x128, two norms of 64 = 36992
    // floats; one embedding row (64); the head 100x64 and its norm (64).
    EXPECT_EQ(decodeBytesPerToken(tiny(), ShardSpec::whole(tiny()), RunDtype::F32), (2 * 36992 + 64 + 6400 + 64) * 4);
    EXPECT_EQ(decodeBytesPerToken(tiny(), ShardSpec::whole(tiny()), RunDtype::BF16), (2 * 36992 + 64 + 6400 + 64) * 2);
}

TEST(CostModel, OneMachineByHand)
{
    std::vector<MachineProfile> m = {machine("a:1", "a", 1, 2)};
    Prediction p = predict(tiny(), plan({{{0, 1}, {"a:1"}}}), "f32", m, LinkTable{}, /*positions=*/100);
    // (322048 weight bytes + 2 layers x 2 KV heads x 16 x 4 bytes x 2 (k, v) x 100 positions) at 1 GB/s.
    ASSERT_EQ(p.stages.size(), 1u);
    EXPECT_NEAR(p.stages[0].computeMs, (322048 + 51200) / 1e6, 1e-9);
    EXPECT_EQ(p.stages[0].allReduces, 0);
    EXPECT_EQ(p.stages[0].linkMs, 0); // it feeds itself the token
    EXPECT_NEAR(p.samplingMs, 400 / 1e6, 1e-12);
    EXPECT_NEAR(p.msPerToken, 0.373248 + 0.0004, 1e-9);
    EXPECT_NEAR(p.tokensPerSecond, 1000 / p.msPerToken, 1e-9);
}

// A layer's fixed cost (dispatch, fork/join) adds per layer of the stage, at the rank's thread count.
TEST(CostModel, LayerOverheadAddsPerLayerAtTheRanksThreads)
{
    std::vector<MachineProfile> m = {machine("a:1", "a", 1, 2, 2), machine("b:1", "b", 1, 2, 2)};
    m[0].layerOverheadMs1 = 0.25;
    m[0].layerOverheadMsAll = 0.5;
    const double base = predict(tiny(), plan({{{0, 1}, {"b:1"}}}), "f32", m, LinkTable{}, 100).stages[0].computeMs;
    Plan one = plan({{{0, 1}, {"a:1"}}});
    EXPECT_NEAR(predict(tiny(), one, "f32", m, LinkTable{}, 100).stages[0].computeMs, base + 2 * 0.25, 1e-9);
    one.stages[0].ranks[0].threads = 2; // twice the bandwidth, the all-thread overhead
    EXPECT_NEAR(predict(tiny(), one, "f32", m, LinkTable{}, 100).stages[0].computeMs, base / 2 + 2 * 0.5, 1e-9);
}

TEST(CostModel, PipelineByHand)
{
    std::vector<MachineProfile> m = {machine("a:1", "a", 1, 2), machine("b:1", "b", 2, 4)};
    LinkTable links;
    links.set("a:1", "b:1", {100, 100}); // 0.1 ms + bytes / 100 MB/s
    Prediction p = predict(tiny(), plan({{{0, 0}, {"a:1"}}, {{1, 1}, {"b:1"}}}), "f32", m, links, 100);
    ASSERT_EQ(p.stages.size(), 2u);
    EXPECT_NEAR(p.stages[0].computeMs, (147968 + 256 + 25600) / 1e6, 1e-9);        // one layer, one embedding row, its KV
    EXPECT_NEAR(p.stages[1].computeMs, (147968 + 25600 + 256 + 25600) / 2e6, 1e-9); // one layer, the head, its KV, at 2 GB/s
    EXPECT_NEAR(p.stages[0].linkMs, 0.1 + 256 / 1e5, 1e-9);                         // the hidden state: 64 floats
    EXPECT_NEAR(p.stages[1].linkMs, 0.1 + 16 / 1e5, 1e-9);                          // the token back to stage 0
    EXPECT_NEAR(p.msPerToken, 0.173824 + 0.099712 + 0.10256 + 0.10016 + 0.0002, 1e-9);
}

TEST(CostModel, TensorParallelAllReducesByHand)
{
    std::vector<MachineProfile> m = {machine("a:1", "a", 1, 2), machine("b:1", "b", 1, 2)};
    LinkTable links;
    links.set("a:1", "b:1", {50, 1000});
    Prediction p = predict(tiny(), plan({{{0, 1}, {"a:1", "b:1"}}}), "f32", m, links, 100);
    // Two per layer (64 floats) and the logits (100 floats); halving-doubling over 2 ranks: 2 rounds of 50 µs,
    // and each rank moves the buffer once.
    EXPECT_EQ(p.stages[0].allReduces, 5);
    EXPECT_EQ(p.stages[0].allReduceBytes, 4u * 256 + 400);
    EXPECT_NEAR(p.stages[0].allReduceMs, 5 * 0.1 + 4 * 256 / 1e6 + 400 / 1e6, 1e-9);
    EXPECT_NEAR(p.stages[0].linkMs, 0.05 + 16 / 1e6, 1e-9); // the token to rank 1
    // Each rank reads about half the weights (the embedding and norms whole).
    const double rank0 = static_cast<double>(decodeBytesPerToken(tiny(), ShardSpec{0, 1, 0, 2, true, true}, RunDtype::F32)) + 25600;
    EXPECT_NEAR(p.stages[0].computeMs, rank0 / 1e6, 1e-9);
}

TEST(CostModel, RanksOfOneStageOnOneHostShareItsBandwidth)
{
    // Two workers on one host: together they can read 1.5 GB/s, not 2.
    std::vector<MachineProfile> m = {machine("h:1", "h", 1, 1.5), machine("h:2", "h", 1, 1.5)};
    m[0].readGBpsAll = m[1].readGBpsAll = 1.5;
    Prediction shared = predict(tiny(), plan({{{0, 1}, {"h:1", "h:2"}}}), "f32", m, LinkTable{}, 100);
    const double rank0 = static_cast<double>(decodeBytesPerToken(tiny(), ShardSpec{0, 1, 0, 2, true, true}, RunDtype::F32)) + 25600;
    EXPECT_NEAR(shared.stages[0].computeMs, rank0 / 0.75e6, 1e-9);
    // Stages of one token run one after another: a pipeline on one host does not share.
    Prediction pp = predict(tiny(), plan({{{0, 0}, {"h:1"}}, {{1, 1}, {"h:2"}}}), "f32", m, LinkTable{}, 100);
    EXPECT_NEAR(pp.stages[0].computeMs, (147968 + 256 + 25600) / 1e6, 1e-9);
}

TEST(CostModel, NamedLinksAndWhatIf)
{
    EXPECT_EQ(namedLinks().size(), 5u);
    EXPECT_GT(namedLink("1 GbE").alphaUs, namedLink("10 GbE").alphaUs);
    EXPECT_LT(namedLink("Wi-Fi 5").betaMBps, namedLink("1 GbE").betaMBps);
    try {
        namedLink("carrier pigeon");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("2.5 GbE"), std::string::npos) << e.what();
    }
    // The same placement with every link replaced by a profile: slower links, slower tokens.
    std::vector<MachineProfile> m = {machine("a:1", "a", 5, 10, 2), machine("b:1", "b", 5, 10, 2)};
    const Plan tp2 = plan({{{0, 21}, {"a:1", "b:1"}}});
    double previous = 0;
    for (const char* name : {"loopback", "10 GbE", "2.5 GbE", "1 GbE", "Wi-Fi 5"}) {
        LinkTable links;
        links.fallback = namedLink(name);
        links.set("a:1", "b:1", namedLink(name));
        const double ms = predict(tinyLlama(), tp2, "bf16", m, links).msPerToken;
        EXPECT_GT(ms, previous) << name;
        previous = ms;
    }
}

TEST(CostModel, MemoryRefusalSaysNeedsAndHas)
{
    std::vector<MachineProfile> m = {machine("a:1", "alpha", 5, 10, 2, 1.0)};
    m[0].donatedMemoryBytes = 1ull << 29;
    const std::string why = checkMemory(tinyLlama(), plan({{{0, 21}, {"a:1"}}}), RunDtype::BF16, 2048, m);
    EXPECT_NE(why.find("needs about 2."), std::string::npos) << why;
    EXPECT_NE(why.find("alpha has 1.0 GiB free (0.5 GiB donated)"), std::string::npos) << why;
    m[0].freeMemoryBytes = 8ull << 30;
    m[0].donatedMemoryBytes = 0;
    EXPECT_EQ(checkMemory(tinyLlama(), plan({{{0, 21}, {"a:1"}}}), RunDtype::BF16, 2048, m), "");
}

TEST(AutoPlacement, ASlowLinkKeepsTensorParallelismOff)
{
    std::vector<MachineProfile> m = {machine("a:1", "a", 10, 20, 2), machine("b:1", "b", 10, 20, 2)};
    LinkTable slow;
    slow.set("a:1", "b:1", namedLink("Wi-Fi 5"));
    AutoPlacement p = autoPlace(tinyLlama(), "bf16", 2048, m, slow);
    std::printf("[ explain  ] %s\n", p.explanation.c_str());
    for (auto& st : p.plan.stages)
        EXPECT_EQ(st.ranks.size(), 1u) << p.explanation;
    EXPECT_NE(p.explanation.find("does not pay"), std::string::npos) << p.explanation;
    // Over a fast link the same machines split each layer between them.
    LinkTable fast;
    fast.set("a:1", "b:1", namedLink("10 GbE"));
    AutoPlacement q = autoPlace(tinyLlama(), "bf16", 2048, m, fast);
    std::printf("[ explain  ] %s\n", q.explanation.c_str());
    ASSERT_EQ(q.plan.stages.size(), 1u) << q.explanation;
    EXPECT_EQ(q.plan.stages[0].ranks.size(), 2u) << q.explanation;
    EXPECT_LT(q.prediction.msPerToken, p.prediction.msPerToken);
    EXPECT_NE(q.explanation.find("pays"), std::string::npos) << q.explanation;
}

TEST(AutoPlacement, ASmallMemoryMachineGetsFewerLayers)
{
    // The fast machine holds about a third of the model; the slow one the rest.
    std::vector<MachineProfile> m = {machine("fast:1", "fast", 10, 20, 2, 1.0), machine("slow:1", "slow", 3, 6, 2, 8.0)};
    LinkTable links;
    links.fallback = namedLink("1 GbE");
    AutoPlacement p = autoPlace(tinyLlama(), "bf16", 2048, m, links);
    std::printf("[ explain  ] %s\n", p.explanation.c_str());
    ASSERT_EQ(p.plan.stages.size(), 2u) << p.explanation;
    EXPECT_EQ(p.plan.stages[0].ranks[0].worker, "fast:1");
    const int64_t onFast = p.plan.stages[0].lastLayer - p.plan.stages[0].firstLayer + 1;
    const int64_t onSlow = p.plan.stages[1].lastLayer - p.plan.stages[1].firstLayer + 1;
    EXPECT_LT(onFast, onSlow) << p.explanation;
    EXPECT_GT(onFast, 1) << "the fast machine should hold what its memory allows: " << p.explanation;
    EXPECT_EQ(checkMemory(tinyLlama(), p.plan, RunDtype::BF16, 2048, m), "");
    // The plan is valid for the model, and the slow machine alone would be slower.
    p.plan.validate(tinyLlama());
    EXPECT_GT(predict(tinyLlama(), plan({{{0, 21}, {"slow:1"}}}), "bf16", m, links).msPerToken, p.prediction.msPerToken);
}

TEST(AutoPlacement, ASetThatCannotHoldTheModelIsRefusedWithTheNumbers)
{
    std::vector<MachineProfile> m = {machine("a:1", "a", 10, 20, 2, 0.5), machine("b:1", "b", 10, 20, 2, 0.5)};
    try {
        autoPlace(tinyLlama(), "bf16", 2048, m, LinkTable{});
        FAIL() << "2 x 0.5 GiB cannot hold 2.2 GB of weights";
    } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("no placement fits"), std::string::npos) << what;
        EXPECT_NE(what.find("needs about 2."), std::string::npos) << what;
        EXPECT_NE(what.find("have 1.0 GiB"), std::string::npos) << what;
    }
}

TEST(AutoPlacement, OneMachineThatHoldsItAllIsNotSplit)
{
    // Adding a machine to a token only adds link time when the fastest one holds the whole model.
    std::vector<MachineProfile> m = {machine("a:1", "a", 10, 20, 2), machine("b:1", "b", 5, 10, 2)};
    LinkTable links;
    links.fallback = namedLink("1 GbE");
    AutoPlacement p = autoPlace(tinyLlama(), "bf16", 2048, m, links);
    ASSERT_EQ(p.plan.rankCount(), 1u) << p.explanation;
    EXPECT_EQ(p.plan.stages[0].ranks[0].worker, "a:1");
    EXPECT_NE(p.explanation.find("left out"), std::string::npos) << p.explanation;
}

} // namespace

TEST(CostModel, FitLinkRecoversLatencyAndThroughput)
{
    // time = 2 alpha + bytes / beta with alpha 150 us, beta 117 MB/s (1 GbE).
    std::vector<std::pair<double, double>> samples;
    for (double b : {1024.0, 16384.0, 262144.0, 1048576.0, 4194304.0})
        samples.emplace_back(b, 0.300 + b / 117e3);
    const LinkProfile l = fitLink(samples);
    EXPECT_NEAR(l.alphaUs, 150, 1);
    EXPECT_NEAR(l.betaMBps, 117, 0.5);
    // A noisy large transfer (+8%) must not swamp the latency the small payloads show.
    samples.back().second *= 1.08;
    const LinkProfile noisy = fitLink(samples);
    EXPECT_NEAR(noisy.alphaUs, 150, 30);
    EXPECT_NEAR(noisy.betaMBps, 117, 117 * 0.1);
    // A flat (noisy) slope still gives a finite throughput from the largest sample.
    const LinkProfile flat = fitLink({{1024, 1.0}, {4096, 0.9}});
    EXPECT_GT(flat.betaMBps, 0);
    EXPECT_TRUE(std::isfinite(flat.betaMBps));
    // A pair's measured all-reduce is used for tensor-parallel groups; its stream for the pipeline.
    LinkTable t;
    t.set("a:1", "b:1", {100, 100});
    t.setAllReduce("b:1", "a:1", {200, 50});
    EXPECT_EQ(t.forAllReduce("a:1", "b:1").alphaUs, 200);
    EXPECT_EQ(t.between("a:1", "b:1").alphaUs, 100);
    t.allReducePairs.clear();
    EXPECT_EQ(t.forAllReduce("a:1", "b:1").alphaUs, 100);
}
