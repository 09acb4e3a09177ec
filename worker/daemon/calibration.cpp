// SPDX-License-Identifier: MIT
#include "daemon/calibration.h"

#include "base/cli_args.h"
#include "base/error.h"
#include "base/files.h"
#include "base/host_info.h"
#include "base/process.h"
#include "base/user_dirs.h"
#include "engine/llama_model.h"
#include "kernels/kernels.h"
#include "model/random_model.h"
#include "model/safetensors.h"
#include "wire/protocol.h"

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

namespace together {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double seconds(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

std::string cpuModel()
{
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);)
        if (line.rfind("model name", 0) == 0) {
            const auto colon = line.find(':');
            return colon == std::string::npos ? line : line.substr(line.find_first_not_of(' ', colon + 1));
        }
    return "unknown CPU";
}

std::string kernelPath()
{
    std::string s;
    for (auto& f : cpuFlags())
        s += (s.empty() ? "" : ",") + f;
    for (const char* v : {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"})
        if (const char* e = std::getenv(v))
            s += std::string(";") + v + "=" + e;
    s += std::string(";decode=") + kernels::pathName(kernels::activePath());
    return s;
}

// One thread's share of the read: 64-byte vector loads into four independent accumulators, compiled for each
// instruction set and picked at run time, so the loop is bound by memory and not by the load ports (scalar
// loads of two hyperthreads on one core saturate the core long before the memory does).
using Lanes = uint64_t __attribute__((vector_size(64)));

__attribute__((target_clones("avx512f", "avx2", "default"))) uint64_t sumLanes(const Lanes* p, size_t count)
{
    Lanes a = {}, b = {}, c = {}, d = {};
    size_t i = 0;
    for (; i + 4 <= count; i += 4) {
        a += p[i];
        b += p[i + 1];
        c += p[i + 2];
        d += p[i + 3];
    }
    for (; i < count; ++i)
        a += p[i];
    const Lanes s = a + b + c + d;
    uint64_t total = 0;
    for (int k = 0; k < 8; ++k)
        total += s[k];
    return total;
}

// Best of a few passes summing a buffer far larger than the caches, split over `threads` threads.
double readBandwidth(int threads)
{
    const size_t n = (256u << 20) / sizeof(Lanes); // 256 MiB
    static std::vector<Lanes> buffer;
    if (buffer.size() != n) {
        Lanes one;
        for (int k = 0; k < 8; ++k)
            one[k] = 1;
        buffer.assign(n, one);
    }
    double best = 0;
    for (int pass = 0; pass < 6; ++pass) {
        std::vector<uint64_t> sums(static_cast<size_t>(threads), 0);
        const auto t0 = Clock::now();
        std::vector<std::thread> workers;
        for (int t = 0; t < threads; ++t)
            workers.emplace_back([&, t] {
                const size_t begin = n * static_cast<size_t>(t) / static_cast<size_t>(threads), end = n * static_cast<size_t>(t + 1) / static_cast<size_t>(threads);
                sums[static_cast<size_t>(t)] = sumLanes(buffer.data() + begin, end - begin);
            });
        for (auto& w : workers)
            w.join();
        const double s = seconds(t0);
        volatile uint64_t sink = 0;
        for (auto x : sums)
            sink = sink + x;
        (void)sink;
        best = std::max(best, static_cast<double>(n * sizeof(Lanes)) / s / 1e9);
    }
    return best;
}

// The engine's decode kernel (worker/kernels, on its thread pool) over a weight matrix far larger than the
// caches, in weight GB/s, for a run's format ("f32", "bf16", "q8", "q4": Q4_K blocks on the block kernels, the
// rate a native run of a 4- to 6-bit GGUF gets).
double matvecRate(const std::string& dtype, int threads)
{
    setComputeThreads(threads);
    const int64_t rows = 4096, cols = 8192; // 128 MiB in f32, 64 MiB in bf16, 34 MiB in q8
    at::Tensor wf = at::randn({rows, cols}, at::kFloat), xf = at::randn({cols}, at::kFloat);
    at::Tensor w = dtype == "bf16" ? wf.to(at::kBFloat16) : wf, x = dtype == "bf16" ? xf.to(at::kBFloat16) : xf;
    kernels::Q8Matrix q;
    kernels::Q8Vector xq;
    kernels::BlockMatrix q4;
    kernels::BlockInput xin;
    if (dtype == "q4") { // random blocks with small finite scales: the rate does not depend on the values
        q4 = kernels::makeBlockMatrix(GgmlType::Q4_K, rows, cols);
        auto* p = const_cast<std::byte*>(q4.data);
        std::memcpy(p, w.data_ptr(), std::min<size_t>(q4.bytes(), w.nbytes()));
        const uint16_t scale = 0x1400; // 2^-10
        for (size_t b = 0; b < q4.bytes() / 144; ++b) {
            std::memcpy(p + b * 144, &scale, 2);
            std::memcpy(p + b * 144 + 2, &scale, 2);
        }
        xin.prepare(xf.data_ptr<float>(), cols, {GgmlType::Q4_K});
        w = at::Tensor();
        wf = at::Tensor();
    }
    if (dtype == "q8") {
        q = kernels::makeQ8(rows, cols);
        kernels::quantizeRowsQ8(wf.data_ptr<float>(), 0, rows, q);
        kernels::quantizeVectorQ8(xf.data_ptr<float>(), cols, xq);
        w = at::Tensor();
        wf = at::Tensor();
    }
    const double bytes = dtype == "q8"   ? static_cast<double>(q.bytes())
                         : dtype == "q4" ? static_cast<double>(q4.bytes())
                                         : static_cast<double>(w.nbytes());
    std::vector<float> y(static_cast<size_t>(rows));
    // The median pass of about 0.2 s of them (6 to 24 after a warm-up): a decode step streams the weights for
    // a sustained tenth of a second or more, so the typical pass predicts it and the best one reads high (on
    // this shared machine two short runs a second apart read 11 and 21 GB/s).
    std::vector<double> rates;
    const auto start = Clock::now();
    for (int pass = 0; pass < 25 && (pass < 7 || seconds(start) < 0.2); ++pass) {
        const auto t0 = Clock::now();
        kernels::parallelRows(rows, 16, [&](int64_t r0, int64_t r1) {
            if (dtype == "q8")
                kernels::gemvQ8(q, xq, y.data(), r0, r1);
            else if (dtype == "q4")
                kernels::gemvBlocks(q4, xin, y.data(), r0, r1);
            else if (dtype == "bf16")
                kernels::gemvBf16(reinterpret_cast<const uint16_t*>(w.data_ptr()), reinterpret_cast<const uint16_t*>(x.data_ptr()), y.data(), cols,
                                  r0, r1);
            else
                kernels::gemvF32(w.data_ptr<float>(), x.data_ptr<float>(), y.data(), cols, r0, r1);
        });
        const double s = seconds(t0);
        if (pass > 0)
            rates.push_back(bytes / s / 1e9);
    }
    std::sort(rates.begin(), rates.end());
    return rates[rates.size() / 2];
}

double gemmRate(int threads)
{
    setComputeThreads(threads);
    const int64_t m = 256, k = 2048, n = 2048;
    at::Tensor a = at::randn({m, k}, at::kFloat), b = at::randn({k, n}, at::kFloat);
    double best = 0;
    for (int pass = 0; pass < 3; ++pass) {
        const auto t0 = Clock::now();
        at::Tensor c = at::mm(a, b);
        (void)c.sum().item<float>();
        const double s = seconds(t0);
        if (pass > 0)
            best = std::max(best, 2.0 * m * k * n / s / 1e9);
    }
    return best;
}

// A decoder layer's fixed cost in a decode step: the engine's own step over two tiny random models (1 and 5
// layers, whose weights are a few hundred KiB), so what differs is the four layers' operator dispatch and thread
// fork/join, not memory. Median step of each, in microseconds per layer, with `threads` threads.
double layerOverheadUs(const std::string& scratch, int threads)
{
    setComputeThreads(threads);
    auto stepUs = [&](int64_t layers) {
        const std::string dir = scratch + "/layers-" + std::to_string(layers);
        ensureRandomModel(dir, modelShape("layer-overhead", layers));
        const ModelConfig config = ModelConfig::fromDirectory(dir);
        SafeTensors tensors = SafeTensors::open(dir);
        LlamaModel model(config, tensors, ComputeType::F32);
        KvCache cache = model.newCache(256);
        model.forward({1, 2, 3, 4}, cache);
        std::vector<double> us;
        for (int i = 0; i < 60; ++i) {
            const auto t0 = Clock::now();
            model.forward({5 + i % 50}, cache);
            us.push_back(seconds(t0) * 1e6);
        }
        std::sort(us.begin(), us.end());
        return us[us.size() / 2];
    };
    const double one = stepUs(1), five = stepUs(5);
    return std::max(0.0, (five - one) / 4.0);
}

} // namespace

std::string calibrationKey(int threads)
{
    // "v4": vector loads for the read, the median of longer matvec runs, the layer overhead; "v6": q4 (block kernels).
    return cpuModel() + "|" + kSoftwareVersion + "|" + kernelPath() + "|threads=" + std::to_string(threads) + "|v6";
}

Calibration measureCalibration(int threads)
{
    const auto t0 = Clock::now();
    Calibration c;
    c.threads = std::max(1, threads);
    c.cpuModel = cpuModel();
    c.kernelPath = kernelPath();
    c.readGBps1 = readBandwidth(1);
    c.readGBpsAll = c.threads > 1 ? readBandwidth(c.threads) : c.readGBps1;
    for (const char* dtype : {"f32", "bf16", "q8", "q4"})
        c.matvecGBps[dtype] = {matvecRate(dtype, 1), c.threads > 1 ? matvecRate(dtype, c.threads) : 0};
    for (auto& [dtype, v] : c.matvecGBps)
        if (v.second < v.first)
            v.second = v.first;
    c.gemmGFlops = gemmRate(c.threads);
    try {
        const TempDir scratch("calibrate");
        c.layerOverheadUs1 = layerOverheadUs(scratch.path(), 1);
        c.layerOverheadUsAll = c.threads > 1 ? layerOverheadUs(scratch.path(), c.threads) : c.layerOverheadUs1;
    } catch (const std::exception& e) {
        // Unknown (0): the cost model then counts bytes only.
        std::fprintf(stderr, "calibration: the layer overhead could not be measured: %s\n", e.what());
    }
    c.seconds = seconds(t0);
    return c;
}

std::string calibrationToJson(const Calibration& c)
{
    json j = {{"read_gbps", {c.readGBps1, c.readGBpsAll}}, {"gemm_gflops", c.gemmGFlops}, {"threads", c.threads}, {"cpu_model", c.cpuModel},
              {"kernel_path", c.kernelPath}, {"from_cache", c.fromCache}, {"seconds", c.seconds},
              {"layer_overhead_us", {c.layerOverheadUs1, c.layerOverheadUsAll}}};
    for (auto& [dtype, v] : c.matvecGBps)
        j["matvec_gbps"][dtype] = {v.first, v.second};
    return j.dump();
}

Calibration calibrationFromJson(const std::string& text)
{
    try {
        const json j = json::parse(text);
        Calibration c;
        c.readGBps1 = j.at("read_gbps").at(0).get<double>();
        c.readGBpsAll = j.at("read_gbps").at(1).get<double>();
        c.gemmGFlops = j.at("gemm_gflops").get<double>();
        c.threads = j.at("threads").get<int>();
        c.cpuModel = j.at("cpu_model").get<std::string>();
        c.kernelPath = j.at("kernel_path").get<std::string>();
        c.fromCache = j.value("from_cache", false);
        c.seconds = j.value("seconds", 0.0);
        if (j.contains("layer_overhead_us")) {
            c.layerOverheadUs1 = j.at("layer_overhead_us").at(0).get<double>();
            c.layerOverheadUsAll = j.at("layer_overhead_us").at(1).get<double>();
        }
        for (auto& [dtype, v] : j.at("matvec_gbps").items())
            c.matvecGBps[dtype] = {v.at(0).get<double>(), v.at(1).get<double>()};
        return c;
    } catch (const json::exception& e) {
        throw Error(std::string("malformed calibration: ") + e.what());
    }
}

int runCalibrate(const std::vector<std::string>& args)
{
    CliArgs a(args, {{"threads"}, {"recalibrate", false}, {"report-fd"}, {"parent-pid"}});
    dieWithParent(a.getInt("parent-pid", 0));
    const int threads = std::max(1, a.getInt("threads", static_cast<int>(coreCount())));
    const int reportFd = a.getInt("report-fd", -1);
    const std::string dir = cacheDir();
    makePrivateDirs(dir);
    const std::string key = calibrationKey(threads);
    Calibration c;
    bool have = false;
    {
        // Calibrations on one machine run one at a time: daemons starting together do not measure each other.
        FileLock lock(dir + "/calibration.lock");
        json cache = json::object();
        try {
            cache = json::parse(readTextFile(dir + "/calibration.json"));
            if (!cache.is_object())
                cache = json::object();
        } catch (const std::exception&) {
            cache = json::object(); // missing or corrupt: measure
        }
        if (!a.has("recalibrate") && cache.contains(key)) {
            try {
                c = calibrationFromJson(cache[key].dump());
                c.fromCache = true;
                have = true;
            } catch (const Error&) {
            }
        }
        if (!have) {
            c = measureCalibration(threads);
            json entry = json::parse(calibrationToJson(c));
            entry.erase("from_cache");
            cache[key] = entry;
            try {
                atomicWrite(dir + "/calibration.json", cache.dump(1) + "\n", 0600);
            } catch (const Error& e) {
                std::fprintf(stderr, "calibration: not cached: %s\n", e.what()); // measured again next time
            }
        }
    }
    const std::string line = calibrationToJson(c);
    if (reportFd >= 0)
        writeReport(reportFd, "calibration " + line);
    else
        std::printf("%s\n", line.c_str());
    return 0;
}

} // namespace together
