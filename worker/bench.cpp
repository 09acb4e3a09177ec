// SPDX-License-Identifier: MIT
#include "worker/bench.h"

#include "core/cli_args.h"
#include "core/error.h"
#include "core/model_config.h"
#include "core/random_model.h"
#include "core/run_options.h"
#include "core/safetensors.h"
#include "worker/llama_model.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <sstream>

namespace together {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Read bandwidth with the current thread count: the best of several full reductions over a buffer far
// larger than the caches (a sum reads each byte once and writes nothing).
double readBandwidth(size_t bytes)
{
    at::Tensor buf = at::ones({static_cast<int64_t>(bytes / 4)}, at::kFloat);
    double best = 1e30;
    volatile float sink = 0;
    for (int i = 0; i < 5; ++i) {
        auto t0 = Clock::now();
        sink = sink + buf.sum().item<float>();
        best = std::min(best, seconds(t0, Clock::now()));
    }
    return static_cast<double>(bytes) / best;
}

std::vector<std::string> splitList(const std::string& s)
{
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty())
            out.push_back(item);
    return out;
}

} // namespace

int runBench(const std::vector<std::string>& rest)
{
    CliArgs args(rest, {{"cache"}, {"prompt-tokens"}, {"decode-tokens"}, {"threads"}, {"dtypes"}, {"layers"}});
    const int promptTokens = args.getInt("prompt-tokens", 128);
    const int decodeTokens = args.getInt("decode-tokens", 128);
    std::vector<int> threadCounts;
    for (auto& t : splitList(args.get("threads", "1,2")))
        threadCounts.push_back(std::stoi(t));
    std::vector<ComputeType> dtypes;
    for (auto& d : splitList(args.get("dtypes", "bf16,f32")))
        dtypes.push_back(parseComputeType(d));

    const std::string dir =
        ensureBenchModel(args.get("cache", fs::path(defaultModelDir()).parent_path().string()), args.getInt("layers", 22));
    ModelConfig config = ModelConfig::fromDirectory(dir);
    SafeTensors tensors = SafeTensors::open(dir);

    std::mt19937 rng(7);
    std::vector<int> prompt(static_cast<size_t>(promptTokens));
    for (auto& t : prompt)
        t = static_cast<int>(rng() % static_cast<unsigned>(config.vocabSize));

    std::printf("| dtype | threads | prefill tok/s (%d) | decode tok/s (%d) | bytes/token | read GB/s | decode / bandwidth bound |\n",
                promptTokens, decodeTokens);
    std::printf("|---|---|---|---|---|---|---|\n");
    for (ComputeType ct : dtypes) {
        LlamaModel model(config, tensors, ct);
        const double bytesPerToken = static_cast<double>(model.weightBytesPerToken());
        for (int threads : threadCounts) {
            setComputeThreads(threads);
            const double bw = readBandwidth(size_t(1) << 30);
            // warm-up: first touches of weights and allocator
            {
                KvCache warm = model.newCache();
                model.forward({1, 2, 3, 4}, warm);
                model.forward({5}, warm);
            }
            KvCache cache = model.newCache();
            auto t0 = Clock::now();
            at::Tensor logits = model.forward(prompt, cache);
            auto t1 = Clock::now();
            int next = static_cast<int>(logits.argmax().item<int64_t>());
            auto t2 = Clock::now();
            for (int i = 0; i < decodeTokens; ++i) {
                logits = model.forward({next}, cache);
                next = static_cast<int>(logits.argmax().item<int64_t>());
            }
            auto t3 = Clock::now();
            const double prefillTps = promptTokens / seconds(t0, t1);
            const double decodeTps = decodeTokens / seconds(t2, t3);
            const double fraction = decodeTps * bytesPerToken / bw;
            std::printf("| %s | %d | %.1f | %.2f | %.0f MB | %.1f | %.0f%% |\n", computeTypeName(ct), threads, prefillTps, decodeTps,
                        bytesPerToken / 1e6, bw / 1e9, fraction * 100);
            std::fflush(stdout);
        }
    }
    return 0;
}

} // namespace together
