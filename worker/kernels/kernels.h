// SPDX-License-Identifier: MIT
#pragma once

// Decode kernels: weights [rows, cols] (row-major, as nn.Linear stores them) times one activation vector,
// y[r] = Σ_c W[r, c] · x[c]. A decode step is this product over every weight matrix once, so it runs at the
// speed memory delivers the weights; oneDNN's GEMM-shaped path for N = 1 does not (it vectorises over N and
// is compute-bound at a third of the bandwidth on CPUs without AMX). No libtorch here: plain pointers, one
// translation unit per instruction set (kernels_<path>.cpp, each compiled for its own ISA), chosen at run time
// by the CPU's features, or forced with TOGETHER_KERNELS=<path> (for measurements and tests).
//
// Weight formats:
//   f32   4 bytes per weight.
//   bf16  2 bytes; the activation is rounded to bf16 by the caller, products accumulate in f32.
//   q8    GGUF's Q8_0: blocks of 32 weights along a row, each block int8 values in [-127, 127] and one f16
//         scale (34 bytes per 32 weights). Rows are zero-padded to whole blocks. The activation is quantized
//         the same way per call (with an f32 scale), and each block's product is an exact int32 sum scaled by
//         d_w · d_x.
//   blocks  any runnable ggml type as a GGUF file stores it (BlockMatrix): each row its blocks, back to back.
//         Q4_0, Q5_0, Q8_0, Q4_K and Q6_K (the types of Q4_0, Q4_K_M and Q8_0 files) and F16 have a kernel on every
//         path; the others (Q4_1, Q5_1, Q5_K) run the portable one on any path. Quantized types multiply
//         against the activation quantized once per product (BlockInput), with its blocks' sums for the types
//         whose weights carry an offset (Q4_0's -8, a K-quant's minimum).

#include "model/ggml_types.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace together::kernels {

enum class Path {
    Portable,   // plain C++
    Avx2,       // AVX2 + FMA + F16C
    Avx512,     // AVX-512 F/BW/VL/DQ
    Avx512Bf16, // AVX-512 BF16 (vdpbf16ps) and VNNI (vpdpbusd)
};
const char* pathName(Path p); // "portable", "avx2", "avx512", "avx512bf16"
// Parses a name from pathName; throws Error naming the choices otherwise.
Path parsePath(const std::string& name);
// Whether this CPU (and the OS, for the wide registers) can run the path.
bool supported(Path p);
// The best supported path, unless TOGETHER_KERNELS names one (an unknown or unsupported name throws Error,
// so a forced measurement never silently runs another path). Read once, then cached; setPath overrides it.
Path activePath();
void setPath(Path p); // throws Error when the CPU cannot run it
// Every path this CPU can run, best last.
std::vector<Path> supportedPaths();

constexpr int64_t kQ8Block = 32;
inline int64_t q8Blocks(int64_t cols) { return (cols + kQ8Block - 1) / kQ8Block; }

// f16 <-> f32 (IEEE binary16, round to nearest even, subnormals kept).
uint16_t f32ToF16(float f);
float f16ToF32(uint16_t h);

// A weight matrix in q8: qs holds rows × blocks × 32 int8 (zero-padded), d rows × blocks f16 scales.
// Memory for weights that every decode step streams whole: 2 MiB-aligned and advised for transparent huge
// pages (MADV_HUGEPAGE; a host whose THP setting is "madvise", Debian's default, gives them only when asked).
// A step reads ~1 GB through 4 KiB pages otherwise: a TLB miss every 4 KiB, and the hardware prefetchers stop
// at each page's end; on the 2-vCPU EPYC of docs/BENCHMARKS.md two-thread bf16 decode ran ~10% faster. Only
// whole huge pages are advised, so the resident size stays the bytes asked for (rounded to 4 KiB). Requests
// under 2 MiB come from malloc.
void* allocateWeights(size_t bytes);
void freeWeights(void* p, size_t bytes);
template <class T>
struct WeightAllocator {
    using value_type = T;
    WeightAllocator() = default;
    template <class U>
    WeightAllocator(const WeightAllocator<U>&) noexcept
    {
    }
    T* allocate(size_t n) { return static_cast<T*>(allocateWeights(n * sizeof(T))); }
    void deallocate(T* p, size_t n) noexcept { freeWeights(p, n * sizeof(T)); }
    template <class U>
    bool operator==(const WeightAllocator<U>&) const noexcept
    {
        return true;
    }
};

struct Q8Matrix {
    int64_t rows = 0, cols = 0, blocks = 0;
    std::vector<int8_t, WeightAllocator<int8_t>> qs;
    std::vector<uint16_t, WeightAllocator<uint16_t>> d;
    size_t bytes() const { return qs.size() + d.size() * sizeof(uint16_t); }
};
// Quantizes rows [r0, r1) of an f32 matrix [rows, cols] into m (already sized by makeQ8).
void quantizeRowsQ8(const float* w, int64_t r0, int64_t r1, Q8Matrix& m);
Q8Matrix makeQ8(int64_t rows, int64_t cols);
// rows [r0, r1) of m back to f32 (for prefill's GEMM and for tests).
void dequantizeRowsQ8(const Q8Matrix& m, int64_t r0, int64_t r1, float* out);
void dequantizeRowsQ8Bf16(const Q8Matrix& m, int64_t r0, int64_t r1, uint16_t* out);

// One activation vector quantized for a q8 product: blocks × 32 int8 and one f32 scale per block, and each
// block's sum d · Σ q (what a weight offset multiplies).
struct Q8Vector {
    int64_t cols = 0, blocks = 0;
    std::vector<int8_t> qs;
    std::vector<float> d;
    std::vector<float> s;
};
void quantizeVectorQ8(const float* x, int64_t cols, Q8Vector& out);

// A weight matrix in a ggml block type: `rows` rows of rowBytes bytes each (cols / blockSize blocks), in
// weight memory (allocateWeights). Copies share the bytes; rowRange views a run of rows of them.
struct BlockMatrix {
    GgmlType type = GgmlType::F32;
    int64_t rows = 0, cols = 0;
    size_t rowBytes = 0;
    std::shared_ptr<const std::byte> storage;
    const std::byte* data = nullptr;
    size_t bytes() const { return static_cast<size_t>(rows) * rowBytes; }
    BlockMatrix rowRange(int64_t r0, int64_t n) const;
};
// Room for a [rows, cols] matrix of the type; throws Error when cols is not a whole number of its blocks or the
// type is not runnable. `src` (rows · rowBytes bytes), when given, is copied in.
BlockMatrix makeBlockMatrix(GgmlType type, int64_t rows, int64_t cols, const std::byte* src = nullptr);
// Bytes of a random [rows, cols] matrix of a quantized block type, for tests and benchmarks: every bit pattern of
// its quants, bit planes and 6-bit scales, with each block's f16 scales (and minimums) set to values in
// [0.0005, maxScale) so products stay finite. Throws Error for F32, F16 and BF16.
std::vector<std::byte> randomBlockBytes(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng, float maxScale);
// Rows [r0, r1) of the matrix widened to f32 (prefill's tiles, tests): vectorised for Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, F16
// on the SIMD paths, model/ggml_types' dequantizeRow otherwise.
void dequantizeRows(const BlockMatrix& m, int64_t r0, int64_t r1, float* out);
void dequantizeRowsOn(Path p, const BlockMatrix& m, int64_t r0, int64_t r1, float* out);

// The activation of one product with block matrices, in every form their types read: f32, bf16 (for BF16
// weights), Q8 blocks of 32 (Q4_0, Q5_0, Q8_0, Q4_K on AVX2, ...) and, for the K-quants (Q4_K and Q5_K on the
// 512-bit paths, Q6_K everywhere), Q8 blocks of 256 with one f32 scale and the sums of each 16 values (so a
// super-block's scales and its offset or minimums apply in integers, as llama.cpp's Q8_K does). prepare fills the
// forms `types` need.
struct BlockInput {
    const float* x = nullptr;
    int64_t cols = 0;
    std::vector<uint16_t> bf16;
    Q8Vector q8;
    std::vector<int8_t> kq;    // cols int8
    std::vector<float> kd;     // cols / 256 scales
    std::vector<int16_t> ksum; // cols / 16 sums of kq
    // q8's values for Q4_0 on the 512-bit paths: each 4 blocks' first halves (16 values each), then their second
    // halves, the order of four blocks' low and high nibbles loaded side by side. Whole groups of 4 only.
    std::vector<int8_t> q40;
    void prepare(const float* x, int64_t cols, const std::vector<GgmlType>& types);
};

// y[r] for r in [r0, r1): the row range is how a product is split over threads.
void gemvF32(const float* w, const float* x, float* y, int64_t cols, int64_t r0, int64_t r1);
void gemvBf16(const uint16_t* w, const uint16_t* x, float* y, int64_t cols, int64_t r0, int64_t r1);
void gemvQ8(const Q8Matrix& w, const Q8Vector& x, float* y, int64_t r0, int64_t r1);
// y[r] of a block matrix; x prepared for its type.
void gemvBlocks(const BlockMatrix& w, const BlockInput& x, float* y, int64_t r0, int64_t r1);

// The same on one path, whatever activePath() says (tests compare every path against a reference).
void gemvF32On(Path p, const float* w, const float* x, float* y, int64_t cols, int64_t r0, int64_t r1);
void gemvBf16On(Path p, const uint16_t* w, const uint16_t* x, float* y, int64_t cols, int64_t r0, int64_t r1);
void gemvQ8On(Path p, const Q8Matrix& w, const Q8Vector& x, float* y, int64_t r0, int64_t r1);
void gemvBlocksOn(Path p, const BlockMatrix& w, const BlockInput& x, float* y, int64_t r0, int64_t r1);
// Whether the path has its own kernel for the type (else gemvBlocksOn runs the portable one).
bool hasBlockKernel(Path p, GgmlType type);

// The per-token operators of a step over contiguous f32 rows (rows.cpp), as Hugging Face's Llama computes them:
// RMSNorm of rows of n with weight w; rotary (rotate_half) of [tokens, heads, d] with cos and sin [tokens, d];
// silu(gate) · up of rows holding n gate values then n up values.
void rmsNormRows(const float* x, const float* w, float* out, int64_t rows, int64_t n, float eps);
void rotaryRows(const float* x, const float* cos, const float* sin, float* out, int64_t tokens, int64_t heads, int64_t d);
void siluMulRows(const float* gateUp, float* out, int64_t tokens, int64_t n);

// The compute threads of this process: a persistent pool (the calling thread is one of them) that splits a
// product by output rows. Sized by setThreads (a shard sets its own count, so shards sharing a host do not
// oversubscribe it). Idle workers spin for a short while after a job (a decode step issues one product per
// matrix, microseconds apart, and waking a sleeping thread costs 50 µs to 2 ms on a VM), then sleep.
void setThreads(int threads);
int threads();
// Runs fn(r0, r1) over [0, rows) in contiguous chunks of multiples of `align` rows (about eight per thread,
// taken in turn, so a thread that starts late or runs slow takes fewer). A call
// made while another thread's job runs in the pool runs on the calling thread alone (tensor-parallel ranks
// as threads of one process, in tests).
void parallelRows(int64_t rows, int64_t align, const std::function<void(int64_t, int64_t)>& fn);

} // namespace together::kernels
