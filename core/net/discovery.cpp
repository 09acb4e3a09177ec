// SPDX-License-Identifier: MIT
#include "net/discovery.h"

#include "base/error.h"
#include "base/files.h"
#include "base/host_info.h"
#include "base/user_dirs.h"
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"
#include "wire/checks.h"
#include "wire/protocol.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <future>

namespace together {

namespace {

using Clock = std::chrono::steady_clock;

std::string hostPart(const std::string& address) { return address.substr(0, address.rfind(':')); }

// One Hello to one address: what it says and how long it took.
struct HelloResult {
    std::string address;
    grpc::Status status;
    v1::HelloReply reply;
    std::string peer; // certificate name
    double rttMs = -1;
};

HelloResult hello(const std::shared_ptr<grpc::Channel>& channel, const std::string& address, std::chrono::milliseconds timeout)
{
    HelloResult r;
    r.address = address;
    auto stub = v1::WorkerControl::NewStub(channel);
    // The first call pays for TCP and TLS; the second measures the round trip on the open connection.
    for (int i = 0; i < 2; ++i) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + timeout);
        v1::HelloRequest req;
        req.set_protocol_version(kProtocolVersion);
        const auto t0 = Clock::now();
        r.status = stub->Hello(&ctx, req, &r.reply);
        r.rttMs = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (r.status.ok())
            if (std::string bad = wire::check(r.reply); !bad.empty())
                r.status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a malformed Hello: " + bad);
        if (!r.status.ok())
            return r;
        r.peer = peerIdentity(ctx);
    }
    return r;
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }


// What the Hellos to a worker's advertised addresses say: the best answer (the lowest round trip from the worker
// claimed), or why none would do.
struct HelloVerdict {
    const HelloResult* best = nullptr;
    std::string wrongIdentity, versionError;
    bool handshake = false, refusedConnection = false;
};

HelloVerdict judge(const std::vector<HelloResult>& results, const std::string& expectedId)
{
    HelloVerdict v;
    for (auto& r : results) {
        if (r.status.ok()) {
            const std::string id = r.reply.worker_id();
            if ((!expectedId.empty() && id != expectedId) || r.peer != "worker " + id) {
                v.wrongIdentity = r.address + " answers as worker " + id + " (certificate: " + r.peer + ")";
                continue;
            }
            if (!v.best || r.rttMs < v.best->rttMs)
                v.best = &r;
        } else if (r.status.error_code() == grpc::StatusCode::FAILED_PRECONDITION && contains(r.status.error_message(), "protocol version")) {
            v.versionError = r.status.error_message();
        } else if (isHandshakeFailure(r.status)) {
            v.handshake = true;
        } else if (contains(r.status.error_message(), "Connection refused") || contains(r.status.error_message(), "connection refused")) {
            v.refusedConnection = true;
        }
    }
    return v;
}

// A worker as its Hello describes it: machine, donation, calibration, and whether another master's launch holds it.
void describeFromHello(DiscoveredWorker& w, const HelloResult& best, const Credentials& credentials)
{
    const v1::HelloReply& h = best.reply;
    w.id = h.worker_id();
    w.address = best.address;
    w.host = h.hostname();
    w.port = static_cast<uint16_t>(std::stoi(best.address.substr(best.address.rfind(':') + 1)));
    w.addresses.assign(h.addresses().begin(), h.addresses().end());
    w.cores = h.cores();
    w.memoryTotalBytes = h.total_memory_bytes();
    w.memoryFreeBytes = h.free_memory_bytes();
    w.maxThreads = h.max_threads();
    w.maxMemoryBytes = h.max_memory_bytes();
    w.protocol = h.protocol_version();
    w.keyFingerprint = credentials.keyFingerprint();
    w.softwareVersion = h.software_version();
    w.cpuFlags.assign(h.cpu_flags().begin(), h.cpu_flags().end());
    w.rttMs = best.rttMs;
    w.calibrating = h.calibrating();
    w.readGbps.reset();
    w.decodeGbps.clear();
    if (h.has_calibration() && h.calibration().error().empty() && h.calibration().read_gbps_all() > 0) {
        w.readGbps = h.calibration().read_gbps_all();
        for (auto& m : h.calibration().matvec())
            w.decodeGbps[m.dtype().substr(0, 16)] = m.gbps_all();
    }
    std::string others;
    uint32_t threads = 0;
    for (auto& l : h.launches())
        if (l.master() != credentials.identity()) {
            others = l.master();
            threads += l.threads();
        }
    if (others.empty()) {
        w.state = WorkerState::Ready;
        w.reason.clear();
    } else {
        w.state = WorkerState::Busy;
        w.reason = "serving a launch of " + others + " (" + std::to_string(threads) + " of " + std::to_string(w.maxThreads) + " donated threads)";
    }
}

// Why no Hello would do: another key or version, another worker's identity, a closed port, or silence.
void describeFailure(DiscoveredWorker& w, const HelloVerdict& v, const std::vector<std::string>& claimed, std::chrono::milliseconds helloTimeout)
{
    w.rttMs = -1;
    const std::string port = std::to_string(w.port);
    std::string where;
    for (auto& a : claimed)
        where += (where.empty() ? "" : ", ") + a;
    if (!v.versionError.empty()) {
        w.state = WorkerState::Refused;
        w.reason = v.versionError;
    } else if (v.handshake) {
        w.state = WorkerState::Refused;
        w.reason = "it refused the TLS handshake: it holds another cluster key (or is not a together worker)";
    } else if (!v.wrongIdentity.empty()) {
        w.state = WorkerState::Refused;
        w.reason = v.wrongIdentity;
    } else if (v.refusedConnection) {
        w.state = WorkerState::Unreachable;
        w.reason = "port " + port + " is closed (connection refused at " + where + ")";
    } else {
        w.state = WorkerState::Unreachable;
        w.reason = "port " + port + " does not answer within " + std::to_string(helloTimeout.count() / 1000) + " s at " + where +
                   " (a firewall, or the machine is off)";
    }
    if (w.address.empty() && !claimed.empty())
        w.address = claimed.front();
}

} // namespace

const char* workerStateName(WorkerState s)
{
    switch (s) {
    case WorkerState::Checking:
        return "checking";
    case WorkerState::Ready:
        return "ready";
    case WorkerState::Busy:
        return "busy";
    case WorkerState::Refused:
        return "refused";
    case WorkerState::Unreachable:
        return "unreachable";
    case WorkerState::Gone:
        return "gone";
    }
    return "?";
}

struct Discovery::Entry {
    DiscoveredWorker w;
    bool fromBeacon = false;
    bool merged = false;   // a manually added entry that turned out to be a worker already listed
    bool verified = false; // a Hello confirmed the id at `w.address`
    bool needsCheck = true;
    std::vector<std::string> claimed; // the last beacon's addresses, unconfirmed
    Clock::time_point lastBeacon{};
    Clock::time_point lastCheck{};
    std::future<void> checking;
    std::map<std::string, std::shared_ptr<grpc::Channel>> channels;
};

Discovery::Discovery(std::shared_ptr<const Credentials> credentials, Options options, Listener listener)
    : m_credentials(std::move(credentials))
    , m_options(std::move(options))
    , m_listener(std::move(listener))
{
    if (m_options.broadcast) {
        discoveryInterfaces(m_options.interfaces); // names checked now
        m_beacons = std::make_unique<UdpSocket>(m_options.port);
        m_probes = std::make_unique<UdpSocket>(0);
    }
    for (auto& a : m_options.manual)
        add(a);
    if (m_options.broadcast)
        m_receiver = std::thread([this] { receiveLoop(); });
    m_checker = std::thread([this] { checkLoop(); });
}

Discovery::~Discovery()
{
    {
        std::lock_guard lock(m_mutex);
        m_stop = true;
    }
    m_changed.notify_all();
    if (m_receiver.joinable())
        m_receiver.join();
    m_checker.join();
    for (auto& e : m_entries)
        if (e->checking.valid())
            e->checking.wait();
}

void Discovery::add(const std::string& address)
{
    const std::string a = normalizeWorkerAddress(address);
    std::lock_guard lock(m_mutex);
    for (auto& e : m_entries)
        if (!e->merged && (e->w.address == a || std::find(e->claimed.begin(), e->claimed.end(), a) != e->claimed.end())) {
            e->w.manual = true;
            return;
        }
    auto e = std::make_unique<Entry>();
    e->w.address = a;
    e->w.host = hostPart(a);
    e->w.port = static_cast<uint16_t>(std::stoi(a.substr(a.rfind(':') + 1)));
    e->w.manual = true;
    e->claimed = {a};
    m_entries.push_back(std::move(e));
    m_changed.notify_all();
}

std::vector<DiscoveredWorker> Discovery::workers() const
{
    std::lock_guard lock(m_mutex);
    std::vector<DiscoveredWorker> out;
    for (auto& e : m_entries)
        if (!e->merged)
            out.push_back(e->w);
    return out;
}

void Discovery::settle(Clock::time_point deadline) const
{
    std::unique_lock lock(m_mutex);
    m_changed.wait_until(lock, deadline, [&] {
        for (auto& e : m_entries)
            if (!e->merged && (e->w.state == WorkerState::Checking || e->needsCheck))
                return false;
        return true;
    });
}

void Discovery::receiveLoop()
{
    const std::string probe = encodeProbe();
    // Probe at once and twice more (UDP may drop one), then rely on beacons; re-probe every 10 s.
    const std::vector<std::chrono::milliseconds> schedule = {std::chrono::milliseconds(0), std::chrono::milliseconds(300),
                                                              std::chrono::milliseconds(1000)};
    const auto start = Clock::now();
    size_t sent = 0;
    auto nextProbe = start;
    auto nextInterfaces = start;
    std::vector<NetInterface> chosen;
    while (true) {
        {
            std::lock_guard lock(m_mutex);
            if (m_stop)
                return;
        }
        const auto now = Clock::now();
        if (now >= nextInterfaces) {
            try {
                chosen = discoveryInterfaces(m_options.interfaces);
            } catch (const Error&) {
                chosen.clear(); // a named interface went away
            }
            nextInterfaces = now + std::chrono::seconds(1);
        }
        if (now >= nextProbe) {
            for (auto& i : chosen)
                m_probes->sendTo(i.broadcast, m_options.port, probe);
            ++sent;
            nextProbe = sent < schedule.size() ? start + schedule[sent] : now + std::chrono::seconds(10);
        }
        for (UdpSocket* s : {m_beacons.get(), m_probes.get()}) {
            UdpSocket::Received r;
            // A bounded number per pass: a flood must not keep this loop from seeing m_stop.
            for (int n = 0; n < 64 && s->receive(r, std::chrono::milliseconds(s == m_beacons.get() && n == 0 ? 50 : 0)); ++n) {
                DiscoveryMessage m = decodeDiscovery(r.bytes.data(), r.bytes.size());
                if (m.kind == DiscoveryMessage::Kind::Beacon)
                    onBeacon(m.beacon, r.sourceIp, chosen);
            }
        }
    }
}

void Discovery::onBeacon(const BeaconInfo& b, const std::string& sourceIp, const std::vector<NetInterface>& chosen)
{
    // The master dials only addresses on its own subnets (or the beacon's source): a beacon cannot point it at
    // arbitrary hosts.
    std::vector<std::string> reachable;
    for (auto& a : b.addresses) {
        bool local = a == sourceIp;
        for (auto& i : chosen)
            local = local || onSubnet(i, a);
        if (local)
            reachable.push_back(a);
    }
    if (reachable.empty())
        return;
    std::vector<DiscoveredWorker> changed;
    {
        std::lock_guard lock(m_mutex);
        Entry* e = nullptr;
        for (auto& x : m_entries)
            if (!x->merged && x->w.id == b.workerId)
                e = x.get();
        if (!e) {
            // Beacons are unauthenticated: a flood of made-up worker ids must not grow the list (and the Hello
            // checks it starts) without bound. At the cap, the unconfirmed entry heard from least recently
            // makes room; confirmed workers and workers added by address are never evicted.
            size_t listed = 0;
            Entry* oldest = nullptr;
            for (auto& x : m_entries) {
                if (x->merged)
                    continue;
                ++listed;
                if (!x->verified && !x->w.manual && !x->checking.valid() && (!oldest || x->lastBeacon < oldest->lastBeacon))
                    oldest = x.get();
            }
            if (listed >= kMaxWorkers) {
                if (!oldest)
                    return;
                m_entries.erase(std::find_if(m_entries.begin(), m_entries.end(), [&](auto& x) { return x.get() == oldest; }));
            }
            m_entries.push_back(std::make_unique<Entry>());
            e = m_entries.back().get();
            e->w.id = b.workerId;
        }
        const DiscoveredWorker before = e->w;
        e->fromBeacon = true;
        e->lastBeacon = Clock::now();
        std::vector<std::string> claimed;
        for (auto& a : reachable)
            claimed.push_back(a + ":" + std::to_string(b.grpcPort));
        // The address a Hello confirmed stays among those checked: a beacon (perhaps a spoofed one) can add
        // addresses to try, never take the confirmed one away.
        if ((e->w.manual || e->verified) && !e->w.address.empty() && std::find(claimed.begin(), claimed.end(), e->w.address) == claimed.end())
            claimed.push_back(e->w.address);
        if (claimed != e->claimed) {
            e->claimed = claimed;
            e->needsCheck = true; // an address change takes effect only after a Hello there
        }
        if (!e->verified) {
            // Hints until a Hello confirms them.
            e->w.host = b.hostname;
            e->w.port = b.grpcPort;
            e->w.cores = b.cores;
            e->w.memoryTotalBytes = b.memoryTotalBytes;
            e->w.protocol = b.protocol;
            e->w.keyFingerprint = b.keyFingerprint;
            e->w.softwareVersion = b.softwareVersion;
            e->w.addresses = reachable;
        }
        const std::string mine = m_credentials->keyFingerprint();
        if (b.keyFingerprint != mine || b.protocol != kProtocolVersion) {
            if (e->verified && (e->w.state == WorkerState::Ready || e->w.state == WorkerState::Busy)) {
                e->needsCheck = true; // a verified worker is not dropped on a beacon's word: the next Hello decides
            } else {
                e->w.addresses = reachable;
                e->w.address = claimed.front();
                e->w.state = WorkerState::Refused;
                e->w.reason = b.keyFingerprint != mine
                                  ? "another cluster key (its key fingerprint is " + b.keyFingerprint + ", this master's is " + mine + ")"
                                  : "it speaks protocol version " + std::to_string(b.protocol) + ", this master speaks version " +
                                        std::to_string(kProtocolVersion) + ": update one of them";
                e->needsCheck = false;
                e->verified = false;
            }
        } else if (e->w.state == WorkerState::Gone || (e->w.state == WorkerState::Refused && !e->verified)) {
            e->w.state = WorkerState::Checking; // back (or its key changed to ours): check it again
            e->w.reason.clear();
            e->needsCheck = true;
        }
        if (e->w.state != before.state || e->w.reason != before.reason || e->w.address != before.address)
            changed.push_back(e->w);
    }
    m_changed.notify_all();
    if (m_listener)
        for (auto& w : changed)
            m_listener(w);
}

void Discovery::checkLoop()
{
    while (true) {
        std::vector<DiscoveredWorker> changed;
        {
            std::unique_lock lock(m_mutex);
            m_changed.wait_for(lock, std::chrono::milliseconds(100), [&] { return m_stop; });
            if (m_stop)
                return;
            const auto now = Clock::now();
            size_t inFlight = 0;
            for (auto& x : m_entries)
                if (x->checking.valid()) {
                    if (x->checking.wait_for(std::chrono::seconds(0)) == std::future_status::ready)
                        x->checking.get();
                    else
                        ++inFlight;
                }
            for (auto& entry : m_entries) {
                Entry& e = *entry;
                if (e.merged || e.checking.valid())
                    continue;
                if (e.fromBeacon && !e.w.manual && now - e.lastBeacon > m_options.goneAfter) {
                    if (e.w.state != WorkerState::Gone) {
                        e.w.state = WorkerState::Gone;
                        e.w.reason = "no beacon for " + std::to_string(m_options.goneAfter.count() / 1000) + " s" +
                                     (e.w.address.empty() ? std::string() : " (it was at " + e.w.address + ")");
                        changed.push_back(e.w);
                        m_changed.notify_all();
                    }
                    continue;
                }
                if (e.w.state == WorkerState::Refused && !e.verified && !e.needsCheck)
                    continue; // its beacon says another key or version: no connection is tried
                if ((e.needsCheck || now - e.lastCheck > std::chrono::seconds(2)) && inFlight < kMaxConcurrentChecks) {
                    try {
                        Entry* target = &e;
                        e.checking = std::async(std::launch::async, [this, target] {
                            try {
                                check(*target);
                            } catch (const std::exception&) {
                                // a failed check leaves the state as it was; the next one retries
                            }
                        });
                    } catch (const std::system_error&) {
                        continue; // no thread to spare now: the next pass tries again
                    }
                    e.needsCheck = false;
                    e.lastCheck = now;
                    ++inFlight;
                }
            }
        }
        if (m_listener)
            for (auto& w : changed)
                m_listener(w);
    }
}

void Discovery::check(Entry& entry)
{
    std::vector<std::pair<std::string, std::shared_ptr<grpc::Channel>>> targets;
    std::string expectedId;
    {
        std::lock_guard lock(m_mutex);
        Entry& e = entry;
        expectedId = e.w.id;
        for (auto& a : e.claimed) {
            auto& ch = e.channels[a];
            if (!ch)
                ch = openChannel(*m_credentials, a);
            targets.emplace_back(a, ch);
        }
    }
    std::vector<std::future<HelloResult>> calls;
    for (auto& [a, ch] : targets)
        calls.push_back(std::async(std::launch::async, [&, a = a, ch = ch] { return hello(ch, a, m_options.helloTimeout); }));
    std::vector<HelloResult> results;
    for (auto& c : calls)
        results.push_back(c.get());

    const HelloVerdict verdict = judge(results, expectedId);

    std::vector<DiscoveredWorker> changed;
    {
        std::lock_guard lock(m_mutex);
        Entry& e = entry;
        const DiscoveredWorker before = e.w;
        DiscoveredWorker& w = e.w;
        if (verdict.best) {
            // A manually added worker that is already listed (found by its beacon): one entry, marked manual.
            if (expectedId.empty())
                for (auto& other : m_entries)
                    if (other.get() != &e && !other->merged && other->w.id == verdict.best->reply.worker_id()) {
                        other->w.manual = true;
                        if (std::find(other->claimed.begin(), other->claimed.end(), verdict.best->address) == other->claimed.end())
                            other->claimed.push_back(verdict.best->address);
                        e.merged = true;
                    }
            e.verified = true;
            describeFromHello(w, *verdict.best, *m_credentials);
        } else {
            e.verified = false;
            e.channels.clear(); // the next check connects afresh
            describeFailure(w, verdict, e.claimed, m_options.helloTimeout);
        }
        if (w.state != before.state || w.reason != before.reason || w.address != before.address)
            changed.push_back(w);
    }
    m_changed.notify_all();
    if (m_listener)
        for (auto& w : changed)
            m_listener(w);
}

std::string normalizeWorkerAddress(const std::string& address)
{
    std::string a = address;
    if (a.empty() || a.find_first_of(" \t/,") != std::string::npos)
        throw Error("'" + address + "' is not a worker address (host:port, e.g. 192.168.1.20:7600)");
    const bool bracketed = a[0] == '[';
    const size_t colon = a.rfind(':');
    const bool hasPort = bracketed ? a.find("]:") != std::string::npos : colon != std::string::npos;
    if (!hasPort)
        return a + ":7600";
    const std::string port = a.substr(colon + 1);
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) < 1 ||
        std::stoi(port) > 65535 || colon == 0)
        throw Error("'" + address + "' is not a worker address (host:port, port 1-65535)");
    return a;
}

namespace {

std::string workersFile() { return configDir() + "/workers.json"; }

std::vector<std::string> readRemembered()
{
    std::vector<std::string> out;
    if (!std::filesystem::exists(workersFile()))
        return out;
    try {
        auto j = nlohmann::json::parse(readTextFile(workersFile()));
        for (auto& a : j.at("workers"))
            out.push_back(normalizeWorkerAddress(a.get<std::string>()));
    } catch (const std::exception& e) {
        throw Error(workersFile() + ": not a list of remembered workers (" + e.what() + "); fix or delete it");
    }
    return out;
}

// Reads the list, changes it and writes it back under the file's lock: two masters adding a worker each at
// once both keep theirs.
void editRemembered(const std::function<void(std::vector<std::string>&)>& edit)
{
    makePrivateDirs(configDir());
    FileLock lock(workersFile() + ".lock");
    auto list = readRemembered();
    edit(list);
    atomicWrite(workersFile(), nlohmann::json({{"workers", list}}).dump(2) + "\n");
}

} // namespace

std::vector<std::string> rememberedWorkers() { return readRemembered(); }

void rememberWorker(const std::string& address)
{
    const std::string a = normalizeWorkerAddress(address);
    editRemembered([&](std::vector<std::string>& list) {
        if (std::find(list.begin(), list.end(), a) == list.end())
            list.push_back(a);
    });
}

void forgetWorker(const std::string& address)
{
    const std::string a = normalizeWorkerAddress(address);
    editRemembered([&](std::vector<std::string>& list) { list.erase(std::remove(list.begin(), list.end(), a), list.end()); });
}

} // namespace together
