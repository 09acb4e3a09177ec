// SPDX-License-Identifier: MIT
// Dispatch, number formats and the thread pool of the decode kernels (the products are in kernels_<path>.cpp).
#include "kernels/kernels.h"

#include "base/error.h"
#include "kernels/paths.h"
#include "model/ggml_types.h"
#include "model/safetensors.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <thread>

#include <sched.h>
#include <sys/mman.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TOGETHER_PAUSE() _mm_pause()
#else
#define TOGETHER_PAUSE() ((void)0)
#endif

namespace together::kernels {

namespace {

const detail::Table& tableOf(Path p)
{
    switch (p) {
    case Path::Avx512Bf16:
        return detail::avx512Bf16Table();
    case Path::Avx512:
        return detail::avx512Table();
    case Path::Avx2:
        return detail::avx2Table();
    case Path::Portable:
        break;
    }
    return detail::portableTable();
}

std::atomic<int> g_path{-1};
std::mutex g_pathMutex;

} // namespace

const char* pathName(Path p)
{
    switch (p) {
    case Path::Portable:
        return "portable";
    case Path::Avx2:
        return "avx2";
    case Path::Avx512:
        return "avx512";
    case Path::Avx512Bf16:
        return "avx512bf16";
    }
    return "?";
}

Path parsePath(const std::string& name)
{
    for (Path p : {Path::Portable, Path::Avx2, Path::Avx512, Path::Avx512Bf16})
        if (name == pathName(p))
            return p;
    throw Error("unknown kernel path '" + name + "' (use avx512bf16, avx512, avx2 or portable)");
}

bool supported(Path p)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    switch (p) {
    case Path::Portable:
        return true;
    case Path::Avx2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Path::Avx512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Path::Avx512Bf16:
        return supported(Path::Avx512) && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni");
    }
    return false;
#else
    return p == Path::Portable;
#endif
}

std::vector<Path> supportedPaths()
{
    std::vector<Path> out;
    for (Path p : {Path::Portable, Path::Avx2, Path::Avx512, Path::Avx512Bf16})
        if (supported(p))
            out.push_back(p);
    return out;
}

void setPath(Path p)
{
    if (!supported(p))
        throw Error(std::string("this CPU cannot run the ") + pathName(p) + " kernels (it runs: " + [] {
            std::string s;
            for (Path q : supportedPaths())
                s += (s.empty() ? "" : ", ") + std::string(pathName(q));
            return s;
        }() + ")");
    g_path.store(static_cast<int>(p));
}

Path activePath()
{
    int p = g_path.load();
    if (p >= 0)
        return static_cast<Path>(p);
    std::lock_guard lock(g_pathMutex);
    if (g_path.load() < 0) {
        const char* forced = std::getenv("TOGETHER_KERNELS");
        if (forced && *forced) {
            const Path want = parsePath(forced);
            if (!supported(want))
                setPath(want); // throws with the reason
            g_path.store(static_cast<int>(want));
        } else {
            g_path.store(static_cast<int>(supportedPaths().back()));
        }
    }
    return static_cast<Path>(g_path.load());
}

// IEEE half precision: core's conversions (round to nearest even), the ones safetensors files are read and
// written with.
uint16_t f32ToF16(float f) { return floatToF16(f); }

float f16ToF32(uint16_t h) { return f16ToFloat(h); }

Q8Matrix makeQ8(int64_t rows, int64_t cols)
{
    Q8Matrix m;
    m.rows = rows;
    m.cols = cols;
    m.blocks = q8Blocks(cols);
    m.qs.assign(static_cast<size_t>(rows * m.blocks * kQ8Block), 0);
    m.d.assign(static_cast<size_t>(rows * m.blocks), 0);
    return m;
}

void quantizeRowsQ8(const float* w, int64_t r0, int64_t r1, Q8Matrix& m)
{
    for (int64_t r = r0; r < r1; ++r) {
        const float* row = w + r * m.cols;
        for (int64_t b = 0; b < m.blocks; ++b) {
            const int64_t c0 = b * kQ8Block, n = std::min(kQ8Block, m.cols - c0);
            float amax = 0;
            for (int64_t i = 0; i < n; ++i)
                amax = std::max(amax, std::fabs(row[c0 + i]));
            // The stored (f16) scale is the one the values are divided by, so scale and values agree; where
            // f16 rounded it down (always possible, and by up to half the scale among subnormals) the next f16
            // up is taken, so the largest value still fits in ±127 and no value is clamped.
            uint16_t dh = f32ToF16(amax / 127.0f);
            if (amax > 0 && amax / f16ToF32(dh) > 127.0f)
                ++dh;
            const float d = f16ToF32(dh);
            m.d[static_cast<size_t>(r * m.blocks + b)] = dh;
            int8_t* q = m.qs.data() + (r * m.blocks + b) * kQ8Block;
            for (int64_t i = 0; i < n; ++i)
                q[i] = d > 0 ? static_cast<int8_t>(std::clamp<long>(std::lrint(row[c0 + i] / d), -127, 127)) : 0;
        }
    }
}

void dequantizeRowsQ8(const Q8Matrix& m, int64_t r0, int64_t r1, float* out)
{
    for (int64_t r = r0; r < r1; ++r) {
        float* o = out + (r - r0) * m.cols;
        for (int64_t b = 0; b < m.blocks; ++b) {
            const float d = f16ToF32(m.d[static_cast<size_t>(r * m.blocks + b)]);
            const int8_t* q = m.qs.data() + (r * m.blocks + b) * kQ8Block;
            const int64_t c0 = b * kQ8Block;
            if (c0 + kQ8Block <= m.cols) {
                for (int i = 0; i < kQ8Block; ++i) // a fixed count: vectorised
                    o[c0 + i] = d * static_cast<float>(q[i]);
            } else {
                for (int64_t i = 0; c0 + i < m.cols; ++i)
                    o[c0 + i] = d * static_cast<float>(q[i]);
            }
        }
    }
}

void dequantizeRowsQ8Bf16(const Q8Matrix& m, int64_t r0, int64_t r1, uint16_t* out)
{
    // d · q is a float times an integer of at most 7 bits: rounding it to bf16 (8 bits) is round to nearest
    // even on the float's bits (the values are finite).
    auto bf16 = [](float v) {
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    };
    for (int64_t r = r0; r < r1; ++r) {
        uint16_t* o = out + (r - r0) * m.cols;
        for (int64_t b = 0; b < m.blocks; ++b) {
            const float d = f16ToF32(m.d[static_cast<size_t>(r * m.blocks + b)]);
            const int8_t* q = m.qs.data() + (r * m.blocks + b) * kQ8Block;
            const int64_t c0 = b * kQ8Block;
            if (c0 + kQ8Block <= m.cols) {
                for (int i = 0; i < kQ8Block; ++i)
                    o[c0 + i] = bf16(d * static_cast<float>(q[i]));
            } else {
                for (int64_t i = 0; c0 + i < m.cols; ++i)
                    o[c0 + i] = bf16(d * static_cast<float>(q[i]));
            }
        }
    }
}

void quantizeVectorQ8(const float* x, int64_t cols, Q8Vector& out)
{
    out.cols = cols;
    out.blocks = q8Blocks(cols);
    out.qs.assign(static_cast<size_t>(out.blocks * kQ8Block), 0);
    out.d.assign(static_cast<size_t>(out.blocks), 0.0f);
    out.s.assign(static_cast<size_t>(out.blocks), 0.0f);
    for (int64_t b = 0; b < out.blocks; ++b) {
        const int64_t c0 = b * kQ8Block, n = std::min(kQ8Block, cols - c0);
        float amax = 0;
        for (int64_t i = 0; i < n; ++i)
            amax = std::max(amax, std::fabs(x[c0 + i]));
        const float d = amax / 127.0f;
        out.d[static_cast<size_t>(b)] = d;
        if (d > 0) {
            int32_t sum = 0;
            for (int64_t i = 0; i < n; ++i) {
                const auto q = static_cast<int8_t>(std::clamp<long>(std::lrint(x[c0 + i] / d), -127, 127));
                out.qs[static_cast<size_t>(c0 + i)] = q;
                sum += q;
            }
            out.s[static_cast<size_t>(b)] = d * static_cast<float>(sum);
        }
    }
}

// ---- block matrices ----

BlockMatrix BlockMatrix::rowRange(int64_t r0, int64_t n) const
{
    if (r0 < 0 || n < 0 || r0 + n > rows)
        throw Error("internal: rows " + std::to_string(r0) + "+" + std::to_string(n) + " of a " + std::to_string(rows) + "-row matrix");
    BlockMatrix v = *this;
    v.rows = n;
    v.data = data + static_cast<size_t>(r0) * rowBytes;
    return v;
}

std::vector<std::byte> randomBlockBytes(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng, float maxScale)
{
    if (type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16)
        throw Error(std::string("internal: ") + ggmlTypeName(type) + " has no blocks to fill at random");
    const GgmlTypeInfo& info = ggmlTypeInfo(type);
    std::vector<std::byte> bytes(static_cast<size_t>(rows * ggmlRowBytes(type, cols)));
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& b : bytes)
        b = static_cast<std::byte>(byte(rng));
    std::vector<size_t> halves; // offsets of the f16 fields in a block
    switch (type) {
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
        halves = {0, 2};
        break;
    case GgmlType::Q6_K:
        halves = {208};
        break;
    default:
        halves = {0};
    }
    std::uniform_real_distribution<float> scale(0.0005f, maxScale);
    for (size_t blk = 0; blk < bytes.size() / static_cast<size_t>(info.blockBytes); ++blk)
        for (size_t off : halves) {
            const uint16_t h = f32ToF16(scale(rng));
            std::memcpy(bytes.data() + blk * static_cast<size_t>(info.blockBytes) + off, &h, 2);
        }
    return bytes;
}

BlockMatrix makeBlockMatrix(GgmlType type, int64_t rows, int64_t cols, const std::byte* src)
{
    const GgmlTypeInfo& info = ggmlTypeInfo(type);
    if (!info.runnable)
        throw Error(std::string("the ") + info.name + " type has no kernels here");
    if (rows < 0 || cols <= 0 || cols % info.blockSize != 0)
        throw Error(std::string("a [") + std::to_string(rows) + ", " + std::to_string(cols) + "] matrix is not whole " + info.name +
                    " blocks of " + std::to_string(info.blockSize));
    BlockMatrix m;
    m.type = type;
    m.rows = rows;
    m.cols = cols;
    m.rowBytes = static_cast<size_t>(ggmlRowBytes(type, cols));
    const size_t bytes = std::max<size_t>(1, m.bytes());
    auto* p = static_cast<std::byte*>(allocateWeights(bytes));
    m.storage = std::shared_ptr<const std::byte>(p, [bytes](const std::byte* q) { freeWeights(const_cast<std::byte*>(q), bytes); });
    if (src)
        std::memcpy(p, src, m.bytes());
    m.data = p;
    return m;
}

void dequantizeRowsOn(Path p, const BlockMatrix& m, int64_t r0, int64_t r1, float* out)
{
    const detail::Table& t = tableOf(p);
    for (int64_t r = r0; r < r1; ++r) {
        const std::byte* src = m.data + static_cast<size_t>(r) * m.rowBytes;
        float* dst = out + (r - r0) * m.cols;
        if (!t.dequant || !t.dequant(m.type, src, dst, m.cols))
            dequantizeRow(m.type, src, dst, m.cols);
    }
}

void dequantizeRows(const BlockMatrix& m, int64_t r0, int64_t r1, float* out) { dequantizeRowsOn(activePath(), m, r0, r1, out); }

void BlockInput::prepare(const float* xin, int64_t n, const std::vector<GgmlType>& types)
{
    x = xin;
    cols = n;
    bool wantBf16 = false, wantQ8 = false, wantK = false;
    for (GgmlType t : types) {
        wantBf16 = wantBf16 || t == GgmlType::BF16;
        wantK = wantK || t == GgmlType::Q4_K || t == GgmlType::Q5_K || t == GgmlType::Q6_K;
        wantQ8 = wantQ8 || (t != GgmlType::F32 && t != GgmlType::F16 && t != GgmlType::BF16);
    }
    kq.clear(); // a form not wanted is left empty, never a previous input's (the kernels check the sizes)
    kd.clear();
    ksum.clear();
    if (wantK && n % 256 == 0) {
        const int64_t nb = n / 256;
        kq.resize(static_cast<size_t>(n));
        kd.resize(static_cast<size_t>(nb));
        ksum.resize(static_cast<size_t>(n / 16));
        for (int64_t b = 0; b < nb; ++b) {
            float amax = 0;
            for (int64_t i = b * 256; i < b * 256 + 256; ++i)
                amax = std::max(amax, std::fabs(xin[i]));
            const float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
            kd[static_cast<size_t>(b)] = d;
            for (int64_t g = b * 16; g < b * 16 + 16; ++g) {
                int sum = 0;
                for (int64_t i = g * 16; i < g * 16 + 16; ++i) {
                    const auto q = static_cast<int8_t>(std::clamp<long>(std::lrint(xin[i] * inv), -127, 127));
                    kq[static_cast<size_t>(i)] = q;
                    sum += q;
                }
                ksum[static_cast<size_t>(g)] = static_cast<int16_t>(sum);
            }
        }
    }
    if (wantBf16) {
        bf16.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
            bf16[static_cast<size_t>(i)] = floatToBf16(xin[i]);
    }
    if (wantQ8)
        quantizeVectorQ8(xin, n, q8);
    q40.clear();
    if (std::find(types.begin(), types.end(), GgmlType::Q4_0) != types.end()) {
        const int64_t groups = n / 128;
        q40.resize(static_cast<size_t>(groups * 128));
        for (int64_t g = 0; g < groups; ++g)
            for (int64_t b = 0; b < 4; ++b)
                for (int64_t h = 0; h < 2; ++h)
                    std::memcpy(q40.data() + g * 128 + h * 64 + b * 16, q8.qs.data() + g * 128 + b * 32 + h * 16, 16);
    }
}

bool hasBlockKernel(Path p, GgmlType type)
{
    if (p == Path::Portable || type == GgmlType::F32 || type == GgmlType::BF16)
        return true;
    // An empty row range: the path answers for the type without reading anything.
    float y = 0;
    return tableOf(p).blocks(type, nullptr, 0, 0, BlockInput(), &y, 0, 0);
}

void gemvBlocksOn(Path p, const BlockMatrix& w, const BlockInput& x, float* y, int64_t r0, int64_t r1)
{
    if (x.cols != w.cols)
        throw Error("internal: a product of a " + std::to_string(w.cols) + "-column matrix with " + std::to_string(x.cols) + " inputs");
    const detail::Table& t = tableOf(p);
    switch (w.type) {
    case GgmlType::F32:
        t.f32(reinterpret_cast<const float*>(w.data), x.x, y, w.cols, r0, r1);
        return;
    case GgmlType::BF16:
        if (static_cast<int64_t>(x.bf16.size()) != w.cols)
            throw Error("internal: the activation was not rounded to bf16 for a bf16 product");
        t.bf16(reinterpret_cast<const uint16_t*>(w.data), x.bf16.data(), y, w.cols, r0, r1);
        return;
    default:
        break;
    }
    const bool k = w.type == GgmlType::Q5_K || w.type == GgmlType::Q6_K;
    if (w.type != GgmlType::F16 && (x.q8.cols != w.cols || (k && static_cast<int64_t>(x.kq.size()) != w.cols)))
        throw Error("internal: the activation was not quantized for a block product");
    if (!t.blocks(w.type, w.data, w.rowBytes, w.cols, x, y, r0, r1))
        detail::portableTable().blocks(w.type, w.data, w.rowBytes, w.cols, x, y, r0, r1);
}

void gemvBlocks(const BlockMatrix& w, const BlockInput& x, float* y, int64_t r0, int64_t r1) { gemvBlocksOn(activePath(), w, x, y, r0, r1); }

void gemvF32On(Path p, const float* w, const float* x, float* y, int64_t cols, int64_t r0, int64_t r1)
{
    tableOf(p).f32(w, x, y, cols, r0, r1);
}

void gemvBf16On(Path p, const uint16_t* w, const uint16_t* x, float* y, int64_t cols, int64_t r0, int64_t r1)
{
    tableOf(p).bf16(w, x, y, cols, r0, r1);
}

void gemvQ8On(Path p, const Q8Matrix& w, const Q8Vector& x, float* y, int64_t r0, int64_t r1)
{
    if (x.blocks != w.blocks)
        throw Error("internal: q8 product of " + std::to_string(w.blocks) + " weight blocks with " + std::to_string(x.blocks) +
                    " activation blocks");
    tableOf(p).q8(w.qs.data(), w.d.data(), w.blocks, x.qs.data(), x.d.data(), y, r0, r1);
}

void gemvF32(const float* w, const float* x, float* y, int64_t cols, int64_t r0, int64_t r1)
{
    gemvF32On(activePath(), w, x, y, cols, r0, r1);
}

void gemvBf16(const uint16_t* w, const uint16_t* x, float* y, int64_t cols, int64_t r0, int64_t r1)
{
    gemvBf16On(activePath(), w, x, y, cols, r0, r1);
}

void gemvQ8(const Q8Matrix& w, const Q8Vector& x, float* y, int64_t r0, int64_t r1)
{
    gemvQ8On(activePath(), w, x, y, r0, r1);
}

// ---- weight memory ----

namespace {
constexpr size_t kHugePage = size_t(2) << 20, kPage = 4096;
}

void* allocateWeights(size_t bytes)
{
    if (bytes < kHugePage) {
        void* p = nullptr;
        if (::posix_memalign(&p, 64, std::max<size_t>(bytes, 1)) != 0)
            throw std::bad_alloc();
        return p;
    }
    // Over-map by one huge page, keep the 2 MiB-aligned part, give the rest back.
    const size_t len = (bytes + kPage - 1) & ~(kPage - 1), mapped = len + kHugePage;
    void* raw = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        throw std::bad_alloc();
    const auto base = reinterpret_cast<uintptr_t>(raw), aligned = (base + kHugePage - 1) & ~(kHugePage - 1);
    if (aligned > base)
        ::munmap(raw, aligned - base);
    if (base + mapped > aligned + len)
        ::munmap(reinterpret_cast<void*>(aligned + len), base + mapped - (aligned + len));
    // Advice is a hint: a kernel without THP ignores it (the memory works the same).
    ::madvise(reinterpret_cast<void*>(aligned), bytes & ~(kHugePage - 1), MADV_HUGEPAGE);
    return reinterpret_cast<void*>(aligned);
}

void freeWeights(void* p, size_t bytes)
{
    if (!p)
        return;
    if (bytes < kHugePage)
        std::free(p);
    else
        ::munmap(p, (bytes + kPage - 1) & ~(kPage - 1));
}

// ---- the thread pool ----

namespace {

using Clock = std::chrono::steady_clock;

class Pool {
public:
    ~Pool() { resize(1); }

    int size() const { return m_size; }

    void resize(int n)
    {
        n = std::max(1, n);
        std::lock_guard busy(m_busy);
        if (n == m_size)
            return;
        m_stop.store(true);
        m_generation.fetch_add(1);
        wake();
        for (auto& t : m_workers)
            t.join();
        m_workers.clear();
        m_stop.store(false);
        m_size = n;
        // The generation the workers start from is read here, not in the threads: a job published before a
        // new thread first runs must still count as new for it.
        const uint32_t start = m_generation.load();
        for (int i = 1; i < n; ++i)
            m_workers.emplace_back([this, start] { work(start); });
    }

    void run(int64_t rows, int64_t align, const std::function<void(int64_t, int64_t)>& fn)
    {
        std::unique_lock busy(m_busy, std::try_to_lock);
        if (!busy.owns_lock() || m_size == 1 || rows < 2 * align) {
            fn(0, rows);
            return;
        }
        m_fn = &fn;
        m_rows = rows;
        const int64_t unit = std::max<int64_t>(1, align), units = (rows + unit - 1) / unit;
        const int64_t perChunk = std::max<int64_t>(1, units / (8 * int64_t{m_size}));
        m_chunk = perChunk * unit;
        m_chunks.store((rows + m_chunk - 1) / m_chunk, std::memory_order_relaxed);
        m_next.store(0, std::memory_order_relaxed);
        m_remaining.store(m_size - 1);
        m_generation.fetch_add(1); // seq_cst: pairs with a worker's m_sleepers increment (see work)
        if (m_sleepers.load() > 0)
            wake();
        part();
        while (m_remaining.load(std::memory_order_acquire) > 0)
            TOGETHER_PAUSE();
        m_fn = nullptr;
    }

private:
    void wake()
    {
        std::lock_guard lock(m_sleepMutex);
        m_sleep.notify_all();
    }

    void part()
    {
        // Rows go out in chunks of about an eighth of a thread's share (whole `align` units), taken in turn from
        // one counter: a thread that woke late, or a vCPU the host slowed, takes fewer chunks instead of
        // keeping the others waiting at the end (static halves left ~15% of a 2-thread decode step waiting).
        const int64_t chunks = m_chunks.load(std::memory_order_relaxed);
        for (int64_t c; (c = m_next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
            const int64_t r0 = std::min(m_rows, c * m_chunk), r1 = std::min(m_rows, r0 + m_chunk);
            if (r0 < r1)
                (*m_fn)(r0, r1);
        }
    }

    void work(uint32_t seen)
    {
        while (true) {
            // Spin (yielding after a while, for hosts with more threads than cores) for up to 2 ms, then sleep.
            auto start = Clock::now();
            int spins = 0;
            uint32_t g;
            while ((g = m_generation.load(std::memory_order_acquire)) == seen) {
                TOGETHER_PAUSE();
                if (++spins % 128)
                    continue;
                const auto idle = Clock::now() - start;
                if (idle > std::chrono::milliseconds(2)) {
                    // A job published after our increment is seen by the predicate; one published before it
                    // finds m_sleepers > 0 and notifies under the mutex (both sides are sequentially consistent).
                    std::unique_lock lock(m_sleepMutex);
                    m_sleepers.fetch_add(1);
                    m_sleep.wait(lock, [&] { return m_generation.load() != seen; });
                    m_sleepers.fetch_sub(1);
                    start = Clock::now();
                } else if (idle > std::chrono::microseconds(200)) {
                    sched_yield();
                }
            }
            seen = g;
            if (m_stop.load())
                return;
            part();
            m_remaining.fetch_sub(1, std::memory_order_release);
        }
    }

    std::mutex m_busy;
    int m_size = 1;
    std::vector<std::thread> m_workers;
    std::atomic<uint32_t> m_generation{0};
    std::atomic<int> m_remaining{0}, m_sleepers{0};
    std::atomic<bool> m_stop{false};
    std::mutex m_sleepMutex;
    std::condition_variable m_sleep;
    const std::function<void(int64_t, int64_t)>* m_fn = nullptr;
    int64_t m_rows = 0, m_chunk = 1;
    std::atomic<int64_t> m_chunks{0}, m_next{0};
};

Pool& pool()
{
    static Pool p;
    return p;
}

} // namespace

void setThreads(int n) { pool().resize(n); }

int threads() { return pool().size(); }

void parallelRows(int64_t rows, int64_t align, const std::function<void(int64_t, int64_t)>& fn) { pool().run(rows, align, fn); }

} // namespace together::kernels
