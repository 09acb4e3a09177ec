// SPDX-License-Identifier: MIT
#include "daemon/shard_processes.h"

#include "base/error.h"
#include "base/host_info.h"
#include "base/process.h"
#include "net/rpc.h"

#include <algorithm>
#include <csignal>

#include <sys/wait.h>
#include <unistd.h>

namespace together {

struct ShardProcesses::Reader {
    std::thread thread;
    std::atomic<bool> done{false};
};

ShardProcesses::ShardProcesses(Options options, ServiceLog& log)
    : m_options(std::move(options))
    , m_log(log)
{
    parsePortRange(m_options.ports);
    m_spawner = std::thread([this] { spawnLoop(); });
    m_monitor = std::thread([this] { monitorLoop(); });
}

ShardProcesses::~ShardProcesses()
{
    m_stop = true;
    m_spawnCv.notify_all();
    m_monitor.join();
    m_spawner.join();
    {
        std::lock_guard lock(m_mutex);
        std::vector<std::string> ids;
        for (auto& [id, l] : m_launches)
            ids.push_back(id);
        for (auto& id : ids)
            endLocked(id, "the daemon is stopping");
    }
    for (auto& r : m_readers)
        r->thread.join();
}

void ShardProcesses::spawnLoop()
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

ShardProcesses::Started ShardProcesses::launch(const Request& req)
{
    const std::string who = "launch " + req.launchId + " shard " + std::to_string(req.index);
    // Reserve threads and memory before spawning, so concurrent launches cannot both pass the check.
    reserve(req);
    const std::vector<std::string> args = shardArguments(req);
    ChildProcess child;
    std::string line;
    try {
        child = spawn(args);
        // The shard's stderr goes into our log from now on, including why it failed to start.
        logStderr(child.stderrFd, who);
        line = readReportLineOrKill(child, 60000);
        if (line.rfind("listening ", 0) != 0) {
            ::kill(child.pid, SIGKILL);
            ::waitpid(child.pid, nullptr, 0);
            throw Error("unexpected ready line from the shard: " + line);
        }
    } catch (const std::exception& e) {
        unreserve(req);
        m_log.write(who + ": could not start: " + e.what());
        throw Error(std::string("could not start the shard: ") + e.what());
    }
    Started started{line.substr(10), child.pid};
    if (!adopt(req, started)) { // the launch was stopped while this shard started
        ::kill(child.pid, SIGKILL);
        ::waitpid(child.pid, nullptr, 0);
        throw Error("the launch was stopped while its shard started");
    }
    m_log.write(who + ": started (pid " + std::to_string(child.pid) + ") at " + started.address + " for " + req.master + ", " +
                std::to_string(req.threads) + " threads" + (req.memoryBytes ? ", about " + formatBytes(req.memoryBytes) : std::string()));
    return started;
}

void ShardProcesses::reserve(const Request& req)
{
    std::lock_guard lock(m_mutex);
    reapLocked();
    uint32_t threads = 0;
    uint64_t reserved = 0, resident = 0;
    std::map<std::string, uint32_t> threadsBy;
    for (auto& [id, l] : m_launches)
        for (auto& s : l.shards)
            if (s.running) {
                threads += s.threads;
                reserved += s.memoryBytes;
                threadsBy[l.master] += s.threads;
                if (s.pid > 0)
                    resident += residentBytes(s.pid);
            }
    auto users = [&] {
        std::string u;
        for (auto& [m, t] : threadsBy)
            u += (u.empty() ? "" : ", ") + m + " (" + std::to_string(t) + " threads)";
        return u.empty() ? std::string() : ": in use by " + u;
    };
    if (threads + req.threads > m_options.maxThreads)
        throw Error("busy: this worker donates " + std::to_string(m_options.maxThreads) + " threads (serve --max-threads), " +
                    std::to_string(threads) + " are in use" + users() + "; this shard asks for " + std::to_string(req.threads));
    if (m_options.maxMemoryBytes > 0 && reserved + req.memoryBytes > m_options.maxMemoryBytes)
        throw Error("needs about " + formatBytes(req.memoryBytes) + ", " + hostName() + " donates " + formatBytes(m_options.maxMemoryBytes) +
                    " (serve --max-memory)" + (reserved ? ", of which " + formatBytes(reserved) + " are reserved" + users() : std::string()));
    // Memory promised to shards that are still loading is not free yet.
    const uint64_t pending = reserved > resident ? reserved - resident : 0;
    const uint64_t available = memoryAvailableBytes();
    const uint64_t free = available > pending ? available - pending : 0;
    if (req.memoryBytes > free && !req.beyondFreeMemory)
        throw Error("needs about " + formatBytes(req.memoryBytes) + ", " + hostName() + " has " + formatBytes(free) + " free" +
                    (m_options.maxMemoryBytes ? " (" + formatBytes(m_options.maxMemoryBytes) + " donated)" : std::string()));
    Launch& l = m_launches[req.launchId];
    if (l.shards.empty()) {
        l.master = req.master;
        l.lease = req.lease;
    }
    l.renewed = Clock::now();
    Shard s;
    s.index = req.index;
    s.threads = req.threads;
    s.memoryBytes = req.memoryBytes;
    l.shards.push_back(s);
}

void ShardProcesses::unreserve(const Request& req)
{
    std::lock_guard lock(m_mutex);
    auto it = m_launches.find(req.launchId);
    if (it == m_launches.end())
        return;
    auto& v = it->second.shards;
    for (auto s = v.begin(); s != v.end(); ++s)
        if (s->index == req.index && s->pid < 0) {
            v.erase(s);
            break;
        }
    if (v.empty())
        m_launches.erase(it);
}

std::vector<std::string> ShardProcesses::shardArguments(const Request& req) const
{
    std::vector<std::string> args = {"shard", "--host", req.bindHost, "--ports", m_options.ports, "--key-file", m_options.keyFile,
                                     "--threads", std::to_string(std::max<uint32_t>(1, req.threads)), "--name",
                                     "shard " + std::to_string(req.index) + " " + req.launchId.substr(0, 8) + "@" + m_options.workerId.substr(0, 16)};
    if (!req.master.empty())
        args.insert(args.end(), {"--owner", req.master});
    if (m_options.cacheBytes > 0 && !m_options.cacheDir.empty()) {
        args.insert(args.end(), {"--cache-dir", m_options.cacheDir, "--cache-bytes", std::to_string(m_options.cacheBytes)});
    }
    for (auto& r : m_options.modelsRoots) {
        args.push_back("--models-root");
        args.push_back(r);
    }
    return args;
}

ChildProcess ShardProcesses::spawn(const std::vector<std::string>& args)
{
    ChildProcess child;
    std::packaged_task<void()> task([&] { child = spawnWithReport(m_options.workerExecutable, args, /*captureStderr=*/true); });
    auto done = task.get_future();
    {
        std::lock_guard lock(m_spawnMutex);
        m_spawnQueue.push_back(std::move(task));
    }
    m_spawnCv.notify_one();
    done.get();
    return child;
}

void ShardProcesses::logStderr(int fd, const std::string& who)
{
    auto reader = std::make_unique<Reader>();
    Reader* r = reader.get();
    reader->thread = std::thread([this, r, fd, who] {
        std::string buf;
        char chunk[4096];
        ssize_t n;
        while ((n = ::read(fd, chunk, sizeof chunk)) > 0) {
            buf.append(chunk, static_cast<size_t>(n));
            size_t nl;
            while ((nl = buf.find('\n')) != std::string::npos) {
                m_log.write(who + ": " + buf.substr(0, nl));
                buf.erase(0, nl + 1);
            }
            if (buf.size() > 8192) {
                m_log.write(who + ": " + buf);
                buf.clear();
            }
        }
        if (!buf.empty())
            m_log.write(who + ": " + buf);
        ::close(fd);
        r->done = true;
    });
    {
        std::lock_guard lock(m_mutex);
        m_readers.push_back(std::move(reader));
    }
}

bool ShardProcesses::adopt(const Request& req, const Started& started)
{
    std::lock_guard lock(m_mutex);
    auto it = m_launches.find(req.launchId);
    if (it != m_launches.end())
        for (auto& s : it->second.shards)
            if (s.index == req.index && s.pid < 0) {
                s.pid = started.pid;
                s.address = started.address;
                // The master's call is still waiting for this reply: the lease counts from here, so a
                // slow start (a loaded machine) does not expire it before the master can renew it.
                it->second.renewed = Clock::now();
                return true;
            }
    return false;
}

uint32_t ShardProcesses::stop(const std::string& launchId, const std::string& why)
{
    std::lock_guard lock(m_mutex);
    auto it = m_launches.find(launchId);
    if (it == m_launches.end())
        return 0;
    uint32_t n = 0;
    for (auto& s : it->second.shards)
        n += s.running && s.pid > 0;
    endLocked(launchId, why);
    return n;
}

void ShardProcesses::endLocked(const std::string& launchId, const std::string& why)
{
    auto it = m_launches.find(launchId);
    if (it == m_launches.end())
        return;
    std::vector<pid_t> pids;
    for (auto& s : it->second.shards)
        if (s.running && s.pid > 0)
            pids.push_back(s.pid);
    for (pid_t p : pids)
        ::kill(p, SIGKILL);
    for (pid_t p : pids)
        ::waitpid(p, nullptr, 0); // never leave a zombie
    m_log.write("launch " + launchId + " of " + it->second.master + ": " + std::to_string(pids.size()) + " shard(s) stopped: " + why);
    m_ended.emplace_back(launchId, why);
    while (m_ended.size() > 64)
        m_ended.pop_front();
    // A shard still starting finds its launch gone and is killed by launch().
    m_launches.erase(it);
}

std::string ShardProcesses::owner(const std::string& launchId)
{
    std::lock_guard lock(m_mutex);
    auto it = m_launches.find(launchId);
    return it == m_launches.end() ? std::string() : it->second.master;
}

std::vector<ShardProcesses::Status> ShardProcesses::renew(const std::string& launchId, std::string* ended)
{
    std::lock_guard lock(m_mutex);
    reapLocked();
    std::vector<Status> out;
    auto it = m_launches.find(launchId);
    if (it == m_launches.end()) {
        if (ended)
            for (auto& [id, why] : m_ended)
                if (id == launchId)
                    *ended = why;
        return out;
    }
    it->second.renewed = Clock::now();
    for (auto& s : it->second.shards) {
        if (s.pid < 0)
            continue;
        if (s.running)
            s.peakRssBytes = std::max(s.peakRssBytes, peakResidentBytes(s.pid));
        out.push_back({s.index, s.running, s.exitReason, s.peakRssBytes});
    }
    return out;
}

std::vector<ShardProcesses::LaunchInfo> ShardProcesses::launches() const
{
    std::lock_guard lock(m_mutex);
    std::vector<LaunchInfo> out;
    for (auto& [id, l] : m_launches) {
        LaunchInfo i;
        i.id = id;
        i.master = l.master;
        for (auto& s : l.shards)
            if (s.running) {
                ++i.shards;
                i.threads += s.threads;
                i.memoryBytes += s.memoryBytes;
            }
        out.push_back(i);
    }
    return out;
}

void ShardProcesses::reapLocked()
{
    for (auto& [id, l] : m_launches)
        for (auto& s : l.shards) {
            if (!s.running || s.pid < 0)
                continue;
            s.peakRssBytes = std::max(s.peakRssBytes, peakResidentBytes(s.pid));
            int status = 0;
            if (::waitpid(s.pid, &status, WNOHANG) == s.pid) {
                s.running = false;
                s.exitReason = describeWaitStatus(status);
                m_log.write("launch " + id + " shard " + std::to_string(s.index) + " (pid " + std::to_string(s.pid) + ") " + s.exitReason);
            }
        }
}

void ShardProcesses::monitorLoop()
{
    while (!m_stop) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        std::lock_guard lock(m_mutex);
        reapLocked();
        const auto now = Clock::now();
        std::vector<std::pair<std::string, std::string>> expired;
        uint64_t total = 0;
        std::string heaviest;
        uint64_t heaviestBytes = 0;
        for (auto& [id, l] : m_launches) {
            // A shard still starting holds its LaunchShard call open: the master is waiting, not gone.
            const bool starting = std::any_of(l.shards.begin(), l.shards.end(), [](const Shard& s) { return s.pid < 0; });
            if (!starting && now - l.renewed > l.lease)
                expired.emplace_back(id, "its lease expired: " + l.master + " sent no heartbeat for " +
                                             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(now - l.renewed).count()) +
                                             " s (it crashed, was stopped, or lost the network)");
            uint64_t bytes = 0;
            for (auto& s : l.shards)
                if (s.running && s.pid > 0)
                    bytes += residentBytes(s.pid);
            total += bytes;
            if (bytes > heaviestBytes) {
                heaviestBytes = bytes;
                heaviest = id;
            }
        }
        for (auto& [id, why] : expired)
            endLocked(id, why);
        const uint64_t limit = m_options.maxMemoryBytes;
        if (limit > 0 && total > limit + limit / 10 && !heaviest.empty() && m_launches.count(heaviest))
            endLocked(heaviest, "its shards used " + formatBytes(heaviestBytes) + ", over the " + formatBytes(limit) +
                                    " this worker donates (serve --max-memory)");
        for (auto it = m_readers.begin(); it != m_readers.end();)
            if ((*it)->done) {
                (*it)->thread.join();
                it = m_readers.erase(it);
            } else {
                ++it;
            }
    }
}

} // namespace together
