// SPDX-License-Identifier: MIT
#include "packet_capture.h"

#include "base/error.h"

#include <cerrno>
#include <cstring>

#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace together::test {

namespace {
constexpr size_t kCap = 512u << 20;
constexpr size_t kMaxFrame = 1u << 18; // above the 64 KiB of lo and of GSO frames
} // namespace

bool PacketCapture::available(std::string* why)
{
    const int fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        if (why)
            *why = std::string("cannot open a packet socket (needs CAP_NET_RAW): ") + std::strerror(errno);
        return false;
    }
    ::close(fd);
    return true;
}

PacketCapture::PacketCapture(const std::string& interface)
    : m_frame(kMaxFrame, '\0')
{
    const unsigned index = ::if_nametoindex(interface.c_str());
    if (index == 0)
        throw Error("packet capture: no interface " + interface + " here");
    // Protocol 0 receives nothing until bound: no frame of another interface gets in before bind().
    m_fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (m_fd < 0)
        throw Error(std::string("packet capture: ") + std::strerror(errno));
    int big = 64 << 20;
    if (::setsockopt(m_fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) != 0)
        ::setsockopt(m_fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    sockaddr_ll a {};
    a.sll_family = AF_PACKET;
    a.sll_protocol = htons(ETH_P_ALL);
    a.sll_ifindex = static_cast<int>(index);
    if (::bind(m_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        const int err = errno;
        ::close(m_fd);
        throw Error("packet capture: cannot bind to " + interface + ": " + std::strerror(err));
    }
    m_thread = std::thread([this] {
        while (!m_stop)
            readFrame(true);
        while (readFrame(false)) // what was queued before stop()
            ;
    });
}

PacketCapture::~PacketCapture()
{
    stop();
    ::close(m_fd);
}

// Takes one frame in; false when there was none (after up to 50 ms when `wait`).
bool PacketCapture::readFrame(bool wait)
{
    if (wait) {
        pollfd p {m_fd, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0)
            return false;
    }
    const ssize_t n = ::recv(m_fd, m_frame.data(), m_frame.size(), MSG_DONTWAIT);
    if (n <= 0)
        return false;
    std::lock_guard lock(m_mutex);
    if (m_bytes.size() + static_cast<size_t>(n) <= kCap)
        m_bytes.append(m_frame.data(), static_cast<size_t>(n));
    return true;
}

void PacketCapture::stop()
{
    std::lock_guard lock(m_stopMutex);
    if (m_joined)
        return;
    m_stop = true;
    m_thread.join();
    m_joined = true;
}

std::string PacketCapture::bytes() const
{
    std::lock_guard lock(m_mutex);
    return m_bytes;
}

uint64_t PacketCapture::size() const
{
    std::lock_guard lock(m_mutex);
    return m_bytes.size();
}

bool PacketCapture::contains(std::string_view needle) const
{
    std::lock_guard lock(m_mutex);
    return std::string_view(m_bytes).find(needle) != std::string_view::npos;
}

} // namespace together::test
