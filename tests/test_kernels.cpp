// SPDX-License-Identifier: MIT
// The decode kernels against a double-precision reference, each path this CPU can run forced in turn, on
// awkward shapes (rows and columns that are not multiples of the vector width, of 4 rows, of the q8 block or of
// the 16 blocks one AVX-512 step takes), with one thread and several.
#include "base/error.h"
#include "kernels/kernels.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <cstdlib>
#include <random>
#include <set>

using namespace together;
using namespace together::kernels;

namespace {

uint16_t toBf16(float f)
{
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<uint16_t>(bits >> 16);
}

double fromBf16(uint16_t v)
{
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

struct Shape {
    int64_t rows, cols;
};
// 1 column; under one vector; one past a vector, a block, 16 blocks; primes; a Llama-like width
const std::vector<Shape> kShapes = {{1, 1},   {3, 7},    {5, 17},   {4, 32},   {7, 33},    {9, 64},  {6, 65},
                                    {13, 100}, {2, 511}, {11, 512}, {17, 513}, {37, 1000}, {5, 2048}, {21, 4099}};

std::vector<float> randomVector(int64_t n, std::mt19937& rng, float scale = 1.0f)
{
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v)
        x = dist(rng);
    return v;
}

// y computed over [0, rows) by `threads` threads through the pool, or directly on one path with one thread.
template <typename Fn>
std::vector<float> runRows(int64_t rows, int threads, Fn fn)
{
    std::vector<float> y(static_cast<size_t>(rows), NAN);
    setThreads(threads);
    parallelRows(rows, 1, [&](int64_t r0, int64_t r1) { fn(y.data(), r0, r1); });
    setThreads(1);
    return y;
}

std::vector<Path> pathsHere()
{
    return supportedPaths();
}

class Kernels : public ::testing::TestWithParam<Path> {};

TEST_P(Kernels, F32MatchesADoubleReference)
{
    const Path p = GetParam();
    std::mt19937 rng(1);
    for (auto [rows, cols] : kShapes) {
        auto w = randomVector(rows * cols, rng), x = randomVector(cols, rng);
        for (int threads : {1, 3}) {
            auto y = runRows(rows, threads, [&](float* out, int64_t r0, int64_t r1) { gemvF32On(p, w.data(), x.data(), out, cols, r0, r1); });
            for (int64_t r = 0; r < rows; ++r) {
                double ref = 0, mag = 0;
                for (int64_t c = 0; c < cols; ++c) {
                    ref += double(w[r * cols + c]) * x[c];
                    mag += std::fabs(double(w[r * cols + c]) * x[c]);
                }
                ASSERT_NEAR(y[r], ref, 1e-6 * mag + 1e-30) << pathName(p) << " " << rows << "x" << cols << " row " << r << " threads " << threads;
            }
        }
    }
}

TEST_P(Kernels, Bf16MatchesADoubleReference)
{
    const Path p = GetParam();
    std::mt19937 rng(2);
    for (auto [rows, cols] : kShapes) {
        auto wf = randomVector(rows * cols, rng), xf = randomVector(cols, rng);
        std::vector<uint16_t> w(wf.size()), x(xf.size());
        for (size_t i = 0; i < w.size(); ++i)
            w[i] = toBf16(wf[i]);
        for (size_t i = 0; i < x.size(); ++i)
            x[i] = toBf16(xf[i]);
        for (int threads : {1, 2}) {
            auto y = runRows(rows, threads, [&](float* out, int64_t r0, int64_t r1) { gemvBf16On(p, w.data(), x.data(), out, cols, r0, r1); });
            for (int64_t r = 0; r < rows; ++r) {
                double ref = 0, mag = 0;
                for (int64_t c = 0; c < cols; ++c) {
                    const double t = fromBf16(w[r * cols + c]) * fromBf16(x[c]);
                    ref += t;
                    mag += std::fabs(t);
                }
                // bf16 products are exact in f32; what differs is the order of f32 additions.
                ASSERT_NEAR(y[r], ref, 1e-6 * mag + 1e-30) << pathName(p) << " " << rows << "x" << cols << " row " << r;
            }
        }
    }
}

TEST_P(Kernels, Q8IsExactBlockArithmeticAndWithinItsQuantizationBound)
{
    const Path p = GetParam();
    std::mt19937 rng(3);
    for (auto [rows, cols] : kShapes) {
        auto w = randomVector(rows * cols, rng, 0.05f), x = randomVector(cols, rng, 2.0f);
        Q8Matrix q = makeQ8(rows, cols);
        quantizeRowsQ8(w.data(), 0, rows, q);
        Q8Vector xq;
        quantizeVectorQ8(x.data(), cols, xq);
        ASSERT_EQ(xq.blocks, q.blocks);
        for (int threads : {1, 2}) {
            auto y = runRows(rows, threads, [&](float* out, int64_t r0, int64_t r1) { gemvQ8On(p, q, xq, out, r0, r1); });
            for (int64_t r = 0; r < rows; ++r) {
                // The exact value of the quantized product, and the f32 product it approximates.
                double ref = 0, mag = 0, exact = 0, bound = 0;
                for (int64_t b = 0; b < q.blocks; ++b) {
                    int64_t dot = 0, absDot = 0;
                    for (int i = 0; i < 32; ++i) {
                        const int64_t t = int64_t(q.qs[(r * q.blocks + b) * 32 + i]) * xq.qs[b * 32 + i];
                        dot += t;
                        absDot += std::llabs(t);
                    }
                    const double dw = f16ToF32(q.d[r * q.blocks + b]), dx = xq.d[b];
                    ref += double(dot) * dw * dx;
                    mag += double(absDot) * dw * dx;
                    // |w - dw·qw| ≤ dw/2 and |x - dx·qx| ≤ dx/2 per element (plus the f16 rounding of dw, which
                    // the stored values already divide out).
                    for (int64_t c = b * 32; c < std::min(cols, (b + 1) * 32); ++c)
                        bound += dw / 2 * std::fabs(x[c]) + dx / 2 * std::fabs(w[r * cols + c]) + dw * dx / 4;
                }
                for (int64_t c = 0; c < cols; ++c)
                    exact += double(w[r * cols + c]) * x[c];
                ASSERT_NEAR(y[r], ref, 1e-6 * mag + 1e-30) << pathName(p) << " " << rows << "x" << cols << " row " << r;
                ASSERT_NEAR(y[r], exact, bound * 1.001 + 1e-6) << pathName(p) << " " << rows << "x" << cols << " row " << r;
            }
        }
    }
}

// A random matrix of a block type: random bytes (every bit pattern of the quants, scales and bit planes) with
// each block's f16 scales set to finite values of a model's size, so the products stay finite.
BlockMatrix randomBlocks(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng)
{
    if (type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16) {
        std::vector<std::byte> bytes(static_cast<size_t>(rows * ggmlRowBytes(type, cols)));
        auto w = randomVector(rows * cols, rng, 0.05f);
        for (size_t i = 0; i < w.size(); ++i) {
            if (type == GgmlType::F32)
                std::memcpy(bytes.data() + 4 * i, &w[i], 4);
            const uint16_t h = type == GgmlType::F16 ? f32ToF16(w[i]) : toBf16(w[i]);
            if (type != GgmlType::F32)
                std::memcpy(bytes.data() + 2 * i, &h, 2);
        }
        return makeBlockMatrix(type, rows, cols, bytes.data());
    }
    return makeBlockMatrix(type, rows, cols, randomBlockBytes(type, rows, cols, rng, 0.01f).data());
}

class BlockKernels : public ::testing::TestWithParam<std::tuple<Path, GgmlType>> {};

// Each block type on each path against the file's own meaning of the blocks (model/ggml_types' dequantizeRow, the
// same function llama.cpp's tests check the GGUF reader with) times x in double: within the rounding of x to Q8
// blocks (half a step of each activation block times the weights' magnitudes; blocks of 256 where the kernel reads
// Q8_K), whatever the path.
TEST_P(BlockKernels, MatchTheDequantizedProductWithinTheActivationsRounding)
{
    const auto [p, type] = GetParam();
    std::mt19937 rng(7 + static_cast<int>(type));
    const int64_t unit = ggmlTypeInfo(type).blockSize;
    // The activation's blocks: 256 values a scale for Q8_K (Q6_K; Q4_K and Q5_K on the 512-bit paths), else 32.
    const bool wide = p == Path::Avx512 || p == Path::Avx512Bf16;
    const int64_t xBlock = type == GgmlType::Q6_K || (wide && (type == GgmlType::Q4_K || type == GgmlType::Q5_K)) ? 256 : 32;
    for (int64_t rows : {1, 3, 17, 33})
        for (int64_t cols : {unit, 2 * unit, 3 * unit, 11 * unit, std::max<int64_t>(2816, unit)}) {
            if (cols % unit != 0 || cols % 32 != 0)
                continue;
            BlockMatrix m = randomBlocks(type, rows, cols, rng);
            auto x = randomVector(cols, rng, 2.0f);
            BlockInput in;
            in.prepare(x.data(), cols, {type});
            std::vector<float> wide(static_cast<size_t>(rows * cols));
            dequantizeRows(m, 0, rows, wide.data());
            for (int threads : {1, 2}) {
                auto y = runRows(rows, threads, [&](float* out, int64_t r0, int64_t r1) { gemvBlocksOn(p, m, in, out, r0, r1); });
                for (int64_t r = 0; r < rows; ++r) {
                    double ref = 0, mag = 0, bound = 0;
                    for (int64_t b = 0; b < cols / xBlock; ++b) {
                        float amax = 0;
                        for (int64_t c = b * xBlock; c < b * xBlock + xBlock; ++c)
                            amax = std::max(amax, std::fabs(x[c]));
                        double wabs = 0;
                        for (int64_t c = b * xBlock; c < b * xBlock + xBlock; ++c) {
                            const double t = double(wide[r * cols + c]) * x[c];
                            ref += t;
                            mag += std::fabs(t);
                            wabs += std::fabs(wide[r * cols + c]);
                        }
                        bound += wabs * amax / 127.0 / 2;
                    }
                    ASSERT_TRUE(std::isfinite(y[r]));
                    ASSERT_NEAR(y[r], ref, bound * 1.01 + 2e-5 * mag + 1e-6)
                        << pathName(p) << " " << ggmlTypeName(type) << " " << rows << "x" << cols << " row " << r << " threads " << threads;
                }
            }
        }
}

std::vector<std::tuple<Path, GgmlType>> blockCases()
{
    std::vector<std::tuple<Path, GgmlType>> out;
    for (Path p : supportedPaths())
        for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                           GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K})
            out.emplace_back(p, t);
    return out;
}

INSTANTIATE_TEST_SUITE_P(EveryTypeOnEveryPath, BlockKernels, ::testing::ValuesIn(blockCases()),
                         [](const ::testing::TestParamInfo<std::tuple<Path, GgmlType>>& i) {
                             return std::string(pathName(std::get<0>(i.param))) + "_" + ggmlTypeName(std::get<1>(i.param));
                         });

TEST(BlockKernelsCoverage, TheTypesOfQ4_0Q4_K_MAndQ8_0FilesHaveAKernelOnEveryPath)
{
    for (Path p : supportedPaths())
        for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16})
            EXPECT_TRUE(hasBlockKernel(p, t)) << pathName(p) << " " << ggmlTypeName(t);
    // Q5_K_M files' Q5_K: on the 512-bit paths; AVX2 runs the portable kernel (still correct: above)
    for (Path p : {Path::Avx512, Path::Avx512Bf16})
        if (supported(p))
            EXPECT_TRUE(hasBlockKernel(p, GgmlType::Q5_K)) << pathName(p);
    if (supported(Path::Avx2)) {
        EXPECT_FALSE(hasBlockKernel(Path::Avx2, GgmlType::Q5_K));
    }
}

// Prefill's widening, on every path, is the file format's definition (model/ggml_types), bit for bit up to the
// f32 rounding of scale × value (one multiply, or one fused multiply-subtract for Q4_K's minimum).
TEST(BlockKernelsCoverage, WideningRowsGivesTheFormatsValuesOnEveryPath)
{
    std::mt19937 rng(11);
    for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::F16}) {
        const int64_t cols = 512;
        BlockMatrix m = randomBlocks(t, 5, cols, rng);
        std::vector<float> want(static_cast<size_t>(5 * cols));
        for (int64_t r = 0; r < 5; ++r)
            dequantizeRow(t, m.data + r * m.rowBytes, want.data() + r * cols, cols);
        for (Path p : supportedPaths()) {
            std::vector<float> got(want.size(), NAN);
            dequantizeRowsOn(p, m, 0, 5, got.data());
            for (size_t i = 0; i < got.size(); ++i)
                ASSERT_NEAR(got[i], want[i], 1e-6f * std::fabs(want[i]) + 1e-9f) << ggmlTypeName(t) << " " << pathName(p) << " at " << i;
        }
    }
}

TEST(BlockKernelsCoverage, AMatrixMustBeWholeBlocksAndARowRangeSharesTheBytes)
{
    EXPECT_THROW(makeBlockMatrix(GgmlType::Q4_K, 2, 100), Error);
    EXPECT_THROW(makeBlockMatrix(GgmlType::Q2_K, 2, 256), Error);
    std::mt19937 rng(5);
    BlockMatrix m = randomBlocks(GgmlType::Q4_0, 8, 64, rng);
    BlockMatrix part = m.rowRange(3, 4);
    EXPECT_EQ(part.data, m.data + 3 * m.rowBytes);
    EXPECT_EQ(part.storage.get(), m.storage.get());
    EXPECT_THROW(m.rowRange(6, 3), Error);
}


INSTANTIATE_TEST_SUITE_P(EveryPathThisCpuRuns, Kernels, ::testing::ValuesIn(pathsHere()),
                         [](const ::testing::TestParamInfo<Path>& i) { return std::string(pathName(i.param)); });

TEST(KernelDispatch, NamesPathsAndRefusesUnknownOrUnsupportedOnes)
{
    for (Path p : supportedPaths())
        EXPECT_EQ(parsePath(pathName(p)), p);
    try {
        parsePath("avx1024");
        FAIL() << "an unknown path was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("unknown kernel path 'avx1024'"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(supported(Path::Portable));
    for (Path p : {Path::Avx2, Path::Avx512, Path::Avx512Bf16})
        if (!supported(p))
            EXPECT_THROW(setPath(p), Error);
    // Forcing each supported path makes it the active one (what TOGETHER_KERNELS does at start).
    const Path before = activePath();
    for (Path p : supportedPaths()) {
        setPath(p);
        EXPECT_EQ(activePath(), p);
    }
    setPath(before);
    std::printf("kernel paths on this CPU:");
    for (Path p : supportedPaths())
        std::printf(" %s", pathName(p));
    std::printf(" (active: %s)\n", pathName(activePath()));
}

TEST(KernelDispatch, TheEnvironmentForcesAPathInAFreshProcess)
{
    for (Path p : supportedPaths()) {
        const std::string cmd = std::string("TOGETHER_KERNELS=") + pathName(p) + " " + TOGETHER_BIN_DIR "/together-worker kernels";
        FILE* f = ::popen(cmd.c_str(), "r");
        ASSERT_NE(f, nullptr);
        char buf[256] = {};
        std::string out;
        while (std::fgets(buf, sizeof buf, f))
            out += buf;
        EXPECT_EQ(::pclose(f), 0) << out;
        EXPECT_NE(out.find(std::string("active: ") + pathName(p)), std::string::npos) << out;
    }
    FILE* f = ::popen("TOGETHER_KERNELS=sse9 " TOGETHER_BIN_DIR "/together-worker kernels 2>&1", "r");
    char buf[256] = {};
    std::string out;
    while (std::fgets(buf, sizeof buf, f))
        out += buf;
    EXPECT_NE(::pclose(f), 0);
    EXPECT_NE(out.find("unknown kernel path 'sse9'"), std::string::npos) << out;
}

TEST(KernelPool, SplitsRowsExactlyOnceForAnyThreadCountAndAlignment)
{
    for (int threads : {1, 2, 3, 5}) {
        setThreads(threads);
        EXPECT_EQ(kernels::threads(), threads);
        for (int64_t rows : {1, 2, 7, 64, 1001})
            for (int64_t align : {1, 4, 16}) {
                std::vector<int> hits(static_cast<size_t>(rows), 0);
                std::mutex m;
                std::set<std::pair<int64_t, int64_t>> chunks;
                parallelRows(rows, align, [&](int64_t r0, int64_t r1) {
                    std::lock_guard lock(m);
                    chunks.insert({r0, r1});
                    for (int64_t r = r0; r < r1; ++r)
                        ++hits[static_cast<size_t>(r)];
                });
                for (int64_t r = 0; r < rows; ++r)
                    ASSERT_EQ(hits[static_cast<size_t>(r)], 1) << "row " << r << " of " << rows << ", " << threads << " threads";
                for (auto [r0, r1] : chunks)
                    EXPECT_TRUE(r0 % align == 0) << r0;
                // Chunks of one size (the last may be shorter), enough for every thread and few enough that a
                // product of a few rows is not cut into slivers.
                std::set<int64_t> sizes;
                for (auto [r0, r1] : chunks)
                    if (r1 != rows)
                        sizes.insert(r1 - r0);
                EXPECT_LE(sizes.size(), 1u) << rows << " rows";
                if (rows >= 2 * align * threads) {
                    EXPECT_GE(static_cast<int>(chunks.size()), threads) << rows << " rows";
                    EXPECT_LE(static_cast<int>(chunks.size()), 16 * threads) << rows << " rows";
                }
            }
        // Many short jobs back to back (a decode step's rhythm), and one after the workers went to sleep.
        std::atomic<int64_t> total{0};
        for (int i = 0; i < 2000; ++i)
            parallelRows(64, 4, [&](int64_t r0, int64_t r1) { total += r1 - r0; });
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        parallelRows(64, 4, [&](int64_t r0, int64_t r1) { total += r1 - r0; });
        EXPECT_EQ(total.load(), 2001 * 64);
    }
    setThreads(1);
}

TEST(KernelPool, ConcurrentCallersFromOtherThreadsStillComputeEverything)
{
    // Tensor-parallel ranks as threads of one process (tests/test_sharding) call in at once.
    setThreads(2);
    std::vector<std::thread> callers;
    std::atomic<int64_t> total{0};
    for (int t = 0; t < 4; ++t)
        callers.emplace_back([&] {
            for (int i = 0; i < 500; ++i)
                parallelRows(100, 4, [&](int64_t r0, int64_t r1) { total += r1 - r0; });
        });
    for (auto& c : callers)
        c.join();
    EXPECT_EQ(total.load(), 4 * 500 * 100);
    setThreads(1);
}

TEST(KernelFormats, HalfPrecisionRoundTripsAndRoundsToNearestEven)
{
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const uint16_t v = static_cast<uint16_t>(h);
        const float f = f16ToF32(v);
        if (std::isnan(f))
            continue;
        ASSERT_EQ(f32ToF16(f), v) << std::hex << h;
    }
    EXPECT_EQ(f32ToF16(1.0f), 0x3c00);
    EXPECT_EQ(f32ToF16(65504.0f), 0x7bff);
    EXPECT_EQ(f32ToF16(65520.0f), 0x7c00);             // rounds up to infinity
    EXPECT_EQ(f32ToF16(5.9604645e-8f), 0x0001);        // the smallest subnormal
    EXPECT_EQ(f32ToF16(2.9802322e-8f), 0x0000);        // half of it: ties to even
    EXPECT_EQ(f32ToF16(1.0f + 1.0f / 2048), 0x3c00);   // tie between 1 and 1+2^-10: even
    EXPECT_EQ(f32ToF16(1.0f + 3.0f / 2048), 0x3c02);   // tie: rounds up to even
    EXPECT_EQ(f32ToF16(-2.0f), 0xc000);
}

TEST(KernelFormats, Q8QuantizationKeepsEachWeightWithinHalfAStepAndPadsWithZeros)
{
    std::mt19937 rng(4);
    const int64_t rows = 3, cols = 70; // 3 blocks, the last one 6 wide
    auto w = randomVector(rows * cols, rng, 0.02f);
    for (int64_t c = 32; c < 64; ++c)
        w[c] = 0.0f;                // an all-zero block
    for (int64_t c = 0; c < 32; ++c)
        w[cols + c] = 1e-6f * (c - 16); // a block whose f16 scale is subnormal
    Q8Matrix q = makeQ8(rows, cols);
    quantizeRowsQ8(w.data(), 0, rows, q);
    EXPECT_EQ(q.blocks, 3);
    EXPECT_EQ(q.bytes(), size_t(rows * 3 * 32 + rows * 3 * 2));
    std::vector<float> back(static_cast<size_t>(rows * cols));
    dequantizeRowsQ8(q, 0, rows, back.data());
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
            const float d = f16ToF32(q.d[r * q.blocks + c / 32]);
            ASSERT_LE(std::fabs(back[r * cols + c] - w[r * cols + c]), d / 2 * 1.0001f + 1e-12f) << r << "," << c;
        }
    for (int64_t c = 32; c < 64; ++c)
        EXPECT_EQ(back[c], 0.0f);
    EXPECT_NE(back[cols + 0], 0.0f); // the tiny block survives
    for (int64_t r = 0; r < rows; ++r)
        for (int i = cols - 64; i < 32; ++i)
            EXPECT_EQ(q.qs[(r * 3 + 2) * 32 + i], 0) << "padding of row " << r;
    for (auto v : q.qs)
        EXPECT_GE(v, -127);
    std::vector<uint16_t> bf(static_cast<size_t>(rows * cols));
    dequantizeRowsQ8Bf16(q, 0, rows, bf.data());
    for (size_t i = 0; i < bf.size(); ++i)
        ASSERT_EQ(bf[i], toBf16(back[i]));
}

} // namespace
