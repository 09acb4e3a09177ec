// SPDX-License-Identifier: MIT
// The ring from an attacker's side: what a peer holding the cluster key (a compromised worker's shard, or a
// key holder posing as one of the launch's names, which Hello discloses) and what a hostile file in a worker's
// slice-cache folder can make a shard, a daemon or a master do.
//
// Each test marked "Found in review" failed on the first version of the ring (together 0.3.0 before review);
// the comment above it says what an attacker could do then. Tests marked "BASELINE" check the behaviour the
// defect contradicted.
#include "master/cluster.h"
#include "master/controller.h"
#include "model/plan.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"
#include "shard/slice_cache.h"
#include "test_support.h"
#include "text/tokenizer.h"
#include "wire/protocol.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <openssl/sha.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace together;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::chrono::system_clock::time_point in(std::chrono::milliseconds d) { return std::chrono::system_clock::now() + d; }

// Resident memory of a process, from /proc (bytes; 0 if it is gone).
uint64_t rssBytes(pid_t pid)
{
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("VmRSS:", 0) == 0)
            return std::stoull(line.substr(6)) * 1024;
    return 0;
}

std::string sha256(const void* data, size_t n)
{
    unsigned char h[SHA256_DIGEST_LENGTH];
    SHA256(static_cast<const unsigned char*>(data), n, h);
    return std::string(reinterpret_cast<const char*>(h), sizeof h);
}

// One worker daemon started by hand (own state folder, optional slice cache) and one launch of a one-stage
// plan on it by an honest master (a Cluster). What a hostile peer needs to know about the launch is read the
// way any key holder can: Hello lists the launch id and its owner's certificate name, RecentLog the shard's
// address.
struct Launch {
    std::string dir;
    std::string model;
    ClusterKey key = ClusterKey::generate();
    std::unique_ptr<test::Daemon> daemon;
    std::shared_ptr<const Credentials> master;
    std::unique_ptr<Cluster> cluster;
    std::string launchId, owner, shardAddress;
    pid_t shardPid = -1;

    Launch(const std::string& tag, const std::string& modelDir, const std::vector<std::string>& daemonArgs = {}, std::string stateDir = {})
        : dir(test::makeTempDir(tag))
        , model(modelDir)
    {
        key.writeFile(dir + "/key");
        if (stateDir.empty())
            stateDir = dir + "/state";
        daemon = std::make_unique<test::Daemon>(dir + "/key", stateDir, daemonArgs);
        master = std::make_shared<const Credentials>(key, newMasterIdentity());
    }

    void launch(int64_t context = 512)
    {
        cluster = std::make_unique<Cluster>(master, Cluster::Callbacks{});
        cluster->launch(Plan::even(ModelConfig::fromDirectory(model), 1, 1, {daemon->address()}, 1), model, "f32", context);
        learn();
    }

    void learn()
    {
        Credentials anyone(key, "master 0badc0de@elsewhere");
        auto stub = v1::WorkerControl::NewStub(openChannel(anyone, daemon->address()));
        {
            grpc::ClientContext ctx;
            ctx.set_deadline(in(std::chrono::seconds(10)));
            v1::HelloRequest req;
            req.set_protocol_version(kProtocolVersion);
            v1::HelloReply rep;
            ASSERT_TRUE(stub->Hello(&ctx, req, &rep).ok());
            ASSERT_EQ(rep.launches_size(), 1);
            launchId = rep.launches(0).launch_id();
            owner = rep.launches(0).master();
        }
        grpc::ClientContext ctx;
        ctx.set_deadline(in(std::chrono::seconds(10)));
        v1::RecentLogRequest req;
        req.set_max_lines(1000);
        v1::RecentLogReply rep;
        ASSERT_TRUE(stub->RecentLog(&ctx, req, &rep).ok());
        for (auto& l : rep.lines()) {
            const std::string& t = l.text();
            const auto p = t.find(": started (pid ");
            if (t.find("launch " + launchId) == std::string::npos || p == std::string::npos)
                continue;
            shardPid = static_cast<pid_t>(std::stol(t.substr(p + 15)));
            const auto at = t.find(") at ", p);
            const auto fr = t.find(" for ", at);
            shardAddress = t.substr(at + 5, fr - at - 5);
        }
        ASSERT_FALSE(shardAddress.empty()) << "no shard address in the daemon's log";
    }

    // A name that passes the shard's check for ring pipes and the rendezvous store: what a compromised worker's
    // shard holds, and what any key holder can mint from the launch id that Hello shows.
    std::shared_ptr<const Credentials> launchPeer() const
    {
        return std::make_shared<const Credentials>(key, "shard 9 " + launchId.substr(0, 8) + "@hostile");
    }
    // The owner's name, copied from Hello.
    std::shared_ptr<const Credentials> ownerLookalike() const { return std::make_shared<const Credentials>(key, owner); }
};

RingRequest greedyRing(std::vector<int> tokens, uint32_t maxTokens, uint32_t window = 4)
{
    RingRequest r;
    r.tokens = std::move(tokens);
    r.startPos = 0;
    r.sampling.temperature = 0;
    r.maxTokens = maxTokens;
    r.window = window;
    return r;
}

// Sends one Observe request on a fresh stream and closes it.
void observeOnce(const Credentials& c, const std::string& address, uint64_t generation, uint32_t acknowledged, bool stop)
{
    auto stub = v1::Shard::NewStub(openChannel(c, address));
    grpc::ClientContext ctx;
    ctx.set_deadline(in(std::chrono::seconds(10)));
    auto s = stub->Observe(&ctx);
    v1::ObserveRequest r;
    r.set_generation(generation);
    r.set_acknowledged(acknowledged);
    r.set_stop(stop);
    s->Write(r);
    s->WritesDone();
    v1::ObserveEvent e;
    while (s->Read(&e)) {
    }
    s->Finish();
}

// A stage-0 ring message: one token, optionally with a generation header.
v1::PipeMessage tokenMessage(uint64_t generation, uint64_t step, int64_t pos, int token)
{
    v1::PipeMessage m;
    m.set_generation(generation);
    m.set_step(step);
    m.set_start_pos(pos);
    m.add_tokens(token);
    m.set_sample(true);
    return m;
}

// ---------------------------------------------------------------------------------------------------------
// Ring pipes and the rendezvous store: sizes a launch peer sends.
// ---------------------------------------------------------------------------------------------------------

// Found in review, fixed since (worker/shard_server.cpp, ShardService::Set): the rendezvous store caps one value at 1 MiB and the
// number of keys at 10000, but not their total, so one launch peer can make any shard hold 10 GiB (the store
// is served by every shard, rank 0 or not, and a legitimate gloo rendezvous stores a few hundred bytes per
// rank). Here 256 distinct 1 MiB values are all accepted.
TEST(RingHostile, RendezvousStoreBoundsWhatAPeerSends)
{
    Launch t("hostile-kv", test::smallModel("hostile-kv"));
    t.launch();
    auto peer = t.launchPeer();
    auto stub = v1::KvStore::NewStub(openChannel(*peer, t.shardAddress));
    const uint64_t before = rssBytes(t.shardPid);
    int accepted = 0;
    const std::string value(1 << 20, 'x');
    for (int i = 0; i < 256; ++i) {
        grpc::ClientContext ctx;
        ctx.set_deadline(in(std::chrono::seconds(10)));
        v1::KvSetRequest req;
        req.set_key(t.launchId + "/junk" + std::to_string(i));
        req.set_value(value);
        v1::KvSetReply rep;
        if (stub->Set(&ctx, req, &rep).ok())
            ++accepted;
    }
    const uint64_t after = rssBytes(t.shardPid);
    EXPECT_LE(accepted, 64) << "the store took " << accepted << " MiB from one peer (the shard grew by " << ((after - std::min(after, before)) >> 20)
                            << " MiB); at 10000 keys this is 10 GiB";
}

// BASELINE: Start refuses a header with more than 64 EOS ids (docs/SECURITY.md: "EOS ids and top logits capped
// at 64"); the honest master is the caller.
// Found in review, fixed since (worker/shard_server.cpp, ShardService::Pipe): the same header arriving on a ring pipe is not checked
// at all (EOS ids, top logits, window, generation), and becomes the running generation's header: a launch
// peer gets in through the pipe what Start refuses.
TEST(RingHostile, PipeHeaderIsCheckedLikeStart)
{
    Launch t("hostile-header", test::smallModel("hostile-header"));
    t.launch();
    v1::GenerationHeader h;
    h.set_generation(1000);
    h.set_max_tokens(1);
    for (int i = 0; i < 100000; ++i)
        h.add_eos_ids(1);

    {
        auto stub = v1::Shard::NewStub(openChannel(*t.master, t.shardAddress));
        grpc::ClientContext ctx;
        ctx.set_deadline(in(std::chrono::seconds(10)));
        v1::StartRequest req;
        *req.mutable_header() = h;
        req.add_tokens(1);
        v1::StartReply rep;
        grpc::Status s = stub->Start(&ctx, req, &rep);
        EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    }

    auto peer = t.launchPeer();
    auto stub = v1::Shard::NewStub(openChannel(*peer, t.shardAddress));
    grpc::ClientContext ctx;
    ctx.set_deadline(in(std::chrono::seconds(10)));
    auto s = stub->Pipe(&ctx);
    v1::PipeMessage m = tokenMessage(1000, 0, 0, 1);
    *m.mutable_header() = h;
    s->Write(m);
    v1::PipeAck ack;
    const bool acked = s->Read(&ack);
    s->WritesDone();
    grpc::Status st = s->Finish();
    EXPECT_FALSE(acked) << "the shard acknowledged and queued a header with 100000 EOS ids that Start refuses";
}

// Found in review, fixed since (worker/shard_server.cpp, ShardService::Pipe and the runner's window wait): the queue is capped at
// 1024 steps, not bytes, and a step's header is unchecked, so each queued step may hold ~60 MiB (15 M EOS ids,
// one byte each on the wire, four in memory): up to ~60 GiB on a stage-0 shard whose legitimate steps are one
// token each. The runner is held still the way the ring holds it while it waits for a master's
// acknowledgements: one message with a header (window 1) of a generation nobody acknowledges. 20 steps are
// sent here; the shard grows by more than a GiB.
TEST(RingHostile, PipeQueueIsBoundedInBytes)
{
    Launch t("hostile-queue", test::smallModel("hostile-queue"));
    t.launch();
    auto peer = t.launchPeer();
    auto stub = v1::Shard::NewStub(openChannel(*peer, t.shardAddress));
    grpc::ClientContext ctx;
    ctx.set_deadline(in(std::chrono::seconds(120)));
    auto s = stub->Pipe(&ctx);
    v1::PipeAck ack;
    // 1. Hold the runner: a generation whose first token waits for an acknowledgement that never comes.
    v1::PipeMessage hold = tokenMessage(1000, 0, 0, 1);
    hold.mutable_header()->set_generation(1000);
    hold.mutable_header()->set_window(1);
    ASSERT_TRUE(s->Write(hold));
    ASSERT_TRUE(s->Read(&ack));
    ASSERT_TRUE(test::waitFor(
        [&] {
            auto st = v1::Shard::NewStub(openChannel(*t.master, t.shardAddress));
            grpc::ClientContext c;
            c.set_deadline(in(std::chrono::seconds(2)));
            v1::StatusRequest req;
            v1::StatusReply rep;
            return st->Status(&c, req, &rep).ok() && rep.activity().find("waiting for the master") != std::string::npos;
        },
        std::chrono::seconds(20)))
        << "the runner did not stop to wait for acknowledgements";
    const uint64_t before = rssBytes(t.shardPid);
    // 2. Queue steps whose headers are as big as a message allows.
    v1::PipeMessage big = tokenMessage(1001, 0, 0, 1);
    big.mutable_header()->set_generation(1001);
    for (int i = 0; i < 15 * 1000 * 1000; ++i)
        big.mutable_header()->add_eos_ids(1);
    ASSERT_LT(big.ByteSizeLong(), static_cast<size_t>(kMaxMessageBytes));
    int queued = 0;
    for (int i = 0; i < 20; ++i) {
        if (!s->Write(big) || !s->Read(&ack))
            break;
        ++queued;
    }
    const uint64_t after = rssBytes(t.shardPid);
    ctx.TryCancel();
    EXPECT_LT(after - std::min(after, before), uint64_t(256) << 20)
        << queued << " steps of one token each made the shard grow by " << ((after - std::min(after, before)) >> 20) << " MiB";
}

// ---------------------------------------------------------------------------------------------------------
// Observe: acknowledgements and Stop.
// ---------------------------------------------------------------------------------------------------------

// Found in review, fixed since (worker/shard_server.cpp, ShardService::Observe's reader): Stop is kept as the highest generation ever
// named, from any Observe stream, with no check that the generation exists. One request {generation: 2^64-1,
// stop: true} (from a caller with the owner's name, which Hello discloses, or from a confused master) ends
// every later answer of the launch after its first token, as "stopped", silently: the master shows a one-token
// answer as if the user had stopped it.
TEST(RingHostile, ObserveStopForAFutureGenerationIsIgnored)
{
    Launch t("hostile-stop", test::smallModel("hostile-stop"));
    t.launch();
    std::vector<int> got;
    auto collect = [&](const RingToken& tok) {
        got.push_back(tok.token);
        return true;
    };
    ASSERT_EQ(t.cluster->generate(greedyRing({1, 2, 3, 4}, 6), collect), "max tokens");
    ASSERT_EQ(got.size(), 6u);

    observeOnce(*t.ownerLookalike(), t.shardAddress, std::numeric_limits<uint64_t>::max(), 0, true);

    got.clear();
    const std::string end = t.cluster->generate(greedyRing({5, 6, 7}, 6), collect);
    EXPECT_EQ(end, "max tokens");
    EXPECT_EQ(got.size(), 6u) << "the next answer was cut after " << got.size() << " token(s), ending \"" << end << "\"";
}

// Found in review, fixed since (worker/shard_server.cpp, Observe's reader and the runner's window wait; core/controller.cpp
// Controller::stop, core/cluster.cpp Cluster::generate): acknowledgements are kept for the highest generation
// ever named, so one {generation: 2^64-1} makes the shard ignore the master's acknowledgements from then on:
// the next answer stops after `window` tokens and the runner waits forever. The master waits with it: the
// token stream has no progress deadline, every Status answers, and the user's Stop only acts when a token
// arrives, so Stop never ends the answer (only cancel, which drops the launch, does).
TEST(RingHostile, ObserveAckForAFutureGenerationIsIgnoredAndStopEndsAStall)
{
    Launch t("hostile-ack", test::smallModel("hostile-ack"));
    auto tokenizer = std::make_shared<const Tokenizer>(Tokenizer::fromDirectory(t.model));
    std::mutex mutex;
    std::vector<ControllerEvent> events;
    Controller controller(t.master, tokenizer, [&](const ControllerEvent& e) {
        std::lock_guard lock(mutex);
        events.push_back(e);
    });
    auto count = [&](ControllerEvent::Kind k) {
        std::lock_guard lock(mutex);
        return std::count_if(events.begin(), events.end(), [&](auto& e) { return e.kind == k; });
    };
    LaunchRequest launch;
    launch.modelDir = t.model;
    launch.contextLength = 512;
    launch.plan = Plan::even(ModelConfig::fromDirectory(t.model), 1, 1, {t.daemon->address()}, 1);
    controller.launch(launch);
    controller.wait();
    ASSERT_EQ(count(ControllerEvent::Kind::Launched), 1);
    t.learn();

    GenerateRequest g;
    g.ids = {1, 2, 3, 4};
    g.params.maxTokens = 12;
    g.sampling.temperature = 0;
    g.window = 2;
    controller.generate(g);
    controller.wait();
    ASSERT_EQ(count(ControllerEvent::Kind::Ended), 1) << "the first answer did not end";

    observeOnce(*t.ownerLookalike(), t.shardAddress, std::numeric_limits<uint64_t>::max(), 0, false);

    const auto tokensBefore = count(ControllerEvent::Kind::Token);
    g.ids = {5, 6, 7};
    controller.generate(g);
    const bool finished = test::waitFor([&] { return count(ControllerEvent::Kind::Ended) + count(ControllerEvent::Kind::Failed) > 1; },
                                        std::chrono::seconds(10));
    const auto tokens = count(ControllerEvent::Kind::Token) - tokensBefore;
    bool stopped = finished;
    if (!finished) {
        controller.stop(); // the user presses Stop
        stopped = test::waitFor([&] { return count(ControllerEvent::Kind::Ended) + count(ControllerEvent::Kind::Failed) > 1; },
                                std::chrono::seconds(10));
        if (!stopped)
            controller.cancel(); // only this ends it (and the launch with it)
    }
    controller.wait();
    EXPECT_TRUE(finished) << "the answer stalled after " << tokens << " of 12 tokens with every shard answering Status";
    EXPECT_TRUE(stopped) << "the user's Stop did not end the stalled answer within 10 s";
}

// ---------------------------------------------------------------------------------------------------------
// The slice cache: a hostile file in the folder.
// ---------------------------------------------------------------------------------------------------------

void writeEntry(const std::string& path, const std::string& header, uint64_t dataBytes)
{
    std::string prefix = "TGSLICE1";
    for (int i = 0; i < 8; ++i)
        prefix.push_back(static_cast<char>(static_cast<uint64_t>(header.size()) >> (8 * i)));
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << prefix << header;
    f.close();
    fs::resize_file(path, prefix.size() + header.size() + dataBytes); // sparse: no disk is used
}

// Runs f in a child process and returns how much its peak resident memory grew (bytes).
uint64_t peakGrowthInChild(const std::function<void()>& f)
{
    int fds[2];
    if (::pipe(fds) != 0)
        return 0;
    pid_t pid = ::fork();
    if (pid == 0) {
        ::close(fds[0]);
        rusage a {}, b {};
        ::getrusage(RUSAGE_SELF, &a);
        try {
            f();
        } catch (...) {
        }
        ::getrusage(RUSAGE_SELF, &b);
        const uint64_t grown = static_cast<uint64_t>(std::max<long>(0, b.ru_maxrss - a.ru_maxrss)) * 1024;
        (void)!::write(fds[1], &grown, sizeof grown);
        ::_exit(0);
    }
    ::close(fds[1]);
    uint64_t grown = 0;
    (void)!::read(fds[0], &grown, sizeof grown);
    ::close(fds[0]);
    ::waitpid(pid, nullptr, 0);
    return grown;
}

bool overcommitAlways()
{
    std::ifstream f("/proc/sys/vm/overcommit_memory");
    int mode = 0;
    f >> mode;
    return mode == 1;
}

// Found in review, fixed since (core/slice_cache.cpp, readEntry): sizes are checked against the file's size, but a sparse file can
// claim any size up to the filesystem's limit at no disk cost. A header naming the master's tensor and hash
// with a 1 TiB shape makes load() allocate 1 TiB: std::bad_alloc escapes load() (documented: "never throws
// for a bad entry") and the entry is not deleted. (A claim just under the machine's memory would instead be
// zero-filled and bring in the OOM killer.) The shape is known to the caller (the shard's slice) and could be
// checked first.
TEST(RingHostile, SliceCacheSparseEntryIsAMissAndDeleted)
{
    if (overcommitAlways())
        GTEST_SKIP() << "vm.overcommit_memory = 1: a 1 TiB allocation would succeed and be zero-filled";
    const std::string dir = test::makeTempDir("hostile-sparse");
    SliceCache cache(dir + "/cache", 1ull << 30);
    std::vector<float> w(16, 0.5f);
    const std::string hash = sha256(w.data(), w.size() * 4);
    const std::string key = SliceCache::key("model", "slice", {{"w", hash}});
    std::string hex;
    for (unsigned char c : hash) {
        static const char* d = "0123456789abcdef";
        hex += d[c >> 4];
        hex += d[c & 15];
    }
    const uint64_t claimed = 1ull << 40;
    json header = {{"key", key},
                   {"tensors", {{{"name", "w"}, {"dtype", "F32"}, {"shape", {claimed / 4}}, {"offset", 0}, {"size", claimed}, {"sha256", hex}}}}};
    const std::string path = dir + "/cache/" + key + ".slice";
    writeEntry(path, header.dump(), claimed);

    std::optional<std::vector<CachedTensor>> got;
    std::string thrown;
    try {
        got = cache.load(key, {{"w", hash}});
    } catch (const std::exception& e) {
        thrown = e.what();
    }
    EXPECT_EQ(thrown, "") << "load() threw for a bad entry";
    EXPECT_FALSE(got.has_value());
    EXPECT_FALSE(fs::exists(path)) << "the bad entry was kept";
}

// Found in review, fixed since (the same, seen end to end: worker/shard_server.cpp LoadCached, core/cluster.cpp): a worker whose
// cache holds such an entry for a slice fails every launch that places that slice on it ("load cached
// weights: std::bad_alloc"), instead of deleting the entry and letting the master stream the slice
// (docs/SECURITY.md: "A corrupt or foreign entry is deleted and the master streams the slice instead").
TEST(RingHostile, SparseCacheEntryIsReplacedByAStreamedSlice)
{
    if (overcommitAlways())
        GTEST_SKIP() << "vm.overcommit_memory = 1: a 1 TiB allocation would succeed and be zero-filled";
    const std::string model = test::smallModel("hostile-cache");
    Launch t("hostile-cache", model, {"--cache-size", "1"});
    t.launch();
    t.cluster->stop();
    t.cluster.reset();
    // The entry the first launch left.
    std::string path;
    for (auto& e : fs::directory_iterator(t.dir + "/state/slice-cache"))
        if (e.path().extension() == ".slice")
            path = e.path();
    ASSERT_FALSE(path.empty()) << "the first launch left no slice in the cache";
    std::string bytes;
    {
        std::ifstream f(path, std::ios::binary);
        std::stringstream ss;
        ss << f.rdbuf();
        bytes = ss.str();
    }
    uint64_t headerBytes = 0;
    for (int i = 0; i < 8; ++i)
        headerBytes |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    json header = json::parse(bytes.substr(16, headerBytes));
    const std::string data = bytes.substr(16 + headerBytes);
    // The first tensor claims 1 TiB; the others keep their bytes, after it.
    auto& first = header["tensors"][0];
    const uint64_t elem = first["dtype"] == "F32" ? 4 : 2;
    const uint64_t oldSize = first["size"].get<uint64_t>();
    const uint64_t claimed = 1ull << 40;
    first["shape"] = json::array({claimed / elem});
    first["size"] = claimed;
    for (size_t i = 1; i < header["tensors"].size(); ++i)
        header["tensors"][i]["offset"] = header["tensors"][i]["offset"].get<uint64_t>() - oldSize + claimed;
    const std::string text = header.dump();
    writeEntry(path, text, claimed + data.size() - oldSize);
    {
        const int fd = ::open(path.c_str(), O_WRONLY);
        ASSERT_GE(fd, 0);
        const std::string rest = data.substr(oldSize);
        ASSERT_EQ(::pwrite(fd, rest.data(), rest.size(), static_cast<off_t>(16 + text.size() + claimed)), static_cast<ssize_t>(rest.size()));
        ::close(fd);
    }

    std::string error;
    try {
        t.launch();
    } catch (const std::exception& e) {
        error = e.what();
    }
    EXPECT_EQ(error, "") << "a bad cache entry failed the launch instead of being deleted and streamed over";
    // The bad entry was deleted; the streamed slice was stored again under the same key, whole this time.
    EXPECT_TRUE(!fs::exists(path) || fs::file_size(path) < claimed) << "the bad entry is still there: every later launch of this slice fails the same way";
}

// Found in review, fixed since (core/slice_cache.cpp, kMaxHeaderBytes and the DOM parse): the 64 MiB header cap is ~400x any real
// slice's header, and a header of nested arrays parses into a DOM ~40x its size before the key is even
// compared: one file makes the shard that looks it up grow by ~2.4 GiB. Parsing with a depth limit (or a
// tighter cap) keeps it to the file's size.
TEST(RingHostile, SliceCacheNestedHeaderIsRefusedCheaply)
{
    const std::string dir = test::makeTempDir("hostile-nested");
    SliceCache cache(dir + "/cache", 1ull << 30);
    const std::string key = SliceCache::key("model", "slice", {{"w", std::string(32, 'h')}});
    const size_t depth = 32u << 20;
    std::string header(depth, '[');
    header.append(depth, ']');
    writeEntry(dir + "/cache/" + key + ".slice", header, 0);
    const uint64_t grown = peakGrowthInChild([&] { cache.load(key, {{"w", std::string(32, 'h')}}); });
    EXPECT_LT(grown, uint64_t(512) << 20) << "looking up one 64 MiB entry made the process grow by " << (grown >> 20) << " MiB";
}

} // namespace
