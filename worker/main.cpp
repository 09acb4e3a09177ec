// SPDX-License-Identifier: MIT
// together-worker: the libtorch side. `generate` runs a model in this one process; `bench` prints the
// single-process speed table. (The cluster daemon `serve` arrives with distributed execution.)
#include "core/cli_args.h"
#include "core/error.h"
#include "core/model_config.h"
#include "core/run_options.h"
#include "core/safetensors.h"
#include "core/tokenizer.h"
#include "worker/bench.h"
#include "worker/daemon.h"
#include "worker/shard_server.h"
#include "worker/llama_model.h"

#include <ATen/Parallel.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include <unistd.h>

using namespace together;

namespace {

const char* kUsage =
    "usage:\n"
    "  together-worker generate [--model DIR] --prompt TEXT [--chat] [--max-tokens N] [--temperature T]\n"
    "                           [--top-k K] [--top-p P] [--seed S] [--stop TEXT]... [--dtype bf16|f32]\n"
    "                           [--threads N] [--trace FILE]\n"
    "      Streams the generated text to stdout. Without --model, a small built-in random-weight model is\n"
    "      written to the cache folder and used (its output is noise).\n"
    "  together-worker serve [--listen ADDR:PORT] --key-file FILE\n"
    "      Runs the worker daemon (default 0.0.0.0:7600: all interfaces). Calls without proof of the cluster\n"
    "      key are refused.\n"
    "  together-worker bench [--cache DIR] [--threads 1,2] [--dtypes bf16,f32] [--layers N]\n"
    "      Prints prefill/decode speed next to this machine's read bandwidth (TinyLlama-1.1B shape).\n";

int runGenerate(const std::vector<std::string>& rest)
{
    CliArgs args(rest, runFlagSpecs());
    RunOptions o = parseRunOptions(args);
    const int threads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    setComputeThreads(threads);
    const ComputeType compute = o.dtype.empty() ? defaultComputeType() : parseComputeType(o.dtype);

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
        if (cmd == "serve") {
            CliArgs a(rest, {{"listen"}, {"key-file"}, {"report-fd"}, {"parent-pid"}});
            DaemonOptions o;
            o.listen = a.get("listen", o.listen);
            o.keyFile = a.get("key-file");
            o.reportFd = a.getInt("report-fd", -1);
            o.parentPid = a.getInt("parent-pid", 0);
            return runDaemon(o);
        }
        if (cmd == "shard") { // started by a daemon, not by hand
            CliArgs a(rest, {{"listen"}, {"key-file"}, {"threads"}, {"report-fd"}, {"parent-pid"}});
            ShardOptions o;
            o.listen = a.get("listen", o.listen);
            o.keyFile = a.get("key-file");
            o.threads = a.getInt("threads", 1);
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
