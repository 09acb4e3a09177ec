// SPDX-License-Identifier: MIT
#include "master/survey.h"

#include "base/error.h"
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"
#include "wire/checks.h"
#include "wire/protocol.h"

#include <algorithm>
#include <cstdio>
#include <thread>

namespace together {

namespace {

template <class F> void inParallel(size_t n, F f)
{
    std::vector<std::thread> threads;
    std::vector<std::exception_ptr> errors(n);
    for (size_t i = 0; i < n; ++i)
        threads.emplace_back([&, i] {
            try {
                f(i);
            } catch (...) {
                errors[i] = std::current_exception();
            }
        });
    for (auto& t : threads)
        t.join();
    for (auto& e : errors)
        if (e)
            std::rethrow_exception(e);
}

// Rounds of disjoint pairs covering every pair once (the circle method).
std::vector<std::vector<std::pair<size_t, size_t>>> pairRounds(size_t n)
{
    std::vector<std::vector<std::pair<size_t, size_t>>> rounds;
    if (n < 2)
        return rounds;
    const size_t m = n % 2 ? n + 1 : n; // with a bye when odd
    std::vector<size_t> order(m);
    for (size_t i = 0; i < m; ++i)
        order[i] = i;
    for (size_t r = 0; r + 1 < m; ++r) {
        std::vector<std::pair<size_t, size_t>> round;
        for (size_t i = 0; i < m / 2; ++i) {
            const size_t a = order[i], b = order[m - 1 - i];
            if (a < n && b < n)
                round.emplace_back(std::min(a, b), std::max(a, b));
        }
        rounds.push_back(round);
        std::rotate(order.begin() + 1, order.end() - 1, order.end());
    }
    return rounds;
}

std::string fixed(double v, int digits)
{
    char b[48];
    std::snprintf(b, sizeof b, "%.*f", digits, v);
    return b;
}

} // namespace

LinkTable Survey::table() const
{
    LinkTable t;
    t.fallback = namedLink("1 GbE");
    for (auto& l : links) {
        if (!l.samples.empty())
            t.set(l.a, l.b, l.stream);
        if (l.hasAllReduce)
            t.setAllReduce(l.a, l.b, l.allReduce);
    }
    return t;
}

MachineProfile profileFromHello(const std::string& address, const v1::HelloReply& h)
{
    if (!h.has_calibration())
        throw Error("worker " + address + " has not measured its speed yet" + (h.calibrating() ? " (still calibrating)" : ""));
    const auto& c = h.calibration();
    if (!c.error().empty())
        throw Error("worker " + address + " could not measure its speed: " + c.error());
    MachineProfile m;
    m.worker = address;
    m.host = h.worker_id().empty() ? address : h.hostname();
    m.threads = std::max<uint32_t>(1, h.max_threads());
    m.freeMemoryBytes = h.free_memory_bytes();
    m.donatedMemoryBytes = h.max_memory_bytes();
    m.readGBps1 = c.read_gbps_1();
    m.readGBpsAll = std::max(c.read_gbps_all(), c.read_gbps_1());
    for (auto& d : c.matvec())
        if (d.gbps_1() > 0)
            m.matvecGBps[d.dtype().substr(0, 16)] = {d.gbps_1(), std::max(d.gbps_all(), d.gbps_1())};
    m.gemmGFlops = c.gemm_gflops();
    if (c.layer_overhead_us_1() >= 0 && c.layer_overhead_us_1() < 1e6 && c.layer_overhead_us_all() >= 0 && c.layer_overhead_us_all() < 1e6) {
        m.layerOverheadMs1 = c.layer_overhead_us_1() / 1000.0;
        m.layerOverheadMsAll = c.layer_overhead_us_all() / 1000.0;
    }
    if (m.readGBps1 <= 0 || m.matvecGBps.empty())
        throw Error("worker " + address + " reported no usable speeds");
    return m;
}

std::vector<LinkMeasurement> probeLinks(const Credentials& credentials, const std::vector<std::string>& addresses, const SurveyOptions& o)
{
    std::vector<LinkMeasurement> out;
    for (auto& round : pairRounds(addresses.size())) {
        std::vector<LinkMeasurement> results(round.size());
        inParallel(round.size(), [&](size_t i) {
            LinkMeasurement& m = results[i];
            m.a = addresses[round[i].first];
            m.b = addresses[round[i].second];
            v1::ProbeLinkRequest req;
            req.set_self_address(m.a);
            req.set_target_address(m.b);
            for (uint32_t s : o.sizes)
                req.add_sizes(s);
            req.set_repeats(o.repeats);
            req.set_all_reduce(o.allReduce);
            grpc::ClientContext ctx;
            ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(40));
            v1::ProbeLinkReply rep;
            grpc::Status s = v1::WorkerControl::NewStub(openChannel(credentials, m.a))->ProbeLink(&ctx, req, &rep);
            if (!s.ok()) {
                m.error = describeRpcError(s, m.a);
                return;
            }
            std::vector<std::pair<double, double>> stream, allReduce;
            for (auto& x : rep.samples()) {
                m.samples.push_back({x.bytes(), x.stream_ms(), x.all_reduce_ms()});
                stream.emplace_back(x.bytes(), x.stream_ms());
                if (x.all_reduce_ms() > 0)
                    allReduce.emplace_back(x.bytes(), x.all_reduce_ms());
            }
            if (stream.empty()) {
                m.error = "worker " + m.a + " returned no samples";
                return;
            }
            m.stream = fitLink(stream);
            if (allReduce.size() == stream.size()) {
                m.allReduce = fitLink(allReduce);
                m.hasAllReduce = true;
            }
            m.error = rep.error();
        });
        for (auto& r : results) {
            if (o.progress)
                o.progress("link " + r.a + " <-> " + r.b + ": " +
                           (r.samples.empty() ? r.error
                                              : "stream " + fixed(r.stream.alphaUs, 0) + " us + " + fixed(r.stream.betaMBps, 0) + " MB/s" +
                                                    (r.hasAllReduce ? ", all-reduce " + fixed(r.allReduce.alphaUs, 0) + " us + " + fixed(r.allReduce.betaMBps, 0) + " MB/s"
                                                                    : r.error.empty() ? "" : " (" + r.error + ")")));
            out.push_back(std::move(r));
        }
    }
    return out;
}

Survey surveyWorkers(const Credentials& credentials, const std::vector<std::string>& addresses, const SurveyOptions& o)
{
    Survey survey;
    survey.machines.resize(addresses.size());
    inParallel(addresses.size(), [&](size_t i) {
        const auto deadline = std::chrono::steady_clock::now() + o.calibrationWait;
        auto stub = v1::WorkerControl::NewStub(openChannel(credentials, addresses[i]));
        bool said = false;
        for (;;) {
            grpc::ClientContext ctx;
            ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
            v1::HelloRequest req;
            req.set_protocol_version(kProtocolVersion);
            v1::HelloReply rep;
            grpc::Status s = stub->Hello(&ctx, req, &rep);
            if (!s.ok())
                throw Error("worker " + describeRpcError(s, addresses[i]));
            if (std::string bad = wire::check(rep); !bad.empty())
                throw Error("worker " + addresses[i] + " sent a malformed Hello: " + bad);
            if (!rep.calibrating() || std::chrono::steady_clock::now() > deadline) {
                survey.machines[i] = profileFromHello(addresses[i], rep);
                return;
            }
            if (!said && o.progress)
                o.progress("worker " + addresses[i] + " is calibrating; waiting");
            said = true;
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
        }
    });
    if (o.probeLinks) {
        const auto t0 = std::chrono::steady_clock::now();
        survey.links = probeLinks(credentials, addresses, o);
        survey.probeSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    return survey;
}

std::string formatLinks(const std::vector<LinkMeasurement>& links)
{
    std::string s = "| link | stream alpha us | stream MB/s | all-reduce alpha us | all-reduce MB/s | note |\n|---|---|---|---|---|---|\n";
    for (auto& l : links) {
        s += "| " + l.a + " - " + l.b + " | ";
        if (l.samples.empty()) {
            s += "- | - | - | - | " + l.error + " |\n";
            continue;
        }
        s += fixed(l.stream.alphaUs, 0) + " | " + fixed(l.stream.betaMBps, 0) + " | " +
             (l.hasAllReduce ? fixed(l.allReduce.alphaUs, 0) + " | " + fixed(l.allReduce.betaMBps, 0) : std::string("- | -")) + " | " + l.error + " |\n";
    }
    return s;
}

} // namespace together
