// SPDX-License-Identifier: MIT
#include "wire/beacon.h"

#include "base/error.h"
#include "base/host_info.h"
#include "proto/together.pb.h"

#include <cerrno>
#include <cstring>

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace together {

namespace {

constexpr uint32_t kMagic = 0x48544754; // "TGTH"

// A unicast IPv4 address another machine could be reached at.
bool isUnicastIpv4(const std::string& s)
{
    in_addr a {};
    if (s.size() >= INET_ADDRSTRLEN || ::inet_pton(AF_INET, s.c_str(), &a) != 1)
        return false;
    const uint32_t v = ntohl(a.s_addr);
    return v != 0 && (v >> 24) != 127 && (v >> 28) != 0xe && v != 0xffffffffu && (v >> 28) != 0xf;
}

// Printable ASCII only: names end up on terminals, and C1 controls or bidi overrides must not.
bool printable(const std::string& s, size_t maxLen)
{
    if (s.size() > maxLen)
        return false;
    for (unsigned char c : s)
        if (c < 0x20 || c > 0x7e)
            return false;
    return true;
}

} // namespace

std::string encodeBeacon(const BeaconInfo& b)
{
    v1::DiscoveryPacket p;
    p.set_magic(kMagic);
    auto* m = p.mutable_beacon();
    m->set_worker_id(b.workerId);
    m->set_hostname(b.hostname.substr(0, kMaxBeaconNameBytes));
    for (size_t i = 0; i < b.addresses.size() && i < kMaxBeaconAddresses; ++i)
        m->add_addresses(b.addresses[i]);
    m->set_grpc_port(b.grpcPort);
    m->set_protocol_version(b.protocol);
    m->set_cores(b.cores);
    m->set_memory_total_bytes(b.memoryTotalBytes);
    m->set_key_fingerprint(b.keyFingerprint);
    m->set_software_version(b.softwareVersion.substr(0, kMaxBeaconVersionBytes));
    return p.SerializeAsString();
}

std::string encodeProbe()
{
    v1::DiscoveryPacket p;
    p.set_magic(kMagic);
    p.mutable_probe()->set_padding(std::string(kMaxDiscoveryPacket - 16, '\0'));
    std::string s = p.SerializeAsString();
    return s;
}

DiscoveryMessage decodeDiscovery(const void* data, size_t size)
{
    DiscoveryMessage out;
    if (size == 0 || size > kMaxDiscoveryPacket)
        return out;
    v1::DiscoveryPacket p;
    if (!p.ParseFromArray(data, static_cast<int>(size)) || p.magic() != kMagic)
        return out;
    if (p.has_probe()) {
        if (size >= kMinProbeBytes)
            out.kind = DiscoveryMessage::Kind::Probe;
        return out;
    }
    if (!p.has_beacon())
        return out;
    const auto& m = p.beacon();
    BeaconInfo& b = out.beacon;
    b.workerId = m.worker_id();
    b.hostname = m.hostname();
    b.grpcPort = static_cast<uint16_t>(m.grpc_port());
    b.protocol = m.protocol_version();
    b.cores = m.cores();
    b.memoryTotalBytes = m.memory_total_bytes();
    b.keyFingerprint = m.key_fingerprint();
    b.softwareVersion = m.software_version();
    const bool hexFingerprint = b.keyFingerprint.size() == 16 && b.keyFingerprint.find_first_not_of("0123456789abcdef") == std::string::npos;
    if (b.workerId.empty() || !printable(b.workerId, kMaxBeaconNameBytes) || !printable(b.hostname, kMaxBeaconNameBytes) ||
        !hexFingerprint || !printable(b.softwareVersion, kMaxBeaconVersionBytes) || m.grpc_port() == 0 ||
        m.grpc_port() > 65535 || m.addresses_size() > static_cast<int>(kMaxBeaconAddresses))
        return out;
    for (const auto& a : m.addresses()) {
        if (!isUnicastIpv4(a))
            return out;
        b.addresses.push_back(a);
    }
    out.kind = DiscoveryMessage::Kind::Beacon;
    return out;
}

UdpSocket::UdpSocket(uint16_t port)
{
    m_fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (m_fd < 0)
        throw Error(std::string("discovery: cannot open a UDP socket: ") + std::strerror(errno));
    int on = 1;
    ::setsockopt(m_fd, SOL_SOCKET, SO_BROADCAST, &on, sizeof on);
    ::setsockopt(m_fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on);
    if (port != 0)
        ::setsockopt(m_fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    sockaddr_in a {};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (::bind(m_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        const int e = errno;
        ::close(m_fd);
        throw Error("discovery: cannot bind UDP port " + std::to_string(port) + ": " + std::strerror(e));
    }
    socklen_t len = sizeof a;
    ::getsockname(m_fd, reinterpret_cast<sockaddr*>(&a), &len);
    m_port = ntohs(a.sin_port);
}

UdpSocket::~UdpSocket()
{
    if (m_fd >= 0)
        ::close(m_fd);
}

void UdpSocket::sendTo(const std::string& ip, uint16_t port, const std::string& bytes)
{
    sockaddr_in a {};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    if (::inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1)
        return;
    // Errors (no route while an interface comes up, a full buffer) are not fatal: the next beacon retries.
    (void)::sendto(m_fd, bytes.data(), bytes.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&a), sizeof a);
}

bool UdpSocket::receive(Received& out, std::chrono::milliseconds timeout)
{
    pollfd p {m_fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0)
        return false;
    char buf[kMaxDiscoveryPacket + 1];
    char control[256];
    sockaddr_in from {};
    iovec iov {buf, sizeof buf};
    msghdr msg {};
    msg.msg_name = &from;
    msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(m_fd, &msg, MSG_DONTWAIT);
    if (n < 0)
        return false;
    out.bytes.assign(buf, static_cast<size_t>(n));
    if (msg.msg_flags & MSG_TRUNC)
        out.bytes.clear(); // oversized: decodes as invalid
    char ip[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &from.sin_addr, ip, sizeof ip);
    out.sourceIp = ip;
    out.sourcePort = ntohs(from.sin_port);
    out.interfaceIndex = 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO)
            out.interfaceIndex = reinterpret_cast<in_pktinfo*>(CMSG_DATA(c))->ipi_ifindex;
    return true;
}

BeaconAnnouncer::BeaconAnnouncer(Options options)
    : m_options(std::move(options))
    , m_socket(m_options.port)
{
    discoveryInterfaces(m_options.interfaces); // an unknown interface name is an error now, not later
    m_thread = std::thread([this] { run(); });
}

BeaconAnnouncer::~BeaconAnnouncer()
{
    m_stop = true;
    m_thread.join();
}

void BeaconAnnouncer::run()
{
    using Clock = std::chrono::steady_clock;
    auto nextBeacon = Clock::now();
    double tokens = 20; // probe answers: a bucket of 20, refilled at 20 a second
    auto lastRefill = Clock::now();
    std::vector<NetInterface> chosen;
    std::string lastSet;
    while (!m_stop) {
        const auto now = Clock::now();
        if (now >= nextBeacon) {
            try {
                chosen = discoveryInterfaces(m_options.interfaces);
            } catch (const Error&) {
                chosen.clear(); // a named interface went away: announce nowhere until it returns
            }
            std::string set;
            for (auto& i : chosen)
                set += i.name + " " + i.broadcast + "; ";
            if (set != lastSet && m_options.log)
                m_options.log(chosen.empty() ? std::string("discovery: no interface to announce on")
                                             : "discovery: announcing on " + set.substr(0, set.size() - 2));
            lastSet = set;
            const std::string beacon = encodeBeacon(m_options.beacon());
            for (auto& i : chosen)
                m_socket.sendTo(i.broadcast, m_options.port, beacon);
            nextBeacon = now + std::chrono::seconds(1);
        }
        UdpSocket::Received r;
        auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(nextBeacon - Clock::now());
        if (!m_socket.receive(r, std::min(std::max(wait, std::chrono::milliseconds(1)), std::chrono::milliseconds(200))))
            continue;
        if (decodeDiscovery(r.bytes.data(), r.bytes.size()).kind != DiscoveryMessage::Kind::Probe)
            continue;
        bool onChosen = false;
        for (auto& i : chosen)
            onChosen = onChosen || static_cast<int>(::if_nametoindex(i.name.c_str())) == r.interfaceIndex;
        if (!onChosen)
            continue;
        const auto t = Clock::now();
        tokens = std::min(20.0, tokens + 20.0 * std::chrono::duration<double>(t - lastRefill).count());
        lastRefill = t;
        if (tokens < 1)
            continue;
        tokens -= 1;
        m_socket.sendTo(r.sourceIp, r.sourcePort, encodeBeacon(m_options.beacon()));
    }
}

} // namespace together
