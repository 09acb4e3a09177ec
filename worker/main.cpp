// SPDX-License-Identifier: MIT
// together-worker: the libtorch side. `generate` runs a model in this one process; `bench` prints the
// single-process speed table; `serve` is the daemon of one machine of a cluster (worker/daemon.h), which starts
// `shard` processes; `install-service` makes it a systemd user service.
#include "base/cli_args.h"
#include "base/error.h"
#include "base/process.h"
#include "daemon/calibration.h"
#include "daemon/daemon.h"
#include "daemon/service_unit.h"
#include "engine/bench.h"
#include "engine/llama_model.h"
#include "kernels/kernels.h"
#include "model/model_config.h"
#include "model/run_dtype.h"
#include "model/safetensors.h"
#include "net/rpc.h"
#include "shard/shard_server.h"
#include "text/run_options.h"
#include "text/tokenizer.h"

#include <ATen/Parallel.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include <malloc.h>
#include <unistd.h>

using namespace together;

namespace {

const char* kUsage =
    "usage:\n"
    "  together-worker generate [--model DIR] --prompt TEXT [--chat] [--max-tokens N] [--temperature T]\n"
    "                           [--top-k K] [--top-p P] [--seed S] [--stop TEXT]... [--dtype bf16|q8|f32]\n"
    "                           [--threads N] [--trace FILE]\n"
    "      Streams the generated text to stdout. Without --model, a small built-in random-weight model is\n"
    "      written to the cache folder and used (its output is noise).\n"
    "  together-worker serve [--key-file FILE] [--listen ADDR:PORT] [--ports LO-HI] [--max-memory GiB]\n"
    "                        [--max-threads N] [--models-root DIR]... [--discovery-port P]\n"
    "                        [--discovery-interfaces IF,IF|none] [--state-dir DIR] [--cache-size GiB] [--recalibrate]\n"
    "      Runs the worker daemon (default 0.0.0.0:7600: all interfaces; shard ports 7610-7650). Only peers\n"
    "      holding the cluster key get past its TLS handshake. Without --key-file it uses the stored key, or asks\n"
    "      for it once on the terminal and stores it (mode 0600). It announces itself on the LAN (UDP 7601) and\n"
    "      keeps running when its terminal closes. --max-memory/--max-threads: what this machine donates.\n"
    "      --models-root: folders of this machine a plan may ask it to load a model from (none by default).\n"
    "      --cache-size: disk kept for weight slices received from masters, so relaunching the same placement\n"
    "      skips the transfer (default 4 GiB, in the state folder; 0 turns it off; oldest evicted first).\n"
    "      At start it measures this machine's speed for the cost model in the background (a few seconds, one\n"
    "      daemon of a machine at a time; cached for this CPU and software; --recalibrate measures again).\n"
    "  together-worker calibrate [--threads N] [--recalibrate]\n"
    "      Prints this machine's read bandwidth and the engine's decode (matvec) and prefill speeds as JSON.\n"
    "  together-worker install-service [serve's flags] [--unit-dir DIR] [--no-enable]\n"
    "      Writes and enables a systemd user unit running `serve` with those flags at every boot (and enables\n"
    "      linger). uninstall-service [--unit-dir DIR] removes it.\n"
    "  together-worker bench [--cache DIR] [--threads 1,2] [--dtypes bf16,q8,f32] [--kernels all|PATH,PATH]\n"
    "                        [--layers N] [--shape tinyllama-1.1b|llama3-8b] [--repeat 3] [--accuracy]\n"
    "      Prints prefill/decode speed next to this machine's read bandwidth (random weights of a model shape), per dtype,\n"
    "      thread count and decode kernel path (medians of --repeat runs, each beside its own\n"
    "      bandwidth reading); --accuracy compares bf16 and q8 with f32 over greedy steps. --model F.gguf runs a\n"
    "      model file (--dtypes native,q8); --block-types Q4_0,Q4_K,Q6_K,... times each block kernel alone.\n"
    "  together-worker kernels\n"
    "      Prints the decode kernel paths this CPU can run and the active one (TOGETHER_KERNELS=avx512bf16|\n"
    "      avx512|avx2|portable forces one, in every together process it is set for).\n";

int runGenerate(const std::vector<std::string>& rest)
{
    CliArgs args(rest, runFlagSpecs());
    RunOptions o = parseRunOptions(args);
    const int threads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    setComputeThreads(threads);
    const ComputeType compute = parseComputeType(o.dtype.empty() ? defaultDtypeFor(o.modelDir) : o.dtype);

    ModelConfig config = ModelConfig::fromDirectory(o.modelDir);
    Tokenizer tokenizer = Tokenizer::fromDirectory(o.modelDir);
    SafeTensors tensors = SafeTensors::open(o.modelDir);
    LlamaModel model(config, tensors, compute);

    std::string warning;
    std::vector<int> ids = promptIds(tokenizer, o, &warning);
    if (!warning.empty())
        std::fprintf(stderr, "together: warning: %s\n", warning.c_str());

    std::ofstream traceOut;
    if (!o.traceFile.empty()) {
        traceOut.open(o.traceFile, std::ios::trunc);
        if (!traceOut)
            throw Error("cannot write trace file " + o.traceFile);
    }
    LocalStepper stepper(model, o.sampling);
    runAndReport(stepper, tokenizer, ids, 0, o, traceOut.is_open() ? &traceOut : nullptr,
                 std::string(computeTypeName(compute)) + ", " + std::to_string(threads) + " threads");
    return 0;
}

std::vector<CliArgs::Spec> serveFlagSpecs()
{
    return {{"listen"}, {"key-file"}, {"ports"}, {"max-memory"}, {"max-threads"}, {"models-root", true, true}, {"discovery-port"},
            {"discovery-interfaces"}, {"state-dir"}, {"cache-size"}, {"recalibrate", false}, {"local", false}, {"report-fd"}, {"parent-pid"}};
}

DaemonOptions parseServe(const CliArgs& a)
{
    DaemonOptions o;
    o.listen = a.get("listen", o.listen);
    if (o.listen.find(':') == std::string::npos)
        throw Error("--listen takes ADDRESS:PORT, e.g. 0.0.0.0:7600");
    o.keyFile = a.get("key-file");
    o.stateDir = a.get("state-dir");
    o.ports = a.get("ports", o.ports);
    parsePortRange(o.ports);
    o.modelsRoots = a.all("models-root");
    o.maxMemoryGiB = a.getDouble("max-memory", 0);
    if (a.has("max-memory") && !(o.maxMemoryGiB > 0))
        throw Error("--max-memory takes a number of GiB above 0");
    o.recalibrate = a.has("recalibrate");
    o.cacheGiB = a.getDouble("cache-size", o.cacheGiB);
    if (o.cacheGiB < 0)
        throw Error("--cache-size takes a number of GiB (0 turns the slice cache off)");
    o.maxThreads = a.getInt("max-threads", 0);
    if (a.has("max-threads") && o.maxThreads < 1)
        throw Error("--max-threads takes a number of threads of at least 1");
    const int port = a.getInt("discovery-port", kDefaultDiscoveryPort);
    if (port < 1 || port > 65535)
        throw Error("--discovery-port takes a UDP port (1-65535)");
    o.discoveryPort = static_cast<uint16_t>(port);
    o.discoveryInterfaces = a.get("discovery-interfaces");
    o.local = a.has("local");
    o.reportFd = a.getInt("report-fd", -1);
    o.parentPid = a.getInt("parent-pid", 0);
    if (o.local && o.parentPid <= 0)
        throw Error("--local is for daemons a master starts (together-cli run --local)");
    return o;
}

int runInstallService(const std::vector<std::string>& rest)
{
    std::vector<CliArgs::Spec> specs = serveFlagSpecs();
    specs.push_back({"unit-dir"});
    specs.push_back({"no-enable", false});
    CliArgs a(rest, specs);
    parseServe(a); // the same checks serve makes, before anything is written
    if (a.has("local") || a.has("report-fd") || a.has("parent-pid"))
        throw Error("install-service takes serve's own flags, not --local");
    ServiceUnitOptions u;
    u.executable = selfExecutableDir() + "/together-worker";
    u.unitDir = a.get("unit-dir");
    u.enable = !a.has("no-enable");
    // The service has no terminal to ask on: the key must be stored (or given) now.
    u.serveArgs = {"--key-file", std::filesystem::absolute(resolveDaemonKeyFile(a.get("key-file"))).string()};
    for (const char* flag : {"listen", "ports", "max-memory", "max-threads", "cache-size", "discovery-port", "discovery-interfaces", "state-dir"})
        if (a.has(flag)) {
            u.serveArgs.push_back(std::string("--") + flag);
            u.serveArgs.push_back(flag == std::string("state-dir") ? std::filesystem::absolute(a.get(flag)).string() : a.get(flag));
        }
    for (auto& r : a.all("models-root")) {
        u.serveArgs.push_back("--models-root");
        u.serveArgs.push_back(std::filesystem::absolute(r).string());
    }
    const std::string file = installService(u);
    std::fprintf(stderr, "together-worker: wrote %s%s\n", file.c_str(),
                 u.enable ? "; the worker runs now and at every boot (systemctl --user status together-worker)" : " (not enabled)");
    return 0;
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
    try {
        if (cmd == "generate")
            return runGenerate(rest);
        if (cmd == "bench")
            return runBench(rest);
        if (cmd == "kernels") {
            std::printf("kernel paths on this CPU:");
            for (auto p : kernels::supportedPaths())
                std::printf(" %s", kernels::pathName(p));
            std::printf(" (active: %s)\n", kernels::pathName(kernels::activePath()));
            return 0;
        }
        if (cmd == "serve")
            return runDaemon(parseServe(CliArgs(rest, serveFlagSpecs())));
        if (cmd == "install-service")
            return runInstallService(rest);
        if (cmd == "uninstall-service") {
            CliArgs a(rest, {{"unit-dir"}, {"no-enable", false}});
            uninstallService(a.get("unit-dir"), !a.has("no-enable"));
            std::fprintf(stderr, "together-worker: removed the %s user unit\n", kServiceUnitName);
            return 0;
        }
        if (cmd == "calibrate") // started by a daemon; also by hand
            return runCalibrate(rest);
        if (cmd == "shard") { // started by a daemon, not by hand
            // At most two malloc arenas: glibc otherwise gives each gRPC thread that allocates its own 64 MiB
            // arena, and which threads happen to allocate moved a shard's peak RSS by ~90 MiB from run to run
            // (tests/test_memory_estimate saw +20% over the estimate, then −2% on the same placement).
            ::mallopt(M_ARENA_MAX, 2);
            CliArgs a(rest, {{"host"}, {"ports"}, {"key-file"}, {"threads"}, {"name"}, {"models-root", true, true}, {"report-fd"}, {"parent-pid"},
                             {"cache-dir"}, {"cache-bytes"}, {"owner"}});
            ShardOptions o;
            o.host = a.get("host", o.host);
            o.ports = a.get("ports", o.ports);
            o.keyFile = a.get("key-file");
            o.threads = a.getInt("threads", 1);
            o.name = a.get("name");
            o.modelsRoots = a.all("models-root");
            o.cacheDir = a.get("cache-dir");
            o.owner = a.get("owner");
            o.cacheBytes = a.getU64("cache-bytes", 0);
            o.reportFd = a.getInt("report-fd", -1);
            o.parentPid = a.getInt("parent-pid", 0);
            return runShard(o);
        }
        std::fprintf(stderr, "together-worker: unknown command '%s'\n%s", cmd.c_str(), kUsage);
        return 2;
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "together-worker: error: %s\n", e.what());
        return 1;
    }
}
