// SPDX-License-Identifier: MIT
#include "base/host_info.h"

#include "base/error.h"

#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <unistd.h>

namespace together {

namespace {

uint64_t meminfo(const std::string& key)
{
    std::ifstream in("/proc/meminfo");
    std::string k, unit;
    uint64_t v = 0;
    while (in >> k >> v >> unit)
        if (k == key)
            return v * 1024;
    return 0;
}

uint64_t procStatus(pid_t pid, const std::string& key)
{
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string k;
    while (in >> k) {
        if (k == key) {
            uint64_t kb = 0;
            in >> kb;
            return kb * 1024;
        }
        in.ignore(4096, '\n');
    }
    return 0;
}

} // namespace

std::string hostName()
{
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    return host;
}

uint32_t coreCount()
{
    cpu_set_t set;
    if (::sched_getaffinity(0, sizeof set, &set) == 0)
        return static_cast<uint32_t>(std::max(1, CPU_COUNT(&set)));
    return std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN));
}

uint64_t memoryTotalBytes() { return meminfo("MemTotal:"); }
uint64_t memoryAvailableBytes() { return meminfo("MemAvailable:"); }

std::vector<std::string> cpuFlags()
{
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    std::vector<std::string> out;
    while (std::getline(in, line))
        if (line.rfind("flags", 0) == 0) {
            std::istringstream words(line.substr(line.find(':') + 1));
            std::set<std::string> have;
            for (std::string w; words >> w;)
                have.insert(w);
            for (const char* f : {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"})
                if (have.count(f))
                    out.push_back(f);
            break;
        }
    return out;
}

uint64_t residentBytes(pid_t pid) { return procStatus(pid, "VmRSS:"); }
uint64_t peakResidentBytes(pid_t pid) { return procStatus(pid, "VmHWM:"); }

std::vector<NetInterface> netInterfaces()
{
    std::vector<NetInterface> out;
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0)
        return out;
    for (ifaddrs* i = list; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
            continue;
        NetInterface n;
        n.name = i->ifa_name;
        char buf[INET_ADDRSTRLEN];
        ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof buf);
        n.address = buf;
        n.loopback = (i->ifa_flags & IFF_LOOPBACK) != 0;
        n.up = (i->ifa_flags & IFF_UP) != 0 && (i->ifa_flags & IFF_RUNNING) != 0;
        if (i->ifa_netmask && i->ifa_netmask->sa_family == AF_INET) {
            ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_netmask)->sin_addr, buf, sizeof buf);
            n.netmask = buf;
        }
        if ((i->ifa_flags & IFF_BROADCAST) && i->ifa_broadaddr && i->ifa_broadaddr->sa_family == AF_INET) {
            ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_broadaddr)->sin_addr, buf, sizeof buf);
            n.broadcast = buf;
        }
        out.push_back(n);
    }
    ::freeifaddrs(list);
    return out;
}

std::vector<NetInterface> discoveryInterfaces(const std::string& names)
{
    std::vector<NetInterface> all = netInterfaces(), out;
    if (names == "none")
        return out;
    if (names.empty()) {
        for (auto& n : all)
            if (n.up && !n.loopback && !n.broadcast.empty())
                out.push_back(n);
        return out;
    }
    std::stringstream ss(names);
    for (std::string name; std::getline(ss, name, ',');) {
        if (name.empty())
            continue;
        bool found = false;
        for (auto& n : all)
            if (n.name == name) {
                found = true;
                if (n.broadcast.empty())
                    throw Error("--discovery-interfaces: " + name + " has no IPv4 broadcast address (loopback or point-to-point)");
                out.push_back(n);
            }
        if (!found)
            throw Error("--discovery-interfaces: this machine has no interface " + name + " with an IPv4 address");
    }
    return out;
}

bool onSubnet(const NetInterface& iface, const std::string& ip)
{
    in_addr a {}, mine {}, mask {};
    if (::inet_pton(AF_INET, ip.c_str(), &a) != 1 || ::inet_pton(AF_INET, iface.address.c_str(), &mine) != 1 ||
        ::inet_pton(AF_INET, iface.netmask.c_str(), &mask) != 1)
        return false;
    return (a.s_addr & mask.s_addr) == (mine.s_addr & mask.s_addr);
}

std::string formatBytes(uint64_t bytes)
{
    char buf[32];
    if (bytes >= (1ull << 30))
        std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(bytes) / (1ull << 30));
    else
        std::snprintf(buf, sizeof buf, "%.0f MiB", static_cast<double>(bytes) / (1ull << 20));
    return buf;
}

} // namespace together
