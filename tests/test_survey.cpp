// SPDX-License-Identifier: MIT
// What the master learns before placing a model: each daemon's calibration through Hello, and link probes
// between daemons over the pipeline's stream and the all-reduce (real daemons on loopback, discovery off).
#include "master/survey.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"
#include "test_support.h"
#include "wire/protocol.h"

#include <gtest/gtest.h>

using namespace together;

namespace {

struct Workers {
    explicit Workers(size_t n)
        : dir(test::makeTempDir("survey"))
        , key(ClusterKey::generate())
    {
        key.writeFile(dir + "/key");
        for (size_t i = 0; i < n; ++i)
            daemons.push_back(std::make_unique<test::Daemon>(dir + "/key", dir + "/state-" + std::to_string(i)));
        for (auto& d : daemons)
            addresses.push_back(d->address());
    }
    std::string dir;
    ClusterKey key;
    Credentials credentials{key, "master test@host"};
    std::vector<std::unique_ptr<test::Daemon>> daemons;
    std::vector<std::string> addresses;
};

grpc::Status probe(Workers& w, const v1::ProbeLinkRequest& req, v1::ProbeLinkReply* rep)
{
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    ctx.set_wait_for_ready(true);
    return v1::WorkerControl::NewStub(openChannel(w.credentials, req.self_address()))->ProbeLink(&ctx, req, rep);
}

} // namespace

TEST(Survey, CalibrationsAndEveryPairsLinksOverBothTransports)
{
    Workers w(3);
    SurveyOptions o;
    std::vector<std::string> lines;
    o.progress = [&](const std::string& l) { lines.push_back(l); };
    const auto t0 = std::chrono::steady_clock::now();
    Survey s = surveyWorkers(w.credentials, w.addresses, o);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("survey of 3 daemons: %.2f s (links %.2f s)\n%s", seconds, s.probeSeconds, formatLinks(s.links).c_str());

    ASSERT_EQ(s.machines.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
        const MachineProfile& m = s.machines[i];
        EXPECT_EQ(m.worker, w.addresses[i]);
        EXPECT_EQ(m.host, s.machines[0].host) << "daemons of one machine share its bandwidth only if they share a host";
        EXPECT_GT(m.readGBps1, 0);
        EXPECT_GT(m.freeMemoryBytes, 0u);
        ASSERT_TRUE(m.matvecGBps.count("bf16") && m.matvecGBps.count("f32"));
        EXPECT_GT(m.matvecGBps.at("bf16").first, 0);
    }
    ASSERT_EQ(s.links.size(), 3u) << "every pair of 3 workers";
    std::set<std::pair<std::string, std::string>> pairs;
    for (auto& l : s.links) {
        EXPECT_TRUE(l.error.empty()) << l.a << " - " << l.b << ": " << l.error;
        pairs.insert(std::minmax(l.a, l.b));
        ASSERT_EQ(l.samples.size(), o.sizes.size()) << "loopback is fast enough for every size within the budget";
        EXPECT_EQ(l.samples.front().bytes, 1024u);
        EXPECT_EQ(l.samples.back().bytes, 4u << 20);
        for (auto& x : l.samples) {
            EXPECT_GT(x.streamMs, 0);
            EXPECT_GT(x.allReduceMs, 0) << "the all-reduce transport was probed too";
        }
        // Bigger payloads take longer: the fit has a positive throughput and a latency.
        EXPECT_GT(l.samples.back().streamMs, l.samples.front().streamMs);
        EXPECT_TRUE(l.hasAllReduce);
        EXPECT_GT(l.stream.alphaUs, 0);
        EXPECT_GT(l.stream.betaMBps, 0);
        EXPECT_GT(l.allReduce.betaMBps, 0);
    }
    EXPECT_EQ(pairs.size(), 3u);
    const LinkTable t = s.table();
    EXPECT_EQ(t.pairs.size(), 3u);
    EXPECT_EQ(t.allReducePairs.size(), 3u);
    EXPECT_LT(seconds, 120) << "a hang, not a speed check";
}

TEST(Survey, ProbesRefuseWhatIsNotAProbe)
{
    Workers w(2);
    v1::ProbeLinkRequest req;
    req.set_self_address(w.addresses[0]);
    req.set_target_address(w.addresses[1]);
    req.set_repeats(1);
    v1::ProbeLinkReply rep;

    req.add_sizes(100); // below 1 KiB
    grpc::Status s = probe(w, req, &rep);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("1 KiB to 4 MiB"), std::string::npos) << s.error_message();

    req.clear_sizes();
    req.add_sizes(64u << 20); // a 64 MiB payload
    s = probe(w, req, &rep);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

    req.clear_sizes();
    req.add_sizes(4096);
    req.set_repeats(1000);
    s = probe(w, req, &rep);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "repeats are bounded";

    req.set_repeats(1);
    req.set_target_address(w.addresses[0]);
    s = probe(w, req, &rep);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "a daemon does not probe itself";

    // A target where nothing listens: refused with the address, at once rather than at the deadline.
    req.set_target_address("127.0.0.1:1");
    const auto t0 = std::chrono::steady_clock::now();
    s = probe(w, req, &rep);
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.error_message().find("127.0.0.1:1"), std::string::npos) << s.error_message();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(25));

    // The echo end refuses payloads over 4 MiB.
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto stream = v1::WorkerControl::NewStub(openChannel(w.credentials, w.addresses[1]))->ProbeEcho(&ctx);
    v1::ProbePayload big;
    big.set_data(std::string((4u << 20) + 1, 'x'));
    stream->Write(big);
    v1::ProbeAck ack;
    EXPECT_FALSE(stream->Read(&ack));
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);

    // Probes still work afterwards.
    req.set_target_address(w.addresses[1]);
    req.set_all_reduce(true);
    s = probe(w, req, &rep);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(rep.samples_size(), 1);
    EXPECT_GT(rep.samples(0).all_reduce_ms(), 0) << rep.error();
}

TEST(Survey, ADaemonThatIsGoneIsNamed)
{
    Workers w(2);
    w.daemons[1]->stop();
    try {
        surveyWorkers(w.credentials, w.addresses);
        FAIL() << "surveyed a stopped daemon";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find(w.addresses[1]), std::string::npos) << e.what();
    }
}
