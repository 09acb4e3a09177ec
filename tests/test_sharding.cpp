// SPDX-License-Identifier: MIT
// Sharded numerics against the unsharded model: tensor-parallel ranks run as threads with an in-process
// all-reduce, pipeline stages hand the hidden state on, and the last stage's logits must match the whole
// model's at every step.
#include "base/error.h"
#include "engine/llama_model.h"
#include "model/model_config.h"
#include "model/random_model.h"
#include "model/safetensors.h"
#include "model/shard_spec.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <barrier>
#include <mutex>
#include <thread>

using namespace together;

namespace {

// All-reduce among threads: each rank adds its buffer into a shared sum, then all copy the sum out.
class ThreadGroup {
public:
    explicit ThreadGroup(int size)
        : m_size(size)
        , m_barrier(size)
    {
    }
    void allReduce(float* data, size_t n)
    {
        {
            std::lock_guard lock(m_mutex);
            if (m_sum.size() != n)
                m_sum.assign(n, 0.0f);
            for (size_t i = 0; i < n; ++i)
                m_sum[i] += data[i];
        }
        m_barrier.arrive_and_wait();
        std::copy(m_sum.begin(), m_sum.end(), data);
        m_barrier.arrive_and_wait();
        if (m_arrivals.fetch_add(1) + 1 == m_size) { // last one out resets for the next call
            m_sum.clear();
            m_arrivals = 0;
        }
        m_barrier.arrive_and_wait();
    }

private:
    int m_size;
    std::barrier<> m_barrier;
    std::mutex m_mutex;
    std::vector<float> m_sum;
    std::atomic<int> m_arrivals{0};
};

class ThreadComm : public Communicator {
public:
    explicit ThreadComm(ThreadGroup& g)
        : m_group(g)
    {
    }
    void allReduceSum(float* data, size_t count) override
    {
        calls.push_back(static_cast<int64_t>(count));
        m_group.allReduce(data, count);
    }
    std::vector<int64_t> calls; // float counts of the all-reduces since the test last cleared it

private:
    ThreadGroup& m_group;
};

struct StageLayout {
    int64_t first, last;
    int tp;
};

struct Case {
    std::string name;
    std::string arch;
    int64_t layers, heads, kvHeads, intermediate;
    std::vector<StageLayout> stages;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class Sharded : public ::testing::TestWithParam<Case> {};

// Runs the placement of `cs` as threads against the whole model in the same dtype. f32: logits within 1e-3 and
// the same argmax. bf16 and q8 (their inputs are rounded or quantized per slice, so TP sums differ a little more)
// on a model with large logit gaps: within `tolerance` × the largest logit and the same argmax at every step.
// With `blockAligned` the model's widths are multiples of the q8 block (head_dim 32 and an intermediate of 11
// blocks, uneven over 2, 3 and 4 ranks), as real models' are: every rank's slice then starts on a block boundary.
void runPlacement(const Case& cs, ComputeType ct, double logitScale, float tolerance, bool blockAligned = false)
{
    std::string dir = test::makeTempDir("shard");
    RandomModelSpec s;
    s.architecture = cs.arch;
    s.hiddenSize = 48;
    s.headDim = 8;
    s.numHeads = cs.heads;
    s.numKvHeads = cs.kvHeads;
    s.intermediateSize = cs.intermediate;
    s.numLayers = cs.layers;
    s.seed = 5;
    s.logitScale = logitScale;
    if (blockAligned) {
        s.headDim = 32;
        s.hiddenSize = 32 * cs.heads;
        s.intermediateSize = 11 * 32;
    }
    s.tieWordEmbeddings = cs.arch == "Qwen2ForCausalLM"; // the tied head: a view on stage 0, a row slice later
    writeRandomModel(dir, s);
    ModelConfig c = ModelConfig::fromDirectory(dir);
    SafeTensors st = SafeTensors::open(dir);
    SafeTensorsWeights weights(st);
    at::set_num_threads(1);

    LlamaModel whole(c, st, ct);

    struct Rank {
        std::unique_ptr<ThreadComm> comm;
        std::unique_ptr<LlamaModel> model;
        std::unique_ptr<KvCache> cache;
    };
    std::vector<std::unique_ptr<ThreadGroup>> groups;
    std::vector<std::vector<Rank>> stages;
    int64_t sliceBytes = 0;
    for (size_t si = 0; si < cs.stages.size(); ++si) {
        const StageLayout& L = cs.stages[si];
        groups.push_back(std::make_unique<ThreadGroup>(L.tp));
        std::vector<Rank> ranks;
        for (int r = 0; r < L.tp; ++r) {
            ShardSpec spec{L.first, L.last, r, L.tp, si == 0, si + 1 == cs.stages.size()};
            Rank rk;
            rk.comm = std::make_unique<ThreadComm>(*groups.back());
            rk.model = std::make_unique<LlamaModel>(c, weights, ct, spec, rk.comm.get());
            rk.cache = std::make_unique<KvCache>(rk.model->newCache());
            sliceBytes += shardBytes(c, spec, DType::F32);
            ranks.push_back(std::move(rk));
        }
        stages.push_back(std::move(ranks));
    }
    // Every weight byte is held by some rank; replicated pieces (embedding on all first-stage ranks,
    // norms, replicated KV heads) make the sum larger than the checkpoint, never smaller.
    int64_t checkpointBytes = 0;
    for (auto& [name, t] : st.tensors())
        checkpointBytes += static_cast<int64_t>(t.nbytes);
    EXPECT_GE(sliceBytes, checkpointBytes);
    // What a decode step reads, as the cost model computes it, is what the engine holds for one token.
    for (auto& ranks : stages)
        for (auto& rk : ranks)
            if (ct != ComputeType::BF16) // (bf16 runs keep norms in f32; the estimate counts them at 2 bytes)
                EXPECT_EQ(decodeBytesPerToken(c, rk.model->shard(), ct == ComputeType::Q8 ? RunDtype::Q8 : RunDtype::F32),
                          rk.model->weightBytesPerToken())
                    << cs.name << " " << computeTypeName(ct);

    std::vector<std::vector<int>> steps = {{1, 17, 42, 99, 7, 300}, {12}, {5}, {250}};
    if (ct != ComputeType::F32)
        steps.insert(steps.end(), {{3}, {77}, {31}, {8}, {190}, {64}, {2}, {121}});
    int compared = 0;
    KvCache wholeCache = whole.newCache();
    for (auto& tokens : steps) {
        at::Tensor expected = whole.forward(tokens, wholeCache);
        std::vector<int64_t> ids(tokens.begin(), tokens.end());
        at::Tensor input = at::tensor(ids, at::kLong);
        at::Tensor logits;
        for (auto& ranks : stages) {
            std::vector<at::Tensor> outs(ranks.size());
            std::vector<std::thread> threads;
            std::vector<std::string> errors(ranks.size());
            for (size_t r = 0; r < ranks.size(); ++r)
                threads.emplace_back([&, r] {
                    try {
                        outs[r] = ranks[r].model->forwardShard(input, *ranks[r].cache);
                    } catch (const std::exception& e) {
                        errors[r] = e.what();
                    }
                });
            for (auto& t : threads)
                t.join();
            for (auto& e : errors)
                ASSERT_EQ(e, "");
            // The engine's all-reduces are exactly those the shard spec (and so the cost model) counts.
            for (auto& rk : ranks) {
                std::vector<int64_t> expected;
                for (auto& x : shardCollectives(c, rk.model->shard(), static_cast<int64_t>(tokens.size())))
                    expected.push_back(x.floats);
                EXPECT_EQ(rk.comm->calls, expected) << cs.name;
                rk.comm->calls.clear();
            }
            if (ranks[0].model->shard().lastStage) {
                logits = outs[0];
                for (size_t r = 1; r < outs.size(); ++r)
                    EXPECT_FALSE(outs[r].defined());
            } else {
                // after the last all-reduce every rank holds the same full hidden state
                for (size_t r = 1; r < outs.size(); ++r)
                    EXPECT_TRUE(at::allclose(outs[r], outs[0], 1e-6, 1e-6));
                input = outs[0];
            }
        }
        ASSERT_TRUE(logits.defined());
        float err = (logits - expected).abs().max().item<float>();
        if (ct == ComputeType::F32) {
            EXPECT_LT(err, tolerance) << cs.name;
            EXPECT_EQ(logits.argmax().item<int64_t>(), expected.argmax().item<int64_t>()) << cs.name;
        } else {
            // Relative to the logits' size. A bf16 or q8 input flips a rounding step when an earlier sum differs in
            // its last bit, so placements differ by about a rounding step of the logits: the argmax must agree
            // wherever the whole model's top-2 gap is wider than twice the difference (a third of the steps at least).
            const float scale = expected.abs().max().item<float>();
            at::Tensor top2 = std::get<0>(expected.topk(2));
            EXPECT_LT(err, tolerance * scale) << cs.name << " " << computeTypeName(ct);
            if ((top2[0] - top2[1]).item<float>() > 2 * err) {
                EXPECT_EQ(logits.argmax().item<int64_t>(), expected.argmax().item<int64_t>()) << cs.name << " " << computeTypeName(ct);
                ++compared;
            }
        }
    }
    if (ct != ComputeType::F32)
        EXPECT_GE(compared, static_cast<int>(steps.size()) / 3) << cs.name << " " << computeTypeName(ct) << ": too few steps with a clear argmax";
}

TEST_P(Sharded, LogitsMatchTheWholeModel) { runPlacement(GetParam(), ComputeType::F32, 1.0, 1e-3f); }

TEST_P(Sharded, Bf16AndQ8PlacementsGiveTheWholeModelsTokens)
{
    runPlacement(GetParam(), ComputeType::BF16, 40.0, 0.05f, true);
    runPlacement(GetParam(), ComputeType::Q8, 40.0, 0.05f, true);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, Sharded,
    ::testing::Values(Case{"tp1_pp1", "LlamaForCausalLM", 5, 4, 2, 100, {{0, 4, 1}}},
                      Case{"tp2", "LlamaForCausalLM", 5, 4, 2, 100, {{0, 4, 2}}},
                      Case{"pp2", "LlamaForCausalLM", 5, 4, 2, 100, {{0, 2, 1}, {3, 4, 1}}},
                      Case{"pp3_uneven", "LlamaForCausalLM", 5, 4, 2, 100, {{0, 0, 1}, {1, 3, 1}, {4, 4, 1}}},
                      Case{"tp2_pp2", "LlamaForCausalLM", 4, 4, 2, 100, {{0, 1, 2}, {2, 3, 2}}},
                      Case{"tp4_kv2_replicated", "LlamaForCausalLM", 2, 4, 2, 100, {{0, 1, 4}}},
                      Case{"tp3_uneven_intermediate", "LlamaForCausalLM", 2, 6, 3, 100, {{0, 1, 3}}},
                      Case{"mixed_tp_pp", "LlamaForCausalLM", 3, 4, 2, 100, {{0, 0, 2}, {1, 2, 1}}},
                      Case{"qwen2_tp2_tied", "Qwen2ForCausalLM", 2, 4, 2, 100, {{0, 1, 2}}},
                      Case{"qwen2_tied_pp2_tp2", "Qwen2ForCausalLM", 2, 4, 2, 100, {{0, 0, 1}, {1, 1, 2}}},
                      Case{"qwen3_tp2_pp2", "Qwen3ForCausalLM", 2, 4, 2, 100, {{0, 0, 2}, {1, 1, 2}}}),
    [](const auto& info) { return info.param.name; });

TEST(ShardSpec, SplitsAndRefusals)
{
    ModelConfig c = ModelConfig::fromJsonText(R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":10,
        "num_hidden_layers":2,"num_attention_heads":8,"num_key_value_heads":2,"vocab_size":100})",
                                              "c");
    // intermediate 10 over 4 ranks: 3, 3, 2, 2
    EXPECT_EQ(shardDims(c, 0, 4).intermediate, 3);
    EXPECT_EQ(shardDims(c, 3, 4).intermediate, 2);
    EXPECT_EQ(shardDims(c, 3, 4).intermediateBegin, 8);
    // Wider: in units of 32 (q8 blocks), the partial unit last. 5632 = 176 units over 3: 59, 59, 58 units.
    ModelConfig wide = c;
    wide.intermediateSize = 5632 + 20;
    EXPECT_EQ(shardDims(wide, 0, 3).intermediate, 59 * 32);
    EXPECT_EQ(shardDims(wide, 1, 3).intermediateBegin, 59 * 32);
    EXPECT_EQ(shardDims(wide, 2, 3).intermediateBegin, 118 * 32);
    EXPECT_EQ(shardDims(wide, 2, 3).intermediate, 58 * 32 + 20);
    int64_t covered = 0;
    for (int r = 0; r < 3; ++r) {
        EXPECT_EQ(shardDims(wide, r, 3).intermediateBegin, covered);
        covered += shardDims(wide, r, 3).intermediate;
    }
    EXPECT_EQ(covered, wide.intermediateSize);
    // 2 KV heads over 4 ranks: ranks 0,1 hold head 0; ranks 2,3 hold head 1
    EXPECT_EQ(shardDims(c, 1, 4).kvHeadBegin, 0);
    EXPECT_EQ(shardDims(c, 2, 4).kvHeadBegin, 1);
    EXPECT_THROW(checkTensorParallel(c, 3), Error); // 8 heads
    EXPECT_THROW(checkTensorParallel(c, 16), Error);
    ShardSpec last{1, 1, 1, 2, false, true};
    bool head = false;
    for (auto& t : shardTensors(c, last)) {
        EXPECT_EQ(t.name.find("layers.0."), std::string::npos);
        if (t.name == "lm_head.weight") { // rank 1 holds the second half of the vocabulary
            head = true;
            EXPECT_EQ(t.dim, 0);
            EXPECT_EQ(t.begin, 50);
            EXPECT_EQ(t.end, 100);
        }
    }
    EXPECT_TRUE(head);
    EXPECT_FALSE(last.returnsLogits());
}

} // namespace

// A native run keeps a GGUF's blocks whole: tensor-parallel shares of o_proj's and down_proj's columns must be
// whole blocks of the file's largest type (256 weights for Q4_K_M), else the plan is refused before launch.
TEST(BlockAlignment, NativeSplitsMustKeepTheFilesBlocksWhole)
{
    ModelConfig c; // Qwen2.5 7B's shape
    c.hiddenSize = 3584;
    c.intermediateSize = 18944;
    c.numHeads = 28;
    c.numKvHeads = 4;
    c.headDim = 128;
    c.numLayers = 28;
    c.vocabSize = 152064;
    c.storedBlockWeights = 256;
    EXPECT_EQ(blockAlignmentProblem(c, 1, RunDtype::Native), "");
    EXPECT_EQ(blockAlignmentProblem(c, 2, RunDtype::Native), ""); // 14 heads: 1792 columns = 7 blocks; MLP 9472 = 37 blocks
    const std::string four = blockAlignmentProblem(c, 4, RunDtype::Native); // 7 heads: 896 columns
    EXPECT_NE(four.find("tensor-parallel size 4 cuts the model file's blocks of 256 weights: rank 0's share of the attention output's "
                        "columns is 0-896"),
              std::string::npos)
        << four;
    EXPECT_EQ(blockAlignmentProblem(c, 4, RunDtype::Q8), ""); // widened and requantized: any split
    c.storedBlockWeights = 32;                                // a Q4_0 or Q8_0 file
    EXPECT_EQ(blockAlignmentProblem(c, 4, RunDtype::Native), "");
}
