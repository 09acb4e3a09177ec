// SPDX-License-Identifier: MIT
// From the attacker's side: what a sniffer on the LAN sees of a run, what replaying a recorded connection to a
// daemon does, and what a keyless peer's 16 MiB message costs a daemon.
#include "base/error.h"
#include "base/files.h"
#include "base/host_info.h"
#include "model/random_model.h"
#include "model/safetensors.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "net/rpc.h"
#include "net_lab.h"
#include "packet_capture.h"
#include "proto/together.grpc.pb.h"
#include "tcp_proxy.h"
#include "test_support.h"
#include "wire/protocol.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace together;
using json = nlohmann::json;

namespace {

// Sends `bytes` on a fresh TCP connection to `address` and reads whatever comes back until the peer closes
// or goes quiet.
std::string sendRaw(const std::string& address, const std::string& bytes)
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a {};
    a.sin_family = AF_INET;
    const size_t colon = address.rfind(':');
    a.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
    ::inet_pton(AF_INET, address.substr(0, colon).c_str(), &a.sin_addr);
    std::string got;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
        size_t off = 0;
        while (off < bytes.size()) {
            ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
            if (n <= 0)
                break;
            off += static_cast<size_t>(n);
        }
        while (true) {
            pollfd p {fd, POLLIN, 0};
            if (::poll(&p, 1, 2000) <= 0)
                break;
            char buf[65536];
            ssize_t n = ::read(fd, buf, sizeof buf);
            if (n <= 0)
                break;
            got.append(buf, static_cast<size_t>(n));
        }
    }
    ::close(fd);
    return got;
}

std::vector<std::string> recentLog(const Credentials& c, const std::string& address)
{
    auto stub = v1::WorkerControl::NewStub(openChannel(c, address));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::RecentLogRequest req;
    req.set_max_lines(1000);
    v1::RecentLogReply rep;
    EXPECT_TRUE(stub->RecentLog(&ctx, req, &rep).ok());
    std::vector<std::string> lines;
    for (auto& l : rep.lines())
        lines.push_back(l.text());
    return lines;
}

size_t countContaining(const std::vector<std::string>& lines, const std::string& part)
{
    size_t n = 0;
    for (auto& l : lines)
        n += l.find(part) != std::string::npos;
    return n;
}

bool helloOk(const Credentials& c, const std::string& address)
{
    auto stub = v1::WorkerControl::NewStub(openChannel(c, address));
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::HelloRequest req;
    req.set_protocol_version(kProtocolVersion);
    v1::HelloReply rep;
    return stub->Hello(&ctx, req, &rep).ok();
}

// The protobuf encoding of a packed repeated int32: the varints, back to back.
std::string varints(const std::vector<int>& ids)
{
    std::string s;
    for (int id : ids) {
        uint32_t v = static_cast<uint32_t>(id);
        while (v >= 0x80) {
            s += static_cast<char>((v & 0x7f) | 0x80);
            v >>= 7;
        }
        s += static_cast<char>(v);
    }
    return s;
}

} // namespace

// Acceptance: a capture of the loopback traffic of a run holds neither weight bytes nor the prompt's token ids
// in clear.
TEST(Security, ASnifferSeesNeitherWeightsNorTokens)
{
    std::string why;
    if (!test::NetLab::available(&why))
        GTEST_SKIP() << why;
    if (!test::PacketCapture::available(&why))
        GTEST_SKIP() << why;
    const std::string model = test::smallModel("sniff-model");
    const std::string dir = test::makeTempDir("sniff");
    const std::string prompt = "Once upon a time a sniffer listened to every packet on the wire";
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::cliBin() + " tokenize --model " + model + " --text '" + prompt + "'", &out, &err), 0) << err;
    std::vector<int> ids;
    std::istringstream idStream(out);
    for (int id; idStream >> id;)
        ids.push_back(id);
    ASSERT_GE(ids.size(), 8u);

    test::NetLab lab;
    auto host = lab.addHost("sniffed");
    std::unique_ptr<test::PacketCapture> capture;
    lab.runIn(host, [&] { capture = std::make_unique<test::PacketCapture>("lo"); });
    pid_t run = lab.spawn(host,
                          {test::cliBin(), "run", "--model", model, "--local", "tp=2,pp=2", "--prompt", prompt, "--temperature", "0",
                           "--max-tokens", "8", "--dtype", "f32", "--trace", dir + "/trace.jsonl"},
                          {}, dir + "/out", dir + "/err");
    ASSERT_EQ(lab.wait(run, std::chrono::seconds(120)), 0) << readTextFile(dir + "/err");
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    capture->stop();
    ASSERT_EQ(test::readTrace(dir + "/trace.jsonl").size(), 8u);

    // The capture saw the run: the TLS handshakes (their server name is in clear) and more bytes than the
    // weights themselves.
    SafeTensors weights = SafeTensors::open(model);
    uint64_t weightBytes = 0;
    for (auto& [name, t] : weights.tensors())
        weightBytes += t.nbytes;
    EXPECT_TRUE(capture->contains(kTlsPeerName));
    EXPECT_GT(capture->size(), weightBytes);
    std::printf("[ capture  ] %.1f MiB captured, %.1f MiB of weights\n", capture->size() / 1048576.0, weightBytes / 1048576.0);

    // No 32-byte window of any weight tensor, sampled at 16 places in each.
    std::mt19937 rng(7);
    int windows = 0;
    for (auto& [name, t] : weights.tensors()) {
        if (t.nbytes < 64)
            continue;
        for (int i = 0; i < 16; ++i) {
            const size_t off = std::uniform_int_distribution<size_t>(0, t.nbytes - 32)(rng) & ~size_t(3);
            EXPECT_FALSE(capture->contains(std::string_view(reinterpret_cast<const char*>(t.data) + off, 32)))
                << "bytes of " << name << " at " << off << " crossed the wire in clear";
            ++windows;
        }
    }
    EXPECT_GT(windows, 100);
    // Nor the prompt's token ids (as the protocol encodes them, or as 32-bit integers), nor its text.
    EXPECT_FALSE(capture->contains(varints(ids)));
    EXPECT_FALSE(capture->contains(std::string_view(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int))));
    EXPECT_FALSE(capture->contains("a sniffer listened"));
}

// Acceptance: a recorded call replayed to another daemon (or to the same one) is refused and does nothing.
TEST(Security, ARecordedConnectionReplayedToADaemonDoesNothing)
{
    const std::string dir = test::makeTempDir("replay");
    const ClusterKey key = ClusterKey::generate();
    key.writeFile(dir + "/key");
    const std::string model = test::smallModel("replay-model");
    test::Daemon a(dir + "/key", dir + "/a"), b(dir + "/key", dir + "/b");
    test::TcpProxy tap(a.address());
    json plan = {{"stages", {{{"layers", {0, 3}}, {"ranks", {{{"worker", a.address()}, {"threads", 1}}}}}}}};
    std::ofstream(dir + "/plan.json") << plan.dump();
    std::string out, err;
    ASSERT_EQ(test::runCommand("TOGETHER_TEST_DIAL_VIA=" + a.address() + "=" + tap.address() + " " + test::cliBin() + " run --model " + model +
                                   " --plan " + dir + "/plan.json --key-file " + dir + "/key --prompt hello --max-tokens 4 --dtype f32",
                               &out, &err),
              0)
        << err;
    const Credentials auditor(key, "master auditor@test");
    auto logA = recentLog(auditor, a.address());
    ASSERT_EQ(countContaining(logA, ": started (pid"), 1u); // the run's launch went through the tap
    ASSERT_EQ(countContaining(logA, "stopped by master"), 1u);

    const auto recorded = tap.clientBytes();
    ASSERT_FALSE(recorded.empty());
    size_t total = 0;
    for (auto& r : recorded) {
        total += r.size();
        // What the master sent was encrypted: no method name, no launch field in clear.
        EXPECT_EQ(r.find("WorkerControl"), std::string::npos);
        EXPECT_EQ(r.find("LaunchShard"), std::string::npos);
    }
    EXPECT_GT(total, 1000u);

    for (auto& r : recorded) {
        sendRaw(b.address(), r);
        sendRaw(a.address(), r);
    }
    auto logB = recentLog(auditor, b.address());
    EXPECT_EQ(countContaining(logB, "started (pid"), 0u);
    EXPECT_EQ(countContaining(logB, "stopped"), 0u);
    EXPECT_TRUE(b.shards().empty());
    logA = recentLog(auditor, a.address());
    EXPECT_EQ(countContaining(logA, ": started (pid"), 1u);
    EXPECT_EQ(countContaining(logA, "stopped by master"), 1u);
    EXPECT_TRUE(a.shards().empty());
    EXPECT_TRUE(helloOk(auditor, a.address()));
    EXPECT_TRUE(helloOk(auditor, b.address()));
}

// Acceptance: a keyless 16 MiB message is refused with the daemon's memory growing by less than 4 MiB.
TEST(Security, AKeylessBigMessageCostsTheDaemonNothing)
{
    const std::string dir = test::makeTempDir("bigmsg");
    const ClusterKey key = ClusterKey::generate();
    key.writeFile(dir + "/key");
    test::Daemon d(dir + "/key", dir + "/state");
    const Credentials good(key, "master good@test");
    ASSERT_TRUE(helloOk(good, d.address())); // the daemon has served a connection: its buffers exist
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const uint64_t before = residentBytes(d.pid());
    ASSERT_GT(before, 0u);

    v1::LaunchShardRequest huge;
    huge.set_launch_id(std::string((16 << 20) - 64, 'x'));
    huge.set_bind_host("127.0.0.1");
    auto call = [&](std::shared_ptr<grpc::ChannelCredentials> creds) {
        grpc::ChannelArguments args;
        args.SetSslTargetNameOverride(kTlsPeerName);
        args.SetMaxSendMessageSize(-1);
        auto stub = v1::WorkerControl::NewStub(grpc::CreateCustomChannel(d.address(), creds, args));
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
        v1::LaunchShardReply rep;
        return stub->LaunchShard(&ctx, huge, &rep);
    };
    // Plain HTTP/2, no TLS.
    EXPECT_FALSE(call(grpc::InsecureChannelCredentials()).ok());
    // TLS that trusts the cluster's (public) CA certificate but has no client certificate.
    grpc::SslCredentialsOptions noCert;
    noCert.pem_root_certs = good.caPem();
    EXPECT_FALSE(call(grpc::SslCredentials(noCert)).ok());
    // A client certificate from another key.
    const Credentials stranger(ClusterKey::generate(), "master stranger");
    grpc::SslCredentialsOptions forged;
    forged.pem_root_certs = good.caPem();
    forged.pem_private_key = stranger.privateKeyPem();
    forged.pem_cert_chain = stranger.certPem();
    EXPECT_FALSE(call(grpc::SslCredentials(forged)).ok());
    // 16 MiB of raw bytes.
    sendRaw(d.address(), std::string(16 << 20, '\x16'));

    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const uint64_t after = residentBytes(d.pid());
    std::printf("[ memory   ] daemon resident %.1f MiB before, %.1f MiB after four keyless 16 MiB messages\n", before / 1048576.0,
                after / 1048576.0);
    EXPECT_LT(after, before + (4u << 20));
    EXPECT_TRUE(helloOk(good, d.address()));
    EXPECT_EQ(countContaining(recentLog(good, d.address()), "started (pid"), 0u);
}
