// SPDX-License-Identifier: MIT
#include "engine/bench.h"

#include "base/cli_args.h"
#include "base/error.h"
#include "base/host_info.h"
#include "engine/llama_model.h"
#include "kernels/kernels.h"
#include "model/ggml_types.h"
#include "model/model_config.h"
#include "model/random_model.h"
#include "model/run_dtype.h"
#include "model/safetensors.h"
#include "model/shard_spec.h"
#include "text/run_options.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
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

int topToken(const at::Tensor& logits) { return static_cast<int>(logits.argmax().item<int64_t>()); }

// A small random model for the accuracy table (written once under the cache folder).
std::string ensureAccuracyModel(const std::string& cache)
{
    return ensureRandomModel(cache + "/bench-accuracy-random-h256-l4", modelShape("accuracy"));
}

} // namespace

DtypeAccuracy compareWithF32(const std::string& modelDir, ComputeType dtype, const std::vector<int>& prompt, int steps)
{
    const ModelConfig config = ModelConfig::fromDirectory(modelDir);
    SafeTensors tensors = SafeTensors::open(modelDir);
    LlamaModel ref(config, tensors, ComputeType::F32), test(config, tensors, dtype);
    KvCache refCache = ref.newCache(), testCache = test.newCache();
    DtypeAccuracy a;
    std::vector<int> input = prompt;
    for (int s = 0; s < steps && refCache.length() + static_cast<int64_t>(input.size()) <= refCache.limit(); ++s) {
        at::Tensor lr = ref.forward(input, refCache), lt = test.forward(input, testCache);
        const int next = topToken(lr);
        a.steps++;
        a.top1Agree += topToken(lt) == next;
        a.maxLogitError = std::max(a.maxLogitError, static_cast<double>((lt - lr).abs().max().item<float>()));
        a.maxLogit = std::max(a.maxLogit, static_cast<double>(lr.abs().max().item<float>()));
        at::Tensor top2 = std::get<0>(lr.topk(2));
        a.minF32Margin = std::min(a.minF32Margin, static_cast<double>((top2[0] - top2[1]).item<float>()));
        input = {next};
    }
    return a;
}

namespace {

// Decode kernel paths to measure: the active one by default; "all": every path this CPU runs, and ATen's at::mv
// (the engine's decode before these kernels) for comparison; or a list of names.
std::vector<std::string> kernelPaths(const std::string& k, kernels::Path active)
{
    std::vector<std::string> paths;
    if (k == "active") {
        paths.push_back(kernels::pathName(active));
    } else if (k == "all") {
        for (auto p : kernels::supportedPaths())
            paths.insert(paths.begin(), kernels::pathName(p)); // best first
        paths.push_back("aten");
    } else {
        for (auto& name : splitList(k)) {
            if (name != "aten")
                kernels::setPath(kernels::parsePath(name)); // refuses what this CPU cannot run
            paths.push_back(name);
        }
        kernels::setPath(active);
    }
    return paths;
}

void printKernels(kernels::Path active)
{
    std::string runs;
    for (auto p : kernels::supportedPaths())
        runs += std::string(runs.empty() ? "" : ", ") + kernels::pathName(p);
    const char* isa = std::getenv("ONEDNN_MAX_CPU_ISA");
    if (!isa)
        isa = std::getenv("DNNL_MAX_CPU_ISA");
    std::printf("decode kernels: %s active (this CPU runs: %s); prefill GEMM: oneDNN/BLAS%s%s\n", kernels::pathName(active), runs.c_str(),
                isa ? ", ONEDNN_MAX_CPU_ISA=" : " (no ISA cap)", isa ? isa : "");
}

// A large shape on a small machine: say so and skip, rather than fill the disk or run out of memory.
bool fitsThisMachine(const std::string& shape, int layers, const std::vector<ComputeType>& dtypes, const std::string& cache)
{
    const RandomModelSpec spec = modelShape(shape, layers);
    ModelConfig probe = ModelConfig::fromJsonText(
        nlohmann::json{{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", spec.hiddenSize}, {"intermediate_size", spec.intermediateSize},
                       {"num_hidden_layers", spec.numLayers}, {"num_attention_heads", spec.numHeads},
                       {"num_key_value_heads", spec.numKvHeads}, {"vocab_size", spec.vocabSize}}
            .dump(),
        "bench shape");
    const int64_t fileBytes = shardBytes(probe, ShardSpec::whole(probe), DType::BF16);
    fs::create_directories(cache);
    const uint64_t freeDisk = fs::space(cache).available;
    const bool written = fs::exists(cache + "/bench-" + shape + "-" + std::to_string(spec.numLayers) + "l-bf16/model.safetensors");
    if (!written && freeDisk < static_cast<uint64_t>(fileBytes) + (2ull << 30)) {
        std::printf("skipped: the %s model needs %.1f GB of disk in %s, %.1f GB are free\n", shape.c_str(), fileBytes / 1e9, cache.c_str(),
                    freeDisk / 1e9);
        return false;
    }
    const uint64_t avail = memoryAvailableBytes();
    for (ComputeType ct : dtypes) {
        const int64_t need = estimateShardMemory(probe, ShardSpec::whole(probe), parseRunDtype(computeTypeName(ct)), 4096).total();
        if (avail > 0 && static_cast<uint64_t>(need) > avail) {
            std::printf("skipped: %s at %s needs about %.1f GB of memory, %.1f GB are available\n", shape.c_str(), computeTypeName(ct),
                        need / 1e9, avail / 1e9);
            return false;
        }
    }
    return true;
}

// One row of the speed table: `repeat` runs, each right after a read-bandwidth measurement: on a shared host
// both drift within a minute, so the share is taken run by run and the medians are printed.
void benchRow(LlamaModel& model, double bytesPerToken, ComputeType ct, const std::string& path, int threads, const std::vector<int>& prompt,
              int decodeTokens, int repeat)
{
    const int promptTokens = static_cast<int>(prompt.size());
    std::vector<double> prefills, decodes, bws, shares;
    for (int rep = 0; rep < repeat; ++rep) {
        const double bw = readBandwidth(size_t(1) << 30);
        KvCache cache = model.newCache();
        auto t0 = Clock::now();
        at::Tensor logits = model.forward(prompt, cache);
        auto t1 = Clock::now();
        int next = topToken(logits);
        auto t2 = Clock::now();
        for (int i = 0; i < decodeTokens; ++i)
            next = topToken(model.forward({next}, cache));
        auto t3 = Clock::now();
        prefills.push_back(promptTokens / seconds(t0, t1));
        decodes.push_back(decodeTokens / seconds(t2, t3));
        bws.push_back(bw);
        shares.push_back(decodes.back() * bytesPerToken / bw);
    }
    const double prefillTps = median(prefills), decodeTps = median(decodes), bw = median(bws), fraction = median(shares);
    std::printf("| %s | %s | %d | %.1f | %.2f | %.0f MB | %.1f | %.0f%% |\n", computeTypeName(ct),
                path == "aten" ? "aten (at::mv)" : path.c_str(), threads, prefillTps, decodeTps, bytesPerToken / 1e6,
                bw / 1e9, fraction * 100);
    std::fflush(stdout);
}

// The speed table: every dtype, decode kernel path and thread count on the random model of `shape`.
void benchSpeed(const std::string& dir, const std::vector<ComputeType>& dtypes, const std::vector<std::string>& paths,
                const std::vector<int>& threadCounts, int promptTokens, int decodeTokens, int repeat, kernels::Path active)
{
    ModelConfig config = ModelConfig::fromDirectory(dir);
    SafeTensors tensors = SafeTensors::open(dir);

    std::mt19937 rng(7);
    std::vector<int> prompt(static_cast<size_t>(promptTokens));
    for (auto& t : prompt)
        t = static_cast<int>(rng() % static_cast<unsigned>(config.vocabSize));

    std::printf("\n| dtype | decode kernels | threads | prefill tok/s (%d) | decode tok/s (%d) | bytes/token | read GB/s | "
                "bandwidth share |\n",
                promptTokens, decodeTokens);
    std::printf("|---|---|---|---|---|---|---|---|\n");
    for (ComputeType ct : dtypes) {
        LlamaModel model(config, tensors, ct);
        const double bytesPerToken = static_cast<double>(model.weightBytesPerToken());
        for (const std::string& path : paths) {
            if (path == "aten" && ct != ComputeType::F32 && ct != ComputeType::BF16)
                continue; // ATen has no block products
            LlamaModel::setAtenDecode(path == "aten");
            if (path != "aten")
                kernels::setPath(kernels::parsePath(path));
            for (int threads : threadCounts) {
                setComputeThreads(threads);
                { // warm-up: first touches of weights and allocator
                    KvCache warm = model.newCache();
                    model.forward({1, 2, 3, 4}, warm);
                    model.forward({5}, warm);
                }
                benchRow(model, bytesPerToken, ct, path, threads, prompt, decodeTokens, repeat);
            }
        }
    }
    LlamaModel::setAtenDecode(false);
    kernels::setPath(active);
}

// The accuracy table: bf16 and q8 against f32, on the reference model (when given) and a small random one.
void benchAccuracy(int steps, const std::string& reference, const std::string& cache, const std::vector<int>& threadCounts)
{
    std::vector<std::pair<std::string, std::string>> models;
    if (!reference.empty())
    {
        fs::path ref = fs::path(reference).lexically_normal();
        if (ref.filename().empty())
            ref = ref.parent_path();
        models.push_back({ref.filename() == "hf" ? ref.parent_path().filename().string() : ref.filename().string(), reference});
    }
    models.push_back({"random (hidden 256, 4 layers)", ensureAccuracyModel(cache)});
    std::printf("\nAgainst f32 over %d greedy steps chosen by f32 (prompt: 8 tokens), logits of every step:\n\n", steps);
    std::printf("| model | dtype | max abs logit error | max abs f32 logit | top-1 agreement | smallest f32 top-2 margin |\n");
    std::printf("|---|---|---|---|---|---|\n");
    for (auto& [name, dir] : models)
        for (ComputeType ct : {ComputeType::BF16, ComputeType::Q8}) {
            setComputeThreads(threadCounts.empty() ? 1 : threadCounts.back());
            const DtypeAccuracy a = compareWithF32(dir, ct, {1, 5, 9, 13, 17, 21, 25, 29}, steps);
            std::printf("| %s | %s | %.4f | %.2f | %d/%d (%.1f%%) | %.4f |\n", name.c_str(), computeTypeName(ct), a.maxLogitError, a.maxLogit,
                        a.top1Agree, a.steps, 100.0 * a.top1Agree / std::max(1, a.steps), a.minF32Margin);
            std::fflush(stdout);
        }
}

} // namespace

namespace {

// A [rows, cols] matrix of a block type with random weights: quantized from normal values where the project
// writes the type (its blocks as a model's), else kernels' random blocks.
std::vector<std::byte> randomBlockBytes(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng)
{
    if (type != GgmlType::F16 && type != GgmlType::Q8_0 && type != GgmlType::Q4_0 && type != GgmlType::Q4_K)
        return kernels::randomBlockBytes(type, rows, cols, rng, 0.002f);
    const int64_t rowBytes = ggmlRowBytes(type, cols);
    std::vector<std::byte> bytes(static_cast<size_t>(rows * rowBytes));
    std::normal_distribution<float> normal(0.0f, 0.02f);
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
        for (float& v : row)
            v = normal(rng);
        quantizeRow(type, row.data(), bytes.data() + r * rowBytes, cols);
    }
    return bytes;
}

// `--block-types Q4_0,Q4_K,...`: each block kernel alone, a product of TinyLlama's width (2048 columns) with 6x
// its gate/up rows (67584: 78 MB in Q4_0, 277 MB in F16, each larger than a 32 MB L3, so the weights come from
// memory as in a decode), per decode path and thread count, the best of 10, beside the read bandwidth.
void benchBlockKernels(const std::vector<std::string>& types, const std::vector<std::string>& paths, const std::vector<int>& threadCounts)
{
    constexpr int64_t rows = 6 * 11264, cols = 2048;
    std::mt19937 rng(7);
    std::vector<float> x(static_cast<size_t>(cols));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& v : x)
        v = normal(rng);
    std::printf("\n| type | decode kernels | threads | product GB/s | ns per 32 weights | read GB/s | bandwidth share |\n|---|---|---|---|---|---|---|\n");
    for (const std::string& name : types) {
        const TensorType t = parseTensorType(name, "--block-types");
        const GgmlType type = t.blocks ? *t.blocks : t.dtype == DType::F16 ? GgmlType::F16 : t.dtype == DType::BF16 ? GgmlType::BF16 : GgmlType::F32;
        const std::vector<std::byte> bytes = randomBlockBytes(type, rows, cols, rng);
        const kernels::BlockMatrix m = kernels::makeBlockMatrix(type, rows, cols, bytes.data());
        kernels::BlockInput in;
        in.prepare(x.data(), cols, {type});
        std::vector<float> y(static_cast<size_t>(rows));
        for (const std::string& pathName : paths) {
            if (pathName == "aten")
                continue;
            const kernels::Path path = kernels::parsePath(pathName);
            for (int threads : threadCounts) {
                setComputeThreads(threads);
                const double bw = readBandwidth(size_t(1) << 30);
                double best = 1e30;
                for (int i = 0; i < 10; ++i) {
                    const auto t0 = Clock::now();
                    kernels::parallelRows(rows, 16, [&](int64_t r0, int64_t r1) { kernels::gemvBlocksOn(path, m, in, y.data(), r0, r1); });
                    best = std::min(best, seconds(t0, Clock::now()));
                }
                const double gbs = static_cast<double>(m.bytes()) / best / 1e9;
                std::printf("| %s | %s | %d | %.1f | %.2f | %.1f | %.0f%% |\n", ggmlTypeName(type), pathName.c_str(), threads, gbs,
                            best * 1e9 / static_cast<double>(rows * cols / 32), bw / 1e9, 100.0 * gbs * 1e9 / bw);
                std::fflush(stdout);
            }
        }
    }
}

} // namespace

int runBench(const std::vector<std::string>& rest)
{
    CliArgs args(rest, {{"cache"}, {"prompt-tokens"}, {"decode-tokens"}, {"threads"}, {"dtypes"}, {"layers"}, {"kernels"},
                        {"accuracy", false}, {"accuracy-steps"}, {"reference-model"}, {"shape"}, {"repeat"}, {"model"}, {"block-types"}});
    const int promptTokens = args.getInt("prompt-tokens", 128);
    const int decodeTokens = args.getInt("decode-tokens", 128);
    const int repeat = std::max(1, args.getInt("repeat", 3));
    std::vector<int> threadCounts;
    for (auto& t : splitList(args.get("threads", "1,2")))
        threadCounts.push_back(std::stoi(t));
    std::vector<ComputeType> dtypes;
    for (auto& d : splitList(args.get("dtypes", "bf16,q8,f32")))
        dtypes.push_back(parseComputeType(d));
    const kernels::Path active = kernels::activePath();
    const std::vector<std::string> paths = kernelPaths(args.get("kernels", "active"), active);
    const std::string cache = args.get("cache", fs::path(defaultModelDir()).parent_path().string());
    printKernels(active);

    if (args.has("block-types")) {
        benchBlockKernels(splitList(args.get("block-types", "")), paths, threadCounts);
        return 0;
    }
    if (args.has("model") && !dtypes.empty() && !paths.empty() && !threadCounts.empty()) {
        // A given model (a GGUF file: `--dtypes native,q8` compares its own blocks with q8).
        benchSpeed(args.get("model", ""), dtypes, paths, threadCounts, promptTokens, decodeTokens, repeat, active);
    } else if (!dtypes.empty() && !paths.empty() && !threadCounts.empty()) {
        const std::string shape = args.get("shape", "tinyllama-1.1b");
        if (!fitsThisMachine(shape, args.getInt("layers", 0), dtypes, cache))
            return 0;
        const std::string dir = ensureBenchModel(cache, shape, args.getInt("layers", 0));
        benchSpeed(dir, dtypes, paths, threadCounts, promptTokens, decodeTokens, repeat, active);
    }

    if (args.has("accuracy"))
        benchAccuracy(args.getInt("accuracy-steps", 200), args.get("reference-model", ""), cache, threadCounts);
    return 0;
}

} // namespace together
