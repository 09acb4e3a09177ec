// SPDX-License-Identifier: MIT
// The test harness for real networks: namespaces on a bridge, the user-space TCP proxy, packet capture.
// Timing checks are lower bounds only (plus generous bounds that catch a hang): the machine is shared.
#include "net_lab.h"
#include "packet_capture.h"
#include "tcp_proxy.h"
#include "test_support.h"

#include "base/error.h"
#include "base/files.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace together;
using namespace together::test;
using namespace std::chrono_literals;

namespace {

#define SKIP_WITHOUT_NAMESPACES()                                                                                 \
    do {                                                                                                          \
        std::string why;                                                                                          \
        if (!NetLab::available(&why))                                                                             \
            GTEST_SKIP() << why;                                                                                  \
    } while (0)

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A socket closed with its owner.
class Fd {
public:
    explicit Fd(int fd = -1)
        : m_fd(fd)
    {
    }
    ~Fd() { reset(); }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    int get() const { return m_fd; }
    void reset(int fd = -1)
    {
        if (m_fd >= 0)
            ::close(m_fd);
        m_fd = fd;
    }

private:
    int m_fd;
};

sockaddr_in ipv4(const std::string& host, uint16_t port)
{
    sockaddr_in a {};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1)
        throw Error("not an IPv4 address: " + host);
    return a;
}

// A connected TCP socket, or -1.
int connectTo(const std::string& hostPort)
{
    const size_t colon = hostPort.rfind(':');
    sockaddr_in a = ipv4(hostPort.substr(0, colon), static_cast<uint16_t>(std::stoi(hostPort.substr(colon + 1))));
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

bool sendAll(int fd, std::string_view data)
{
    while (!data.empty()) {
        const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n <= 0)
            return false;
        data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
}

// Up to `size` bytes: fewer when the connection closes or `timeout` passes first.
std::string readBytes(int fd, size_t size, std::chrono::milliseconds timeout = 10s)
{
    std::string got;
    const auto end = Clock::now() + timeout;
    std::vector<char> buf(1 << 16);
    while (got.size() < size && Clock::now() < end) {
        pollfd p {fd, POLLIN, 0};
        if (::poll(&p, 1, 20) <= 0)
            continue;
        const ssize_t n = ::recv(fd, buf.data(), std::min(buf.size(), size - got.size()), 0);
        if (n <= 0)
            break;
        got.append(buf.data(), static_cast<size_t>(n));
    }
    return got;
}

// Sends `data` (from another thread, so that large amounts cannot deadlock) and reads back as many bytes.
std::string roundTrip(int fd, const std::string& data, std::chrono::milliseconds timeout = 10s)
{
    std::thread sender([&] { sendAll(fd, data); });
    std::string got = readBytes(fd, data.size(), timeout);
    sender.join();
    return got;
}

// Whether the peer closes (FIN or RST) within `timeout`; data still arriving is skipped.
bool closedByPeer(int fd, std::chrono::milliseconds timeout = 10s)
{
    const auto end = Clock::now() + timeout;
    char buf[4096];
    while (Clock::now() < end) {
        pollfd p {fd, POLLIN, 0};
        if (::poll(&p, 1, 20) <= 0)
            continue;
        const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            return true;
    }
    return false;
}

// A TCP echo server on an ephemeral port; its sockets live in the namespace of the thread that makes it.
// When a client half-closes, it half-closes back.
class EchoServer {
public:
    explicit EchoServer(const std::string& host = "127.0.0.1")
    {
        m_listen = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a = ipv4(host, 0);
        if (::bind(m_listen, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(m_listen, 16) != 0)
            throw Error("echo server: cannot listen on " + host + ": " + std::strerror(errno));
        socklen_t len = sizeof a;
        ::getsockname(m_listen, reinterpret_cast<sockaddr*>(&a), &len);
        m_address = host + ":" + std::to_string(ntohs(a.sin_port));
        m_acceptor = std::thread([this] { acceptLoop(); });
    }
    ~EchoServer()
    {
        m_stop = true;
        m_acceptor.join();
        std::lock_guard lock(m_mutex);
        for (int fd : m_clients)
            ::shutdown(fd, SHUT_RDWR);
        for (auto& t : m_threads)
            t.join();
        for (int fd : m_clients)
            ::close(fd);
        ::close(m_listen);
    }
    EchoServer(const EchoServer&) = delete;
    EchoServer& operator=(const EchoServer&) = delete;
    const std::string& address() const { return m_address; }

private:
    void acceptLoop()
    {
        while (!m_stop) {
            pollfd p {m_listen, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0)
                continue;
            const int fd = ::accept4(m_listen, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0)
                continue;
            std::lock_guard lock(m_mutex);
            m_clients.push_back(fd);
            m_threads.emplace_back([this, fd] { echo(fd); });
        }
    }
    void echo(int fd)
    {
        std::vector<char> buf(1 << 16);
        while (!m_stop) {
            pollfd p {fd, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0)
                continue;
            const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
            if (n == 0)
                ::shutdown(fd, SHUT_WR);
            if (n <= 0 || !sendAll(fd, std::string_view(buf.data(), static_cast<size_t>(n))))
                return;
        }
    }

    int m_listen = -1;
    std::string m_address;
    std::atomic<bool> m_stop{false};
    std::mutex m_mutex;
    std::vector<int> m_clients;
    std::vector<std::thread> m_threads;
    std::thread m_acceptor;
};

// A UDP socket bound to 0.0.0.0:port, in the calling thread's namespace.
int udpListener(uint16_t port)
{
    const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = ipv4("0.0.0.0", port);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
        throw Error(std::string("cannot bind UDP port: ") + std::strerror(errno));
    return fd;
}

bool namespaceExists(const std::string& name)
{
    std::string out;
    runCommand("ip netns list", &out);
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);)
        if (line.substr(0, line.find(' ')) == name)
            return true;
    return false;
}

// Deletes a namespace the test made by hand, whatever happens to the test.
struct ScopedNamespace {
    explicit ScopedNamespace(std::string n)
        : name(std::move(n))
    {
        sh("ip netns add " + name);
    }
    ~ScopedNamespace()
    {
        if (namespaceExists(name))
            runCommand("ip netns del " + name + " 2>/dev/null", nullptr);
    }
    std::string name;
};

// After every test: no namespace of this process is left.
class NoNamespaceLeft : public ::testing::Environment {
public:
    void TearDown() override
    {
        std::string out;
        runCommand("ip netns list", &out);
        EXPECT_EQ(out.find("tgt" + std::to_string(::getpid()) + "-"), std::string::npos) << "left behind:\n" << out;
    }
};
[[maybe_unused]] ::testing::Environment* const g_noNamespaceLeft = ::testing::AddGlobalTestEnvironment(new NoNamespaceLeft);

} // namespace

// ---- NetLab ----

TEST(NetLab, EveryHostReachesEveryOtherAcrossTheBridge)
{
    SKIP_WITHOUT_NAMESPACES();
    NetLab lab;
    std::vector<NetLab::Host> hosts = {lab.addHost("a"), lab.addHost("b"), lab.addHost("c")};
    EXPECT_EQ(hosts[0].ip, "10.77.0.1");
    EXPECT_EQ(hosts[1].ip, "10.77.0.2");
    EXPECT_EQ(hosts[2].ip, "10.77.0.3");
    EXPECT_EQ(hosts[1].name, "b");

    std::vector<std::unique_ptr<EchoServer>> echo(hosts.size());
    for (size_t i = 0; i < hosts.size(); ++i)
        lab.runIn(hosts[i], [&] { echo[i] = std::make_unique<EchoServer>(hosts[i].ip); });
    for (size_t from = 0; from < hosts.size(); ++from)
        for (size_t to = 0; to < hosts.size(); ++to) {
            if (from == to)
                continue;
            const std::string message = "from " + hosts[from].name + " to " + hosts[to].name;
            std::string reply;
            lab.runIn(hosts[from], [&] {
                Fd fd(connectTo(echo[to]->address()));
                ASSERT_GE(fd.get(), 0) << message << ": " << std::strerror(errno);
                reply = roundTrip(fd.get(), message);
            });
            EXPECT_EQ(reply, message);
        }
    echo.clear();

    // The bridge and its three ports are in the switch namespace; nothing of the lab is in the root one.
    std::string ports, root;
    EXPECT_EQ(runCommand("ip -n " + lab.switchNamespace() + " -o link show master br0", &ports), 0);
    EXPECT_EQ(std::count(ports.begin(), ports.end(), '\n'), 3) << ports;
    EXPECT_EQ(runCommand("ip -o link show", &root), 0);
    EXPECT_EQ(root.find("tv" + std::to_string(::getpid() % 100000) + "x"), std::string::npos) << root;
}

TEST(NetLab, BroadcastReachesEveryOtherHost)
{
    SKIP_WITHOUT_NAMESPACES();
    NetLab lab;
    auto a = lab.addHost("a"), b = lab.addHost("b"), c = lab.addHost("c");
    constexpr uint16_t port = 47999;
    Fd rb, rc, sender;
    lab.runIn(b, [&] { rb.reset(udpListener(port)); });
    lab.runIn(c, [&] { rc.reset(udpListener(port)); });
    lab.runIn(a, [&] {
        sender.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        int on = 1;
        ::setsockopt(sender.get(), SOL_SOCKET, SO_BROADCAST, &on, sizeof on);
    });
    const sockaddr_in broadcast = ipv4("10.77.0.255", port);
    std::string got[2], from[2];
    const int receivers[2] = {rb.get(), rc.get()};
    const auto end = Clock::now() + 10s;
    while ((got[0].empty() || got[1].empty()) && Clock::now() < end) {
        ::sendto(sender.get(), "beacon", 6, 0, reinterpret_cast<const sockaddr*>(&broadcast), sizeof broadcast);
        pollfd p[2] = {{receivers[0], POLLIN, 0}, {receivers[1], POLLIN, 0}};
        ::poll(p, 2, 50);
        for (int i = 0; i < 2; ++i) {
            if (!(p[i].revents & POLLIN))
                continue;
            char buf[64];
            sockaddr_in src {};
            socklen_t len = sizeof src;
            const ssize_t n = ::recvfrom(receivers[i], buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&src), &len);
            if (n > 0) {
                got[i].assign(buf, static_cast<size_t>(n));
                char ip[INET_ADDRSTRLEN];
                from[i] = ::inet_ntop(AF_INET, &src.sin_addr, ip, sizeof ip);
            }
        }
    }
    EXPECT_EQ(got[0], "beacon");
    EXPECT_EQ(got[1], "beacon");
    EXPECT_EQ(from[0], a.ip);
    EXPECT_EQ(from[1], a.ip);
}

TEST(NetLab, SpawnRunsInTheHostWithTheExtraEnvironment)
{
    SKIP_WITHOUT_NAMESPACES();
    NetLab lab;
    lab.addHost("first");
    auto h = lab.addHost("second");
    const std::string dir = makeTempDir("netlab-spawn");
    pid_t p = lab.spawn(h, {"sh", "-c", "echo \"$LAB_MARK\"; ip -4 -o addr show dev eth0; echo complaint >&2; exit 3"},
                        {"LAB_MARK=mark-5127"}, dir + "/out", dir + "/err");
    ASSERT_EQ(lab.wait(p, 30s), 3);
    const std::string out = readTextFile(dir + "/out");
    EXPECT_NE(out.find("mark-5127"), std::string::npos) << out;
    EXPECT_NE(out.find("inet 10.77.0.2/24 brd 10.77.0.255"), std::string::npos) << out;
    EXPECT_EQ(readTextFile(dir + "/err"), "complaint\n");
    EXPECT_EQ(lab.wait(p, 100ms), -1) << "already reaped";

    p = lab.spawn(h, {"sleep", "600"});
    EXPECT_EQ(lab.wait(p, 200ms), -1);
    lab.kill(p, SIGTERM);
    EXPECT_EQ(lab.wait(p, 10s), 128 + SIGTERM);
}

TEST(NetLab, DestructionKillsItsProcessesAndDeletesItsNamespaces)
{
    SKIP_WITHOUT_NAMESPACES();
    std::vector<std::string> names;
    std::vector<pid_t> pids;
    {
        NetLab lab;
        auto a = lab.addHost("a"), b = lab.addHost("b");
        names = {a.ns, b.ns, lab.switchNamespace()};
        for (auto& n : names)
            EXPECT_TRUE(namespaceExists(n)) << n;
        pids.push_back(lab.spawn(a, {"sleep", "600"}));
        // A process that leaves the group it was started in: found through its namespace.
        const std::string out = makeTempDir("netlab-escape") + "/pid";
        const pid_t starter = lab.spawn(b, {"sh", "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!"}, {}, out);
        ASSERT_EQ(lab.wait(starter, 30s), 0);
        pids.push_back(std::stoi(readTextFile(out)));
        for (pid_t p : pids)
            EXPECT_TRUE(waitFor([&] { return cmdline(p).find("sleep 600") != std::string::npos; }, 10s)) << p;
    }
    for (auto& n : names)
        EXPECT_FALSE(namespaceExists(n)) << "left behind: " << n;
    for (pid_t p : pids)
        EXPECT_TRUE(waitFor([&] { return !alive(p); }, 10s)) << "still running: " << p << " " << cmdline(p);
}

TEST(NetLab, SweepsWhatADeadRunLeftBehind)
{
    SKIP_WITHOUT_NAMESPACES();
    // 4194999 is above the largest pid Linux can give: the run that "made" it is surely gone.
    ScopedNamespace stale("tgt4194999-0-stale");
    ScopedNamespace mine("tgt" + std::to_string(::getpid()) + "-kept-by-a-live-run");
    std::string out;
    ASSERT_EQ(runCommand("ip netns exec " + stale.name + " sleep 600 </dev/null >/dev/null 2>&1 & echo $!", &out), 0);
    const pid_t orphan = std::stoi(out);
    ASSERT_TRUE(waitFor([&] { return cmdline(orphan).find("sleep 600") != std::string::npos; }, 10s));

    NetLab lab;
    EXPECT_FALSE(namespaceExists(stale.name));
    EXPECT_TRUE(waitFor([&] { return !alive(orphan); }, 10s)) << "the sweep left " << cmdline(orphan);
    EXPECT_TRUE(namespaceExists(mine.name)) << "a namespace of a live process was swept";
}

TEST(NetLab, ProxyMadeInsideAHostLivesThere)
{
    SKIP_WITHOUT_NAMESPACES();
    NetLab lab;
    auto client = lab.addHost("client"), middle = lab.addHost("middle"), server = lab.addHost("server");
    std::unique_ptr<EchoServer> echo;
    std::unique_ptr<TcpProxy> proxy;
    lab.runIn(server, [&] { echo = std::make_unique<EchoServer>(server.ip); });
    lab.runIn(middle, [&] { proxy = std::make_unique<TcpProxy>(echo->address(), middle.ip); });
    EXPECT_EQ(proxy->address().rfind(middle.ip + ":", 0), 0u);
    std::string reply;
    lab.runIn(client, [&] {
        Fd fd(connectTo(proxy->address()));
        ASSERT_GE(fd.get(), 0);
        reply = roundTrip(fd.get(), "through the middle");
    });
    EXPECT_EQ(reply, "through the middle");
    EXPECT_EQ(proxy->connections(), 1u);
    proxy.reset();
    echo.reset();
}

// ---- TcpProxy (on loopback) ----

TEST(TcpProxy, ForwardsBothWaysAndPassesAHalfClose)
{
    EchoServer echo;
    TcpProxy proxy(echo.address());
    EXPECT_EQ(proxy.address().rfind("127.0.0.1:", 0), 0u);
    Fd a(connectTo(proxy.address())), b(connectTo(proxy.address()));
    ASSERT_GE(a.get(), 0);
    ASSERT_GE(b.get(), 0);
    EXPECT_EQ(roundTrip(a.get(), "one"), "one");
    EXPECT_EQ(roundTrip(b.get(), "two"), "two");
    const std::string big(3 << 20, 'x');
    EXPECT_EQ(roundTrip(a.get(), big), big);
    // The proxy counts a write after it returns, and the client may read the echo before that: wait for it.
    EXPECT_TRUE(waitFor([&] { return proxy.bytesForwarded() >= 2 * (3 + 3 + big.size()); }, 10s)) << proxy.bytesForwarded();
    EXPECT_EQ(proxy.connections(), 2u);

    ::shutdown(b.get(), SHUT_WR); // the echo server sees the end and ends too
    EXPECT_TRUE(closedByPeer(b.get()));
}

TEST(TcpProxy, RecordsWhatEachSideSentPerConnection)
{
    EchoServer echo;
    TcpProxy proxy(echo.address());
    Fd first(connectTo(proxy.address()));
    ASSERT_EQ(roundTrip(first.get(), "first-a "), "first-a ");
    Fd second(connectTo(proxy.address()));
    ASSERT_EQ(roundTrip(second.get(), "second"), "second");
    ASSERT_EQ(roundTrip(first.get(), "first-b"), "first-b");
    const std::vector<std::string> expected = {"first-a first-b", "second"};
    EXPECT_EQ(proxy.clientBytes(), expected);
    EXPECT_EQ(proxy.serverBytes(), expected);
}

TEST(TcpProxy, DelayAddsToARoundTripAndKeepsOrder)
{
    EchoServer echo;
    TcpProxy proxy(echo.address());
    Fd fd(connectTo(proxy.address()));
    ASSERT_EQ(roundTrip(fd.get(), "warm"), "warm");

    proxy.setDelay(150ms); // on a live connection
    auto t0 = Clock::now();
    EXPECT_EQ(roundTrip(fd.get(), "slow"), "slow");
    EXPECT_GE(secondsSince(t0), 0.3); // 150 ms each way

    std::string pieces;
    for (int i = 0; i < 20; ++i) {
        const std::string piece = std::to_string(i) + ",";
        ASSERT_TRUE(sendAll(fd.get(), piece));
        pieces += piece;
        std::this_thread::sleep_for(5ms);
    }
    EXPECT_EQ(readBytes(fd.get(), pieces.size()), pieces);
}

TEST(TcpProxy, StallHoldsBytesUntilReleased)
{
    EchoServer echo;
    TcpProxy proxy(echo.address());
    Fd fd(connectTo(proxy.address()));
    ASSERT_EQ(roundTrip(fd.get(), "before "), "before ");
    proxy.stall(true);
    ASSERT_TRUE(sendAll(fd.get(), "held"));
    pollfd p {fd.get(), POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 400), 0) << "bytes crossed a stalled link, or it closed";
    EXPECT_TRUE(waitFor([&] { return proxy.clientBytes().at(0) == "before held"; }, 10s)) << "read and queued";
    EXPECT_EQ(proxy.serverBytes().at(0), "before ") << "the server got nothing while stalled";
    proxy.stall(false);
    EXPECT_EQ(readBytes(fd.get(), 4), "held");
}

TEST(TcpProxy, CutResetsOpenConnectionsAndNewOnesStillWork)
{
    EchoServer echo;
    TcpProxy proxy(echo.address());
    Fd fd(connectTo(proxy.address()));
    ASSERT_EQ(roundTrip(fd.get(), "alive"), "alive");
    proxy.cut();
    EXPECT_TRUE(closedByPeer(fd.get()));
    Fd again(connectTo(proxy.address()));
    ASSERT_GE(again.get(), 0);
    EXPECT_EQ(roundTrip(again.get(), "after the cut"), "after the cut");
    EXPECT_EQ(proxy.connections(), 2u);
}

TEST(TcpProxy, RefuseClosesOnlyNewConnections)
{
    EchoServer echo;
    TcpProxy proxy(echo.address());
    Fd open(connectTo(proxy.address()));
    ASSERT_EQ(roundTrip(open.get(), "open"), "open");
    proxy.refuse(true);
    Fd refused(connectTo(proxy.address())); // the kernel accepts it; the proxy resets it
    if (refused.get() >= 0) {
        EXPECT_TRUE(closedByPeer(refused.get()));
    }
    EXPECT_EQ(roundTrip(open.get(), "still open"), "still open");
    proxy.refuse(false);
    Fd later(connectTo(proxy.address()));
    ASSERT_GE(later.get(), 0);
    EXPECT_EQ(roundTrip(later.get(), "accepted"), "accepted");
    EXPECT_EQ(proxy.connections(), 2u);
}

TEST(TcpProxy, BandwidthCapSlowsATransfer)
{
    EchoServer echo;
    TcpProxy proxy(echo.address());
    proxy.setBandwidth(1 << 20); // 1 MiB/s each way
    Fd fd(connectTo(proxy.address()));
    const std::string mib(1 << 20, 'b');
    const auto t0 = Clock::now();
    EXPECT_EQ(roundTrip(fd.get(), mib, 60s), mib);
    // Each way takes about a second (the two overlap), less a burst of 1/20 s.
    EXPECT_GE(secondsSince(t0), 0.85);
}

TEST(TcpProxy, UnreachableTargetResetsTheClient)
{
    std::string closedPort;
    {
        // A port nobody listens on: bound, then released.
        Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in a = ipv4("127.0.0.1", 0);
        ASSERT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
        socklen_t len = sizeof a;
        ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
        closedPort = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
    }
    TcpProxy proxy(closedPort);
    Fd fd(connectTo(proxy.address()));
    ASSERT_GE(fd.get(), 0);
    EXPECT_TRUE(closedByPeer(fd.get()));
}

TEST(TcpProxy, DestructionClosesOpenAndStalledConnections)
{
    EchoServer echo;
    auto proxy = std::make_unique<TcpProxy>(echo.address());
    std::vector<std::unique_ptr<Fd>> clients;
    for (int i = 0; i < 3; ++i) {
        clients.push_back(std::make_unique<Fd>(connectTo(proxy->address())));
        ASSERT_EQ(roundTrip(clients.back()->get(), "hi"), "hi");
    }
    proxy->stall(true);
    ASSERT_TRUE(sendAll(clients[0]->get(), std::string(1 << 20, 'q')));
    const auto t0 = Clock::now();
    proxy.reset();
    EXPECT_LT(secondsSince(t0), 10.0);
    for (auto& c : clients)
        EXPECT_TRUE(closedByPeer(c->get()));
}

// ---- PacketCapture ----

TEST(PacketCapture, SeesWhatCrossesANamespacesLoopback)
{
    SKIP_WITHOUT_NAMESPACES();
    std::string why;
    if (!PacketCapture::available(&why))
        GTEST_SKIP() << why;
    NetLab lab;
    auto h = lab.addHost("cap");
    std::unique_ptr<PacketCapture> capture;
    std::string reply;
    lab.runIn(h, [&] {
        capture = std::make_unique<PacketCapture>("lo");
        EchoServer echo;
        Fd fd(connectTo(echo.address()));
        reply = roundTrip(fd.get(), "a marker in clear 7f3a");
    });
    EXPECT_EQ(reply, "a marker in clear 7f3a");
    EXPECT_TRUE(waitFor([&] { return capture->contains("a marker in clear 7f3a"); }, 5s));
    capture->stop();
    capture->stop();
    EXPECT_GT(capture->size(), 0u);
    EXPECT_EQ(capture->bytes().size(), capture->size());
    EXPECT_FALSE(capture->contains("never sent 91c2"));
}

TEST(PacketCapture, SeesTrafficBetweenHostsOnEth0)
{
    SKIP_WITHOUT_NAMESPACES();
    std::string why;
    if (!PacketCapture::available(&why))
        GTEST_SKIP() << why;
    NetLab lab;
    auto a = lab.addHost("a"), b = lab.addHost("b");
    std::unique_ptr<PacketCapture> capture;
    Fd receiver;
    lab.runIn(b, [&] {
        capture = std::make_unique<PacketCapture>("eth0");
        receiver.reset(udpListener(47998));
    });
    lab.runIn(a, [&] {
        Fd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        const sockaddr_in to = ipv4(b.ip, 47998);
        ::sendto(s.get(), "unicast marker 33d1", 19, 0, reinterpret_cast<const sockaddr*>(&to), sizeof to);
    });
    EXPECT_TRUE(waitFor([&] { return capture->contains("unicast marker 33d1"); }, 5s));
    EXPECT_FALSE(capture->contains("never sent 91c2"));
}
