// SPDX-License-Identifier: MIT
// bench_links: the per-token communication time of a pipeline whose every link has a given one-way delay
// (the harness's user-space proxy in front of each shard), next to the compute time. Not a test: it prints a
// table for docs/BENCHMARKS.md.
//
//   build/bin/bench_links [--delay-ms 1] [--mbps 100] [--tokens 48] [--stages 3]
//
// It also prints the cost model's prediction for the same pipeline: the daemons' own calibrations and their
// loopback links as the survey measures them, each link then given the proxy's delay and bandwidth cap.
//
// Per decode token: "step" is 1000 / the master's decode tokens/s; "compute" the sum over stages of the
// shards' own compute time (from --trace); "communication" the rest (links, serialisation, sampling).
#include "base/cli_args.h"
#include "base/error.h"
#include "base/files.h"
#include "master/survey.h"
#include "model/model_config.h"
#include "model/plan.h"
#include "model/random_model.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "tcp_proxy.h"
#include "test_support.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace together;

namespace {

uint16_t freePort()
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a {};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

} // namespace

int main(int argc, char** argv)
{
    try {
        CliArgs a(std::vector<std::string>(argv + 1, argv + argc), {{"delay-ms"}, {"tokens"}, {"stages"}, {"mbps"}});
        const int delay = a.getInt("delay-ms", 1), tokens = a.getInt("tokens", 48), stages = a.getInt("stages", 3);
        const double mbps = a.getDouble("mbps", 0); // megabits per second per direction; 0: no cap
        const std::string dir = test::makeTempDir("bench-links");
        RandomModelSpec s;
        s.hiddenSize = 512;
        s.intermediateSize = 1024;
        s.numLayers = 6;
        s.numHeads = 8;
        s.numKvHeads = 4;
        s.maxPositionEmbeddings = 4096;
        writeRandomModel(dir + "/model", s);
        ClusterKey::generate().writeFile(dir + "/key");

        // Each daemon runs its one shard on a known port, so the proxy in front of it can exist first.
        std::vector<uint16_t> ports;
        std::vector<std::unique_ptr<test::TcpProxy>> proxies;
        std::string via;
        for (int i = 0; i < stages; ++i) {
            ports.push_back(freePort());
            const std::string shard = "127.0.0.1:" + std::to_string(ports.back());
            proxies.push_back(std::make_unique<test::TcpProxy>(shard));
            proxies.back()->setDelay(std::chrono::milliseconds(delay));
            proxies.back()->setBandwidth(static_cast<uint64_t>(mbps * 1e6 / 8));
            via += (via.empty() ? "" : ",") + shard + "=" + proxies.back()->address();
        }
        ::setenv("TOGETHER_TEST_DIAL_VIA", via.c_str(), 1); // the daemons, their shards and the master
        std::vector<std::unique_ptr<test::Daemon>> daemons;
        nlohmann::json plan = {{"stages", nlohmann::json::array()}};
        for (int i = 0; i < stages; ++i) {
            daemons.push_back(std::make_unique<test::Daemon>(dir + "/key", dir + "/state" + std::to_string(i),
                                                             std::vector<std::string>{"--ports", std::to_string(ports[i]) + "-" + std::to_string(ports[i])}));
            const int64_t first = s.numLayers * i / stages, last = s.numLayers * (i + 1) / stages - 1;
            plan["stages"].push_back({{"layers", {first, last}}, {"ranks", {{{"worker", daemons.back()->address()}, {"threads", 1}}}}});
        }
        std::ofstream(dir + "/plan.json") << plan.dump();
        std::string out, err;
        const int rc = test::runCommand(test::cliBin() + " run --model " + dir + "/model --plan " + dir + "/plan.json --key-file " + dir +
                                            "/key --prompt 'Once upon a time' --temperature 0 --ignore-eos --dtype f32 --max-tokens " +
                                            std::to_string(tokens) + " --metrics " + dir + "/metrics.json",
                                        &out, &err);
        if (rc != 0)
            throw Error("run failed: " + err);
        const size_t at = err.find("decode ");
        const double tps = std::atof(err.c_str() + at + 7);
        // Compute per token: each stage's slowest rank (its layers and all-reduces), summed, p50 over decode
        // steps, as the ranks measured it; the rest of a token's time (measured by the master) is communication.
        const auto metrics = nlohmann::json::parse(readTextFile(dir + "/metrics.json"));
        const double computePerToken = metrics["totals"]["compute_ms"].get<double>();
        const double step = 1000.0 / tps;
        std::printf("| PP%d, %d ms one-way per link%s | %.2f | %.2f | %.2f |\n", stages, delay,
                    mbps > 0 ? (", " + std::to_string(static_cast<int>(mbps)) + " Mbit/s").c_str() : "", step, computePerToken, step - computePerToken);
        for (auto& l : metrics["links"])
            std::printf("|   %s | p50 %.3f ms | p95 %.3f ms | |\n", l["name"].get<std::string>().c_str(), l["p50_ms"].get<double>(),
                        l["p95_ms"].get<double>());

        // The prediction: calibrations and loopback links from the survey, every link slowed as the proxy does.
        std::vector<std::string> addresses;
        for (auto& d : daemons)
            addresses.push_back(d->address());
        const Credentials credentials(ClusterKey::fromFile(dir + "/key"), newMasterIdentity());
        SurveyOptions so;
        so.allReduce = false;
        const Survey survey = surveyWorkers(credentials, addresses, so);
        LinkTable links;
        for (auto& l : survey.links) {
            LinkProfile p = l.stream;
            p.alphaUs += delay * 1000.0;
            if (mbps > 0)
                p.betaMBps = 1.0 / (1.0 / p.betaMBps + 1.0 / (mbps / 8));
            links.set(l.a, l.b, p);
        }
        const ModelConfig config = ModelConfig::fromDirectory(dir + "/model");
        const Plan p = Plan::fromJson(plan.dump(), "plan");
        const Prediction pred = predict(config, p, "f32", survey.machines, links, 64);
        std::printf("| predicted | %.2f | %.2f | %.2f | (error %+.1f%%)\n", pred.msPerToken, pred.computeMs() + pred.samplingMs, pred.linkMs(),
                    100.0 * (pred.msPerToken - step) / step);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_links: error: %s\n", e.what());
        return 1;
    }
}
