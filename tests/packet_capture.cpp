// SPDX-License-Identifier: MIT
#include "tests/packet_capture.h"

#include "core/error.h"

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
}

bool PacketCapture::available(std::string* why)
{
    int fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (fd < 0) {
        if (why)
            *why = std::string("cannot open a packet socket (needs CAP_NET_RAW): ") + std::strerror(errno);
        return false;
    }
    ::close(fd);
    return true;
}

PacketCapture::PacketCapture(const std::string& interface)
{
    m_fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (m_fd < 0)
        throw Error(std::string("packet capture: ") + std::strerror(errno));
    sockaddr_ll a {};
    a.sll_family = AF_PACKET;
    a.sll_protocol = htons(ETH_P_ALL);
    a.sll_ifindex = static_cast<int>(::if_nametoindex(interface.c_str()));
    int big = 64 << 20;
    ::setsockopt(m_fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    if (a.sll_ifindex == 0 || ::bind(m_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(m_fd);
        throw Error("packet capture: cannot bind to " + interface);
    }
    m_thread = std::thread([this] {
        std::string frame(1 << 17, '\0');
        while (!m_stop) {
            pollfd p {m_fd, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0)
                continue;
            ssize_t n = ::recv(m_fd, frame.data(), frame.size(), MSG_DONTWAIT);
            if (n <= 0)
                continue;
            std::lock_guard lock(m_mutex);
            if (m_bytes.size() + static_cast<size_t>(n) <= kCap)
                m_bytes.append(frame.data(), static_cast<size_t>(n));
        }
    });
}

PacketCapture::~PacketCapture()
{
    stop();
    ::close(m_fd);
}

void PacketCapture::stop()
{
    if (m_stop.exchange(true))
        return;
    m_thread.join();
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
