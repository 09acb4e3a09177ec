// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <sys/types.h>

namespace together {

// What a machine is, read from the kernel (Linux): for Hello replies and discovery beacons.
std::string hostName();
uint32_t coreCount();             // CPUs this process may run on
uint64_t memoryTotalBytes();      // MemTotal
uint64_t memoryAvailableBytes();  // MemAvailable
// The CPU features that matter for speed: avx2, fma, avx512f, avx512_bf16, amx_bf16.
std::vector<std::string> cpuFlags();
uint64_t residentBytes(pid_t pid);     // VmRSS, 0 when gone
uint64_t peakResidentBytes(pid_t pid); // VmHWM, 0 when gone

struct NetInterface {
    std::string name;
    std::string address;   // IPv4, dotted
    std::string broadcast; // IPv4 subnet broadcast address, "" when the interface has none
    std::string netmask;
    bool loopback = false;
    bool up = false;
};
// Every IPv4 address of the machine, by interface.
std::vector<NetInterface> netInterfaces();
// The interfaces discovery uses: `names` (comma-separated) when given, else every interface that is up, not
// loopback and has a broadcast address. "none" selects none. Throws Error naming an unknown interface.
std::vector<NetInterface> discoveryInterfaces(const std::string& names);

// Whether `ip` lies in the subnet of `iface` (address and netmask).
bool onSubnet(const NetInterface& iface, const std::string& ip);

// "1.5 GiB", "512 MiB".
std::string formatBytes(uint64_t bytes);

} // namespace together
