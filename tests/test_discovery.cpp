// SPDX-License-Identifier: MIT
// Discovery without broadcast: the beacon format, and the master's view of workers it was given by address
// (ready, busy, refused, unreachable), confirmed by Hello over TLS. Broadcast discovery across machines is
// tested in network namespaces (test_lan.cpp).
#include "base/error.h"
#include "base/user_dirs.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "net/discovery.h"
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"
#include "test_support.h"
#include "wire/beacon.h"
#include "wire/protocol.h"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <algorithm>
#include <filesystem>

using namespace together;

namespace {

BeaconInfo sampleBeacon()
{
    BeaconInfo b;
    b.workerId = "0123456789abcdef";
    b.hostname = "kitchen-pc";
    b.addresses = {"192.168.1.20", "10.0.0.7"};
    b.grpcPort = 7600;
    b.protocol = kProtocolVersion;
    b.cores = 8;
    b.memoryTotalBytes = 16ull << 30;
    b.keyFingerprint = "00112233aabbccdd";
    b.softwareVersion = kSoftwareVersion;
    return b;
}

DiscoveredWorker find(const Discovery& d, const std::string& address)
{
    for (auto& w : d.workers())
        if (w.address == address)
            return w;
    return {};
}

} // namespace

TEST(Beacon, RoundTripsAndRejectsWhatIsNotABeacon)
{
    const BeaconInfo b = sampleBeacon();
    const std::string wire = encodeBeacon(b);
    EXPECT_LE(wire.size(), kMaxDiscoveryPacket);
    DiscoveryMessage m = decodeDiscovery(wire.data(), wire.size());
    ASSERT_EQ(m.kind, DiscoveryMessage::Kind::Beacon);
    EXPECT_EQ(m.beacon.workerId, b.workerId);
    EXPECT_EQ(m.beacon.hostname, b.hostname);
    EXPECT_EQ(m.beacon.addresses, b.addresses);
    EXPECT_EQ(m.beacon.grpcPort, 7600);
    EXPECT_EQ(m.beacon.protocol, kProtocolVersion);
    EXPECT_EQ(m.beacon.cores, 8u);
    EXPECT_EQ(m.beacon.memoryTotalBytes, 16ull << 30);
    EXPECT_EQ(m.beacon.keyFingerprint, b.keyFingerprint);

    // A probe is never smaller than the answer it asks for (no amplification), and fits a packet.
    const std::string probe = encodeProbe();
    EXPECT_EQ(decodeDiscovery(probe.data(), probe.size()).kind, DiscoveryMessage::Kind::Probe);
    EXPECT_LE(probe.size(), kMaxDiscoveryPacket);
    BeaconInfo big = b;
    big.hostname = std::string(200, 'h');
    big.workerId = std::string(64, 'i');
    big.addresses.assign(40, "255.255.255.254");
    EXPECT_GE(kMinProbeBytes, encodeBeacon(big).size());
    EXPECT_GE(probe.size(), encodeBeacon(big).size());

    auto invalid = [](const std::string& bytes) { return decodeDiscovery(bytes.data(), bytes.size()).kind == DiscoveryMessage::Kind::Invalid; };
    // A short probe is not answered: a spoofed source would otherwise turn daemons into amplifiers.
    v1::DiscoveryPacket shortProbe;
    shortProbe.set_magic(0x48544754);
    shortProbe.mutable_probe();
    EXPECT_TRUE(invalid(shortProbe.SerializeAsString()));
    EXPECT_TRUE(invalid(""));
    EXPECT_TRUE(invalid("hello"));
    EXPECT_TRUE(invalid(std::string(2000, 'x')));
    EXPECT_TRUE(invalid(wire.substr(0, wire.size() / 2)));
    std::string noMagic = wire;
    noMagic[1] ^= 0x55;
    EXPECT_TRUE(invalid(noMagic));
    BeaconInfo bad = b;
    bad.addresses = {"not-an-ip"};
    EXPECT_TRUE(invalid(encodeBeacon(bad)));
    bad = b;
    bad.hostname = "evil\x1b[2Jhost";
    EXPECT_TRUE(invalid(encodeBeacon(bad)));
    bad.hostname = "evil\xc2\x9b" "2Jhost"; // C1 CSI
    EXPECT_TRUE(invalid(encodeBeacon(bad)));
    bad.hostname = "bad\xff\xfeutf8";
    EXPECT_TRUE(invalid(encodeBeacon(bad)));
    for (const char* a : {"127.0.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255"}) {
        bad = b;
        bad.addresses = {a};
        EXPECT_TRUE(invalid(encodeBeacon(bad))) << a;
    }
    bad = b;
    bad.keyFingerprint = "not hex at all!!";
    EXPECT_TRUE(invalid(encodeBeacon(bad)));
    bad = b;
    bad.workerId.clear();
    EXPECT_TRUE(invalid(encodeBeacon(bad)));
    bad = b;
    bad.grpcPort = 0;
    EXPECT_TRUE(invalid(encodeBeacon(bad)));
}

TEST(WorkerAddress, IsNormalized)
{
    EXPECT_EQ(normalizeWorkerAddress("192.168.1.20"), "192.168.1.20:7600");
    EXPECT_EQ(normalizeWorkerAddress("pi.local:7700"), "pi.local:7700");
    EXPECT_EQ(normalizeWorkerAddress("[fe80::1]:7600"), "[fe80::1]:7600");
    EXPECT_THROW(normalizeWorkerAddress(""), Error);
    EXPECT_THROW(normalizeWorkerAddress("host:0"), Error);
    EXPECT_THROW(normalizeWorkerAddress("host:99999"), Error);
    EXPECT_THROW(normalizeWorkerAddress("host:port"), Error);
    EXPECT_THROW(normalizeWorkerAddress("a b:7600"), Error);
}

TEST(Discovery, WorkersAddedByAddressAreCheckedOverTls)
{
    const std::string dir = test::makeTempDir("discovery");
    ClusterKey key = ClusterKey::generate(), other = ClusterKey::generate();
    key.writeFile(dir + "/key");
    other.writeFile(dir + "/other");
    test::Daemon good(dir + "/key", dir + "/good", {"--max-threads", "1"});
    test::Daemon foreign(dir + "/other", dir + "/foreign");
    test::Daemon busy(dir + "/key", dir + "/busy");
    const std::string closed = "127.0.0.1:1";

    // Another master launches a shard on `busy`.
    Credentials otherMaster(key, "master other@elsewhere");
    auto stub = v1::WorkerControl::NewStub(openChannel(otherMaster, busy.address()));
    grpc::ClientContext ctx;
    v1::LaunchShardRequest req;
    req.set_launch_id("someone-elses");
    req.set_bind_host("127.0.0.1");
    req.set_threads(1);
    req.set_lease_ms(30000);
    v1::LaunchShardReply rep;
    grpc::Status s = stub->LaunchShard(&ctx, req, &rep);
    ASSERT_TRUE(s.ok()) << s.error_message();

    auto credentials = std::make_shared<const Credentials>(key, newMasterIdentity());
    Discovery::Options o;
    o.broadcast = false; // nothing leaves this machine
    o.manual = {good.address(), foreign.address(), busy.address(), closed};
    Discovery d(credentials, o);
    d.settle(std::chrono::steady_clock::now() + std::chrono::seconds(20));

    DiscoveredWorker g = find(d, good.address());
    EXPECT_EQ(g.state, WorkerState::Ready) << g.reason;
    EXPECT_EQ(g.id.size(), 16u);
    EXPECT_EQ(g.maxThreads, 1u);
    EXPECT_GT(g.memoryTotalBytes, 0u);
    EXPECT_GT(g.memoryFreeBytes, 0u);
    EXPECT_GE(g.rttMs, 0);
    EXPECT_TRUE(g.manual);
    EXPECT_EQ(g.readGbps.has_value(), !g.calibrating); // its speed, once the daemon has measured it

    DiscoveredWorker f = find(d, foreign.address());
    EXPECT_EQ(f.state, WorkerState::Refused);
    EXPECT_NE(f.reason.find("another cluster key"), std::string::npos) << f.reason;

    DiscoveredWorker b = find(d, busy.address());
    EXPECT_EQ(b.state, WorkerState::Busy) << b.reason;
    EXPECT_NE(b.reason.find("master other@elsewhere"), std::string::npos) << b.reason;

    DiscoveredWorker c = find(d, closed);
    EXPECT_EQ(c.state, WorkerState::Unreachable);
    EXPECT_NE(c.reason.find("port 1 is closed"), std::string::npos) << c.reason;

    // The order is the order they were given, and stays so.
    auto all = d.workers();
    ASSERT_EQ(all.size(), 4u);
    EXPECT_EQ(all[0].address, good.address());
    EXPECT_EQ(all[3].address, closed);

    // A worker that stops turns unreachable (it was added by address: there is no beacon to miss).
    good.stop();
    EXPECT_TRUE(test::waitFor([&] { return find(d, g.address).state == WorkerState::Unreachable; }, std::chrono::seconds(15)));
}

TEST(Discovery, WorkersCommandListsRememberedWorkersAsJson)
{
    const std::string dir = test::makeTempDir("workers-cmd");
    ClusterKey::generate().writeFile(dir + "/config/cluster.key");
    test::Daemon d(dir + "/config/cluster.key", dir + "/state");
    const std::string env = "TOGETHER_CONFIG_DIR=" + dir + "/config ";
    std::string out, err;
    ASSERT_EQ(test::runCommand(env + test::cliBin() + " workers --no-broadcast --wait 0 --json --add " + d.address(), &out, &err), 0) << err;
    auto j = nlohmann::json::parse(out.substr(0, out.find('\n')));
    EXPECT_EQ(j["address"], d.address());
    EXPECT_EQ(j["state"], "ready");
    EXPECT_EQ(j["reason"], "");
    for (const char* field : {"host", "cores", "memory_total_bytes", "memory_free_bytes", "protocol", "id"})
        EXPECT_TRUE(j.contains(field)) << field;
    EXPECT_EQ(j["read_gbps"].is_null(), j["calibrating"].get<bool>());
    EXPECT_EQ(j["protocol"], kProtocolVersion);
    // Once the daemon has measured its machine, the listing shows its speed.
    ASSERT_TRUE(test::waitFor(
        [&] {
            if (test::runCommand(env + test::cliBin() + " workers --no-broadcast --wait 0 --json", &out, &err) != 0)
                return false;
            j = nlohmann::json::parse(out.substr(0, out.find('\n')));
            return !j["calibrating"].get<bool>();
        },
        std::chrono::seconds(120)))
        << out;
    ASSERT_TRUE(j["read_gbps"].is_number()) << j.dump();
    EXPECT_GT(j["read_gbps"].get<double>(), 0);
    EXPECT_GT(j["decode_gbps"]["bf16"].get<double>(), 0) << j.dump();
    // Remembered: the next run lists it without --add; --forget drops it.
    ASSERT_EQ(test::runCommand(env + test::cliBin() + " workers --no-broadcast --wait 0", &out, &err), 0) << err;
    EXPECT_NE(out.find(d.address()), std::string::npos) << out;
    EXPECT_NE(out.find("ready"), std::string::npos) << out;
    ASSERT_EQ(test::runCommand(env + test::cliBin() + " workers --no-broadcast --wait 0 --forget " + d.address(), &out, &err), 0) << err;
    EXPECT_EQ(out.find(d.address()), std::string::npos) << out;
    EXPECT_NE(err.find("no workers found"), std::string::npos) << err;
}

// workers.json is read, changed and written back under its lock: masters adding workers at once keep them all.
TEST(RememberedWorkers, ConcurrentMastersKeepEveryWorker)
{
    const std::string config = test::makeTempDir("remembered") + "/config";
    ::setenv("TOGETHER_CONFIG_DIR", config.c_str(), 1);
    std::vector<pid_t> pids;
    for (int p = 0; p < 4; ++p) {
        const pid_t pid = ::fork();
        if (pid == 0) {
            try {
                for (int i = 0; i < 10; ++i)
                    rememberWorker("10.0." + std::to_string(p) + "." + std::to_string(i + 1));
            } catch (...) {
                ::_exit(1);
            }
            ::_exit(0);
        }
        pids.push_back(pid);
    }
    for (pid_t pid : pids) {
        int status = 0;
        ::waitpid(pid, &status, 0);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    const auto list = rememberedWorkers();
    EXPECT_EQ(list.size(), 40u) << "an unlocked read-modify-write loses some";
    for (int p = 0; p < 4; ++p)
        for (int i = 0; i < 10; ++i)
            EXPECT_NE(std::find(list.begin(), list.end(), "10.0." + std::to_string(p) + "." + std::to_string(i + 1) + ":7600"), list.end());
    forgetWorker("10.0.0.1");
    EXPECT_EQ(rememberedWorkers().size(), 39u);
    for (auto& e : std::filesystem::directory_iterator(config))
        EXPECT_TRUE(e.path().filename() == "workers.json" || e.path().filename() == "workers.json.lock") << e.path();
    ::unsetenv("TOGETHER_CONFIG_DIR");
}
