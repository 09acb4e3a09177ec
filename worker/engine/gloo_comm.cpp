// SPDX-License-Identifier: MIT
#include "engine/gloo_comm.h"

#include "base/error.h"

#include <algorithm>
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"

#include <gloo/allreduce_halving_doubling.h>
#include <gloo/transport/pair.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

namespace together {

namespace {

// gloo's Store over the KvStore service.
class GrpcStore : public gloo::rendezvous::Store {
public:
    GrpcStore(const Credentials& credentials, const std::string& address, std::chrono::milliseconds timeout)
        : m_stub(v1::KvStore::NewStub(openChannel(credentials, address)))
        , m_timeout(timeout)
    {
    }
    void set(const std::string& key, const std::vector<char>& data) override
    {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        v1::KvSetRequest req;
        req.set_key(key);
        req.set_value(std::string(data.begin(), data.end()));
        v1::KvSetReply rep;
        grpc::Status s = m_stub->Set(&ctx, req, &rep);
        if (!s.ok())
            throw Error("rendezvous store: set " + key + ": " + s.error_message());
    }
    std::vector<char> get(const std::string& key) override
    {
        auto v = fetch({key}, m_timeout);
        return std::vector<char>(v[0].begin(), v[0].end());
    }
    void wait(const std::vector<std::string>& keys) override { fetch(keys, m_timeout); }
    void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override { fetch(keys, timeout); }

private:
    std::vector<std::string> fetch(const std::vector<std::string>& keys, std::chrono::milliseconds timeout)
    {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + timeout + std::chrono::seconds(5));
        v1::KvGetRequest req;
        for (auto& k : keys)
            req.add_keys(k);
        req.set_timeout_ms(static_cast<uint32_t>(timeout.count()));
        v1::KvGetReply rep;
        grpc::Status s = m_stub->Get(&ctx, req, &rep);
        if (!s.ok())
            throw Error("rendezvous store: " + s.error_message());
        if (rep.values_size() != static_cast<int>(keys.size()))
            throw Error("rendezvous store: wrong number of values");
        return {rep.values().begin(), rep.values().end()};
    }
    std::unique_ptr<v1::KvStore::Stub> m_stub;
    std::chrono::milliseconds m_timeout;
};

} // namespace

struct GlooCommunicator::Cached {
    std::vector<float> buffer;
    std::unique_ptr<gloo::AllreduceHalvingDoubling<float>> algorithm;
};

GlooCommunicator::GlooCommunicator(const Credentials& credentials, const std::string& storeAddress, const std::string& prefix,
                                   const std::string& bindHost, int rank, int size, std::chrono::milliseconds timeout, bool busyPoll)
    : m_credentials(credentials)
    , m_storeAddress(storeAddress)
    , m_prefix(prefix)
    , m_rank(rank)
    , m_size(size)
{
    try {
        gloo::transport::tcp::attr attr;
        attr.hostname = bindHost;
        auto device = gloo::transport::tcp::CreateDevice(attr);
        GrpcStore store(credentials, storeAddress, std::chrono::milliseconds(60000));
        gloo::rendezvous::PrefixStore prefixed(prefix, store);
        auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
        ctx->setTimeout(timeout);
        ctx->connectFullMesh(prefixed, device);
        if (busyPoll)
            for (int i = 0; i < size; ++i)
                if (i != rank)
                    ctx->getPair(i)->setSync(true, true);
        m_context = ctx;
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        throw Error(std::string("tensor-parallel group: cannot connect: ") + e.what());
    }
}

GlooCommunicator::~GlooCommunicator() = default;

void GlooCommunicator::finish(std::chrono::milliseconds timeout)
{
    GrpcStore store(m_credentials, m_storeAddress, timeout);
    gloo::rendezvous::PrefixStore prefixed(m_prefix, store);
    prefixed.set("end/" + std::to_string(m_rank), {'1'});
    std::vector<std::string> keys;
    for (int i = 0; i < m_size; ++i)
        keys.push_back("end/" + std::to_string(i));
    prefixed.wait(keys, timeout);
}

GlooCommunicator::Cached& GlooCommunicator::algorithmFor(size_t count)
{
    for (size_t i = 0; i < m_cache.size(); ++i)
        if (m_cache[i]->buffer.size() == count) {
            std::rotate(m_cache.begin() + static_cast<long>(i), m_cache.begin() + static_cast<long>(i) + 1, m_cache.end());
            return *m_cache.back();
        }
    // Every rank sees the same sequence of sizes, so every rank creates (and evicts) instances in the same
    // order and their buffer slots match.
    if (m_cache.size() >= 8)
        m_cache.erase(m_cache.begin());
    auto c = std::make_unique<Cached>();
    c->buffer.resize(count);
    std::vector<float*> ptrs{c->buffer.data()};
    c->algorithm = std::make_unique<gloo::AllreduceHalvingDoubling<float>>(m_context, ptrs, static_cast<int>(count));
    m_cache.push_back(std::move(c));
    return *m_cache.back();
}

void GlooCommunicator::allReduceSum(float* data, size_t count)
{
    auto t0 = std::chrono::steady_clock::now();
    const int64_t wall0 = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    try {
        Cached& c = algorithmFor(count);
        std::copy(data, data + count, c.buffer.begin());
        c.algorithm->run();
        std::copy(c.buffer.begin(), c.buffer.end(), data);
    } catch (const std::exception& e) {
        throw Error(std::string("all-reduce failed (a tensor-parallel peer died or stalled?): ") + e.what());
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    m_seconds += seconds;
    ++m_calls;
    m_bytes += count * sizeof(float);
    if (m_spans.size() < 4096)
        m_spans.push_back({wall0, wall0 + static_cast<int64_t>(seconds * 1e6)});
}

GlooCommunicator::Usage GlooCommunicator::take()
{
    Usage u;
    u.seconds = m_seconds;
    u.calls = m_calls;
    u.bytes = m_bytes;
    u.spans.swap(m_spans);
    m_seconds = 0;
    m_calls = 0;
    m_bytes = 0;
    return u;
}

double GlooCommunicator::takeSeconds(uint32_t* calls)
{
    double s = m_seconds;
    if (calls)
        *calls = m_calls;
    m_seconds = 0;
    m_calls = 0;
    return s;
}

} // namespace together
