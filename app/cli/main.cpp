// SPDX-License-Identifier: MIT
// together-cli: the headless front end. Links core only (no Qt, no libtorch).
#include "base/cli_args.h"
#include "base/error.h"
#include "base/files.h"
#include "base/host_info.h"
#include "base/json.h"
#include "base/process.h"
#include "cli/cluster_bench.h"
#include "cli/predict_command.h"
#include "cli/verify_command.h"
#include "common/placements.h"
#include "common/workers_command.h"
#include "master/cluster.h"
#include "master/controller.h"
#include "model/model_catalog.h"
#include "model/random_model.h"
#include "model/run_dtype.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "net/rpc.h"
#include "text/chat.h"
#include "text/run_options.h"
#include "text/tokenizer.h"

#include <nlohmann/json.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include <sys/wait.h>
#include <unistd.h>

using namespace together;

namespace {

const char* kUsage =
    "usage:\n"
    "  together-cli tokenize --model DIR --text TEXT [--no-special]\n"
    "      Prints the token ids, space-separated, on one line.\n"
    "  together-cli detokenize --model DIR --ids \"1 2 3\" [--skip-special]\n"
    "  together-cli chat-template --model DIR --messages FILE.json [--no-generation-prompt]\n"
    "      Prints the prompt the model's chat template renders for an OpenAI-style messages array.\n"
    "  together-cli workers [--key-file K] [--wait S] [--json] [--watch] [--probe] [--add HOST:PORT]... [--forget HOST:PORT]...\n"
    "                       [--discovery-port P] [--discovery-interfaces IF,IF] [--no-broadcast]\n"
    "      Lists the worker daemons on the LAN (UDP broadcast discovery, then an authenticated Hello to each) and\n"
    "      workers added by address (remembered), each with its state: ready, busy, refused, unreachable or gone\n"
    "      and why. Waits S seconds (default 2); --watch prints every change until S runs out or Ctrl-C. --probe\n"
    "      then measures every pair of ready workers' links (pipeline stream and all-reduce: latency, MB/s).\n"
    "  together-cli models [--model DIR]... [--hub DIR] [--dtype D] [--json]\n"
    "      The models in the Hugging Face cache (--hub, default $HF_HUB_CACHE or ~/.cache/huggingface/hub) and the\n"
    "      folders given: name, architecture, size, parameters, dtype, chat or base, and whether together can run\n"
    "      it or why not (unsupported architecture, quantized checkpoint, .bin weights only, no tokenizer.json).\n"
    "  together-cli worker-log HOST:PORT [--lines N] [--follow] [--key-file K]\n"
    "      A worker daemon's recent log (its own lines and its shards').\n"
    "  together-cli run --model DIR (--plan plan.json | --local tp=T,pp=P | --auto) --prompt TEXT [--chat] [--interactive]\n"
    "                   [--key-file F] [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]\n"
    "                   [--stop TEXT]... [--dtype bf16|q8|f32] [--threads N] [--trace FILE] [--context N] [--failover]\n"
    "                   [--timeline FILE] [--metrics FILE] [--window N] [--force] [--predict] [--save-plan F]\n"
    "                   [--local-workers N] [--add HOST:PORT]... [--wait S] [--no-broadcast]\n"
    "      Runs the model across worker daemons, as a ring: each stage streams to the next and the last sends the\n"
    "      token straight back to the first. --local starts one daemon per rank on this machine (loopback, fresh\n"
    "      key) and stops them afterwards. --auto finds the workers (as `workers` does; or starts --local-workers N\n"
    "      here), measures them and their links, and runs the placement with the lowest predicted ms/token that fits\n"
    "      memory, printing it and why (--save-plan writes it as a plan file). --predict: the same survey for a\n"
    "      given placement, and its prediction against the measured ms/token. A placement that needs more memory\n"
    "      than the workers have free is refused with the numbers; --force launches it anyway (a worker still holds\n"
    "      to what it donates). --interactive reads one user message per line from stdin. --context: KV cache\n"
    "      positions (default the model's). --failover: when a worker dies or stalls, place the model on the\n"
    "      workers left and continue the answer. --timeline: a Chrome trace (Perfetto) of every rank's compute and\n"
    "      links. --metrics: per-link p50/p95 as JSON. --window: tokens the shards may run ahead (default 4).\n"
    "  together-cli bench [--model DIR]... [--local tp=T,pp=P | --plan F | --auto]... [--out PREFIX] [--tokens N]\n"
    "                     [--prompt-tokens N] [--dtype bf16|q8|f32] [--threads N] [--context N] [--seed-table] [--force]\n"
    "                     [--key-file K] [--local-workers N] [--add HOST:PORT]... [--wait S] [--no-broadcast]\n"
    "      Runs each placement of each model in turn and writes PREFIX.md and PREFIX.csv (without --out, the\n"
    "      Markdown to stdout): a row per placement with TP, PP, machines, dtype, threads, prefill tok/s, decode\n"
    "      tok/s, time to first token, ms/token split into compute, all-reduce and links, scaling efficiency vs the\n"
    "      first row, the cost model's predicted ms/token and its error, and the largest shard's peak memory against\n"
    "      its estimate. --seed-table adds the original together-LLM table (columns models, rows TP sizes). Without\n"
    "      --model: TinyLlama-1.1B's shape with random weights; without placements: TP1, TP2 and PP2 on local\n"
    "      workers. `bench-cluster` is the old name.\n"
    "  together-cli predict --model DIR (--plan plan.json | --auto) --machines FILE [--dtype bf16|q8|f32] [--context N]\n"
    "      The cost model: a placement's predicted ms/token split into compute, all-reduces and links, and the same\n"
    "      with every link a named profile (loopback, 10 GbE, 2.5 GbE, 1 GbE, Wi-Fi 5); --auto finds the placement with\n"
    "      the lowest prediction that fits memory and says why. FILE holds each worker's measured speeds (see README).\n"
    "  together-cli verify --model DIR (--local tp=T,pp=P | --plan F | --auto) [--steps N] [--prompt TEXT] [--dtype D]\n"
    "      Runs the placement and the whole model on one of its machines for N greedy steps (default 32) and says\n"
    "      whether the token ids agree and the largest logit difference; exits 1 when they differ. When no machine\n"
    "      holds the whole model, each tensor-parallel stage is compared with its layers on one machine.\n"
    "  together-cli keygen [--out FILE | --save]\n"
    "      Makes a new cluster key and prints it (14 groups of 4 letters and digits, typeable). --out writes it to\n"
    "      FILE (mode 0600); --save to this user's key file, which `run`, `workers` and `together-worker serve`\n"
    "      read when no --key-file is given. A worker asks for the key on its terminal the first time.\n"
    "  together-cli make-model --out DIR [--shape NAME] [--hidden N] [--intermediate N] [--layers N] [--heads N]\n"
    "                          [--kv-heads N] [--head-dim N] [--vocab N] [--arch NAME] [--dtype f32|bf16] [--tie]\n"
    "                          [--seed S] [--logit-scale X] [--max-pos N]\n"
    "      Writes a random-weight model as real Hugging Face files (for tests and benchmarks): a named shape (default,\n"
    "      tiny, small, large-margin, accuracy, layer-overhead, tinyllama-1.1b, llama3-8b; default: default), with\n"
    "      any of its numbers replaced by the flags.\n";

int tokenize(const CliArgs& a)
{
    Tokenizer t = Tokenizer::fromDirectory(a.get("model"));
    auto ids = t.encode(a.get("text"), !a.has("no-special"));
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i)
        line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
    return 0;
}

int detokenize(const CliArgs& a)
{
    Tokenizer t = Tokenizer::fromDirectory(a.get("model"));
    std::vector<int> ids;
    std::string s = a.get("ids");
    size_t i = 0;
    while (i < s.size()) {
        while (i < s.size() && (s[i] == ' ' || s[i] == ','))
            ++i;
        size_t j = i;
        while (j < s.size() && s[j] != ' ' && s[j] != ',')
            ++j;
        if (j > i) {
            try {
                ids.push_back(std::stoi(s.substr(i, j - i)));
            } catch (...) {
                throw Error("--ids: '" + s.substr(i, j - i) + "' is not a token id");
            }
        }
        i = j;
    }
    std::string text = t.decode(ids, a.has("skip-special"));
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::printf("\n");
    return 0;
}

int chatTemplate(const CliArgs& a)
{
    Tokenizer t = Tokenizer::fromDirectory(a.get("model"));
    const nlohmann::json messages = parseUntrustedJson(readTextFile(a.get("messages")), a.get("messages"));
    ChatPrompt p = renderChat(t, messages, !a.has("no-generation-prompt"));
    if (p.usedFallbackTemplate)
        std::fprintf(stderr, "together-cli: warning: the model has no chat_template; using a plain fallback format\n");
    std::fwrite(p.rendered.text.data(), 1, p.rendered.text.size(), stdout);
    return 0;
}

int makeModel(const CliArgs& a)
{
    RandomModelSpec s = modelShape(a.get("shape", "default"));
    s.architecture = a.get("arch", s.architecture);
    s.hiddenSize = a.getInt("hidden", static_cast<int>(s.hiddenSize));
    s.intermediateSize = a.getInt("intermediate", static_cast<int>(s.intermediateSize));
    s.numLayers = a.getInt("layers", static_cast<int>(s.numLayers));
    s.numHeads = a.getInt("heads", static_cast<int>(s.numHeads));
    s.numKvHeads = a.getInt("kv-heads", static_cast<int>(s.numKvHeads));
    s.headDim = a.getInt("head-dim", static_cast<int>(s.headDim));
    s.vocabSize = a.getInt("vocab", static_cast<int>(s.vocabSize));
    s.maxPositionEmbeddings = a.getInt("max-pos", static_cast<int>(s.maxPositionEmbeddings));
    s.tieWordEmbeddings = s.tieWordEmbeddings || a.has("tie");
    s.seed = a.getU64("seed", s.seed);
    s.logitScale = a.getDouble("logit-scale", s.logitScale);
    if (a.has("dtype")) {
        const std::string dt = a.get("dtype");
        if (dt == "f32")
            s.dtype = DType::F32;
        else if (dt == "bf16")
            s.dtype = DType::BF16;
        else if (dt == "f16")
            s.dtype = DType::F16;
        else
            throw Error("--dtype must be f32, bf16 or f16");
    }
    if (!a.has("out"))
        throw Error("--out DIR is required");
    writeRandomModel(a.get("out"), s);
    std::fprintf(stderr, "wrote random-weight %s to %s\n", s.architecture.c_str(), a.get("out").c_str());
    return 0;
}

std::atomic<bool> g_interrupted{false};

void onInterrupt(int) { g_interrupted = true; }

std::string fixed(double v, int digits = 2)
{
    char b[64];
    std::snprintf(b, sizeof b, "%.*f", digits, v);
    return b;
}

// What the CLI keeps of the controller's events: it prints as they come and waits for the outcome.
struct CliSink {
    std::mutex mutex;
    std::ofstream* trace = nullptr;
    bool launchFailed = false, failed = false;
    std::string failure;
    GenerationResult result;
    std::map<size_t, std::pair<RankProgress::Phase, std::chrono::steady_clock::time_point>> lastProgress;
    uint64_t traceStep = 0;

    void onEvent(const ControllerEvent& e)
    {
        std::lock_guard lock(mutex);
        switch (e.kind) {
        case ControllerEvent::Kind::Progress: {
            // A line per phase change, and at most one a second while bytes move.
            auto now = std::chrono::steady_clock::now();
            auto it = lastProgress.find(e.progress.index);
            if (it != lastProgress.end() && it->second.first == e.progress.phase && now - it->second.second < std::chrono::seconds(1))
                return;
            lastProgress[e.progress.index] = {e.progress.phase, now};
            std::fprintf(stderr, "together: %s\n", describeProgress(e.progress).c_str());
            return;
        }
        case ControllerEvent::Kind::Notice:
        case ControllerEvent::Kind::Log:
        case ControllerEvent::Kind::Launched:
            std::fprintf(stderr, "together: %s\n", e.text.c_str());
            return;
        case ControllerEvent::Kind::LaunchFailed:
            launchFailed = true;
            failure = e.text;
            return;
        case ControllerEvent::Kind::Token:
            if (!e.text.empty()) {
                std::fwrite(e.text.data(), 1, e.text.size(), stdout);
                std::fflush(stdout);
            }
            if (trace && e.token.token >= 0) {
                nlohmann::json line = {{"step", traceStep++}, {"pos", e.token.pos}, {"n_input", e.token.inputTokens}, {"token", e.token.token}};
                nlohmann::json top = nlohmann::json::array();
                for (auto& [id, logit] : e.token.top)
                    top.push_back({id, logit});
                line["top"] = top;
                *trace << line.dump() << '\n';
                trace->flush();
            }
            return;
        case ControllerEvent::Kind::Ended:
            failed = false;
            result = e.result;
            return;
        case ControllerEvent::Kind::Failed:
            failed = true;
            failure = e.text;
            result = e.result;
            return;
        case ControllerEvent::Kind::Step:
        case ControllerEvent::Kind::Unloaded:
            return;
        }
    }
};

// Where the time of a token went, from the records the ranks measured (p50 over decode steps).
void printLinks(Controller& c)
{
    auto t = c.totals();
    if (t.steps == 0)
        return;
    std::fprintf(stderr, "together: per token (p50 of %zu steps): %s ms = compute %s + communication %s + sampling %s\n", t.steps,
                 fixed(t.endToEndMs).c_str(), fixed(t.computeMs).c_str(), fixed(t.communicationMs).c_str(), fixed(t.samplingMs).c_str());
    for (auto& l : c.linkSummary())
        std::fprintf(stderr, "together:   %s: p50 %s ms, p95 %s ms, %s bytes per step\n", l.name.c_str(), fixed(l.p50Ms, 3).c_str(),
                     fixed(l.p95Ms, 3).c_str(), fixed(l.bytesPerStep, 0).c_str());
}

// The prediction for a placement, on stderr, for a person choosing one.
void printChosen(const ChosenPlacement& chosen, bool showPlan)
{
    if (showPlan)
        std::fprintf(stderr, "together: placement: %s\n", describePlan(chosen.plan).c_str());
    if (!chosen.explanation.empty())
        std::fprintf(stderr, "together: %s\n", chosen.explanation.c_str());
    if (chosen.prediction) {
        const Prediction& p = *chosen.prediction;
        std::fprintf(stderr, "together: predicted %s ms/token (%s tokens/s) = compute %s + all-reduce %s + links %s\n", fixed(p.msPerToken).c_str(),
                     fixed(p.tokensPerSecond).c_str(), fixed(p.computeMs()).c_str(), fixed(p.allReduceMs()).c_str(), fixed(p.linkMs()).c_str());
    } else if (!chosen.note.empty()) {
        std::fprintf(stderr, "together: %s\n", chosen.note.c_str());
    }
}

int runCluster(const std::vector<std::string>& rest)
{
    auto specs = runFlagSpecs();
    for (auto& f : placementFlagSpecs())
        specs.push_back(f);
    for (const char* f : {"context", "timeline", "metrics", "window"})
        specs.push_back({f});
    specs.push_back({"interactive", false});
    specs.push_back({"failover", false});
    specs.push_back({"predict", false});
    specs.push_back({"save-plan"});
    CliArgs a(rest, specs);
    const bool interactive = a.has("interactive");
    if (interactive && !a.has("chat"))
        throw Error("--interactive needs --chat (each line is a user message in the model's chat template)");
    const PlacementSource source = placementSources(rest, false).front();
    RunOptions o = parseRunOptions(a, !interactive);
    ModelConfig config = ModelConfig::fromDirectory(o.modelDir);
    auto tokenizer = std::make_shared<const Tokenizer>(Tokenizer::fromDirectory(o.modelDir));
    const int64_t context = a.getInt("context", 0);
    if (a.has("context") && context < 1)
        throw Error("--context takes a number of positions of at least 1");
    const int window = a.getInt("window", 4);
    if (window < 0 || window > 1024)
        throw Error("--window takes 0 (no limit) to 1024 tokens");
    std::string dtype = !o.dtype.empty() ? o.dtype : defaultDtypeName();
    if (source.kind == PlacementSource::Kind::PlanFile && o.dtype.empty()) {
        const Plan p = Plan::fromJson(readTextFile(source.spec), source.spec);
        if (!p.dtype.empty())
            dtype = p.dtype;
    }
    if (!isRunDtype(dtype))
        throw Error("--dtype must be bf16, q8 or f32");

    std::signal(SIGINT, onInterrupt);
    std::signal(SIGPIPE, SIG_IGN);
    const TempDir tmp("run");
    PlacementContext pc;
    pc.config = config;
    pc.dtype = dtype;
    pc.context = context;
    pc.threads = o.threads;
    pc.keyFile = a.get("key-file");
    pc.tempDir = tmp.path();
    pc.args = &a;
    pc.predict = a.has("predict");
    pc.progress = [](const std::string& line) { std::fprintf(stderr, "together: %s\n", line.c_str()); };
    ChosenPlacement chosen = choosePlacement(source, pc);
    printChosen(chosen, source.kind == PlacementSource::Kind::Auto);
    const Plan plan = chosen.plan;
    const std::string keyFile = chosen.keyFile;
    if (a.has("save-plan")) {
        Plan saved = plan;
        saved.dtype = dtype;
        atomicWrite(a.get("save-plan"), saved.toJson() + "\n");
        std::fprintf(stderr, "together: wrote the placement to %s (run it again with --plan)\n", a.get("save-plan").c_str());
    }

    std::ofstream traceOut;
    if (!o.traceFile.empty()) {
        traceOut.open(o.traceFile, std::ios::trunc);
        if (!traceOut)
            throw Error("cannot write trace file " + o.traceFile);
    }
    CliSink sink;
    sink.trace = traceOut.is_open() ? &traceOut : nullptr;
    Controller controller(std::make_shared<const Credentials>(ClusterKey::fromFile(keyFile), newMasterIdentity()), tokenizer,
                          [&sink](const ControllerEvent& e) { sink.onEvent(e); });
    // Ctrl-C stops the answer (the shards keep a consistent cache) and then the run ends.
    std::atomic<bool> done{false};
    std::thread interrupts([&] {
        while (!done) {
            if (g_interrupted) {
                controller.stop();
                controller.cancel();
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    });
    struct Join {
        std::atomic<bool>& done;
        std::thread& t;
        ~Join()
        {
            done = true;
            t.join();
        }
    } join{done, interrupts};

    LaunchRequest launch;
    launch.plan = plan;
    launch.modelDir = o.modelDir;
    launch.dtype = dtype;
    launch.contextLength = context;
    launch.failover = a.has("failover");
    launch.force = a.has("force");
    controller.launch(launch);
    controller.wait();
    if (sink.launchFailed)
        throw Error(sink.failure);
    const std::string setup = dtype + ", " + std::to_string(plan.stages.size()) + " stage(s), " + std::to_string(plan.rankCount()) + " shard(s)";

    // The timeline and the metrics are written however the run ends.
    auto writeOutputs = [&] {
        controller.syncRecords();
        if (a.has("timeline")) {
            try {
                atomicWrite(a.get("timeline"), controller.chromeTrace());
            } catch (const Error& e) {
                std::fprintf(stderr, "together: %s\n", e.what());
            }
        }
        if (a.has("metrics")) {
            nlohmann::json j;
            auto t = controller.totals();
            j["totals"] = {{"steps", t.steps}, {"end_to_end_ms", t.endToEndMs}, {"compute_ms", t.computeMs}, {"communication_ms", t.communicationMs},
                           {"sampling_ms", t.samplingMs}, {"tokens_per_second", t.tokensPerSecond}};
            j["links"] = nlohmann::json::array();
            for (auto& l : controller.linkSummary())
                j["links"].push_back({{"name", l.name}, {"samples", l.samples}, {"p50_ms", l.p50Ms}, {"p95_ms", l.p95Ms}, {"mean_ms", l.meanMs},
                                      {"bytes_per_step", l.bytesPerStep}});
            j["sources"] = controller.weightSources();
            atomicWrite(a.get("metrics"), j.dump(1) + "\n");
        }
        printLinks(controller);
        if (chosen.prediction && controller.totals().steps > 0) {
            const double measured = controller.totals().endToEndMs;
            std::fprintf(stderr, "together: predicted %s ms/token, measured %s (%+.0f%%)\n", fixed(chosen.prediction->msPerToken).c_str(),
                         fixed(measured).c_str(), 100.0 * (chosen.prediction->msPerToken - measured) / measured);
        }
    };
    auto runTurn = [&](const std::vector<int>& ids, uint64_t seed) {
        GenerateRequest g;
        g.ids = ids;
        g.params = o.generation;
        g.sampling = o.sampling;
        g.sampling.seed = seed;
        g.window = static_cast<uint32_t>(window);
        controller.generate(g);
        controller.wait();
        if (::isatty(STDOUT_FILENO)) // end the line for a person; scripts get exactly the generated text
            std::fputc('\n', stdout);
        std::fflush(stdout);
        if (sink.failed) {
            writeOutputs();
            throw Error(sink.failure);
        }
        printSpeedLine(sink.result, setup, seed);
        return sink.result;
    };
    if (!interactive) {
        std::string warning;
        std::vector<int> ids = promptIds(*tokenizer, o, &warning);
        if (!warning.empty())
            std::fprintf(stderr, "together: warning: %s\n", warning.c_str());
        runTurn(ids, o.sampling.seed);
        writeOutputs();
        return g_interrupted ? 130 : 0;
    }
    // One user message per line; the conversation is re-rendered each turn and the controller prefills only
    // the tokens after what the shards already hold.
    nlohmann::json messages = nlohmann::json::array();
    std::string line;
    uint64_t turn = 0;
    while (!g_interrupted && std::getline(std::cin, line)) {
        if (line.empty())
            continue;
        messages.push_back({{"role", "user"}, {"content", line}});
        ChatPrompt p = renderChat(*tokenizer, messages, true);
        if (p.usedFallbackTemplate && turn == 0)
            std::fprintf(stderr, "together: warning: the model has no chat_template; using a plain fallback format\n");
        GenerationResult r = runTurn(encodeChat(*tokenizer, p), o.sampling.seed + turn++);
        std::fputc('\n', stdout);
        std::fflush(stdout);
        messages.push_back({{"role", "assistant"}, {"content", r.text}});
    }
    writeOutputs();
    return g_interrupted ? 130 : 0;
}

} // namespace

int main(int argc, char** argv)
{
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        std::fputs(kUsage, args.empty() ? stderr : stdout);
        return args.empty() ? 2 : 0;
    }
    std::string cmd = args[0];
    std::vector<std::string> rest(args.begin() + 1, args.end());
    routeGrpcLog({}); // failures reach the user as messages naming the worker, not as gRPC's own log lines
    try {
        auto need = [](const CliArgs& a, const char* flag) {
            if (!a.has(flag))
                throw Error(std::string("--") + flag + " is required");
        };
        if (cmd == "tokenize") {
            CliArgs a(rest, {{"model"}, {"text"}, {"no-special", false}});
            need(a, "model");
            need(a, "text");
            return tokenize(a);
        }
        if (cmd == "detokenize") {
            CliArgs a(rest, {{"model"}, {"ids"}, {"skip-special", false}});
            need(a, "model");
            need(a, "ids");
            return detokenize(a);
        }
        if (cmd == "chat-template") {
            CliArgs a(rest, {{"model"}, {"messages"}, {"no-generation-prompt", false}});
            need(a, "model");
            need(a, "messages");
            return chatTemplate(a);
        }
        if (cmd == "run")
            return runCluster(rest);
        if (cmd == "predict")
            return runPredict(rest);
        if (cmd == "verify")
            return runVerify(rest);
        if (cmd == "bench" || cmd == "bench-cluster")
            return runBench(rest);
        if (cmd == "keygen") {
            CliArgs a(rest, {{"out"}, {"save", false}});
            if (a.has("out") && a.has("save"))
                throw Error("give --out FILE or --save, not both");
            const ClusterKey key = ClusterKey::generate();
            const std::string file = a.has("save") ? defaultKeyFile() : a.get("out");
            if (!file.empty())
                key.writeFile(file);
            std::printf("%s\n", key.text().c_str());
            std::fprintf(stderr,
                         "%s\nOn each worker machine, run `together-worker serve` and type this key when asked (it is stored "
                         "there, mode 0600),\nor copy the key file and run `together-worker serve --key-file FILE`. Key fingerprint: %s.\n",
                         file.empty() ? "This key is not saved: run again with --save (or --out FILE) to keep one."
                                      : ("Wrote the key to " + file + " (mode 0600).").c_str(),
                         key.fingerprint().c_str());
            return 0;
        }
        if (cmd == "models") {
            CliArgs a(rest, {{"hub"}, {"model", true, true}, {"dtype"}, {"json", false}});
            std::vector<ModelEntry> list;
            for (auto& d : a.all("model"))
                list.push_back(describeModelFolder(d, a.get("dtype")));
            const std::string hub = a.get("hub", huggingFaceHubDir());
            for (auto& e : scanHuggingFaceCache(hub, a.get("dtype")))
                list.push_back(e);
            for (auto& e : list) {
                if (a.has("json")) {
                    nlohmann::json j = {{"path", e.path}, {"name", e.name}, {"architecture", e.architecture}, {"weight_bytes", e.weightBytes},
                                        {"parameters", e.parameters}, {"dtype", e.dtype}, {"chat_template", e.hasChatTemplate},
                                        {"needed_bytes", e.neededBytes}, {"runnable", e.runnable}, {"reason", e.reason}};
                    std::printf("%s\n", j.dump().c_str());
                } else {
                    const double p = static_cast<double>(e.parameters);
                    const std::string params = p >= 1e9 ? fixed(p / 1e9) + "B" : p >= 1e6 ? fixed(p / 1e6, 1) + "M" : fixed(p / 1e3, 0) + "K";
                    std::printf("%-40s %-20s %10s %7s %-5s %-4s %s\n    %s\n", e.name.c_str(), e.architecture.empty() ? "?" : e.architecture.c_str(),
                                formatBytes(e.weightBytes).c_str(), params.c_str(), e.dtype.empty() ? "?" : e.dtype.c_str(),
                                e.hasChatTemplate ? "chat" : "base", e.runnable ? "can run" : ("cannot run: " + e.reason).c_str(), e.path.c_str());
                }
            }
            if (list.empty())
                std::fprintf(stderr, "together: no models in %s; give a folder with --model DIR\n", hub.c_str());
            return 0;
        }
        if (cmd == "workers")
            return runWorkers(rest);
        if (cmd == "worker-log")
            return runWorkerLog(rest);
        if (cmd == "make-model") {
            CliArgs a(rest, {{"out"}, {"shape"}, {"hidden"}, {"intermediate"}, {"layers"}, {"heads"}, {"kv-heads"}, {"head-dim"},
                             {"vocab"}, {"arch"}, {"dtype"}, {"tie", false}, {"seed"}, {"logit-scale"}, {"max-pos"}});
            return makeModel(a);
        }
        std::fprintf(stderr, "together-cli: unknown command '%s'\n%s", cmd.c_str(), kUsage);
        return 2;
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "\ntogether-cli: error: %s\n", e.what());
        return g_interrupted ? 130 : 1;
    }
}
