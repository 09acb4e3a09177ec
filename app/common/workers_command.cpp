// SPDX-License-Identifier: MIT
#include "common/workers_command.h"

#include "base/cli_args.h"
#include "base/error.h"
#include "base/host_info.h"
#include "master/survey.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "net/discovery.h"
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <thread>

namespace together {

namespace {

nlohmann::json toJson(const DiscoveredWorker& w)
{
    nlohmann::json j;
    j["id"] = w.id;
    j["address"] = w.address;
    j["addresses"] = w.addresses;
    j["host"] = w.host;
    j["state"] = workerStateName(w.state);
    j["reason"] = w.reason;
    j["cores"] = w.cores;
    j["memory_total_bytes"] = w.memoryTotalBytes;
    j["memory_free_bytes"] = w.memoryFreeBytes;
    j["max_threads"] = w.maxThreads;
    j["max_memory_bytes"] = w.maxMemoryBytes;
    j["read_gbps"] = w.readGbps ? nlohmann::json(*w.readGbps) : nlohmann::json(nullptr);
    j["calibrating"] = w.calibrating;
    j["decode_gbps"] = w.decodeGbps;
    j["protocol"] = w.protocol;
    j["rtt_ms"] = w.rttMs >= 0 ? nlohmann::json(w.rttMs) : nlohmann::json(nullptr);
    j["key_fingerprint"] = w.keyFingerprint;
    j["software_version"] = w.softwareVersion;
    j["manual"] = w.manual;
    return j;
}

std::string textLine(const DiscoveredWorker& w)
{
    char rtt[32] = "-";
    if (w.rttMs >= 0)
        std::snprintf(rtt, sizeof rtt, "%.2f ms", w.rttMs);
    std::string memory = w.memoryTotalBytes ? (w.memoryFreeBytes ? formatBytes(w.memoryFreeBytes) + " free of " : std::string()) +
                                                  formatBytes(w.memoryTotalBytes)
                                            : "-";
    std::string donated = w.maxThreads ? std::to_string(w.maxThreads) + " threads, " +
                                             (w.maxMemoryBytes ? formatBytes(w.maxMemoryBytes) : std::string("free memory"))
                                       : "-";
    std::string speed = w.calibrating ? "calibrating" : "-";
    if (w.readGbps) {
        char b[64];
        std::snprintf(b, sizeof b, "%.1f GB/s", *w.readGbps);
        speed = b;
    }
    char line[600];
    std::snprintf(line, sizeof line, "%-16s %-22s %-11s %5s  %-26s %-26s %-9s %-12s %s", w.host.empty() ? "?" : w.host.c_str(),
                  w.address.empty() ? "-" : w.address.c_str(), workerStateName(w.state), w.cores ? std::to_string(w.cores).c_str() : "-",
                  memory.c_str(), donated.c_str(), rtt, speed.c_str(), w.reason.c_str());
    return line;
}

} // namespace

std::string masterKeyFile(const std::string& given)
{
    if (!given.empty())
        return given;
    const std::string stored = defaultKeyFile();
    if (!std::filesystem::exists(stored))
        throw Error("no cluster key: give --key-file FILE, or make one with `together-cli keygen --save` (stored in " + stored + ")");
    return stored;
}

int runWorkers(const std::vector<std::string>& args)
{
    CliArgs a(args, {{"key-file"}, {"wait"}, {"json", false}, {"watch", false}, {"probe", false}, {"add", true, true}, {"forget", true, true}, {"discovery-port"},
                     {"discovery-interfaces"}, {"no-broadcast", false}});
    for (auto& f : a.all("forget"))
        forgetWorker(f);
    for (auto& w : a.all("add"))
        rememberWorker(w);
    const double wait = a.getDouble("wait", a.has("watch") ? 1e9 : 2.0);
    if (!(wait >= 0))
        throw Error("--wait takes seconds (0 or more)");
    const bool json = a.has("json");
    const bool watch = a.has("watch");

    auto credentials = std::make_shared<const Credentials>(ClusterKey::fromFile(masterKeyFile(a.get("key-file"))), newMasterIdentity());
    Discovery::Options o;
    const int port = a.getInt("discovery-port", kDefaultDiscoveryPort);
    if (port < 1 || port > 65535)
        throw Error("--discovery-port takes a UDP port (1-65535)");
    o.port = static_cast<uint16_t>(port);
    o.interfaces = a.get("discovery-interfaces");
    o.broadcast = !a.has("no-broadcast") && o.interfaces != "none";
    o.manual = rememberedWorkers();
    std::mutex printing;
    Discovery::Listener listener;
    if (watch)
        listener = [&](const DiscoveredWorker& w) {
            std::lock_guard lock(printing);
            std::printf("%s\n", json ? toJson(w).dump().c_str() : textLine(w).c_str());
            std::fflush(stdout);
        };
    if (o.broadcast) {
        std::string where;
        for (auto& i : discoveryInterfaces(o.interfaces))
            where += (where.empty() ? "" : ", ") + i.name;
        std::fprintf(stderr, "together: discovering workers on UDP %d (%s), key fingerprint %s\n", port,
                     where.empty() ? "no interface with a broadcast address" : where.c_str(), credentials->keyFingerprint().c_str());
    }
    Discovery discovery(credentials, o, listener);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(std::min(wait, 1e9) * 1000));
    while (std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(deadline - std::chrono::steady_clock::now(),
                                                                                    std::chrono::milliseconds(100)));
    if (watch)
        return 0;
    discovery.settle(std::chrono::steady_clock::now() + o.helloTimeout + std::chrono::milliseconds(500));
    auto workers = discovery.workers();
    std::sort(workers.begin(), workers.end(), [](const DiscoveredWorker& x, const DiscoveredWorker& y) {
        return std::tie(x.host, x.address) < std::tie(y.host, y.address);
    });
    if (json) {
        for (auto& w : workers)
            std::printf("%s\n", toJson(w).dump().c_str());
    } else {
        std::printf("%-16s %-22s %-11s %5s  %-26s %-26s %-9s %-12s %s\n", "HOST", "ADDRESS", "STATE", "CORES", "MEMORY", "DONATED", "RTT", "READ",
                    "REASON");
        for (auto& w : workers)
            std::printf("%s\n", textLine(w).c_str());
    }
    if (workers.empty())
        std::fprintf(stderr, "together: no workers found. Start `together-worker serve` on each machine with this cluster key, "
                             "or add one that broadcast cannot reach with --add HOST:PORT.\n");
    if (a.has("probe")) {
        // Every pair of the ready workers, over the pipeline's stream and the all-reduce, as placement sees them.
        std::vector<std::string> ready;
        for (auto& w : workers)
            if (w.state == WorkerState::Ready && !w.address.empty())
                ready.push_back(w.address);
        if (ready.size() < 2) {
            std::fprintf(stderr, "together: --probe needs at least two ready workers (found %zu)\n", ready.size());
            return workers.empty() ? 0 : 1;
        }
        SurveyOptions so;
        so.progress = [](const std::string& line) { std::fprintf(stderr, "together: %s\n", line.c_str()); };
        const auto links = probeLinks(*credentials, ready, so);
        if (json) {
            for (auto& l : links)
                std::printf("%s\n", nlohmann::json({{"a", l.a}, {"b", l.b}, {"stream_alpha_us", l.stream.alphaUs}, {"stream_beta_mbps", l.stream.betaMBps},
                                                     {"all_reduce_alpha_us", l.hasAllReduce ? nlohmann::json(l.allReduce.alphaUs) : nlohmann::json(nullptr)},
                                                     {"all_reduce_beta_mbps", l.hasAllReduce ? nlohmann::json(l.allReduce.betaMBps) : nlohmann::json(nullptr)},
                                                     {"error", l.error}})
                                            .dump()
                                            .c_str());
        } else {
            std::printf("\n%s", formatLinks(links).c_str());
        }
    }
    return 0;
}

std::vector<WorkerLogLine> fetchWorkerLog(const Credentials& credentials, const std::string& address, uint32_t maxLines, uint64_t after)
{
    auto stub = v1::WorkerControl::NewStub(openChannel(credentials, address));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::RecentLogRequest req;
    req.set_after_sequence(after);
    req.set_max_lines(maxLines);
    v1::RecentLogReply rep;
    grpc::Status s = stub->RecentLog(&ctx, req, &rep);
    if (!s.ok())
        throw Error(describeRpcError(s, address));
    std::vector<WorkerLogLine> out;
    for (auto& l : rep.lines()) {
        std::time_t t = static_cast<std::time_t>(l.unix_ms() / 1000);
        std::tm tm {};
        ::localtime_r(&t, &tm);
        char stamp[32];
        std::strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
        out.push_back({l.sequence(), std::string(stamp) + " " + l.text()});
    }
    return out;
}

int runWorkerLog(const std::vector<std::string>& args)
{
    if (args.empty() || args[0].rfind("--", 0) == 0)
        throw Error("usage: together-cli worker-log HOST:PORT [--lines N] [--follow] [--key-file K]");
    std::string address = args[0];
    CliArgs a(std::vector<std::string>(args.begin() + 1, args.end()), {{"key-file"}, {"lines"}, {"follow", false}});
    address = normalizeWorkerAddress(address);
    Credentials credentials(ClusterKey::fromFile(masterKeyFile(a.get("key-file"))), newMasterIdentity());
    uint64_t after = 0;
    uint32_t lines = static_cast<uint32_t>(std::clamp(a.getInt("lines", 50), 1, 1000));
    while (true) {
        for (auto& l : fetchWorkerLog(credentials, address, lines, after)) {
            std::printf("%s\n", l.text.c_str());
            after = l.sequence;
        }
        std::fflush(stdout);
        if (!a.has("follow"))
            return 0;
        lines = 1000;
        std::this_thread::sleep_for(std::chrono::seconds(1));
    }
}

} // namespace together
