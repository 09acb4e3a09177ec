// SPDX-License-Identifier: MIT
#include "wire/checks.h"

#include <algorithm>
#include <cctype>

#include "base/error.h"
#include "model/model_config.h"
#include "model/safetensors.h"
#include "model/shard_spec.h"

namespace together::wire {

namespace {

std::string n(int64_t v) { return std::to_string(v); }

bool hostOk(const std::string& host) { return !host.empty() && host.size() <= kMaxAddressBytes; }

template <class Sizes> std::string checkProbeSizes(const Sizes& sizes, uint32_t repeats)
{
    if (sizes.empty() || static_cast<uint32_t>(sizes.size()) > kMaxProbeSizes)
        return "probe: give 1 to " + n(kMaxProbeSizes) + " payload sizes";
    for (uint32_t s : sizes)
        if (s < kMinProbeBytes || s > kMaxProbeBytes || s % 4 != 0)
            return "probe: payload sizes must be multiples of 4 bytes from 1 KiB to 4 MiB (got " + n(s) + ")";
    if (repeats < 1 || repeats > kMaxProbeRepeats)
        return "probe: repeats must be 1 to " + n(kMaxProbeRepeats);
    return {};
}

std::string checkTokens(const google::protobuf::RepeatedField<int32_t>& ids, int64_t vocabSize, const char* what)
{
    for (int32_t id : ids)
        if (id < 0 || id >= vocabSize)
            return std::string(what) + " id " + n(id) + " is outside the vocabulary (size " + n(vocabSize) + ")";
    return {};
}

} // namespace

bool validLaunchId(const std::string& id)
{
    if (id.empty() || id.size() > 64)
        return false;
    for (char c : id)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_')
            return false;
    return true;
}

bool plausibleAddress(const std::string& a)
{
    const auto colon = a.rfind(':');
    return !a.empty() && a.size() <= kMaxAddressBytes && colon != std::string::npos && colon > 0 && colon + 1 < a.size() &&
           a.size() - colon - 1 <= 5 && a.find_first_not_of("0123456789", colon + 1) == std::string::npos;
}

std::string check(const v1::GenerationHeader& h)
{
    if (h.generation() == 0)
        return "generation 0 is not a generation";
    if (h.eos_ids_size() > kMaxEosIds)
        return n(h.eos_ids_size()) + " EOS ids (at most " + n(kMaxEosIds) + ")";
    if (h.top_logits() > kMaxTopLogits)
        return n(h.top_logits()) + " top logits asked (at most " + n(kMaxTopLogits) + ")";
    if (h.window() > kMaxWindow)
        return "a window of " + n(h.window()) + " tokens (at most " + n(kMaxWindow) + ")";
    const double t = h.sampling().temperature(), p = h.sampling().top_p();
    if (!(t >= 0 && t <= 100) || !(p >= 0 && p <= 1) || h.sampling().top_k() < 0)
        return "sampling settings out of range";
    return {};
}

std::string check(const v1::StartRequest& req, const ShardLimits& shard)
{
    const int64_t count = req.tokens_size();
    if (count < 1 || count > shard.contextLimit || req.start_pos() < 0 || req.start_pos() > shard.contextLimit - count)
        return n(count) + " tokens at position " + n(req.start_pos()) + " do not fit the context of " + n(shard.contextLimit);
    if (std::string bad = check(req.header()); !bad.empty())
        return bad;
    return checkTokens(req.tokens(), shard.vocabSize, "token");
}

std::string check(const v1::PipeMessage& m, const ShardLimits& shard)
{
    if (m.has_header())
        if (std::string bad = check(m.header()); !bad.empty())
            return bad;
    if (m.start_pos() < 0 || m.start_pos() >= shard.contextLimit)
        return "position " + n(m.start_pos()) + " is outside the context of " + n(shard.contextLimit);
    if (shard.firstStage) {
        if (m.tokens_size() != 1 || !m.hidden().empty())
            return "stage 0 takes one sampled token per message";
        return checkTokens(m.tokens(), shard.vocabSize, "token");
    }
    const int64_t maxRows = prefillChunkRows(shard.hiddenSize);
    if (m.rows() < 1 || m.rows() > maxRows || static_cast<uint64_t>(m.hidden().size()) != uint64_t(m.rows()) * uint64_t(shard.hiddenSize) * 4)
        return "hidden state of " + n(static_cast<int64_t>(m.hidden().size())) + " bytes does not match " + n(m.rows()) + " rows of " +
               n(shard.hiddenSize) + " floats (at most " + n(maxRows) + " rows)";
    if (!m.tokens().empty())
        return "a later stage takes hidden states, not tokens";
    if (m.start_pos() + m.rows() > shard.contextLimit)
        return "rows past the context";
    return {};
}

std::string check(const v1::ShardConfig& req, const ModelConfig& model)
{
    if (req.tp_size() < 1 || req.tp_size() > kMaxTensorParallel || req.tp_rank() >= req.tp_size() || req.num_stages() < 1 ||
        req.num_stages() > kMaxStages || req.stage() >= req.num_stages())
        return "bad rank or stage numbers";
    if (req.first_layer() < 0 || req.last_layer() < req.first_layer() || req.last_layer() >= model.numLayers)
        return "layers " + n(req.first_layer()) + ".." + n(req.last_layer()) + " are not in the model's " + n(model.numLayers);
    if (req.context_limit() < 1 || req.context_limit() > model.contextLimit())
        return "context limit " + n(req.context_limit()) + " is outside 1.." + n(model.contextLimit());
    if (req.dtype().size() > 16 || req.launch_id().size() > 64)
        return "dtype or launch id too long";
    return {};
}

std::string check(const v1::ConnectRequest& req)
{
    if (req.next_addresses_size() > kMaxPeers || req.token_addresses_size() > kMaxPeers)
        return "too many peers";
    for (const auto* list : {&req.next_addresses(), &req.token_addresses()})
        for (auto& a : *list)
            if (!plausibleAddress(a))
                return "a peer address is not host:port";
    if (!req.store_address().empty() && !plausibleAddress(req.store_address()))
        return "the store address is not host:port";
    if (req.gloo_host().size() > kMaxAddressBytes)
        return "the gloo host is too long";
    return {};
}

std::string checkFirstChunk(const v1::WeightChunk& chunk, const std::vector<int64_t>& sliceShape, FirstChunk& out)
{
    const std::string& name = chunk.name();
    std::vector<int64_t> shape(chunk.shape().begin(), chunk.shape().end());
    if (shape != sliceShape)
        return "tensor " + name + " has shape " + shapeString(shape) + " but this shard's slice is " + shapeString(sliceShape);
    TensorType type;
    try {
        type = parseTensorType(chunk.dtype(), "tensor " + name);
    } catch (const Error& e) {
        return e.what();
    }
    // The slice's shape comes from our own plan (checked when configured), so its byte size fits.
    const std::optional<uint64_t> need = tensorTypeBytes(type, shape);
    if (!need)
        return "tensor " + name + ": a slice of shape " + shapeString(shape) + " is not whole " + tensorTypeName(type) + " blocks";
    if (chunk.total_bytes() != *need)
        return "tensor " + name + ": " + std::to_string(chunk.total_bytes()) + " bytes announced, the slice needs " + std::to_string(*need);
    out = {type, *need};
    return {};
}

std::string check(const v1::LaunchShardRequest& req)
{
    if (!validLaunchId(req.launch_id()) || !hostOk(req.bind_host()) || req.threads() > 1024)
        return "bad launch id, bind host or thread count";
    return {};
}

std::string check(const v1::ProbeLinkRequest& req)
{
    if (!plausibleAddress(req.self_address()) || !plausibleAddress(req.target_address()))
        return "probe: give this daemon's and the target's address as host:port";
    if (req.self_address() == req.target_address())
        return "probe: the target is this daemon";
    return checkProbeSizes(req.sizes(), req.repeats());
}

std::string check(const v1::ProbeAllReduceRequest& req)
{
    if (!plausibleAddress(req.store_address()) || !hostOk(req.bind_host()))
        return "probe: give the prober's store address and this side's bind host";
    if (req.prefix().empty() || req.prefix().size() > 64)
        return "probe: bad rendezvous prefix";
    return checkProbeSizes(req.sizes(), req.repeats());
}

std::string check(const v1::KvSetRequest& req)
{
    if (req.key().size() > kMaxStoreKeyBytes || req.value().size() > kMaxStoreValueBytes)
        return "store: key or value too large";
    return {};
}

std::string check(const v1::KvGetRequest& req)
{
    if (req.keys_size() > kMaxStoreKeysAsked)
        return "store: too many keys asked";
    // Each key once: the answer holds a value per key, so asking for one large value a thousand times would
    // make the store build a reply of a thousand copies.
    std::vector<const std::string*> keys;
    for (auto& k : req.keys()) {
        if (k.size() > kMaxStoreKeyBytes)
            return "store: key too large";
        keys.push_back(&k);
    }
    std::sort(keys.begin(), keys.end(), [](auto* a, auto* b) { return *a < *b; });
    if (std::adjacent_find(keys.begin(), keys.end(), [](auto* a, auto* b) { return *a == *b; }) != keys.end())
        return "store: a key is asked twice";
    return {};
}

std::string check(const v1::HelloReply& rep)
{
    if (rep.hostname().size() > kMaxHostnameBytes || rep.worker_id().size() > kMaxNameBytes ||
        rep.software_version().size() > kMaxNameBytes)
        return "a hostname, worker id or version too long";
    if (rep.cpu_flags_size() > kMaxCpuFlags || rep.addresses_size() > kMaxHelloAddresses || rep.launches_size() > kMaxLaunches)
        return "too many CPU flags, addresses or launches";
    for (auto& f : rep.cpu_flags())
        if (f.size() > kMaxCpuFlagBytes)
            return "a CPU flag too long";
    for (auto& a : rep.addresses())
        if (a.size() > kMaxNameBytes)
            return "an address too long";
    for (auto& l : rep.launches())
        if (l.launch_id().size() > kMaxNameBytes || l.master().size() > kMaxAddressBytes)
            return "a launch id or master name too long";
    const auto& c = rep.calibration();
    if (c.matvec_size() > kMaxMatvecRates || c.cpu_model().size() > kMaxCpuTextBytes ||
        c.kernel_path().size() > kMaxCpuTextBytes || c.error().size() > kMaxReplyTextBytes)
        return "a calibration too large";
    return {};
}

std::string check(const v1::ObserveEvent& ev, int64_t vocabSize, uint32_t topLogits)
{
    if (ev.error().size() > kMaxReplyTextBytes || ev.end().size() > kMaxReplyTextBytes)
        return "an error or end text over 64 KiB";
    if (!ev.has_token())
        return {};
    const auto& t = ev.token();
    if (t.token() < 0 || t.token() >= vocabSize)
        return "token id " + n(t.token()) + " is outside the vocabulary (size " + n(vocabSize) + ")";
    if (t.top_ids_size() != t.top_logits_size() || static_cast<uint32_t>(t.top_ids_size()) > topLogits)
        return n(t.top_ids_size()) + " top ids with " + n(t.top_logits_size()) + " logits (" + n(topLogits) + " asked)";
    if (std::string bad = checkTokens(t.top_ids(), vocabSize, "top token"); !bad.empty())
        return bad;
    if (t.pos() < 0)
        return "negative position " + n(t.pos());
    return {};
}

std::string check(const v1::StatusReply& rep)
{
    if (rep.records_size() > kMaxRecordsPerReply)
        return n(rep.records_size()) + " step records in one reply (at most " + n(kMaxRecordsPerReply) + ")";
    if (rep.activity().size() > kMaxReplyTextBytes || rep.error().size() > kMaxReplyTextBytes)
        return "an activity or error text over 64 KiB";
    for (auto& r : rep.records()) {
        if (r.allreduce_spans_size() > kMaxSpansPerRecord || r.allreduce_spans_size() % 2 != 0)
            return "a step record with " + n(r.allreduce_spans_size()) + " all-reduce span ends (pairs, at most " + n(kMaxSpansPerRecord) + ")";
        if (r.link().size() > 256)
            return "a link name over 256 bytes";
    }
    return {};
}

} // namespace together::wire
