// SPDX-License-Identifier: MIT
// The asynchronous controller over real worker daemons and shard processes on loopback: launch progress,
// cancel, unload, the workers' slice cache, Stop mid-answer and the next turn, and per-step records.
#include "base/process.h"
#include "master/controller.h"
#include "master/local_daemons.h"
#include "model/random_model.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "test_support.h"
#include "text/tokenizer.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>

using namespace together;

namespace {

// Collects the controller's events as they arrive (on its threads); the test reads them afterwards.
struct Events {
    std::mutex mutex;
    std::vector<ControllerEvent> all;
    std::function<void(const ControllerEvent&)> hook; // runs on the controller's thread, as a GUI callback would

    void add(const ControllerEvent& e)
    {
        {
            std::lock_guard lock(mutex);
            all.push_back(e);
        }
        if (hook)
            hook(e);
    }
    std::vector<ControllerEvent> take()
    {
        std::lock_guard lock(mutex);
        std::vector<ControllerEvent> out;
        out.swap(all);
        return out;
    }
};

std::vector<ControllerEvent> ofKind(const std::vector<ControllerEvent>& v, ControllerEvent::Kind k)
{
    std::vector<ControllerEvent> out;
    for (auto& e : v)
        if (e.kind == k)
            out.push_back(e);
    return out;
}

std::vector<pid_t> shardProcesses()
{
    std::vector<pid_t> out;
    for (pid_t p : test::descendants(::getpid()))
        if (test::cmdline(p).find("together-worker shard ") != std::string::npos)
            out.push_back(p);
    return out;
}

struct LocalCluster {
    std::string dir;
    std::unique_ptr<LocalDaemons> daemons;
    std::shared_ptr<const Tokenizer> tokenizer;
    Events events;
    std::unique_ptr<Controller> controller;

    LocalCluster(const std::string& model, size_t workers)
    {
        dir = test::makeTempDir("controller");
        ClusterKey key = ClusterKey::generate();
        key.writeFile(dir + "/key");
        daemons = std::make_unique<LocalDaemons>(workers, dir + "/key");
        tokenizer = std::make_shared<const Tokenizer>(Tokenizer::fromDirectory(model));
        controller = std::make_unique<Controller>(std::make_shared<const Credentials>(key, newMasterIdentity()), tokenizer,
                                                  [this](const ControllerEvent& e) { events.add(e); });
    }
};

GenerateRequest greedy(const std::vector<int>& ids, int maxTokens)
{
    GenerateRequest g;
    g.ids = ids;
    g.params.maxTokens = maxTokens; // no EOS ids: the answer runs to maxTokens
    g.sampling.temperature = 0;
    return g;
}

TEST(ControllerLaunch, ProgressWhileStreamingCancelLeavesNoShardRelaunchComesFromCache)
{
    // Big enough for several 4 MiB chunks per rank.
    const std::string model = test::makeTempDir("controller-model") + "/m";
    RandomModelSpec s;
    s.hiddenSize = 512;
    s.intermediateSize = 1536;
    s.numLayers = 4;
    s.numHeads = 8;
    s.numKvHeads = 4;
    s.vocabSize = 8000;
    writeRandomModel(model, s);
    LocalCluster t(model, 2);
    LaunchRequest launch;
    launch.modelDir = model;
    launch.dtype = "f32";
    launch.contextLength = 256;
    launch.plan = Plan::even(ModelConfig::fromDirectory(model), 1, 2, t.daemons->addresses(), 1);

    // Cancel as soon as some bytes moved, from the event callback itself.
    std::atomic<bool> cancelled{false};
    t.events.hook = [&](const ControllerEvent& e) {
        if (e.kind == ControllerEvent::Kind::Progress && e.progress.phase == RankProgress::Phase::Transferring && e.progress.bytesDone > 0 &&
            !cancelled.exchange(true))
            t.controller->cancel();
    };
    t.controller->launch(launch);
    t.controller->wait();
    auto events = t.events.take();
    auto failed = ofKind(events, ControllerEvent::Kind::LaunchFailed);
    ASSERT_EQ(failed.size(), 1u);
    EXPECT_NE(failed[0].text.find("cancelled"), std::string::npos) << failed[0].text;
    bool midway = false;
    for (auto& e : ofKind(events, ControllerEvent::Kind::Progress))
        midway = midway || (e.progress.phase == RankProgress::Phase::Transferring && e.progress.bytesDone > 0 &&
                            e.progress.bytesDone < e.progress.bytesTotal);
    EXPECT_TRUE(midway) << "no progress event arrived while the weights were streaming";
    EXPECT_TRUE(test::waitFor([] { return shardProcesses().empty(); }, std::chrono::seconds(10))) << "a cancelled launch left a shard";

    // A full launch streams and reports every phase, in order, for each rank.
    t.events.hook = nullptr;
    t.controller->launch(launch);
    t.controller->wait();
    events = t.events.take();
    ASSERT_EQ(ofKind(events, ControllerEvent::Kind::Launched).size(), 1u) << (ofKind(events, ControllerEvent::Kind::LaunchFailed).empty()
                                                                                   ? ""
                                                                                   : ofKind(events, ControllerEvent::Kind::LaunchFailed)[0].text);
    for (size_t rank = 0; rank < 2; ++rank) {
        std::vector<RankProgress::Phase> phases;
        for (auto& e : ofKind(events, ControllerEvent::Kind::Progress))
            if (e.progress.index == rank && (phases.empty() || phases.back() != e.progress.phase))
                phases.push_back(e.progress.phase);
        std::vector<RankProgress::Phase> expected = {RankProgress::Phase::Connecting, RankProgress::Phase::Transferring,
                                                     RankProgress::Phase::Loading, RankProgress::Phase::Ready};
        EXPECT_EQ(phases, expected) << "rank " << rank;
    }
    const std::vector<int> prompt = t.tokenizer->encode("Once upon a time", true);
    t.controller->generate(greedy(prompt, 12));
    t.controller->wait();
    events = t.events.take();
    auto ended = ofKind(events, ControllerEvent::Kind::Ended);
    ASSERT_EQ(ended.size(), 1u);
    const std::vector<int> first = ended[0].result.tokens;
    EXPECT_EQ(first.size(), 12u);

    // Unload frees the workers (no shard left); the relaunch of the same placement skips the transfer.
    t.controller->unload();
    t.controller->wait();
    EXPECT_EQ(ofKind(t.events.take(), ControllerEvent::Kind::Unloaded).size(), 1u);
    EXPECT_TRUE(test::waitFor([] { return shardProcesses().empty(); }, std::chrono::seconds(10))) << "unload left a shard";
    t.controller->launch(launch);
    t.controller->wait();
    events = t.events.take();
    ASSERT_EQ(ofKind(events, ControllerEvent::Kind::Launched).size(), 1u);
    for (size_t rank = 0; rank < 2; ++rank) {
        bool fromCache = false, transferred = false;
        for (auto& e : ofKind(events, ControllerEvent::Kind::Progress))
            if (e.progress.index == rank) {
                fromCache = fromCache || e.progress.phase == RankProgress::Phase::FromCache;
                transferred = transferred || e.progress.phase == RankProgress::Phase::Transferring;
            }
        EXPECT_TRUE(fromCache) << "rank " << rank << " did not report the slice cache";
        EXPECT_FALSE(transferred) << "rank " << rank << " streamed its weights again";
    }
    EXPECT_EQ(t.controller->weightSources(), (std::vector<std::string>{"from cache", "from cache"}));
    // Nor did the master read the checkpoint again to hash it: the hashes were remembered by file.
    bool remembered = false;
    for (auto& e : ofKind(events, ControllerEvent::Kind::Log))
        remembered = remembered || (e.text.find("tensor hashes:") == 0 && e.text.find(", 0 computed") != std::string::npos);
    EXPECT_TRUE(remembered) << "the relaunch hashed the weights again";
    t.controller->generate(greedy(prompt, 12));
    t.controller->wait();
    ended = ofKind(t.events.take(), ControllerEvent::Kind::Ended);
    ASSERT_EQ(ended.size(), 1u);
    EXPECT_EQ(ended[0].result.tokens, first) << "the cached weights gave another answer";
}

// Stop mid-answer (the shards may have run ahead of the master), then continue the same text: the answer
// goes on exactly as one process's greedy answer does, and only the new token is prefilled.
TEST(ControllerGeneration, StopMidAnswerThenTheNextTurnContinuesCorrectly)
{
    const std::string model = test::largeMarginModel("kv2", 4, 2, 160);
    const auto reference = test::readTrace(test::referenceTrace(model, "Once upon a time", 20));
    ASSERT_EQ(reference.size(), 20u);
    LocalCluster t(model, 3);
    LaunchRequest launch;
    launch.modelDir = model;
    launch.dtype = "f32";
    launch.plan = Plan::even(ModelConfig::fromDirectory(model), 1, 3, t.daemons->addresses(), 1);
    t.controller->launch(launch);
    t.controller->wait();
    ASSERT_TRUE(t.controller->launched());
    t.events.take();

    const std::vector<int> prompt = t.tokenizer->encode("Once upon a time", true);
    int seen = 0;
    t.events.hook = [&](const ControllerEvent& e) {
        if (e.kind == ControllerEvent::Kind::Token && e.token.token >= 0 && ++seen == 5)
            t.controller->stop();
    };
    auto g = greedy(prompt, 100);
    g.window = 8; // let the ring run well ahead of the master
    t.controller->generate(g);
    t.controller->wait();
    auto events = t.events.take();
    auto ended = ofKind(events, ControllerEvent::Kind::Ended);
    ASSERT_EQ(ended.size(), 1u);
    EXPECT_EQ(ended[0].result.reason, StopReason::Stopped);
    ASSERT_EQ(ended[0].result.tokens.size(), 5u);
    for (size_t i = 0; i < 5; ++i)
        EXPECT_EQ(ended[0].result.tokens[i], reference[i].token) << "token " << i;
    std::string shown;
    for (auto& e : ofKind(events, ControllerEvent::Kind::Token))
        shown += e.text;
    EXPECT_EQ(shown, ended[0].result.text) << "the text shown is not the answer's";

    // The next turn: the conversation so far plus the answer, continued.
    t.events.hook = nullptr;
    std::vector<int> ids = prompt;
    ids.insert(ids.end(), ended[0].result.tokens.begin(), ended[0].result.tokens.end());
    t.controller->generate(greedy(ids, 10));
    t.controller->wait();
    events = t.events.take();
    ended = ofKind(events, ControllerEvent::Kind::Ended);
    ASSERT_EQ(ended.size(), 1u);
    ASSERT_EQ(ended[0].result.tokens.size(), 10u);
    for (size_t i = 0; i < 10; ++i)
        EXPECT_EQ(ended[0].result.tokens[i], reference[5 + i].token) << "continued token " << i;
    auto tokens = ofKind(events, ControllerEvent::Kind::Token);
    ASSERT_FALSE(tokens.empty());
    EXPECT_EQ(tokens[0].token.inputTokens, 1) << "the next turn prefilled what the shards already held";

    // Every step left a record with every rank and the ring's links measured inside the processes.
    t.controller->syncRecords();
    auto records = t.controller->records();
    ASSERT_GE(records.size(), 15u);
    const auto& last = records.back();
    ASSERT_EQ(last.ranks.size(), 3u);
    EXPECT_GT(last.endToEndMs, 0);
    for (auto& r : last.ranks)
        EXPECT_GT(r.computeMs, 0) << "stage " << r.stage;
    EXPECT_EQ(last.ranks[0].linkName, "stage 0 -> 1");
    EXPECT_EQ(last.ranks[1].linkName, "stage 1 -> 2");
    EXPECT_GT(last.ranks[0].linkBytes, 0u);
    EXPECT_GT(last.ranks[0].linkMs, 0);
    EXPECT_GT(last.ranks[2].samplingMs, 0);
    std::vector<std::string> links;
    for (auto& l : t.controller->linkSummary())
        links.push_back(l.name);
    EXPECT_EQ(links, (std::vector<std::string>{"stage 0 -> 1", "stage 1 -> 2", "stage 2 -> 0 (token)"}));
}

} // namespace
