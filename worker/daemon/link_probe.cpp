// SPDX-License-Identifier: MIT
#include "daemon/link_probe.h"

#include "base/error.h"
#include "base/hex.h"
#include "engine/gloo_comm.h"
#include "net/rpc.h"
#include "wire/checks.h"

#include <algorithm>
#include <chrono>
#include <thread>

namespace together {

namespace {

constexpr uint32_t kMinProbe = wire::kMinProbeBytes, kMaxProbe = wire::kMaxProbeBytes;
// A probe of a slow link (Wi-Fi) must not hold the pair for long: each transport stops at this budget and
// keeps the sizes it measured.
constexpr auto kBudget = std::chrono::milliseconds(2500);

std::string hostOf(const std::string& address) { return address.substr(0, address.rfind(':')); }

double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

double msSince(std::chrono::steady_clock::time_point t0)
{
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Warm-up, then every size `repeats` times, stopping a transport at the budget (both sides run this same
// sequence of all-reduces, so the far side follows the prober's count it is told through the sizes it gets).
void allReduces(GlooCommunicator& comm, const std::vector<uint32_t>& sizes, uint32_t repeats, std::vector<double>* medians)
{
    std::vector<float> buffer(kMaxProbe / 4, 1.0f);
    comm.allReduceSum(buffer.data(), 256);
    for (uint32_t s : sizes) {
        std::vector<double> times;
        for (uint32_t r = 0; r < repeats; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            comm.allReduceSum(buffer.data(), s / 4);
            times.push_back(msSince(t0));
        }
        if (medians)
            medians->push_back(median(times));
    }
}

} // namespace

v1::ProbeLinkReply probeLink(const Credentials& credentials, const v1::ProbeLinkRequest& req, KvStoreService& store)
{
    std::vector<uint32_t> sizes(req.sizes().begin(), req.sizes().end());
    std::sort(sizes.begin(), sizes.end());
    const uint32_t repeats = req.repeats();
    auto stub = v1::WorkerControl::NewStub(openChannel(credentials, req.target_address()));
    v1::ProbeLinkReply reply;

    // The pipeline's transport: a long-lived gRPC stream, payload one way and a small acknowledgement back.
    {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
        auto stream = stub->ProbeEcho(&ctx);
        auto roundTrip = [&](const std::string& payload) {
            v1::ProbePayload m;
            m.set_data(payload);
            v1::ProbeAck ack;
            const auto t0 = std::chrono::steady_clock::now();
            if (!stream->Write(m) || !stream->Read(&ack) || ack.bytes() != payload.size()) {
                grpc::Status s = stream->Finish();
                throw Error("probe: " + describeRpcError(s.ok() ? grpc::Status(grpc::StatusCode::UNKNOWN, "the echo stream ended") : s,
                                                         req.target_address()));
            }
            return msSince(t0);
        };
        const std::string warm(kMinProbe, 'w');
        roundTrip(warm);
        roundTrip(warm);
        const auto start = std::chrono::steady_clock::now();
        for (uint32_t s : sizes) {
            if (std::chrono::steady_clock::now() - start > kBudget && reply.samples_size() >= 2)
                break;
            const std::string payload(s, 'p');
            std::vector<double> times;
            for (uint32_t r = 0; r < repeats; ++r)
                times.push_back(roundTrip(payload));
            auto* sample = reply.add_samples();
            sample->set_bytes(s);
            sample->set_stream_ms(median(times));
        }
        stream->WritesDone();
        stream->Finish();
    }

    // The all-reduce's transport: a two-rank gloo group with the target, for the sizes the stream reached.
    if (req.all_reduce()) {
        std::vector<uint32_t> measured;
        for (auto& s : reply.samples())
            measured.push_back(s.bytes());
        const std::string prefix = "probe-" + randomHex(8) + "/";
        v1::ProbeAllReduceRequest far;
        far.set_store_address(req.self_address());
        far.set_prefix(prefix);
        far.set_bind_host(hostOf(req.target_address()));
        for (uint32_t s : measured)
            far.add_sizes(s);
        far.set_repeats(repeats);
        grpc::Status farStatus;
        grpc::ClientContext farCtx;
        farCtx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        std::thread farSide([&] {
            v1::ProbeAllReduceReply rep;
            farStatus = stub->ProbeAllReduce(&farCtx, far, &rep);
        });
        try {
            GlooCommunicator comm(credentials, req.self_address(), prefix, hostOf(req.self_address()), 0, 2, std::chrono::seconds(10), false);
            std::vector<double> medians;
            allReduces(comm, measured, repeats, &medians);
            comm.finish(std::chrono::seconds(10));
            for (size_t i = 0; i < medians.size(); ++i)
                reply.mutable_samples(static_cast<int>(i))->set_all_reduce_ms(medians[i]);
        } catch (const std::exception& e) {
            reply.set_error(std::string("all-reduce probe: ") + e.what());
            farCtx.TryCancel();
        }
        farSide.join();
        if (!farStatus.ok() && reply.error().empty())
            reply.set_error("all-reduce probe: " + describeRpcError(farStatus, req.target_address()));
        store.erasePrefix(prefix);
    }
    return reply;
}

void answerAllReduceProbe(const Credentials& credentials, const v1::ProbeAllReduceRequest& req)
{
    GlooCommunicator comm(credentials, req.store_address(), req.prefix(), req.bind_host(), 1, 2, std::chrono::seconds(10), false);
    allReduces(comm, std::vector<uint32_t>(req.sizes().begin(), req.sizes().end()), req.repeats(), nullptr);
    comm.finish(std::chrono::seconds(10));
}

} // namespace together
