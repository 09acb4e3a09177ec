// SPDX-License-Identifier: MIT
#include "worker/daemon.h"

#include "core/auth.h"
#include "core/error.h"
#include "core/process.h"
#include "core/protocol.h"
#include "proto/together.grpc.pb.h"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include <sys/wait.h>
#include <unistd.h>

namespace together {

namespace {

struct ShardProcess {
    uint32_t index = 0;
    pid_t pid = -1;
    std::string address;
    bool running = true;
    std::string exitReason;
};

std::vector<std::string> cpuFlags()
{
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    std::vector<std::string> out;
    while (std::getline(in, line))
        if (line.rfind("flags", 0) == 0) {
            for (const char* f : {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma"})
                if (line.find(std::string(" ") + f) != std::string::npos)
                    out.push_back(f);
            break;
        }
    return out;
}

uint64_t peakRss(pid_t pid)
{
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string k;
    while (in >> k) {
        if (k == "VmHWM:") {
            uint64_t kb = 0;
            in >> kb;
            return kb * 1024;
        }
        in.ignore(4096, '\n');
    }
    return 0;
}

uint64_t availableMemory()
{
    std::ifstream in("/proc/meminfo");
    std::string k;
    uint64_t v;
    std::string unit;
    while (in >> k >> v >> unit)
        if (k == "MemAvailable:")
            return v * 1024;
    return 0;
}

class Daemon final : public v1::WorkerControl::Service {
public:
    Daemon(ClusterKey key, std::string keyFile)
        : m_auth(std::move(key))
        , m_keyFile(std::move(keyFile))
    {
        m_reaper = std::thread([this] { reapLoop(); });
        m_spawner = std::thread([this] { spawnLoop(); });
    }
    ~Daemon() override
    {
        m_stop = true;
        m_spawnCv.notify_all();
        m_reaper.join();
        m_spawner.join();
        killAll("");
    }

    grpc::Status Hello(grpc::ServerContext* ctx, const v1::HelloRequest* req, v1::HelloReply* rep) override
    {
        if (auto s = m_auth.verify(*ctx, "WorkerControl.Hello"); !s.ok())
            return s;
        rep->set_protocol_version(kProtocolVersion);
        if (req->protocol_version() != kProtocolVersion)
            return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                "protocol version mismatch: the master speaks version " + std::to_string(req->protocol_version()) +
                                    ", this worker speaks version " + std::to_string(kProtocolVersion) + "; update one of them");
        char host[256] = {};
        ::gethostname(host, sizeof host - 1);
        rep->set_hostname(host);
        rep->set_cores(std::thread::hardware_concurrency());
        rep->set_free_memory_bytes(availableMemory());
        for (auto& f : cpuFlags())
            rep->add_cpu_flags(f);
        rep->set_software_version("together 0.1.0");
        return grpc::Status::OK;
    }

    grpc::Status LaunchShard(grpc::ServerContext* ctx, const v1::LaunchShardRequest* req, v1::LaunchShardReply* rep) override
    {
        if (auto s = m_auth.verify(*ctx, "WorkerControl.LaunchShard"); !s.ok())
            return s;
        if (req->launch_id().empty() || req->launch_id().size() > 128 || req->bind_host().empty() || req->bind_host().size() > 256)
            return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "launch: bad launch id or bind host");
        try {
            ChildProcess child = spawn({"shard", "--listen", req->bind_host() + ":0", "--key-file", m_keyFile, "--threads",
                                        std::to_string(std::max<uint32_t>(1, req->threads()))});
            std::string line;
            try {
                line = readReportLine(child, 60000);
            } catch (...) {
                ::kill(child.pid, SIGKILL);
                ::waitpid(child.pid, nullptr, 0);
                ::close(child.reportFd);
                throw;
            }
            ::close(child.reportFd);
            if (line.rfind("listening ", 0) != 0)
                throw Error("unexpected ready line from shard: " + line);
            ShardProcess p;
            p.index = req->shard_index();
            p.pid = child.pid;
            p.address = line.substr(10);
            {
                std::lock_guard lock(m_mutex);
                m_shards[req->launch_id()].push_back(p);
            }
            rep->set_address(p.address);
            rep->set_pid(static_cast<uint32_t>(p.pid));
            std::fprintf(stderr, "together-worker: launch %s: shard %u started (pid %d) at %s\n", req->launch_id().c_str(), p.index,
                         p.pid, p.address.c_str());
        } catch (const std::exception& e) {
            return grpc::Status(grpc::StatusCode::INTERNAL, std::string("launch: ") + e.what());
        }
        return grpc::Status::OK;
    }

    grpc::Status StopShards(grpc::ServerContext* ctx, const v1::StopShardsRequest* req, v1::StopShardsReply* rep) override
    {
        if (auto s = m_auth.verify(*ctx, "WorkerControl.StopShards"); !s.ok())
            return s;
        rep->set_stopped(killAll(req->launch_id()));
        return grpc::Status::OK;
    }

    grpc::Status Health(grpc::ServerContext* ctx, const v1::HealthRequest* req, v1::HealthReply* rep) override
    {
        if (auto s = m_auth.verify(*ctx, "WorkerControl.Health"); !s.ok())
            return s;
        reapOnce();
        std::lock_guard lock(m_mutex);
        auto it = m_shards.find(req->launch_id());
        if (it != m_shards.end())
            for (auto& p : it->second) {
                auto* st = rep->add_shards();
                st->set_shard_index(p.index);
                st->set_running(p.running);
                st->set_exit_reason(p.exitReason);
                if (p.running)
                    st->set_peak_rss_bytes(peakRss(p.pid));
            }
        return grpc::Status::OK;
    }

private:
    uint32_t killAll(const std::string& launch)
    {
        std::vector<pid_t> pids;
        {
            std::lock_guard lock(m_mutex);
            for (auto& [id, list] : m_shards)
                if (launch.empty() || id == launch)
                    for (auto& p : list)
                        if (p.running)
                            pids.push_back(p.pid);
        }
        for (pid_t p : pids)
            ::kill(p, SIGKILL);
        for (pid_t p : pids)
            ::waitpid(p, nullptr, 0); // never leave a zombie
        std::lock_guard lock(m_mutex);
        for (auto it = m_shards.begin(); it != m_shards.end();)
            if (launch.empty() || it->first == launch)
                it = m_shards.erase(it);
            else
                ++it;
        return static_cast<uint32_t>(pids.size());
    }

    void reapOnce()
    {
        std::lock_guard lock(m_mutex);
        for (auto& [id, list] : m_shards)
            for (auto& p : list) {
                if (!p.running)
                    continue;
                int status = 0;
                if (::waitpid(p.pid, &status, WNOHANG) == p.pid) {
                    p.running = false;
                    p.exitReason = describeWaitStatus(status);
                    std::fprintf(stderr, "together-worker: launch %s: shard %u (pid %d) %s\n", id.c_str(), p.index, p.pid,
                                 p.exitReason.c_str());
                }
            }
    }

    // PR_SET_PDEATHSIG fires when the *thread* that started the child exits, and gRPC handler threads come
    // and go: so every shard is spawned from this one thread, which lives as long as the daemon.
    ChildProcess spawn(std::vector<std::string> args)
    {
        std::packaged_task<ChildProcess()> task([args] { return spawnWithReport(selfExecutableDir() + "/together-worker", args); });
        auto result = task.get_future();
        {
            std::lock_guard lock(m_spawnMutex);
            m_spawnQueue.push_back(std::move(task));
        }
        m_spawnCv.notify_one();
        return result.get();
    }

    void spawnLoop()
    {
        std::unique_lock lock(m_spawnMutex);
        while (true) {
            m_spawnCv.wait(lock, [&] { return m_stop || !m_spawnQueue.empty(); });
            if (m_spawnQueue.empty())
                return;
            auto task = std::move(m_spawnQueue.front());
            m_spawnQueue.pop_front();
            lock.unlock();
            task();
            lock.lock();
        }
    }

    void reapLoop()
    {
        while (!m_stop) {
            reapOnce();
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
        }
    }

    AuthVerifier m_auth;
    std::string m_keyFile;
    std::mutex m_mutex;
    std::map<std::string, std::vector<ShardProcess>> m_shards;
    std::atomic<bool> m_stop{false};
    std::thread m_reaper;
    std::mutex m_spawnMutex;
    std::condition_variable m_spawnCv;
    std::deque<std::packaged_task<ChildProcess()>> m_spawnQueue;
    std::thread m_spawner;
};

std::atomic<grpc::Server*> g_server{nullptr};

void onSignal(int)
{
    // Shutdown from a signal handler is not safe; exit and let PR_SET_PDEATHSIG take the shards down.
    ::_exit(0);
}

} // namespace

int runDaemon(const DaemonOptions& o)
{
    dieWithParent(o.parentPid);
    try {
        if (o.keyFile.empty())
            throw Error("--key-file is required: a worker never serves without the cluster key (make one with together-cli keygen)");
        ClusterKey key = ClusterKey::fromFile(o.keyFile);
        Daemon daemon(key, o.keyFile);
        grpc::ServerBuilder builder;
        int port = 0;
        builder.AddListeningPort(o.listen, grpc::InsecureServerCredentials(), &port);
        builder.RegisterService(&daemon);
        auto server = builder.BuildAndStart();
        if (!server || port == 0)
            throw Error("cannot listen on " + o.listen + " (address in use?)");
        std::string host = o.listen.substr(0, o.listen.rfind(':'));
        bool allInterfaces = host == "0.0.0.0" || host == "[::]" || host == "::";
        std::fprintf(stderr,
                     "together-worker: serving on %s:%d (%s); calls without proof of the cluster key are refused\n",
                     host.c_str(), port, allInterfaces ? "all interfaces: this worker is reachable from the LAN" : "this interface only");
        std::signal(SIGTERM, onSignal);
        std::signal(SIGINT, onSignal);
        g_server = server.get();
        writeReport(o.reportFd, "listening " + (allInterfaces ? std::string("127.0.0.1") : host) + ":" + std::to_string(port));
        server->Wait();
    } catch (const std::exception& e) {
        writeReport(o.reportFd, std::string("error: ") + e.what());
        std::fprintf(stderr, "together-worker serve: error: %s\n", e.what());
        return 1;
    }
    return 0;
}

} // namespace together
