// SPDX-License-Identifier: MIT
// The worker daemon as a service: its own state (worker id, lock, log), leases that end a launch whose master
// stopped renewing it, what the machine donates, the cluster key asked for on a terminal, surviving the shell
// and the terminal that started it, and its systemd unit. Real processes on loopback, discovery off.
#include "base/error.h"
#include "base/files.h"
#include "base/process.h"
#include "base/sanitizers.h"
#include "model/random_model.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"
#include "test_support.h"
#include "wire/protocol.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pty.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

using namespace together;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct Fixture {
    Fixture(const std::string& tag)
        : dir(test::makeTempDir(tag))
        , key(ClusterKey::generate())
    {
        key.writeFile(dir + "/key");
    }
    std::unique_ptr<v1::WorkerControl::Stub> stub(const std::string& address)
    {
        return v1::WorkerControl::NewStub(openChannel(credentials, address));
    }
    std::string dir;
    ClusterKey key;
    Credentials credentials{key, "master test@host"};
};

// Waits for the channel to connect (up to 10 s): a sync call on a channel whose last attempt failed fails at
// once, and nothing polls its reconnection unless a call waits for it.
grpc::Status hello(v1::WorkerControl::Stub& stub, v1::HelloReply* rep)
{
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::HelloRequest req;
    req.set_protocol_version(kProtocolVersion);
    return stub.Hello(&ctx, req, rep);
}

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

// Reads what a pty shows until `marker` appears or `timeout` passes.
std::string readPtyUntil(int fd, const std::string& marker, std::chrono::milliseconds timeout, std::string& all)
{
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (all.find(marker) == std::string::npos && std::chrono::steady_clock::now() < end) {
        pollfd p {fd, POLLIN, 0};
        if (::poll(&p, 1, 100) > 0) {
            char buf[4096];
            ssize_t n = ::read(fd, buf, sizeof buf);
            if (n <= 0)
                break;
            all.append(buf, static_cast<size_t>(n));
        }
    }
    return all;
}

} // namespace

TEST(Daemon, KeepsItsIdentityAndStateFolderAndServesItsLog)
{
    Fixture f("daemon-state");
    std::string id;
    {
        test::Daemon d(f.dir + "/key", f.dir + "/state");
        v1::HelloReply rep;
        auto stub = f.stub(d.address());
        ASSERT_TRUE(hello(*stub, &rep).ok());
        id = rep.worker_id();
        EXPECT_EQ(id.size(), 16u);
        EXPECT_GT(rep.max_threads(), 0u);
        EXPECT_EQ(rep.software_version(), kSoftwareVersion);

        // One daemon per state folder.
        std::string out, err;
        EXPECT_NE(test::runCommand(test::workerBin() + " serve --listen 127.0.0.1:0 --discovery-interfaces none --key-file " + f.dir +
                                       "/key --state-dir " + f.dir + "/state",
                                   &out, &err),
                  0);
        EXPECT_NE(err.find("another together-worker (pid " + std::to_string(d.pid()) + ") uses the state folder"), std::string::npos) << err;

        // The log: its first line names the ports and the firewall rule; masters read it over RecentLog.
        grpc::ClientContext ctx;
        v1::RecentLogRequest req;
        v1::RecentLogReply log;
        ASSERT_TRUE(stub->RecentLog(&ctx, req, &log).ok());
        ASSERT_GT(log.lines_size(), 2);
        EXPECT_NE(log.lines(0).text().find("serving on 127.0.0.1:"), std::string::npos) << log.lines(0).text();
        EXPECT_NE(log.lines(0).text().find("sudo ufw allow"), std::string::npos) << log.lines(0).text();
        EXPECT_NE(log.lines(1).text().find("worker " + id), std::string::npos) << log.lines(1).text();
        ASSERT_EQ(test::runCommand(test::cliBin() + " worker-log " + d.address() + " --key-file " + f.dir + "/key", &out, &err), 0) << err;
        EXPECT_NE(out.find("serving on 127.0.0.1:"), std::string::npos) << out;
        // ... and the same lines are in the log file.
        EXPECT_NE(readTextFile(f.dir + "/state/worker.log").find(log.lines(0).text()), std::string::npos);
    }
    // A restarted daemon is the same worker.
    test::Daemon again(f.dir + "/key", f.dir + "/state");
    v1::HelloReply rep;
    ASSERT_TRUE(hello(*f.stub(again.address()), &rep).ok());
    EXPECT_EQ(rep.worker_id(), id);
}

TEST(Daemon, ALaunchWhoseLeaseIsNotRenewedIsStopped)
{
    Fixture f("daemon-lease");
    test::Daemon d(f.dir + "/key", f.dir + "/state");
    auto stub = f.stub(d.address());
    grpc::ClientContext ctx;
    v1::LaunchShardRequest req;
    req.set_launch_id("lease-test");
    req.set_bind_host("127.0.0.1");
    req.set_threads(1);
    req.set_lease_ms(1000);
    v1::LaunchShardReply rep;
    grpc::Status s = stub->LaunchShard(&ctx, req, &rep);
    ASSERT_TRUE(s.ok()) << s.error_message();
    const pid_t shard = static_cast<pid_t>(rep.pid());
    ASSERT_TRUE(test::alive(shard));
    // Nobody renews it: the daemon stops the shard about a second later (the bound only catches a hang).
    EXPECT_TRUE(test::waitFor([&] { return !test::alive(shard); }, std::chrono::seconds(10)));
    grpc::ClientContext hctx;
    v1::HealthRequest hreq;
    hreq.set_launch_id("lease-test");
    v1::HealthReply health;
    ASSERT_TRUE(stub->Health(&hctx, hreq, &health).ok());
    EXPECT_EQ(health.shards_size(), 0);
    EXPECT_NE(health.ended().find("lease expired"), std::string::npos) << health.ended();
    EXPECT_NE(health.ended().find("master test@host"), std::string::npos) << health.ended();
    v1::HelloReply h;
    EXPECT_TRUE(hello(*stub, &h).ok());
    EXPECT_EQ(h.launches_size(), 0);
    // StopShards needs a launch id: there is no "stop everything".
    grpc::ClientContext sctx;
    v1::StopShardsRequest sreq;
    v1::StopShardsReply srep;
    EXPECT_EQ(stub->StopShards(&sctx, sreq, &srep).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// Acceptance: a master killed with SIGKILL mid-answer: its shards are gone within 10 s and the daemons serve
// the next launch.
// Another master (another app on the LAN with the same key) can neither stop a launch it did not start nor
// keep it alive by renewing its lease; the owner can do both.
TEST(Daemon, OnlyTheLaunchingMasterStopsOrRenewsItsLaunch)
{
    Fixture f("daemon-owner");
    test::Daemon d(f.dir + "/key", f.dir + "/state");
    auto stub = f.stub(d.address());
    grpc::ClientContext ctx;
    v1::LaunchShardRequest req;
    req.set_launch_id("owned");
    req.set_bind_host("127.0.0.1");
    req.set_threads(1);
    req.set_lease_ms(30000);
    v1::LaunchShardReply rep;
    ASSERT_TRUE(stub->LaunchShard(&ctx, req, &rep).ok());
    const pid_t shard = static_cast<pid_t>(rep.pid());

    Credentials other(f.key, "master other@elsewhere");
    auto otherStub = v1::WorkerControl::NewStub(openChannel(other, d.address()));
    {
        grpc::ClientContext c;
        v1::StopShardsRequest sreq;
        sreq.set_launch_id("owned");
        v1::StopShardsReply srep;
        grpc::Status s = otherStub->StopShards(&c, sreq, &srep);
        EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
        EXPECT_NE(s.error_message().find("master test@host"), std::string::npos) << s.error_message();
    }
    {
        grpc::ClientContext c;
        v1::HealthRequest hreq;
        hreq.set_launch_id("owned");
        v1::HealthReply hrep;
        EXPECT_EQ(otherStub->Health(&c, hreq, &hrep).error_code(), grpc::StatusCode::PERMISSION_DENIED);
    }
    EXPECT_TRUE(test::alive(shard));
    {
        grpc::ClientContext c;
        v1::HealthRequest hreq;
        hreq.set_launch_id("owned");
        v1::HealthReply hrep;
        ASSERT_TRUE(stub->Health(&c, hreq, &hrep).ok());
        EXPECT_EQ(hrep.shards_size(), 1);
    }
    grpc::ClientContext c;
    v1::StopShardsRequest sreq;
    sreq.set_launch_id("owned");
    v1::StopShardsReply srep;
    ASSERT_TRUE(stub->StopShards(&c, sreq, &srep).ok());
    EXPECT_EQ(srep.stopped(), 1u);
    EXPECT_TRUE(test::waitFor([&] { return !test::alive(shard); }, std::chrono::seconds(10)));
}

// Each daemon measures its machine's speed at start, in the background, and says so in Hello until done;
// daemons of one machine starting together measure one at a time (the second reuses the first's result),
// and --recalibrate measures again.
TEST(Daemon, MeasuresTheMachineOnceAndCachesIt)
{
    Fixture f("daemon-calibration");
    const std::string cache = f.dir + "/cache";
    ::setenv("TOGETHER_CACHE_DIR", cache.c_str(), 1); // the daemons inherit it
    auto calibration = [&](test::Daemon& d) {
        auto stub = f.stub(d.address());
        v1::HelloReply rep;
        EXPECT_TRUE(test::waitFor(
            [&] {
                rep.Clear();
                return hello(*stub, &rep).ok() && !rep.calibrating();
            },
            std::chrono::seconds(120)))
            << "still calibrating";
        return rep.calibration();
    };
    {
        test::Daemon a(f.dir + "/key", f.dir + "/state-a");
        test::Daemon b(f.dir + "/key", f.dir + "/state-b");
        const v1::MachineCalibration ca = calibration(a), cb = calibration(b);
        EXPECT_EQ(ca.error(), "");
        EXPECT_EQ(cb.error(), "");
        EXPECT_NE(ca.from_cache(), cb.from_cache()) << "two daemons of one machine must not both measure (nor neither)";
        for (const auto* c : {&ca, &cb}) {
            EXPECT_GT(c->read_gbps_1(), 0);
            EXPECT_GE(c->read_gbps_all(), c->read_gbps_1() * 0.5);
            EXPECT_GT(c->gemm_gflops(), 0);
            EXPECT_FALSE(c->cpu_model().empty());
            std::set<std::string> dtypes;
            for (auto& m : c->matvec()) {
                dtypes.insert(m.dtype());
                EXPECT_GT(m.gbps_1(), 0) << m.dtype();
                EXPECT_GE(m.gbps_all(), m.gbps_1()) << m.dtype();
            }
            EXPECT_EQ(dtypes, (std::set<std::string>{"bf16", "f32", "q4", "q8"}));
        }
        EXPECT_TRUE(std::filesystem::exists(cache + "/calibration.json"));
    }
    {
        test::Daemon c(f.dir + "/key", f.dir + "/state-c", {"--recalibrate"});
        EXPECT_FALSE(calibration(c).from_cache()) << "--recalibrate used the cache";
    }
    ::unsetenv("TOGETHER_CACHE_DIR");
}

TEST(Daemon, AMasterKilledMidAnswerLeavesNoShardAndTheNextLaunchRuns)
{
    Fixture f("daemon-masterkill");
    const std::string model = test::smallModel("masterkill-model");
    test::Daemon a(f.dir + "/key", f.dir + "/a"), b(f.dir + "/key", f.dir + "/b");
    json plan = {{"stages",
                  {{{"layers", {0, 1}}, {"ranks", {{{"worker", a.address()}, {"threads", 1}}}}},
                   {{"layers", {2, 3}}, {"ranks", {{{"worker", b.address()}, {"threads", 1}}}}}}}};
    std::ofstream(f.dir + "/plan.json") << plan.dump();
    const std::string trace = f.dir + "/trace.jsonl";
    std::vector<std::string> args = {test::cliBin(), "run", "--model", model, "--plan", f.dir + "/plan.json", "--key-file", f.dir + "/key",
                                     "--prompt", "Once upon a time", "--temperature", "0", "--max-tokens", "6000", "--ignore-eos",
                                     "--dtype", "f32", "--trace", trace};
    std::vector<char*> argv;
    for (auto& x : args)
        argv.push_back(x.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, (f.dir + "/master.err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t master = -1;
    ASSERT_EQ(posix_spawn(&master, argv[0], &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    auto steps = [&] {
        std::ifstream in(trace);
        return std::count(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>(), '\n');
    };
    ASSERT_TRUE(test::waitFor([&] { return steps() >= 10; }, std::chrono::seconds(60))) << readTextFile(f.dir + "/master.err");
    std::vector<pid_t> shards = a.shards();
    for (pid_t p : b.shards())
        shards.push_back(p);
    ASSERT_EQ(shards.size(), 2u);
    ::kill(master, SIGKILL);
    ::waitpid(master, nullptr, 0);
    const auto killed = std::chrono::steady_clock::now();
    EXPECT_TRUE(test::waitFor(
        [&] {
            for (pid_t p : shards)
                if (test::alive(p))
                    return false;
            return true;
        },
        std::chrono::seconds(10)))
        << "shards still running 10 s after their master was killed";
    std::printf("[ timing   ] shards gone %.2f s after the master was killed\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count());
    EXPECT_TRUE(test::alive(a.pid()));
    EXPECT_TRUE(test::alive(b.pid()));
    // The daemons serve the next launch.
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::cliBin() + " run --model " + model + " --plan " + f.dir + "/plan.json --key-file " + f.dir +
                                   "/key --prompt 'Once upon a time' --temperature 0 --max-tokens 8 --ignore-eos --dtype f32",
                               &out, &err),
              0)
        << err;
    EXPECT_NE(err.find("8 tokens generated"), std::string::npos) << err;
}

// Acceptance (SIGSTOP is not death): a stopped master stops renewing, and its launch ends the same way.
TEST(Daemon, AStoppedMasterLosesItsLaunch)
{
    Fixture f("daemon-masterstop");
    const std::string model = test::smallModel("masterstop-model");
    test::Daemon a(f.dir + "/key", f.dir + "/a");
    json plan = {{"stages", {{{"layers", {0, 3}}, {"ranks", {{{"worker", a.address()}, {"threads", 1}}}}}}}};
    std::ofstream(f.dir + "/plan.json") << plan.dump();
    const std::string cmd = test::cliBin() + " run --model " + model + " --plan " + f.dir + "/plan.json --key-file " + f.dir +
                            "/key --chat --interactive --temperature 0 --max-tokens 4 --dtype f32";
    std::vector<std::string> args = {"/bin/sh", "-c", "exec " + cmd + " < " + f.dir + "/fifo"};
    ASSERT_EQ(::mkfifo((f.dir + "/fifo").c_str(), 0600), 0);
    std::vector<char*> argv;
    for (auto& x : args)
        argv.push_back(x.data());
    argv.push_back(nullptr);
    pid_t master = -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, (f.dir + "/master.err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_EQ(posix_spawn(&master, argv[0], &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    int fifo = ::open((f.dir + "/fifo").c_str(), O_WRONLY); // the master waits for its first message: launched
    ASSERT_GE(fifo, 0);
    ASSERT_TRUE(test::waitFor([&] { return a.shards().size() == 1; }, std::chrono::seconds(60)));
    const pid_t shard = a.shards()[0];
    ::kill(master, SIGSTOP);
    EXPECT_TRUE(test::waitFor([&] { return !test::alive(shard); }, std::chrono::seconds(10 * kSanitizerSlowdown)));
    ::kill(master, SIGKILL);
    ::waitpid(master, nullptr, 0);
    ::close(fifo);
}

TEST(Daemon, LaunchesStayWithinWhatTheMachineDonates)
{
    Fixture f("daemon-limits");
    const std::string model = test::smallModel("limits-model");
    {
        test::Daemon d(f.dir + "/key", f.dir + "/threads", {"--max-threads", "1"});
        json plan = {{"stages", {{{"layers", {0, 3}}, {"ranks", {{{"worker", d.address()}, {"threads", 1}}, {{"worker", d.address()}, {"threads", 1}}}}}}}};
        std::ofstream(f.dir + "/plan.json") << plan.dump();
        v1::HelloReply h;
        ASSERT_TRUE(hello(*f.stub(d.address()), &h).ok());
        EXPECT_EQ(h.max_threads(), 1u);
        std::string out, err;
        EXPECT_NE(test::runCommand(test::cliBin() + " run --model " + model + " --plan " + f.dir + "/plan.json --key-file " + f.dir +
                                       "/key --prompt hi --max-tokens 2 --dtype f32",
                                   &out, &err),
                  0);
        EXPECT_NE(err.find("this worker donates 1 threads"), std::string::npos) << err;
        EXPECT_TRUE(test::waitFor([&] { return d.shards().empty(); }, std::chrono::seconds(10)));
    }
    {
        test::Daemon d(f.dir + "/key", f.dir + "/memory", {"--max-memory", "0.1"});
        json plan = {{"stages", {{{"layers", {0, 3}}, {"ranks", {{{"worker", d.address()}, {"threads", 1}}}}}}}};
        std::ofstream(f.dir + "/plan.json") << plan.dump();
        v1::HelloReply h;
        ASSERT_TRUE(hello(*f.stub(d.address()), &h).ok());
        EXPECT_EQ(h.max_memory_bytes(), static_cast<uint64_t>(0.1 * (1ull << 30)));
        std::string out, err;
        EXPECT_NE(test::runCommand(test::cliBin() + " run --model " + model + " --plan " + f.dir + "/plan.json --key-file " + f.dir +
                                       "/key --prompt hi --max-tokens 2 --dtype f32",
                                   &out, &err),
                  0);
        // The master refuses first, with the numbers, before any shard starts.
        EXPECT_NE(err.find("does not fit in memory: needs about"), std::string::npos) << err;
        EXPECT_NE(err.find("GiB donated)"), std::string::npos) << err;
        EXPECT_NE(err.find("--force"), std::string::npos) << err;
        EXPECT_TRUE(d.shards().empty());
        // Forced, the daemon still holds to what it donates.
        EXPECT_NE(test::runCommand(test::cliBin() + " run --model " + model + " --plan " + f.dir + "/plan.json --key-file " + f.dir +
                                       "/key --prompt hi --max-tokens 2 --dtype f32 --force",
                                   &out, &err),
                  0);
        EXPECT_NE(err.find("donates 102 MiB (serve --max-memory)"), std::string::npos) << err;
        EXPECT_NE(err.find("needs about"), std::string::npos) << err;
    }
}

TEST(Daemon, ShardPortsComeFromTheConfiguredRange)
{
    Fixture f("daemon-ports");
    const uint16_t p = freePort();
    test::Daemon d(f.dir + "/key", f.dir + "/state", {"--ports", std::to_string(p) + "-" + std::to_string(p)});
    auto stub = f.stub(d.address());
    auto launch = [&](uint32_t index, v1::LaunchShardReply* rep) {
        grpc::ClientContext ctx;
        v1::LaunchShardRequest req;
        req.set_launch_id("ports");
        req.set_shard_index(index);
        req.set_bind_host("127.0.0.1");
        req.set_threads(1);
        return stub->LaunchShard(&ctx, req, rep);
    };
    v1::LaunchShardReply first, second;
    grpc::Status s = launch(0, &first);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(first.address(), "127.0.0.1:" + std::to_string(p));
    s = launch(1, &second);
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.error_message().find("no free port in " + std::to_string(p) + "-" + std::to_string(p)), std::string::npos) << s.error_message();
    grpc::ClientContext ctx;
    v1::StopShardsRequest req;
    req.set_launch_id("ports");
    v1::StopShardsReply rep;
    ASSERT_TRUE(stub->StopShards(&ctx, req, &rep).ok());
    EXPECT_EQ(rep.stopped(), 1u);
}

// Acceptance: a daemon started from a shell that then exits keeps serving; so does one whose terminal closes.
TEST(Daemon, OutlivesTheShellAndTheTerminalThatStartedIt)
{
    Fixture f("daemon-shell");
    const uint16_t port = freePort();
    const std::string serve = test::workerBin() + " serve --listen 127.0.0.1:" + std::to_string(port) + " --key-file " + f.dir +
                              "/key --discovery-interfaces none --ports 0 --state-dir " + f.dir + "/state";
    std::string out, err;
    ASSERT_EQ(test::runCommand("bash -c '" + serve + " >" + f.dir + "/log 2>&1 & echo $!'", &out, &err), 0) << err;
    const pid_t daemon = std::stoi(out);
    auto stub = f.stub("127.0.0.1:" + std::to_string(port));
    v1::HelloReply rep;
    EXPECT_TRUE(test::waitFor([&] { return hello(*stub, &rep).ok(); }, std::chrono::seconds(30))) << readTextFile(f.dir + "/log");
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    EXPECT_TRUE(test::alive(daemon));
    EXPECT_TRUE(hello(*stub, &rep).ok());
    ::kill(daemon, SIGTERM);
    EXPECT_TRUE(test::waitFor([&] { return !test::alive(daemon); }, std::chrono::seconds(10)));

    // An interactive shell on a terminal starts it in the background; then the terminal goes away (the shell
    // gets SIGHUP and passes it on to its jobs).
    const uint16_t port2 = freePort();
    const std::string serve2 = test::workerBin() + " serve --listen 127.0.0.1:" + std::to_string(port2) + " --key-file " + f.dir +
                               "/key --discovery-interfaces none --ports 0 --state-dir " + f.dir + "/state2";
    int master = -1;
    pid_t shell = ::forkpty(&master, nullptr, nullptr, nullptr);
    ASSERT_GE(shell, 0);
    if (shell == 0) {
        ::execl("/bin/bash", "bash", "--norc", "--noprofile", "-i", static_cast<char*>(nullptr));
        ::_exit(127);
    }
    const std::string line = serve2 + " &\n";
    ASSERT_EQ(::write(master, line.data(), line.size()), static_cast<ssize_t>(line.size()));
    std::string screen;
    readPtyUntil(master, "serving on", std::chrono::seconds(30), screen);
    ASSERT_NE(screen.find("serving on"), std::string::npos) << screen;
    ::close(master); // the terminal closes
    int status = 0;
    EXPECT_TRUE(test::waitFor([&] { return ::waitpid(shell, &status, WNOHANG) == shell; }, std::chrono::seconds(10))) << "the shell did not exit";
    auto stub2 = f.stub("127.0.0.1:" + std::to_string(port2));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    EXPECT_TRUE(hello(*stub2, &rep).ok()) << "the daemon died with its terminal";
    // Its pid is in the state folder's lock file.
    const pid_t daemon2 = std::stoi(readTextFile(f.dir + "/state2/worker.lock"));
    EXPECT_TRUE(test::alive(daemon2));
    ::kill(daemon2, SIGTERM);
    EXPECT_TRUE(test::waitFor([&] { return !test::alive(daemon2); }, std::chrono::seconds(10)));
}

TEST(Daemon, AsksForTheKeyOnItsTerminalOnceAndStoresIt)
{
    Fixture f("daemon-prompt");
    const std::string config = f.dir + "/config";
    const uint16_t port = freePort();
    int master = -1;
    pid_t child = ::forkpty(&master, nullptr, nullptr, nullptr);
    ASSERT_GE(child, 0);
    if (child == 0) {
        ::setenv("TOGETHER_CONFIG_DIR", config.c_str(), 1);
        const std::string listen = "127.0.0.1:" + std::to_string(port), state = f.dir + "/state";
        ::execl(test::workerBin().c_str(), "together-worker", "serve", "--listen", listen.c_str(), "--discovery-interfaces", "none",
                "--ports", "0", "--state-dir", state.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    std::string screen;
    readPtyUntil(master, "Cluster key: ", std::chrono::seconds(30), screen);
    ASSERT_NE(screen.find("Cluster key: "), std::string::npos) << screen;
    std::string typo = f.key.text();
    typo[3] = typo[3] == 'A' ? 'B' : 'A';
    typo += "\n";
    ASSERT_EQ(::write(master, typo.data(), typo.size()), static_cast<ssize_t>(typo.size()));
    readPtyUntil(master, "typo", std::chrono::seconds(10), screen);
    EXPECT_NE(screen.find("typo"), std::string::npos) << screen;
    // People type it in lower case with spaces.
    std::string typed = f.key.text();
    for (auto& c : typed)
        c = c == '-' ? ' ' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    typed += "\n";
    ASSERT_EQ(::write(master, typed.data(), typed.size()), static_cast<ssize_t>(typed.size()));
    readPtyUntil(master, "serving on", std::chrono::seconds(30), screen);
    EXPECT_NE(screen.find("stored in " + config + "/cluster.key"), std::string::npos) << screen;
    EXPECT_NE(screen.find("serving on"), std::string::npos) << screen;
    EXPECT_EQ(fs::status(config + "/cluster.key").permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
    EXPECT_EQ(ClusterKey::fromFile(config + "/cluster.key").bytes(), f.key.bytes());
    v1::HelloReply rep;
    EXPECT_TRUE(hello(*f.stub("127.0.0.1:" + std::to_string(port)), &rep).ok());
    ::kill(child, SIGTERM);
    ::waitpid(child, nullptr, 0);
    ::close(master);

    // Next time the stored key is used: no question. And with no terminal and no stored key it says so.
    std::string out, err;
    EXPECT_NE(test::runCommand("TOGETHER_CONFIG_DIR=" + f.dir + "/empty setsid -w " + test::workerBin() +
                                   " serve --listen 127.0.0.1:0 --discovery-interfaces none --state-dir " + f.dir + "/state3 < /dev/null",
                               &out, &err),
              0);
    EXPECT_NE(err.find("no cluster key is stored in " + f.dir + "/empty/cluster.key"), std::string::npos) << err;
    EXPECT_NE(err.find("--key-file"), std::string::npos) << err;
}

TEST(Daemon, InstallsAValidSystemdUserUnit)
{
    Fixture f("daemon-unit");
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::workerBin() + " install-service --no-enable --unit-dir " + f.dir + "/units --key-file " + f.dir +
                                   "/key --max-threads 2 --max-memory 8 --models-root " + f.dir + " --ports 7620-7630",
                               &out, &err),
              0)
        << err;
    const std::string unit = readTextFile(f.dir + "/units/together-worker.service");
    EXPECT_NE(unit.find("ExecStart=\"" + test::workerBin() + "\" serve \"--key-file\" \"" + f.dir + "/key\""), std::string::npos) << unit;
    EXPECT_NE(unit.find("\"--max-threads\" \"2\""), std::string::npos) << unit;
    EXPECT_NE(unit.find("\"--ports\" \"7620-7630\""), std::string::npos) << unit;
    EXPECT_NE(unit.find("WantedBy=default.target"), std::string::npos) << unit;
    if (test::runCommand("command -v systemd-analyze", &out) != 0)
        GTEST_SKIP() << "systemd-analyze is not installed (scripts/install-deps.sh installs it): the unit was not verified";
    EXPECT_EQ(test::runCommand("systemd-analyze verify " + f.dir + "/units/together-worker.service", &out, &err), 0) << err << unit;
    // A unit with a flag serve would refuse is never written.
    EXPECT_NE(test::runCommand(test::workerBin() + " install-service --no-enable --unit-dir " + f.dir + "/bad --key-file " + f.dir +
                                   "/key --max-threads 0",
                               &out, &err),
              0);
    EXPECT_FALSE(fs::exists(f.dir + "/bad/together-worker.service"));
    // Nor one where an argument could break out of its line.
    EXPECT_NE(test::runCommand(test::workerBin() + " install-service --no-enable --unit-dir " + f.dir + "/bad --key-file " + f.dir +
                                   "/key --state-dir \"$(printf '/x\\rExecStartPre=/bin/true')\"",
                               &out, &err),
              0);
    EXPECT_NE(err.find("control character"), std::string::npos) << err;
    EXPECT_FALSE(fs::exists(f.dir + "/bad/together-worker.service"));
}
