// SPDX-License-Identifier: MIT
#include "tests/tcp_proxy.h"

#include "core/error.h"

#include <cerrno>
#include <cstring>
#include <deque>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace together::test {

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kRecordCap = 64u << 20;

sockaddr_in parse(const std::string& hostPort)
{
    sockaddr_in a {};
    a.sin_family = AF_INET;
    const size_t colon = hostPort.rfind(':');
    a.sin_port = htons(static_cast<uint16_t>(std::stoi(hostPort.substr(colon + 1))));
    if (::inet_pton(AF_INET, hostPort.substr(0, colon).c_str(), &a.sin_addr) != 1)
        throw Error("proxy: not an IPv4 address: " + hostPort);
    return a;
}

void resetAndClose(int fd)
{
    linger l {1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::shutdown(fd, SHUT_RDWR);
}

} // namespace

struct TcpProxy::Connection {
    int client = -1;
    int server = -1;
    std::atomic<bool> closed{false};
    std::mutex mutex;
    std::string fromClient, fromServer;
    ~Connection()
    {
        if (client >= 0)
            ::close(client);
        if (server >= 0)
            ::close(server);
    }
};

TcpProxy::TcpProxy(std::string target, std::string listenHost)
    : m_target(std::move(target))
    , m_host(std::move(listenHost))
{
    parse(m_target);
    m_listen = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = parse(m_host + ":0");
    if (m_listen < 0 || ::bind(m_listen, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(m_listen, 64) != 0)
        throw Error(std::string("proxy: cannot listen: ") + std::strerror(errno));
    socklen_t len = sizeof a;
    ::getsockname(m_listen, reinterpret_cast<sockaddr*>(&a), &len);
    m_port = ntohs(a.sin_port);
    m_acceptor = std::thread([this] { acceptLoop(); });
}

TcpProxy::~TcpProxy()
{
    m_stop = true;
    m_acceptor.join();
    cut();
    for (auto& t : m_threads)
        t.join();
    ::close(m_listen);
}

std::string TcpProxy::address() const { return m_host + ":" + std::to_string(m_port); }
void TcpProxy::setDelay(std::chrono::milliseconds d) { m_delayMs = d.count(); }
void TcpProxy::setBandwidth(uint64_t b) { m_bandwidth = b; }
void TcpProxy::stall(bool on) { m_stalled = on; }
void TcpProxy::refuse(bool on) { m_refusing = on; }
uint64_t TcpProxy::bytesForwarded() const { return m_forwarded; }

void TcpProxy::cut()
{
    std::lock_guard lock(m_mutex);
    for (auto& c : m_connections)
        if (!c->closed.exchange(true)) {
            resetAndClose(c->client);
            resetAndClose(c->server);
        }
}

std::vector<std::string> TcpProxy::clientBytes() const
{
    std::lock_guard lock(m_mutex);
    std::vector<std::string> out;
    for (auto& c : m_connections) {
        std::lock_guard l(c->mutex);
        out.push_back(c->fromClient);
    }
    return out;
}

std::vector<std::string> TcpProxy::serverBytes() const
{
    std::lock_guard lock(m_mutex);
    std::vector<std::string> out;
    for (auto& c : m_connections) {
        std::lock_guard l(c->mutex);
        out.push_back(c->fromServer);
    }
    return out;
}

void TcpProxy::acceptLoop()
{
    while (!m_stop) {
        pollfd p {m_listen, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0)
            continue;
        int client = ::accept4(m_listen, nullptr, nullptr, SOCK_CLOEXEC);
        if (client < 0)
            continue;
        if (m_refusing) {
            resetAndClose(client);
            ::close(client);
            continue;
        }
        int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in t = parse(m_target);
        if (server < 0 || ::connect(server, reinterpret_cast<sockaddr*>(&t), sizeof t) != 0) {
            resetAndClose(client);
            ::close(client);
            if (server >= 0)
                ::close(server);
            continue;
        }
        int one = 1;
        ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ::setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        auto c = std::make_shared<Connection>();
        c->client = client;
        c->server = server;
        std::lock_guard lock(m_mutex);
        m_connections.push_back(c);
        m_threads.emplace_back([this, c] { pump(c, true); });
        m_threads.emplace_back([this, c] { pump(c, false); });
    }
}

// One direction of one connection: read what arrives, hold each chunk for the delay (and while stalled),
// and write it out no faster than the bandwidth cap.
void TcpProxy::pump(std::shared_ptr<Connection> c, bool fromClient)
{
    const int in = fromClient ? c->client : c->server;
    const int out = fromClient ? c->server : c->client;
    std::deque<std::pair<Clock::time_point, std::string>> pending;
    bool eof = false;
    double budget = 0; // bytes the cap allows now
    auto lastRefill = Clock::now();
    while (!m_stop && !c->closed) {
        pollfd p {in, POLLIN, 0};
        if (!eof && ::poll(&p, 1, pending.empty() ? 50 : 2) > 0) {
            char buf[65536];
            ssize_t n = ::read(in, buf, sizeof buf);
            if (n <= 0) {
                eof = true;
            } else {
                pending.emplace_back(Clock::now(), std::string(buf, static_cast<size_t>(n)));
                std::lock_guard l(c->mutex);
                std::string& rec = fromClient ? c->fromClient : c->fromServer;
                if (rec.size() < kRecordCap)
                    rec.append(buf, std::min(static_cast<size_t>(n), kRecordCap - rec.size()));
            }
        } else if (eof && pending.empty()) {
            ::shutdown(out, SHUT_WR);
            return;
        } else if (eof) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        const auto now = Clock::now();
        const uint64_t cap = m_bandwidth;
        budget = cap ? std::min<double>(budget + cap * std::chrono::duration<double>(now - lastRefill).count(), std::max<double>(cap / 20.0, 1500))
                     : 1e18;
        lastRefill = now;
        while (!pending.empty() && !m_stalled && now - pending.front().first >= std::chrono::milliseconds(m_delayMs.load())) {
            std::string& chunk = pending.front().second;
            const size_t n = std::min<size_t>(chunk.size(), static_cast<size_t>(std::max(0.0, budget)));
            if (n == 0)
                break;
            ssize_t w = ::send(out, chunk.data(), n, MSG_NOSIGNAL);
            if (w <= 0) {
                c->closed = true;
                return;
            }
            budget -= static_cast<double>(w);
            m_forwarded += static_cast<uint64_t>(w);
            chunk.erase(0, static_cast<size_t>(w));
            if (chunk.empty())
                pending.pop_front();
        }
    }
}

} // namespace together::test
