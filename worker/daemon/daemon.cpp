// SPDX-License-Identifier: MIT
#include "daemon/daemon.h"

#include "base/error.h"
#include "base/files.h"
#include "base/hex.h"
#include "base/host_info.h"
#include "base/process.h"
#include "base/user_dirs.h"
#include "daemon/calibration.h"
#include "daemon/link_probe.h"
#include "daemon/service_log.h"
#include "daemon/shard_processes.h"
#include "engine/kv_store.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"
#include "wire/beacon.h"
#include "wire/checks.h"
#include "wire/protocol.h"


#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace together {

namespace {

std::string hostOf(const std::string& address) { return address.substr(0, address.rfind(':')); }

// The worker id: made once, kept in the state folder, so a daemon that restarts is the same worker.
std::string loadWorkerId(const std::string& dir)
{
    const std::string file = dir + "/worker-id";
    if (fs::exists(file)) {
        std::string id;
        std::ifstream(file) >> id;
        if (id.size() == 16 && id.find_first_not_of("0123456789abcdef") == std::string::npos)
            return id;
    }
    const std::string id = randomHex(8);
    atomicWrite(file, id + "\n");
    return id;
}

// One daemon per state folder: a second one would share its worker id and log. The lock file holds the pid of
// the daemon that has it, for the message a second one gives.
std::unique_ptr<FileLock> lockStateDir(const std::string& dir)
{
    const std::string file = dir + "/worker.lock";
    auto lock = FileLock::tryLock(file);
    if (!lock) {
        char pid[32] = {};
        std::ifstream(file).read(pid, sizeof pid - 1);
        throw Error("another together-worker (pid " + std::string(pid) + ") uses the state folder " + dir +
                    "; give each daemon on one machine its own --state-dir");
    }
    const std::string me = std::to_string(::getpid());
    if (::ftruncate(lock->fd(), 0) == 0 && ::pwrite(lock->fd(), me.data(), me.size(), 0) < 0) {
    }
    return lock; // held for the life of the daemon
}

std::vector<std::string> machineAddresses(const std::string& listenHost)
{
    if (listenHost != "0.0.0.0" && listenHost != "::" && listenHost != "[::]")
        return {listenHost};
    std::vector<std::string> out;
    for (auto& i : netInterfaces())
        if (!i.loopback && i.up)
            out.push_back(i.address);
    return out;
}

class DaemonService final : public v1::WorkerControl::Service {
public:
    DaemonService(const Credentials& credentials, std::string workerId, std::string listenHost, ShardProcesses& shards, ServiceLog& log,
                  KvStoreService& store)
        : m_credentials(credentials)
        , m_workerId(std::move(workerId))
        , m_listenHost(std::move(listenHost))
        , m_shards(shards)
        , m_log(log)
        , m_store(store)
    {
    }

    void setPort(int port) { m_port = port; }
    void setCalibrating(bool on)
    {
        std::lock_guard lock(m_calibrationMutex);
        m_calibrating = on;
    }
    void setCalibration(const v1::MachineCalibration& c)
    {
        std::lock_guard lock(m_calibrationMutex);
        m_calibration = c;
        m_calibrating = false;
    }

    grpc::Status Hello(grpc::ServerContext*, const v1::HelloRequest* req, v1::HelloReply* rep) override
    {
        rep->set_protocol_version(kProtocolVersion);
        if (req->protocol_version() != kProtocolVersion)
            return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                "protocol version mismatch: the master speaks version " + std::to_string(req->protocol_version()) +
                                    ", this worker speaks version " + std::to_string(kProtocolVersion) + "; update one of them");
        rep->set_worker_id(m_workerId);
        rep->set_hostname(hostName());
        rep->set_cores(coreCount());
        rep->set_free_memory_bytes(memoryAvailableBytes());
        rep->set_total_memory_bytes(memoryTotalBytes());
        for (auto& f : cpuFlags())
            rep->add_cpu_flags(f);
        rep->set_software_version(kSoftwareVersion);
        rep->set_max_threads(m_shards.options().maxThreads);
        rep->set_max_memory_bytes(m_shards.options().maxMemoryBytes);
        for (auto& l : m_shards.launches()) {
            auto* a = rep->add_launches();
            a->set_launch_id(l.id);
            a->set_master(l.master);
            a->set_shards(l.shards);
            a->set_threads(l.threads);
            a->set_memory_bytes(l.memoryBytes);
        }
        for (auto& a : machineAddresses(m_listenHost))
            rep->add_addresses(a);
        {
            std::lock_guard lock(m_calibrationMutex);
            rep->set_calibrating(m_calibrating);
            if (m_calibration)
                *rep->mutable_calibration() = *m_calibration;
        }
        rep->set_grpc_port(static_cast<uint32_t>(m_port));
        return grpc::Status::OK;
    }

    grpc::Status LaunchShard(grpc::ServerContext* ctx, const v1::LaunchShardRequest* req, v1::LaunchShardReply* rep) override
    {
        if (std::string bad = wire::check(*req); !bad.empty())
            return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "launch: " + bad);
        ShardProcesses::Request r;
        r.launchId = req->launch_id();
        r.index = req->shard_index();
        r.bindHost = req->bind_host();
        r.threads = std::max<uint32_t>(1, req->threads());
        r.memoryBytes = req->memory_bytes();
        r.beyondFreeMemory = req->beyond_free_memory();
        r.master = peerIdentity(*ctx);
        r.lease = std::chrono::milliseconds(std::clamp<uint32_t>(req->lease_ms() ? req->lease_ms() : 5000, 1000, 30000));
        try {
            auto started = m_shards.launch(r);
            rep->set_address(started.address);
            rep->set_pid(static_cast<uint32_t>(started.pid));
        } catch (const std::exception& e) {
            return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, std::string("launch: ") + e.what());
        }
        return grpc::Status::OK;
    }

    // A launch is steered by the master that started it (its certificate name). As for shards, this keeps
    // honest masters apart; a key holder can mint any name.
    grpc::Status ownerOnly(const grpc::ServerContext& ctx, const std::string& launchId, const char* call)
    {
        const std::string owner = m_shards.owner(launchId), peer = peerIdentity(ctx);
        if (owner.empty() || owner == peer)
            return grpc::Status::OK;
        return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, std::string(call) + ": launch " + launchId + " belongs to " + owner + ", not to " + peer);
    }

    grpc::Status StopShards(grpc::ServerContext* ctx, const v1::StopShardsRequest* req, v1::StopShardsReply* rep) override
    {
        if (!wire::validLaunchId(req->launch_id()))
            return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "stop: give the launch id to stop");
        if (grpc::Status s = ownerOnly(*ctx, req->launch_id(), "stop"); !s.ok())
            return s;
        rep->set_stopped(m_shards.stop(req->launch_id(), "stopped by " + peerIdentity(*ctx)));
        return grpc::Status::OK;
    }

    grpc::Status Health(grpc::ServerContext* ctx, const v1::HealthRequest* req, v1::HealthReply* rep) override
    {
        // Only the launch's own master renews its lease (another one would keep a dead master's shards alive).
        if (grpc::Status s = ownerOnly(*ctx, req->launch_id(), "health"); !s.ok())
            return s;
        std::string ended;
        for (auto& s : m_shards.renew(req->launch_id(), &ended)) {
            auto* st = rep->add_shards();
            st->set_shard_index(s.index);
            st->set_running(s.running);
            st->set_exit_reason(s.exitReason);
            st->set_peak_rss_bytes(s.peakRssBytes);
        }
        rep->set_ended(ended);
        return grpc::Status::OK;
    }

    grpc::Status RecentLog(grpc::ServerContext*, const v1::RecentLogRequest* req, v1::RecentLogReply* rep) override
    {
        const size_t max = std::clamp<uint32_t>(req->max_lines() ? req->max_lines() : 200, 1, 1000);
        for (auto& l : m_log.recent(req->after_sequence(), max)) {
            auto* line = rep->add_lines();
            line->set_sequence(l.sequence);
            line->set_unix_ms(l.unixMs);
            line->set_text(l.text);
        }
        return grpc::Status::OK;
    }

    // ---- link probes: one at a time per daemon (a probe measuring while another runs would measure both) ----

    grpc::Status ProbeLink(grpc::ServerContext* ctx, const v1::ProbeLinkRequest* req, v1::ProbeLinkReply* rep) override
    {
        if (std::string bad = wire::check(*req); !bad.empty())
            return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, bad);
        std::unique_lock lock(m_probeMutex, std::defer_lock);
        if (!lock.try_lock_for(std::chrono::seconds(10)))
            return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "probe: this worker is busy with another probe");
        try {
            *rep = probeLink(m_credentials, *req, m_store);
        } catch (const std::exception& e) {
            return grpc::Status(grpc::StatusCode::UNAVAILABLE, e.what());
        }
        m_log.write("probed the link to " + req->target_address() + " for " + peerIdentity(*ctx) +
                    (rep->error().empty() ? std::string() : " (" + rep->error() + ")"));
        return grpc::Status::OK;
    }

    grpc::Status ProbeEcho(grpc::ServerContext*, grpc::ServerReaderWriter<v1::ProbeAck, v1::ProbePayload>* stream) override
    {
        // Payloads up to 4 MiB, at most 200 of them: a probe, not a pipe.
        v1::ProbePayload m;
        for (int n = 0; n < 200 && stream->Read(&m); ++n) {
            if (m.data().size() > (4u << 20))
                return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "probe: payload over 4 MiB");
            v1::ProbeAck ack;
            ack.set_bytes(static_cast<uint32_t>(m.data().size()));
            if (!stream->Write(ack))
                break;
        }
        return grpc::Status::OK;
    }

    grpc::Status ProbeAllReduce(grpc::ServerContext*, const v1::ProbeAllReduceRequest* req, v1::ProbeAllReduceReply*) override
    {
        if (std::string bad = wire::check(*req); !bad.empty())
            return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, bad);
        std::unique_lock lock(m_probeMutex, std::defer_lock);
        if (!lock.try_lock_for(std::chrono::seconds(10)))
            return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "probe: this worker is busy with another probe");
        try {
            answerAllReduceProbe(m_credentials, *req);
        } catch (const std::exception& e) {
            return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string("all-reduce probe: ") + e.what());
        }
        return grpc::Status::OK;
    }

private:
    const Credentials& m_credentials;
    std::string m_workerId;
    std::string m_listenHost;
    std::atomic<int> m_port{0};
    std::mutex m_calibrationMutex;
    bool m_calibrating = true;
    std::optional<v1::MachineCalibration> m_calibration;
    ShardProcesses& m_shards;
    ServiceLog& m_log;
    KvStoreService& m_store;
    std::timed_mutex m_probeMutex;
};

std::string firewallAdvice(int port, const std::string& ports, uint16_t discoveryPort, bool discovery)
{
    std::string shardPorts = ports;
    std::replace(shardPorts.begin(), shardPorts.end(), '-', ':');
    std::string s = "sudo ufw allow " + std::to_string(port) + "/tcp";
    if (ports != "0")
        s += " && sudo ufw allow " + shardPorts + "/tcp";
    if (discovery)
        s += " && sudo ufw allow " + std::to_string(discoveryPort) + "/udp";
    return s;
}

// Signals are taken by sigwait at the end of runDaemon, so they are blocked before any thread exists. A closed
// terminal (SIGHUP) leaves a daemon started by hand running; one started by a master goes with it anyway.
sigset_t blockStopSignals(bool local)
{
    sigset_t waitFor;
    sigemptyset(&waitFor);
    sigaddset(&waitFor, SIGTERM);
    sigaddset(&waitFor, SIGINT);
    if (local)
        sigaddset(&waitFor, SIGHUP);
    else
        std::signal(SIGHUP, SIG_IGN);
    std::signal(SIGPIPE, SIG_IGN);
    pthread_sigmask(SIG_BLOCK, &waitFor, nullptr);
    return waitFor;
}

// How the daemon starts shards and what the machine donates to them, from serve's flags.
ShardProcesses::Options shardProcessOptions(const DaemonOptions& o, const std::string& keyFile, const std::string& state,
                                            const std::string& workerId)
{
    ShardProcesses::Options so;
    so.workerExecutable = selfExecutableDir() + "/together-worker";
    so.keyFile = fs::absolute(keyFile).string();
    so.ports = o.local ? "0" : o.ports;
    for (auto& r : o.modelsRoots) {
        std::error_code ec;
        auto canonical = fs::canonical(r, ec);
        if (ec || !fs::is_directory(canonical))
            throw Error("--models-root " + r + " is not a folder");
        so.modelsRoots.push_back(canonical.string());
    }
    so.workerId = workerId;
    so.maxThreads = o.maxThreads > 0 ? static_cast<uint32_t>(o.maxThreads) : coreCount();
    if (o.maxMemoryGiB < 0)
        throw Error("--max-memory must be a positive number of GiB");
    so.maxMemoryBytes = static_cast<uint64_t>(o.maxMemoryGiB * double(1ull << 30));
    if (o.cacheGiB < 0)
        throw Error("--cache-size must be 0 (no cache) or a positive number of GiB");
    so.cacheBytes = static_cast<uint64_t>(o.cacheGiB * double(1ull << 30));
    so.cacheDir = state + "/slice-cache";
    return so;
}

// The log's first lines: where the daemon serves and how to open the firewall for it, who gets past the handshake and
// what the machine donates, which local model folders plans may read, and gloo's ports.
void logStartup(ServiceLog& log, const DaemonOptions& o, const ShardProcesses::Options& so, const std::string& host, int port,
                bool allInterfaces, bool discovery, const std::string& workerId, const ClusterKey& key, const std::string& keyFile,
                const std::string& state)
{
    log.write("together-worker " + std::string(kSoftwareVersion).substr(9) + ": serving on " + host + ":" + std::to_string(port) +
              (allInterfaces ? " (all interfaces: reachable from the LAN)" : " (this address only)") + ", shard ports " +
              (so.ports == "0" ? std::string("any free port") : so.ports) +
              "; to open the firewall: " + firewallAdvice(port, so.ports, o.discoveryPort, discovery));
    log.write("worker " + workerId + " on " + hostName() + ": only peers that hold the cluster key (fingerprint " + key.fingerprint() +
              ") get past the TLS handshake; donating " + std::to_string(so.maxThreads) + " of " + std::to_string(coreCount()) +
              " threads and " + (so.maxMemoryBytes ? formatBytes(so.maxMemoryBytes) : std::string("the free memory")) + " of " +
              formatBytes(memoryTotalBytes()) + "; key " + keyFile + ", state " + state);
    log.write(so.modelsRoots.empty() ? std::string("local model folders: none (the master streams the weights; allow folders with --models-root DIR)")
                                     : "local model folders: plans may ask shards to read under " + [&] {
                                           std::string s;
                                           for (auto& r : so.modelsRoots)
                                               s += (s.empty() ? "" : ", ") + r;
                                           return s;
                                       }());
    log.write("tensor-parallel groups across machines also connect to each other on ephemeral TCP ports (gloo; see docs/SECURITY.md)");
}

// Beacons on the LAN, so that masters find this worker; none with `discovery` off (--local, or
// --discovery-interfaces none), which the log says.
std::unique_ptr<BeaconAnnouncer> startAnnouncer(const DaemonOptions& o, bool discovery, ServiceLog& log, const std::string& workerId,
                                                const std::string& host, int port, const ClusterKey& key)
{
    std::unique_ptr<BeaconAnnouncer> announcer;
    if (discovery) {
        BeaconAnnouncer::Options ao;
        ao.port = o.discoveryPort;
        ao.interfaces = o.discoveryInterfaces;
        ao.log = [&log](const std::string& m) { log.write(m); };
        const std::string fingerprint = key.fingerprint();
        ao.beacon = [workerId, host, port, fingerprint] {
            BeaconInfo b;
            b.workerId = workerId;
            b.hostname = hostName();
            b.addresses = machineAddresses(host);
            b.grpcPort = static_cast<uint16_t>(port);
            b.protocol = kProtocolVersion;
            b.cores = coreCount();
            b.memoryTotalBytes = memoryTotalBytes();
            b.keyFingerprint = fingerprint;
            b.softwareVersion = kSoftwareVersion;
            return b;
        };
        announcer = std::make_unique<BeaconAnnouncer>(ao);
    } else {
        log.write(o.local ? std::string("discovery: off (started by a master with --local)") : std::string("discovery: off (--discovery-interfaces none)"));
    }
    return announcer;
}

// The watchdog thread's loop: a daemon whose listener stopped accepting (gRPC 1.51 gives up after a full file
// table) is alive but useless; it exits, so that its service manager starts it afresh. It says Hello to itself
// at `self` every 10 s; three failures in a row end the process.
void watchListener(const Credentials& credentials, const std::string& self, ServiceLog& log, const std::atomic<bool>& stopping)
{
    int failures = 0;
    while (!stopping) {
        for (int i = 0; i < 100 && !stopping; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (stopping)
            break;
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        v1::HelloRequest req;
        req.set_protocol_version(kProtocolVersion);
        v1::HelloReply rep;
        grpc::Status st = v1::WorkerControl::NewStub(openChannel(credentials, self))->Hello(&ctx, req, &rep);
        failures = st.ok() ? 0 : failures + 1;
        if (failures == 3) {
            log.write("the daemon no longer answers on " + self + " (" + st.error_message() +
                      "): exiting so that it is restarted; its shards stop with it");
            ::_exit(3);
        }
    }
}

// The calibration thread's work: this machine's speed for the cost model, measured in a child process (the
// daemon's own memory and threads stay as they are), one daemon of the machine at a time, cached across restarts.
// `calibrating` holds the child's pid while it runs (stopping kills it). The result, or its error, for Hello.
v1::MachineCalibration calibrateMachine(const ShardProcesses::Options& so, bool recalibrate, ServiceLog& log, std::atomic<pid_t>& calibrating)
{
    v1::MachineCalibration result;
    try {
        std::vector<std::string> args = {"calibrate", "--threads", std::to_string(so.maxThreads)};
        if (recalibrate)
            args.push_back("--recalibrate");
        ChildProcess child = spawnWithReport(so.workerExecutable, args);
        calibrating = child.pid;
        const std::string line = readReportLineOrKill(child, 120000);
        ::waitpid(child.pid, nullptr, 0);
        calibrating = -1;
        if (line.rfind("calibration ", 0) != 0)
            throw Error("unexpected line from the calibration: " + line);
        const Calibration c = calibrationFromJson(line.substr(12));
        result.set_read_gbps_1(c.readGBps1);
        result.set_read_gbps_all(c.readGBpsAll);
        for (auto& [dtype, v] : c.matvecGBps) {
            auto* x = result.add_matvec();
            x->set_dtype(dtype);
            x->set_gbps_1(v.first);
            x->set_gbps_all(v.second);
        }
        result.set_gemm_gflops(c.gemmGFlops);
        result.set_layer_overhead_us_1(c.layerOverheadUs1);
        result.set_layer_overhead_us_all(c.layerOverheadUsAll);
        result.set_cpu_model(c.cpuModel);
        result.set_kernel_path(c.kernelPath);
        result.set_from_cache(c.fromCache);
        result.set_threads(static_cast<uint32_t>(c.threads));
        char b[200];
        std::snprintf(b, sizeof b, "read %.1f GB/s (1 thread), %.1f GB/s (%d); decode bf16 %.1f GB/s, f32 %.1f GB/s", c.readGBps1,
                      c.readGBpsAll, c.threads, c.matvecGBps.count("bf16") ? c.matvecGBps.at("bf16").second : 0.0,
                      c.matvecGBps.count("f32") ? c.matvecGBps.at("f32").second : 0.0);
        log.write(std::string("calibration") + (c.fromCache ? " (cached)" : " (measured in " + std::to_string(c.seconds).substr(0, 4) + " s)") +
                  ": " + b);
    } catch (const std::exception& e) {
        calibrating = -1; // reaped: its pid may be reused
        result.set_error(e.what());
        log.write(std::string("calibration failed: ") + e.what());
    }
    return result;
}

} // namespace

std::string resolveDaemonKeyFile(const std::string& given)
{
    if (!given.empty()) {
        ClusterKey::fromFile(given); // readable, private, well-formed
        return given;
    }
    const std::string stored = defaultKeyFile();
    if (fs::exists(stored)) {
        ClusterKey::fromFile(stored);
        return stored;
    }
    ClusterKey key;
    try {
        key = readKeyFromTerminal("This worker needs the cluster key (together-cli keygen prints it on your master).\nCluster key: ");
    } catch (const Error& e) {
        throw Error(std::string(e.what()) + ": no cluster key is stored in " + stored +
                    "; give --key-file FILE, or start `together-worker serve` once from a terminal to type the key");
    }
    key.writeFile(stored);
    std::fprintf(stderr, "together-worker: the key is stored in %s (mode 0600); next time it is read from there\n", stored.c_str());
    return stored;
}

int runDaemon(const DaemonOptions& o)
{
    dieWithParent(o.parentPid);
    sigset_t waitFor = blockStopSignals(o.local);
    try {
        const std::string keyFile = resolveDaemonKeyFile(o.keyFile);
        const ClusterKey key = ClusterKey::fromFile(keyFile);
        const std::string state = o.stateDir.empty() ? stateDir() : o.stateDir;
        makePrivateDirs(state);
        const auto stateLock = lockStateDir(state);
        const std::string workerId = loadWorkerId(state);
        // A daemon a master started for itself (--local) keeps quiet on the master's terminal: its log is in its
        // state folder, and what matters reaches the master through its calls.
        ServiceLog log(state + "/worker.log", 2000, /*echo=*/!o.local);
        routeGrpcLog([&log](const std::string& line) { log.write(line); });
        struct LogRoute {
            ~LogRoute() { routeGrpcLog({}); } // the log goes before gRPC's last threads do
        } unrouteAtExit;
        const Credentials credentials(key, "worker " + workerId);

        const ShardProcesses::Options so = shardProcessOptions(o, keyFile, state, workerId);
        ShardProcesses shards(so, log);

        grpc::ServerBuilder builder;
        int port = 0;
        const std::string host = hostOf(o.listen);
        // gloo rendezvous for link probes this daemon runs (any key holder; bounded, keys per probe).
        KvStoreService store([](const grpc::ServerContext&) { return grpc::Status::OK; });
        DaemonService service(credentials, workerId, host, shards, log, store);
        builder.RegisterService(&service);
        builder.RegisterService(&store);
        auto server = startServer(builder, credentials, o.listen, &port);
        if (!server)
            throw Error("cannot listen on " + o.listen + " (another worker already uses the port, or it is not an address of this machine)");
        service.setPort(port);
        const bool allInterfaces = host == "0.0.0.0" || host == "[::]" || host == "::";
        const bool discovery = !o.local && o.discoveryInterfaces != "none";
        logStartup(log, o, so, host, port, allInterfaces, discovery, workerId, key, keyFile, state);

        std::unique_ptr<BeaconAnnouncer> announcer = startAnnouncer(o, discovery, log, workerId, host, port, key);
        const std::string self = (allInterfaces ? std::string("127.0.0.1") : host) + ":" + std::to_string(port);
        writeReport(o.reportFd, "listening " + self);

        std::atomic<bool> stopping{false};
        std::thread watchdog([&] { watchListener(credentials, self, log, stopping); });

        std::atomic<pid_t> calibrating{-1};
        std::thread calibration([&] { service.setCalibration(calibrateMachine(so, o.recalibrate, log, calibrating)); });
        struct JoinCalibration {
            std::thread& t;
            ~JoinCalibration()
            {
                if (t.joinable())
                    t.join();
            }
        } joinCalibration{calibration};

        int sig = 0;
        sigwait(&waitFor, &sig);
        if (const pid_t p = calibrating.load(); p > 0)
            ::kill(p, SIGKILL); // stopping: no need to finish measuring
        stopping = true;
        watchdog.join();
        log.write(std::string("stopping (") + (sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "SIGHUP") + "): stopping every shard");
        announcer.reset();
        server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    } catch (const std::exception& e) {
        writeReport(o.reportFd, std::string("error: ") + e.what());
        std::fprintf(stderr, "together-worker serve: error: %s\n", e.what());
        return 1;
    }
    return 0;
}

} // namespace together
