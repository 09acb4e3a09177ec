// SPDX-License-Identifier: MIT
// libFuzzer target: the protobuf messages peers send. The first byte picks the message, the rest is its wire
// encoding. Each is parsed the way gRPC hands it over, checked by core/wire_checks the way its handler checks
// it, and, when accepted, held to what the handler then relies on (a violated assumption traps, which the
// fuzzer reports as a crash). Discovery packets (UDP, from anyone on the LAN, no key) go through the decoder
// the daemon and the master use; a shard's configuration through the model parser and the slicing it drives.
// Seeds (fuzz/corpus/fuzz_peer_messages) are wire encodings made with `protoc --encode` from text format.
#include "base/error.h"
#include "model/model_config.h"
#include "model/shard_spec.h"
#include "wire/beacon.h"
#include "wire/checks.h"

#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <string>

using namespace together;

namespace {

void require(bool ok)
{
    if (!ok)
        __builtin_trap();
}

template <class M> bool parse(M& m, const uint8_t* data, size_t size) { return m.ParseFromArray(data, static_cast<int>(size)); }

wire::ShardLimits shard(bool first)
{
    wire::ShardLimits s;
    s.contextLimit = 512;
    s.vocabSize = 1000;
    s.hiddenSize = 64;
    s.firstStage = first;
    return s;
}

void pipe(const uint8_t* data, size_t size)
{
    v1::PipeMessage m;
    if (!parse(m, data, size))
        return;
    for (bool first : {true, false}) {
        const auto s = shard(first);
        if (!wire::check(m, s).empty())
            continue;
        require(m.start_pos() >= 0 && m.start_pos() < s.contextLimit);
        if (first) {
            require(m.tokens_size() == 1 && m.tokens(0) >= 0 && m.tokens(0) < s.vocabSize && m.hidden().empty());
        } else {
            require(m.rows() >= 1 && m.rows() <= prefillChunkRows(s.hiddenSize));
            require(m.hidden().size() == size_t(m.rows()) * size_t(s.hiddenSize) * 4);
            require(m.start_pos() + m.rows() <= s.contextLimit);
        }
        if (m.has_header())
            require(m.header().eos_ids_size() <= wire::kMaxEosIds && m.header().window() <= wire::kMaxWindow);
    }
}

void start(const uint8_t* data, size_t size)
{
    v1::StartRequest r;
    if (!parse(r, data, size))
        return;
    const auto s = shard(true);
    if (!wire::check(r, s).empty())
        return;
    require(r.tokens_size() >= 1 && r.start_pos() >= 0 && r.start_pos() + r.tokens_size() <= s.contextLimit);
    for (int32_t id : r.tokens())
        require(id >= 0 && id < s.vocabSize);
    require(r.header().generation() > 0 && r.header().top_logits() <= wire::kMaxTopLogits);
}

void configure(const uint8_t* data, size_t size)
{
    v1::ShardConfig r;
    if (!parse(r, data, size))
        return;
    try {
        const ModelConfig c = ModelConfig::fromJsonText(r.config_json(), "config.json from the master");
        if (!wire::check(r, c).empty())
            return;
        ShardSpec spec{r.first_layer(), r.last_layer(), static_cast<int>(r.tp_rank()), static_cast<int>(r.tp_size()), r.stage() == 0,
                       r.stage() + 1 == r.num_stages()};
        for (auto& t : shardTensors(c, spec))
            for (auto d : t.shape())
                require(d >= 0);
    } catch (const Error&) {
    }
}

void chunk(const uint8_t* data, size_t size)
{
    v1::WeightChunk c;
    if (!parse(c, data, size))
        return;
    wire::FirstChunk first;
    if (wire::checkFirstChunk(c, {4, 8}, first).empty())
        require(first.bytes == c.total_bytes() && first.bytes == 4 * 8 * dtypeSize(first.dtype));
}

void observe(const uint8_t* data, size_t size)
{
    v1::ObserveEvent ev;
    if (!parse(ev, data, size) || !wire::check(ev, 1000, 10).empty())
        return;
    if (ev.has_token()) {
        require(ev.token().token() >= 0 && ev.token().token() < 1000);
        require(ev.token().top_ids_size() == ev.token().top_logits_size() && ev.token().top_ids_size() <= 10);
    }
}

void status(const uint8_t* data, size_t size)
{
    v1::StatusReply r;
    if (!parse(r, data, size) || !wire::check(r).empty())
        return;
    require(r.records_size() <= wire::kMaxRecordsPerReply);
    for (auto& x : r.records())
        require(x.allreduce_spans_size() % 2 == 0);
}

template <class M> void plain(const uint8_t* data, size_t size)
{
    M m;
    if (parse(m, data, size))
        (void)wire::check(m);
}

void hello(const uint8_t* data, size_t size)
{
    v1::HelloReply r;
    if (!parse(r, data, size) || !wire::check(r).empty())
        return;
    require(r.hostname().size() <= wire::kMaxHostnameBytes && r.worker_id().size() <= wire::kMaxNameBytes &&
            r.addresses_size() <= wire::kMaxHelloAddresses && r.launches_size() <= wire::kMaxLaunches &&
            r.cpu_flags_size() <= wire::kMaxCpuFlags && r.calibration().matvec_size() <= wire::kMaxMatvecRates);
}

void kvGet(const uint8_t* data, size_t size)
{
    v1::KvGetRequest r;
    if (!parse(r, data, size) || !wire::check(r).empty())
        return;
    require(r.keys_size() <= wire::kMaxStoreKeysAsked);
}

void discovery(const uint8_t* data, size_t size)
{
    const DiscoveryMessage m = decodeDiscovery(data, size);
    if (m.kind == DiscoveryMessage::Kind::Beacon)
        require(m.beacon.addresses.size() <= kMaxBeaconAddresses && m.beacon.workerId.size() <= kMaxBeaconNameBytes &&
                m.beacon.hostname.size() <= kMaxBeaconNameBytes && m.beacon.softwareVersion.size() <= kMaxBeaconVersionBytes);
}

} // namespace

// protobuf logs every string field that is not UTF-8 (an error line per parse, gigabytes over a 10-minute run,
// which slowed the fuzzer to the disk's pace); the parse still fails and is what this target checks.
extern "C" int LLVMFuzzerInitialize(int*, char***)
{
    google::protobuf::SetLogHandler([](google::protobuf::LogLevel, const char*, int, const std::string&) {});
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t kind = data[0];
    ++data;
    --size;
    switch (kind % 14) {
    case 0: discovery(data, size); break;
    case 1: pipe(data, size); break;
    case 2: start(data, size); break;
    case 3: configure(data, size); break;
    case 4: chunk(data, size); break;
    case 5: plain<v1::ConnectRequest>(data, size); break;
    case 6: plain<v1::LaunchShardRequest>(data, size); break;
    case 7: plain<v1::ProbeLinkRequest>(data, size); break;
    case 8: plain<v1::ProbeAllReduceRequest>(data, size); break;
    case 9: plain<v1::KvSetRequest>(data, size); break;
    case 10: kvGet(data, size); break;
    case 11: observe(data, size); break;
    case 12: status(data, size); break;
    case 13: hello(data, size); break;
    }
    return 0;
}
