// SPDX-License-Identifier: MIT
// Worker machines on a LAN, for real: daemons in their own network namespaces on a bridge, discovered by
// broadcast by a master in another one, and runs across them. Every process, the master included, runs
// inside namespaces this test made, so no beacon reaches a real network.
#include "model/random_model.h"
#include "net/cluster_key.h"
#include "net_lab.h"
#include "test_support.h"
#include "wire/beacon.h"
#include "wire/protocol.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

using namespace together;
using namespace together::test;
using json = nlohmann::json;

namespace {

class Lan : public ::testing::Test {
protected:
    void SetUp() override
    {
        std::string why;
        if (!NetLab::available(&why))
            GTEST_SKIP() << why;
        dir = makeTempDir("lan");
        ClusterKey::generate().writeFile(dir + "/key");
        ClusterKey::generate().writeFile(dir + "/other-key");
        lab = std::make_unique<NetLab>();
        for (int i = 0; i < 4; ++i)
            workers.push_back(lab->addHost("w" + std::to_string(i)));
        master = lab->addHost("master");
        for (int i = 0; i < 4; ++i)
            startDaemon(i);
        for (int i = 0; i < 4; ++i)
            ASSERT_TRUE(waitFor([&] { return log(i).find("discovery: announcing on eth0") != std::string::npos; }, std::chrono::seconds(30)))
                << log(i);
    }
    void TearDown() override { lab.reset(); }

    // Workers 0-2 hold the cluster key, worker 3 another one. Default port and discovery: as on a LAN.
    void startDaemon(int i)
    {
        pids[i] = lab->spawn(workers[i],
                             {workerBin(), "serve", "--key-file", dir + (i == 3 ? "/other-key" : "/key"), "--state-dir",
                              dir + "/state" + std::to_string(i)},
                             {}, "", dir + "/w" + std::to_string(i) + ".log");
    }
    std::string log(int i)
    {
        std::ifstream in(dir + "/w" + std::to_string(i) + ".log");
        return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    }
    std::string address(int i) const { return workers[i].ip + ":7600"; }
    // Runs a together-cli command on the master's host; returns its exit status.
    int onMaster(const std::vector<std::string>& args, std::string& out, std::string& err)
    {
        std::vector<std::string> argv = {cliBin()};
        argv.insert(argv.end(), args.begin(), args.end());
        const std::string o = makeTempDir("out") + "/out", e = o + ".err";
        pid_t p = lab->spawn(master, argv, {}, o, e);
        int rc = lab->wait(p, std::chrono::seconds(300));
        out = readFile(o);
        err = readFile(e);
        return rc;
    }
    static std::string readFile(const std::string& path)
    {
        std::ifstream in(path);
        return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    }
    std::map<std::string, json> byAddress(const std::string& jsonLines)
    {
        std::map<std::string, json> out;
        std::istringstream in(jsonLines);
        for (std::string line; std::getline(in, line);)
            if (!line.empty()) {
                json j = json::parse(line);
                out[j["address"]] = j;
            }
        return out;
    }

    std::string dir;
    std::unique_ptr<NetLab> lab;
    std::vector<NetLab::Host> workers;
    NetLab::Host master;
    pid_t pids[4] = {};
};

std::string model() { return largeMarginModel("lan", 4, 2, 160); }

} // namespace

// Acceptance: three daemons in three namespaces are discovered by broadcast within 2 s by a master in a
// fourth; a daemon with another key shows as refused, with that reason; a stopped daemon turns gone and,
// restarted, comes back as the same worker.
TEST_F(Lan, AMasterFindsTheWorkersByBroadcast)
{
    std::string out, err;
    ASSERT_EQ(onMaster({"workers", "--key-file", dir + "/key", "--wait", "2", "--json"}, out, err), 0) << err;
    auto seen = byAddress(out);
    ASSERT_EQ(seen.size(), 4u) << out << err;
    for (int i = 0; i < 3; ++i) {
        json& w = seen[address(i)];
        EXPECT_EQ(w["state"], "ready") << w.dump();
        EXPECT_EQ(w["reason"], "");
        EXPECT_GT(w["cores"].get<int>(), 0);
        EXPECT_GT(w["memory_free_bytes"].get<uint64_t>(), 0u);
        EXPECT_FALSE(w["manual"].get<bool>());
        EXPECT_EQ(w["addresses"], json::array({workers[i].ip}));
    }
    json& foreign = seen[address(3)];
    EXPECT_EQ(foreign["state"], "refused");
    EXPECT_NE(foreign["reason"].get<std::string>().find("another cluster key"), std::string::npos) << foreign.dump();
    EXPECT_EQ(foreign["key_fingerprint"], ClusterKey::fromFile(dir + "/other-key").fingerprint());

    // Watch: stop worker 1, see it go; start it again (same state folder), see it come back with its id.
    const std::string watchOut = dir + "/watch.jsonl";
    pid_t watch = lab->spawn(master, {cliBin(), "workers", "--key-file", dir + "/key", "--watch", "--json", "--wait", "120"}, {}, watchOut,
                             dir + "/watch.err");
    const std::string id = seen[address(1)]["id"];
    auto lineWith = [&](const std::string& state) {
        std::istringstream in(readFile(watchOut));
        int n = 0;
        for (std::string line; std::getline(in, line);) {
            if (line.empty())
                continue;
            json j = json::parse(line);
            if (j["id"] == id && j["state"] == state)
                ++n;
        }
        return n;
    };
    ASSERT_TRUE(waitFor([&] { return lineWith("ready") >= 1; }, std::chrono::seconds(30))) << readFile(watchOut);
    lab->kill(pids[1], SIGTERM);
    ASSERT_EQ(lab->wait(pids[1], std::chrono::seconds(10)), 0);
    EXPECT_TRUE(waitFor([&] { return lineWith("gone") >= 1; }, std::chrono::seconds(30))) << readFile(watchOut);
    startDaemon(1);
    EXPECT_TRUE(waitFor([&] { return lineWith("ready") >= 2; }, std::chrono::seconds(30))) << readFile(watchOut);
    lab->kill(watch, SIGTERM);
    lab->wait(watch, std::chrono::seconds(10));
    // A daemon on a LAN names its ports and the firewall rule for them in its first line.
    EXPECT_NE(log(1).find("sudo ufw allow 7600/tcp && sudo ufw allow 7610:7650/tcp && sudo ufw allow 7601/udp"), std::string::npos) << log(1);
}

// Acceptance: PP3 and a tensor-parallel-by-pipeline placement across the three machines give the greedy ids
// of one process (f32).
TEST_F(Lan, PlacementsAcrossTheMachinesMatchOneProcess)
{
    const auto ref = readTrace(referenceTrace(model(), "Once upon a time", 16));
    struct Case {
        std::string name;
        json plan;
    };
    std::vector<Case> cases = {
        {"pp3",
         {{"stages",
           {{{"layers", {0, 1}}, {"ranks", {{{"worker", address(0)}}}}},
            {{"layers", {2, 3}}, {"ranks", {{{"worker", address(1)}}}}},
            {{"layers", {4, 4}}, {"ranks", {{{"worker", address(2)}}}}}}}}},
        {"tp2_then_pp",
         {{"stages",
           {{{"layers", {0, 2}}, {"ranks", {{{"worker", address(0)}}, {{"worker", address(1)}}}}},
            {{"layers", {3, 4}}, {"ranks", {{{"worker", address(2)}}}}}}}}},
    };
    for (auto& c : cases) {
        std::ofstream(dir + "/" + c.name + ".json") << c.plan.dump();
        const std::string trace = dir + "/" + c.name + ".trace";
        std::string out, err;
        ASSERT_EQ(onMaster({"run", "--model", model(), "--plan", dir + "/" + c.name + ".json", "--key-file", dir + "/key", "--prompt",
                            "Once upon a time", "--temperature", "0", "--dtype", "f32", "--max-tokens", "16", "--trace", trace},
                           out, err),
                  0)
            << c.name << ": " << err;
        expectSameTrace(ref, readTrace(trace), c.name);
    }
    // The shards took their ports from the range the daemons print.
    EXPECT_NE(log(0).find(":7610 for master"), std::string::npos) << log(0);
}

// From the attacker's side: a stranger on the LAN floods spoofed beacons, some claiming a confirmed worker's id
// from other addresses (with our key's fingerprint and with another), and hundreds of made-up workers. The
// confirmed worker stays ready at its address, and the list stays bounded.
TEST_F(Lan, SpoofedBeaconsNeitherHideNorMoveARealWorker)
{
    std::string out, err;
    ASSERT_EQ(onMaster({"workers", "--key-file", dir + "/key", "--wait", "2", "--json"}, out, err), 0) << err;
    const std::string victim = byAddress(out)[address(0)]["id"];
    ASSERT_EQ(victim.size(), 16u) << out;
    const std::string watchOut = dir + "/watch.jsonl";
    pid_t watch = lab->spawn(master, {cliBin(), "workers", "--key-file", dir + "/key", "--watch", "--json", "--wait", "120"}, {}, watchOut,
                             dir + "/watch.err");
    auto victimStates = [&] {
        std::vector<std::string> states;
        std::istringstream in(readFile(watchOut));
        for (std::string line; std::getline(in, line);)
            if (!line.empty()) {
                json j = json::parse(line);
                if (j["id"] == victim)
                    states.push_back(j["state"].get<std::string>() + " " + j["address"].get<std::string>());
            }
        return states;
    };
    ASSERT_TRUE(waitFor([&] { return !victimStates().empty(); }, std::chrono::seconds(30)));

    auto stranger = lab->addHost("stranger");
    const std::string ourFingerprint = ClusterKey::fromFile(dir + "/key").fingerprint();
    lab->runIn(stranger, [&] {
        UdpSocket socket(0);
        const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        for (int i = 0; std::chrono::steady_clock::now() < end; ++i) {
            BeaconInfo b;
            b.workerId = victim;
            b.hostname = "impostor";
            b.addresses = {"10.77.0.200"};
            b.grpcPort = 7600;
            b.protocol = kProtocolVersion;
            b.keyFingerprint = i % 2 ? ourFingerprint : "0123456789abcdef";
            socket.sendTo("10.77.0.255", kDefaultDiscoveryPort, encodeBeacon(b));
            b.workerId = "made-up-" + std::to_string(i);
            b.addresses = {"10.77.0.201", "8.8.8.8", "192.168.0.1"};
            b.keyFingerprint = ourFingerprint;
            socket.sendTo("10.77.0.255", kDefaultDiscoveryPort, encodeBeacon(b));
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    });
    std::this_thread::sleep_for(std::chrono::seconds(3));
    for (auto& s : victimStates())
        EXPECT_EQ(s, "ready " + address(0)) << "a spoofed beacon changed the confirmed worker";
    lab->kill(watch, SIGTERM);
    lab->wait(watch, std::chrono::seconds(10));

    ASSERT_EQ(onMaster({"workers", "--key-file", dir + "/key", "--wait", "2", "--json"}, out, err), 0) << err;
    auto seen = byAddress(out);
    for (int i = 0; i < 3; ++i)
        EXPECT_EQ(seen[address(i)]["state"], "ready") << out;
    // Made-up workers are listed only at addresses on the LAN (never 8.8.8.8), as unconfirmed.
    for (auto& [a, j] : seen)
        EXPECT_EQ(a.rfind("10.77.0.", 0), 0u) << a;
}
