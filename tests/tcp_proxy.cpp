// SPDX-License-Identifier: MIT
#include "tcp_proxy.h"

#include "base/error.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <deque>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace together::test {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kRecordCap = 64ull << 20;  // recorded bytes, per side, over all connections
constexpr size_t kQueueCap = 16u << 20;        // bytes held per direction before the proxy stops reading
constexpr auto kConnectTimeout = std::chrono::seconds(10);
constexpr int kIdlePollMs = 50;

std::pair<std::string, std::string> splitHostPort(const std::string& hostPort)
{
    const size_t colon = hostPort.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == hostPort.size())
        throw Error("proxy: expected host:port, got \"" + hostPort + "\"");
    return {hostPort.substr(0, colon), hostPort.substr(colon + 1)};
}

void poke(int eventFd)
{
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(eventFd, &one, sizeof one);
}

void drain(int eventFd)
{
    uint64_t v;
    [[maybe_unused]] ssize_t n = ::read(eventFd, &v, sizeof v);
}

// Closes with a reset instead of a FIN.
void resetClose(int fd)
{
    if (fd < 0)
        return;
    linger l {1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(fd);
}

void noDelay(int fd)
{
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int pendingError(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return errno;
    return err;
}

} // namespace

struct TcpProxy::Connection {
    int client = -1;
    int wake = -1;              // eventfd: cut, stop and control changes
    std::atomic<bool> cut{false};
    std::atomic<bool> done{false};
    std::mutex mutex;           // guards recorded
    std::string recorded[2];    // [0]: what the client sent, [1]: what the server sent
    ~Connection()
    {
        if (wake >= 0)
            ::close(wake);
    }
};

TcpProxy::TcpProxy(std::string target, std::string listenHost)
    : m_target(std::move(target))
    , m_host(std::move(listenHost))
{
    auto [host, port] = splitHostPort(m_target);
    addrinfo hints {};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0 || !res)
        throw Error("proxy: cannot resolve " + m_target + ": " + ::gai_strerror(rc));
    m_targetAddress.assign(reinterpret_cast<char*>(res->ai_addr), reinterpret_cast<char*>(res->ai_addr) + res->ai_addrlen);
    ::freeaddrinfo(res);

    sockaddr_in a {};
    a.sin_family = AF_INET;
    if (::inet_pton(AF_INET, m_host.c_str(), &a.sin_addr) != 1)
        throw Error("proxy: the listening host must be an IPv4 address, got \"" + m_host + "\"");
    m_listen = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (m_listen < 0)
        throw Error(std::string("proxy: socket: ") + std::strerror(errno));
    if (::bind(m_listen, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(m_listen, 128) != 0) {
        const int err = errno;
        ::close(m_listen);
        throw Error("proxy: cannot listen on " + m_host + ": " + std::strerror(err));
    }
    socklen_t len = sizeof a;
    ::getsockname(m_listen, reinterpret_cast<sockaddr*>(&a), &len);
    m_port = ntohs(a.sin_port);
    m_wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (m_wake < 0) {
        ::close(m_listen);
        throw Error(std::string("proxy: eventfd: ") + std::strerror(errno));
    }
    // Started here, so it (and the connection threads it starts) shares this thread's network namespace.
    m_acceptor = std::thread([this] { acceptLoop(); });
}

TcpProxy::~TcpProxy()
{
    m_stop = true;
    poke(m_wake);
    m_acceptor.join();
    wakeAll();
    // Nothing adds threads now: the acceptor is gone.
    for (auto& t : m_threads)
        t.join();
    ::close(m_listen);
    ::close(m_wake);
}

std::string TcpProxy::address() const { return m_host + ":" + std::to_string(m_port); }

void TcpProxy::setDelay(std::chrono::milliseconds oneWay)
{
    m_delayMs = std::max<int64_t>(0, oneWay.count());
    wakeAll();
}

void TcpProxy::setBandwidth(uint64_t bytesPerSecond)
{
    m_bandwidth = bytesPerSecond;
    wakeAll();
}

void TcpProxy::stall(bool on)
{
    m_stalled = on;
    wakeAll();
}

void TcpProxy::refuse(bool on) { m_refusing = on; }

uint64_t TcpProxy::bytesForwarded() const { return m_forwarded; }

size_t TcpProxy::connections() const
{
    std::lock_guard lock(m_mutex);
    return m_connections.size();
}

void TcpProxy::wakeAll()
{
    std::lock_guard lock(m_mutex);
    for (auto& c : m_connections)
        if (!c->done)
            poke(c->wake);
}

void TcpProxy::cut()
{
    std::vector<std::shared_ptr<Connection>> open;
    {
        std::lock_guard lock(m_mutex);
        for (auto& c : m_connections)
            if (!c->done) {
                c->cut = true;
                poke(c->wake);
                open.push_back(c);
            }
    }
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    for (auto& c : open)
        while (!c->done && Clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

std::vector<std::string> TcpProxy::clientBytes() const
{
    std::lock_guard lock(m_mutex);
    std::vector<std::string> out;
    for (auto& c : m_connections) {
        std::lock_guard l(c->mutex);
        out.push_back(c->recorded[0]);
    }
    return out;
}

std::vector<std::string> TcpProxy::serverBytes() const
{
    std::lock_guard lock(m_mutex);
    std::vector<std::string> out;
    for (auto& c : m_connections) {
        std::lock_guard l(c->mutex);
        out.push_back(c->recorded[1]);
    }
    return out;
}

void TcpProxy::acceptLoop()
{
    while (!m_stop) {
        pollfd p[2] = {{m_listen, POLLIN, 0}, {m_wake, POLLIN, 0}};
        if (::poll(p, 2, -1) <= 0)
            continue;
        if (p[1].revents)
            drain(m_wake);
        for (;;) {
            const int client = ::accept4(m_listen, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (client < 0)
                break;
            if (m_refusing || m_stop) {
                resetClose(client);
                continue;
            }
            auto c = std::make_shared<Connection>();
            c->client = client;
            c->wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
            if (c->wake < 0) {
                resetClose(client);
                continue;
            }
            std::lock_guard lock(m_mutex);
            m_connections.push_back(c);
            m_threads.emplace_back([this, c] { serve(c); });
        }
    }
}

// One connection, both directions, on one thread: dial the target, then read what arrives on either side,
// hold each chunk for the delay (and while stalled), and write it on no faster than the bandwidth cap.
void TcpProxy::serve(const std::shared_ptr<Connection>& c)
{
    const int client = c->client;
    int server = -1;
    auto finish = [&](bool abrupt) {
        if (abrupt) {
            resetClose(client);
            resetClose(server);
        } else {
            ::close(client);
            ::close(server);
        }
        c->done = true;
    };
    auto stopping = [&] { return m_stop.load() || c->cut.load(); };

    // Dial without blocking, so that a cut or the destructor can interrupt a slow connect.
    const auto* target = reinterpret_cast<const sockaddr*>(m_targetAddress.data());
    server = ::socket(target->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (server < 0)
        return finish(true);
    if (::connect(server, target, static_cast<socklen_t>(m_targetAddress.size())) != 0) {
        if (errno != EINPROGRESS)
            return finish(true);
        const auto deadline = Clock::now() + kConnectTimeout;
        for (;;) {
            if (stopping() || Clock::now() >= deadline)
                return finish(true);
            pollfd p[2] = {{server, POLLOUT, 0}, {c->wake, POLLIN, 0}};
            if (::poll(p, 2, kIdlePollMs) <= 0)
                continue;
            if (p[1].revents)
                drain(c->wake);
            if (p[0].revents) {
                if (pendingError(server) != 0)
                    return finish(true);
                break;
            }
        }
    }
    noDelay(client);
    noDelay(server);

    struct Direction {
        int in = -1, out = -1;
        std::deque<std::pair<Clock::time_point, std::string>> queue; // chunks, with when they were read
        size_t offset = 0;                                           // already written of the front chunk
        size_t queued = 0;
        bool eof = false;     // `in` sent its FIN
        bool shut = false;    // ... and it was passed on (shutdown of `out`)
        bool wantOut = false; // `out` was full
        double budget = 0;    // bytes the bandwidth cap allows now
        Clock::time_point refill = Clock::now();
    };
    Direction dir[2];
    dir[0].in = client, dir[0].out = server;
    dir[1].in = server, dir[1].out = client;
    std::vector<char> buf(1 << 16);

    // Writes what is due in one direction; false when the connection broke.
    auto flush = [&](Direction& d, Clock::time_point now) {
        d.wantOut = false;
        if (d.shut)
            return true;
        const uint64_t cap = m_bandwidth;
        if (cap) {
            const double burst = std::max(static_cast<double>(cap) / 20.0, 1500.0);
            d.budget = std::min(d.budget + static_cast<double>(cap) * std::chrono::duration<double>(now - d.refill).count(), burst);
        }
        d.refill = now;
        const auto delay = std::chrono::milliseconds(m_delayMs.load());
        while (!d.queue.empty() && !m_stalled) {
            auto& [readAt, chunk] = d.queue.front();
            if (now < readAt + delay)
                break;
            size_t n = chunk.size() - d.offset;
            if (cap)
                n = std::min(n, static_cast<size_t>(std::max(0.0, std::floor(d.budget))));
            if (n == 0)
                break;
            const ssize_t w = ::send(d.out, chunk.data() + d.offset, n, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    d.wantOut = true;
                    break;
                }
                return false;
            }
            if (cap)
                d.budget -= static_cast<double>(w);
            m_forwarded += static_cast<uint64_t>(w);
            d.offset += static_cast<size_t>(w);
            d.queued -= static_cast<size_t>(w);
            if (d.offset == chunk.size()) {
                d.queue.pop_front();
                d.offset = 0;
            }
        }
        if (d.eof && d.queue.empty()) {
            ::shutdown(d.out, SHUT_WR);
            d.shut = true;
        }
        return true;
    };

    // How long poll may sleep before something falls due (a delayed chunk, bandwidth budget).
    auto nextWake = [&](Clock::time_point now) {
        int ms = kIdlePollMs;
        if (m_stalled)
            return ms;
        const uint64_t cap = m_bandwidth;
        const auto delay = std::chrono::milliseconds(m_delayMs.load());
        for (auto& d : dir) {
            if (d.shut || d.queue.empty() || d.wantOut)
                continue;
            const auto due = d.queue.front().first + delay;
            if (due > now) {
                ms = std::min<int>(ms, static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(due - now).count()));
            } else if (cap) {
                const double want = std::min<double>(static_cast<double>(d.queue.front().second.size() - d.offset),
                                                     std::max(1.0, static_cast<double>(cap) / 100.0));
                ms = std::min<int>(ms, static_cast<int>(std::ceil(1000.0 * (want - d.budget) / static_cast<double>(cap))));
            } else {
                ms = 0;
            }
        }
        return std::max(ms, 0);
    };

    for (;;) {
        if (stopping())
            return finish(true);
        const auto now = Clock::now();
        if (!flush(dir[0], now) || !flush(dir[1], now))
            return finish(true);
        if (dir[0].shut && dir[1].shut)
            return finish(false);

        // Socket i is read by dir[i] and written by dir[1 - i]; once both are over, it is left out.
        pollfd p[3];
        p[0] = {c->wake, POLLIN, 0};
        for (int i = 0; i < 2; ++i) {
            const Direction& reader = dir[i];
            const Direction& writer = dir[1 - i];
            short events = 0;
            if (!reader.eof && reader.queued < kQueueCap)
                events |= POLLIN;
            if (writer.wantOut)
                events |= POLLOUT;
            p[1 + i] = {reader.eof && writer.shut ? -1 : reader.in, events, 0};
        }
        if (::poll(p, 3, nextWake(now)) < 0 && errno != EINTR)
            return finish(true);
        if (p[0].revents)
            drain(c->wake);
        for (int i = 0; i < 2; ++i) {
            Direction& reader = dir[i];
            const short r = p[1 + i].revents;
            if (r & POLLERR) {
                if (pendingError(reader.in) != 0)
                    return finish(true);
            }
            if (reader.eof) {
                // Nothing more to read; a hang-up now means the peer is gone (a reset): pass it on.
                if ((r & POLLHUP) && !dir[1 - i].shut)
                    return finish(true);
                continue;
            }
            if (!(r & (POLLIN | POLLHUP | POLLERR)) || reader.queued >= kQueueCap)
                continue;
            const ssize_t n = ::recv(reader.in, buf.data(), buf.size(), MSG_DONTWAIT);
            if (n > 0) {
                const uint64_t prev = m_recorded[i].fetch_add(static_cast<uint64_t>(n));
                if (prev < kRecordCap) {
                    const size_t take = static_cast<size_t>(std::min<uint64_t>(static_cast<uint64_t>(n), kRecordCap - prev));
                    std::lock_guard lock(c->mutex);
                    c->recorded[i].append(buf.data(), take);
                }
                reader.queue.emplace_back(Clock::now(), std::string(buf.data(), static_cast<size_t>(n)));
                reader.queued += static_cast<size_t>(n);
            } else if (n == 0) {
                reader.eof = true;
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                return finish(true);
            }
        }
    }
}

} // namespace together::test
