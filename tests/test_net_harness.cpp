// SPDX-License-Identifier: MIT
// The test harness for real networks: namespaces on a bridge, the user-space TCP proxy, packet capture.
// Timing checks are lower bounds only (plus generous bounds that catch a hang): the machine is shared.
#include "tests/net_lab.h"
#include "tests/packet_capture.h"
#include "tests/tcp_proxy.h"
#include "tests/test_support.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace together;
using namespace together::test;

namespace {

#define SKIP_WITHOUT_NAMESPACES()                                                                                 \
    do {                                                                                                          \
        std::string why;                                                                                          \
        if (!NetLab::available(&why))                                                                             \
            GTEST_SKIP() << why;                                                                                  \
    } while (0)

// A TCP echo server on an ephemeral port of `host`, in the calling thread's namespace.
struct EchoServer {
    explicit EchoServer(const std::string& host = "127.0.0.1")
    {
        fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a {};
        a.sin_family = AF_INET;
        ::inet_pton(AF_INET, host.c_str(), &a.sin_addr);
        ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
        ::listen(fd, 8);
        socklen_t len = sizeof a;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
        address = host + ":" + std::to_string(ntohs(a.sin_port));
        thread = std::thread([this] {
            while (!stop) {
                pollfd p {fd, POLLIN, 0};
                if (::poll(&p, 1, 50) <= 0)
                    continue;
                int c = ::accept(fd, nullptr, nullptr);
                std::thread([c] {
                    char buf[65536];
                    ssize_t n;
                    while ((n = ::read(c, buf, sizeof buf)) > 0)
                        if (::send(c, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n)
                            break;
                    ::close(c);
                }).detach();
            }
        });
    }
    ~EchoServer()
    {
        stop = true;
        thread.join();
        ::close(fd);
    }
    int fd = -1;
    std::string address;
    std::atomic<bool> stop{false};
    std::thread thread;
};

int connectTo(const std::string& hostPort)
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a {};
    a.sin_family = AF_INET;
    const size_t colon = hostPort.rfind(':');
    a.sin_port = htons(static_cast<uint16_t>(std::stoi(hostPort.substr(colon + 1))));
    ::inet_pton(AF_INET, hostPort.substr(0, colon).c_str(), &a.sin_addr);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

// Sends `data` and reads back as many bytes; returns them ("" on a closed connection or after 10 s).
std::string roundTrip(int fd, const std::string& data)
{
    if (::send(fd, data.data(), data.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(data.size()))
        return "";
    std::string got;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (got.size() < data.size() && std::chrono::steady_clock::now() < end) {
        pollfd p {fd, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0)
            continue;
        char buf[65536];
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n <= 0)
            return got;
        got.append(buf, static_cast<size_t>(n));
    }
    return got;
}

double seconds(std::chrono::steady_clock::time_point since)
{
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

} // namespace

TEST(NetLab, HostsReachEachOtherAndBroadcastsCrossTheBridge)
{
    SKIP_WITHOUT_NAMESPACES();
    std::vector<std::string> names;
    {
        NetLab lab;
        auto a = lab.addHost("a"), b = lab.addHost("b");
        names = {a.ns, b.ns, lab.switchNamespace()};
        std::unique_ptr<EchoServer> echo;
        lab.runIn(b, [&] { echo = std::make_unique<EchoServer>(b.ip); });
        std::string reply;
        lab.runIn(a, [&] {
            int fd = connectTo(echo->address);
            ASSERT_GE(fd, 0);
            reply = roundTrip(fd, "across the bridge");
            ::close(fd);
        });
        EXPECT_EQ(reply, "across the bridge");
        lab.runIn(b, [&] { echo.reset(); });

        // UDP broadcast from a reaches b.
        std::string got;
        lab.runIn(b, [&] {
            int r = ::socket(AF_INET, SOCK_DGRAM, 0);
            sockaddr_in any {};
            any.sin_family = AF_INET;
            any.sin_port = htons(47999);
            ::bind(r, reinterpret_cast<sockaddr*>(&any), sizeof any);
            std::thread sender([&] {
                lab.runIn(a, [&] {
                    int s = ::socket(AF_INET, SOCK_DGRAM, 0);
                    int on = 1;
                    ::setsockopt(s, SOL_SOCKET, SO_BROADCAST, &on, sizeof on);
                    sockaddr_in bc {};
                    bc.sin_family = AF_INET;
                    bc.sin_port = htons(47999);
                    ::inet_pton(AF_INET, "10.77.0.255", &bc.sin_addr);
                    for (int i = 0; i < 20; ++i) {
                        ::sendto(s, "hello", 5, 0, reinterpret_cast<sockaddr*>(&bc), sizeof bc);
                        std::this_thread::sleep_for(std::chrono::milliseconds(50));
                    }
                    ::close(s);
                });
            });
            pollfd p {r, POLLIN, 0};
            if (::poll(&p, 1, 5000) > 0) {
                char buf[16];
                ssize_t n = ::recv(r, buf, sizeof buf, 0);
                got.assign(buf, n > 0 ? static_cast<size_t>(n) : 0);
            }
            sender.join();
            ::close(r);
        });
        EXPECT_EQ(got, "hello");

        // Processes run inside a host and are killed with the lab.
        pid_t p = lab.spawn(a, {"sleep", "600"});
        EXPECT_TRUE(waitFor([&] { return cmdline(p).find("sleep 600") != std::string::npos; }, std::chrono::seconds(10)));
    }
    std::string out;
    runCommand("ip netns list", &out);
    for (auto& n : names)
        EXPECT_EQ(out.find(n), std::string::npos) << "left behind: " << n;
}

TEST(TcpProxy, ForwardsDelaysStallsCutsAndRecords)
{
    EchoServer echo;
    TcpProxy proxy(echo.address);
    int fd = connectTo(proxy.address());
    ASSERT_GE(fd, 0);
    EXPECT_EQ(roundTrip(fd, "plain"), "plain");

    proxy.setDelay(std::chrono::milliseconds(100));
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(roundTrip(fd, "slow"), "slow");
    EXPECT_GE(seconds(t0), 0.2); // 100 ms each way
    proxy.setDelay(std::chrono::milliseconds(0));

    proxy.stall(true);
    ASSERT_EQ(::send(fd, "held", 4, 0), 4);
    pollfd p {fd, POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 300), 0) << "bytes passed a stalled link";
    proxy.stall(false);
    EXPECT_EQ(roundTrip(fd, ""), "");
    char buf[8];
    ASSERT_GT(::poll(&p, 1, 10000), 0);
    EXPECT_EQ(::read(fd, buf, sizeof buf), 4);

    proxy.setBandwidth(1 << 20); // 1 MiB/s
    t0 = std::chrono::steady_clock::now();
    const std::string big(1 << 20, 'b');
    EXPECT_EQ(roundTrip(fd, big).size(), big.size());
    EXPECT_GE(seconds(t0), 0.8); // about one second each way at the cap
    proxy.setBandwidth(0);

    proxy.cut();
    EXPECT_EQ(roundTrip(fd, "after the cut"), "");
    ::close(fd);

    auto recorded = proxy.clientBytes();
    ASSERT_EQ(recorded.size(), 1u);
    EXPECT_EQ(recorded[0].substr(0, 13), "plainslowheld");

    proxy.refuse(true);
    fd = connectTo(proxy.address());
    EXPECT_EQ(roundTrip(fd, "x"), "");
    ::close(fd);
}

TEST(PacketCapture, SeesWhatCrossesANamespacesLoopback)
{
    SKIP_WITHOUT_NAMESPACES();
    std::string why;
    if (!PacketCapture::available(&why))
        GTEST_SKIP() << why;
    NetLab lab;
    auto h = lab.addHost("cap");
    std::unique_ptr<PacketCapture> capture;
    lab.runIn(h, [&] {
        capture = std::make_unique<PacketCapture>("lo");
        EchoServer echo;
        int fd = connectTo(echo.address);
        roundTrip(fd, "a marker in clear 7f3a");
        ::close(fd);
    });
    EXPECT_TRUE(waitFor([&] { return capture->contains("a marker in clear 7f3a"); }, std::chrono::seconds(5)));
    capture->stop();
    EXPECT_FALSE(capture->contains("never sent 91c2"));
}
