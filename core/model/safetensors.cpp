// SPDX-License-Identifier: MIT
#include "model/safetensors.h"

#include "base/error.h"
#include "base/files.h"
#include "base/json.h"
#include "model/gguf_model.h"
#include "model/model_config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <unordered_set>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace together {

namespace fs = std::filesystem;
using json = nlohmann::json;

size_t dtypeSize(DType dtype)
{
    switch (dtype) {
    case DType::F32:
        return 4;
    case DType::F16:
    case DType::BF16:
        return 2;
    }
    return 0;
}

const char* dtypeName(DType dtype)
{
    switch (dtype) {
    case DType::F32:
        return "F32";
    case DType::F16:
        return "F16";
    case DType::BF16:
        return "BF16";
    }
    return "?";
}

std::string shapeString(const std::vector<int64_t>& shape)
{
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i)
        s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

int64_t TensorView::numel() const
{
    int64_t n = 1;
    for (auto d : shape)
        n *= d;
    return n;
}

MappedFile::MappedFile(const std::string& path, bool map)
    : m_path(path)
{
    m_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (m_fd < 0)
        throw Error("cannot open " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(m_fd, &st) != 0) {
        int err = errno;
        ::close(m_fd);
        throw Error("cannot stat " + path + ": " + std::strerror(err));
    }
    m_size = static_cast<size_t>(st.st_size);
    if (map && m_size > 0) {
        void* p = ::mmap(nullptr, m_size, PROT_READ, MAP_SHARED, m_fd, 0);
        if (p == MAP_FAILED) {
            int err = errno;
            ::close(m_fd);
            throw Error("cannot map " + path + ": " + std::strerror(err));
        }
        m_data = static_cast<const std::byte*>(p);
    }
}

MappedFile::~MappedFile()
{
    if (m_data)
        ::munmap(const_cast<std::byte*>(m_data), m_size);
    if (m_fd >= 0)
        ::close(m_fd);
}

void MappedFile::read(uint64_t offset, size_t length, std::byte* dst) const
{
    if (offset + length > m_size)
        throw Error(m_path + ": read past the end of the file (truncated?)");
    if (m_data) {
        std::memcpy(dst, m_data + offset, length);
        return;
    }
    size_t done = 0;
    while (done < length) {
        ssize_t n = ::pread(m_fd, dst + done, length - done, static_cast<off_t>(offset + done));
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            throw Error(m_path + ": read failed: " + (n == 0 ? std::string("unexpected end of file") : std::strerror(errno)));
        }
        done += static_cast<size_t>(n);
    }
}

namespace {

// Largest header we accept: real headers are a few hundred KB even for 100B-parameter shards.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// A tensor's entry is about ten values (dtype, shape, offsets); real files hold at most a few thousand tensors.
constexpr size_t kMaxHeaderValues = 4u << 20;

} // namespace

std::string tensorTypeName(const TensorType& t) { return t.blocks ? ggmlTypeName(*t.blocks) : dtypeName(t.dtype); }

TensorType parseTensorType(const std::string& name, const std::string& where)
{
    if (name == "F32" || name == "F16" || name == "BF16")
        return {parseDType(name, where), std::nullopt};
    for (uint32_t id = 0; id < 64; ++id)
        if (const GgmlTypeInfo* info = ggmlTypeInfo(id); info && info->runnable && name == info->name)
            return {DType::F32, info->type};
    throw Error(where + ": unknown tensor type '" + name + "'");
}

std::optional<uint64_t> tensorTypeBytes(const TensorType& t, const std::vector<int64_t>& shape)
{
    uint64_t n = 1;
    for (int64_t d : shape)
        if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n))
            return std::nullopt;
    if (!t.blocks) {
        if (__builtin_mul_overflow(n, static_cast<uint64_t>(dtypeSize(t.dtype)), &n))
            return std::nullopt;
        return n;
    }
    const GgmlTypeInfo& info = ggmlTypeInfo(*t.blocks);
    const int64_t last = shape.empty() ? 1 : shape.back();
    if (last % info.blockSize != 0)
        return std::nullopt;
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(n / static_cast<uint64_t>(info.blockSize), static_cast<uint64_t>(info.blockBytes), &bytes))
        return std::nullopt;
    return bytes;
}

DType parseDType(const std::string& s, const std::string& where)
{
    if (s == "F32")
        return DType::F32;
    if (s == "F16")
        return DType::F16;
    if (s == "BF16")
        return DType::BF16;
    static const std::set<std::string> known = {"F64", "I64", "I32", "I16", "I8", "U8", "U16", "U32",
                                                "U64", "BOOL", "F8_E4M3", "F8_E5M2"};
    if (known.count(s))
        throw Error(where + ": dtype " + s + " is not supported (only F32, F16 and BF16 weights; quantized "
                            "checkpoints are not supported)");
    throw Error(where + ": unknown dtype '" + s + "'");
}

SafeTensors SafeTensors::openFile(const std::string& file, bool map)
{
    SafeTensors st;
    st.addFile(file, nullptr, map);
    return st;
}

SafeTensors SafeTensors::fromViews(std::map<std::string, TensorView> views)
{
    SafeTensors st;
    st.m_tensors = std::move(views);
    return st;
}

SafeTensors SafeTensors::open(const std::string& path, bool map)
{
    if (Gguf::isGguf(path)) {
        const Gguf g = Gguf::open(path, map);
        return ggufTensors(g, ModelConfig::fromJsonText(ggufConfigJson(g), path));
    }
    if (!fs::is_directory(path))
        return openFile(path, map);
    fs::path dir(path);
    fs::path index = dir / "model.safetensors.index.json";
    SafeTensors st;
    if (fs::exists(index)) {
        json j = parseUntrustedJson(readTextFile(index.string()), index.string());
        if (!j.contains("weight_map") || !j["weight_map"].is_object())
            throw Error(index.string() + ": no \"weight_map\" object");
        std::map<std::string, std::vector<std::string>> byFile;
        for (auto& [name, file] : j["weight_map"].items()) {
            if (!file.is_string())
                throw Error(index.string() + ": tensor " + name + ": shard name is not a string");
            std::string f = file.get<std::string>();
            if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
                throw Error(index.string() + ": tensor " + name + ": shard '" + f + "' is not a plain file name");
            byFile[f].push_back(name);
        }
        for (auto& [f, names] : byFile) {
            st.addFile((dir / f).string(), &names, map);
        }
        return st;
    }
    fs::path single = dir / "model.safetensors";
    if (fs::exists(single)) {
        st.addFile(single.string(), nullptr, map);
        return st;
    }
    // Some repos ship a few shards without an index; accept *.safetensors if there is no ambiguity.
    std::vector<std::string> files;
    for (auto& e : fs::directory_iterator(dir))
        if (e.path().extension() == ".safetensors")
            files.push_back(e.path().string());
    if (files.empty())
        throw Error(path + ": no model.safetensors or model.safetensors.index.json in this folder");
    std::sort(files.begin(), files.end());
    for (auto& f : files)
        st.addFile(f, nullptr, map);
    return st;
}

void SafeTensors::addFile(const std::string& file, const std::vector<std::string>* onlyThese, bool map)
{
    auto mapped = std::make_shared<MappedFile>(file, map);
    const size_t fileSize = mapped->size();
    if (fileSize < 8)
        throw Error(file + ": truncated: " + std::to_string(fileSize) + " bytes, too short for a safetensors header");
    std::byte lenBytes[8];
    mapped->read(0, 8, lenBytes);
    uint64_t headerLen = 0;
    for (int i = 7; i >= 0; --i)
        headerLen = (headerLen << 8) | static_cast<uint8_t>(lenBytes[i]);
    if (headerLen > fileSize - 8)
        throw Error(file + ": header length " + std::to_string(headerLen) + " runs past the end of the file (" +
                    std::to_string(fileSize) + " bytes): the file is truncated or not safetensors");
    if (headerLen > kMaxHeaderBytes)
        throw Error(file + ": header length " + std::to_string(headerLen) + " exceeds the 100 MiB limit");
    std::string header(headerLen, '\0');
    mapped->read(8, headerLen, reinterpret_cast<std::byte*>(header.data()));
    json j = parseUntrustedJson(header, file, kMaxHeaderValues, "header is not valid JSON");
    if (!j.is_object())
        throw Error(file + ": header is not a JSON object");
    const size_t dataStart = 8 + headerLen;
    const size_t dataSize = fileSize - dataStart;
    std::unordered_set<std::string> wanted; // what the index assigns to this file (a set: indexes list 100k names)
    if (onlyThese)
        wanted.insert(onlyThese->begin(), onlyThese->end());

    struct Range {
        uint64_t begin, end;
        std::string name;
    };
    std::vector<Range> ranges;
    for (auto& [name, info] : j.items()) {
        if (name == "__metadata__")
            continue;
        const std::string where = file + ": tensor " + name;
        if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets"))
            throw Error(where + ": entry needs dtype, shape and data_offsets");
        if (!info["dtype"].is_string())
            throw Error(where + ": dtype is not a string");
        TensorView t;
        t.name = name;
        t.dtype = parseDType(info["dtype"].get<std::string>(), where);
        if (!info["shape"].is_array())
            throw Error(where + ": shape is not an array");
        // numel * size must not overflow: bound each dim by the file size.
        unsigned __int128 numel = 1;
        for (auto& d : info["shape"]) {
            if (!d.is_number_unsigned())
                throw Error(where + ": shape has a non-integer or negative dimension");
            uint64_t v = d.get<uint64_t>();
            if (v > fileSize * 8 + 1)
                throw Error(where + ": dimension " + std::to_string(v) + " is larger than the file could hold");
            t.shape.push_back(static_cast<int64_t>(v));
            numel *= v;
            if (numel > (static_cast<unsigned __int128>(1) << 62))
                throw Error(where + ": shape " + shapeString(t.shape) + " is impossibly large");
        }
        auto& off = info["data_offsets"];
        if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
            throw Error(where + ": data_offsets must be two non-negative integers");
        uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
        if (begin > end)
            throw Error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                        "] end before they begin");
        if (end > dataSize)
            throw Error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                        "] run past the end of the data (" + std::to_string(dataSize) +
                        " bytes): the file is truncated");
        unsigned __int128 expected = numel * dtypeSize(t.dtype);
        if (expected != end - begin)
            throw Error(where + ": shape " + shapeString(t.shape) + " of " + dtypeName(t.dtype) + " needs " +
                        std::to_string(static_cast<uint64_t>(expected)) + " bytes but data_offsets span " +
                        std::to_string(end - begin));
        t.data = mapped->data() ? mapped->data() + dataStart + begin : nullptr;
        t.nbytes = end - begin;
        t.fileOffset = dataStart + begin;
        t.file = mapped;
        ranges.push_back({begin, end, name});
        if (onlyThese && !wanted.count(name))
            continue; // present in the shard but the index assigns it elsewhere: validate, don't use
        if (m_tensors.count(name))
            throw Error(where + ": tensor appears in more than one file");
        m_tensors.emplace(name, std::move(t));
    }
    // Each non-empty range is checked against the one reaching furthest so far, not only its neighbour: a range
    // can sit inside an earlier, longer one with others (an empty tensor) sorted between them.
    std::sort(ranges.begin(), ranges.end(), [](auto& a, auto& b) { return a.begin < b.begin; });
    const Range* furthest = nullptr;
    for (const Range& r : ranges) {
        if (r.end == r.begin)
            continue; // an empty tensor owns no bytes
        if (furthest && r.begin < furthest->end)
            throw Error(file + ": tensors " + furthest->name + " and " + r.name + " overlap in the data section");
        if (!furthest || r.end > furthest->end)
            furthest = &r;
    }
    if (onlyThese) {
        for (auto& n : *onlyThese)
            if (!m_tensors.count(n))
                throw Error(file + ": tensor " + n + " is listed in model.safetensors.index.json but missing from the file");
    }
}

const TensorView& SafeTensors::get(const std::string& name) const
{
    auto it = m_tensors.find(name);
    if (it == m_tensors.end())
        throw Error("tensor " + name + " is missing from the model files");
    return it->second;
}

const TensorView& SafeTensors::expect(const std::string& name, const std::vector<int64_t>& shape) const
{
    const TensorView& t = get(name);
    if (t.shape != shape)
        throw Error(t.file->path() + ": tensor " + name + " has shape " + shapeString(t.shape) +
                    " but the config implies " + shapeString(shape));
    return t;
}

void writeSafeTensors(const std::string& file, const std::vector<TensorToWrite>& tensors)
{
    json header = json::object();
    uint64_t offset = 0;
    for (auto& t : tensors) {
        uint64_t numel = 1;
        for (auto d : t.shape)
            numel *= static_cast<uint64_t>(d);
        if (numel * dtypeSize(t.dtype) != t.bytes.size())
            throw Error("writeSafeTensors: tensor " + t.name + " has " + std::to_string(t.bytes.size()) +
                        " bytes, shape needs " + std::to_string(numel * dtypeSize(t.dtype)));
        header[t.name] = {{"dtype", dtypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
        offset += t.bytes.size();
    }
    header["__metadata__"] = {{"format", "pt"}};
    std::string h = header.dump();
    while ((8 + h.size()) % 8 != 0) // align the data section to 8 bytes, as the reference writer does
        h.push_back(' ');
    AtomicFile out(file, 0644);
    uint64_t n = h.size();
    char len[8];
    for (int i = 0; i < 8; ++i)
        len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    out.write(len, 8);
    out.write(h);
    for (auto& t : tensors)
        out.write(t.bytes.data(), t.bytes.size());
    out.commit();
}

uint16_t floatToBf16(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000)
        return static_cast<uint16_t>((u >> 16) | 0x40); // quiet NaN
    u += 0x7fff + ((u >> 16) & 1);                       // round to nearest even
    return static_cast<uint16_t>(u >> 16);
}

float bf16ToFloat(uint16_t v)
{
    uint32_t u = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// IEEE half precision by bit manipulation (not _Float16: clang 14 has no such type on x86 without AVX512-FP16,
// and the fuzz build uses clang). Round to nearest, ties to even; NaN becomes the quiet NaN 0x7e00.
uint16_t floatToF16(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, mag = x & 0x7fffffffu;
    if (mag > 0x7f800000u)
        return 0x7e00;
    if (mag < 0x38800000u) { // below 2^-14, f16's smallest normal: a subnormal (or zero), in units of 2^-24
        float a;
        std::memcpy(&a, &mag, 4);
        return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f))); // exact scaling
    }
    const uint32_t e = (mag >> 23) - 127 + 15;
    if (e >= 31)
        return static_cast<uint16_t>(sign | 0x7c00u); // beyond f16's range (infinity included)
    uint32_t h = (e << 10) | ((mag & 0x7fffffu) >> 13);
    const uint32_t rest = mag & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        ++h; // a carry into the exponent is right (up to infinity at 65520)
    return static_cast<uint16_t>(sign | h);
}

float f16ToFloat(uint16_t v)
{
    const uint32_t sign = static_cast<uint32_t>(v & 0x8000u) << 16, e = (v >> 10) & 0x1fu, m = v & 0x3ffu;
    uint32_t bits;
    if (e == 0) {
        const float a = static_cast<float>(m) / 16777216.0f; // m · 2^-24, exact
        std::memcpy(&bits, &a, 4);
        bits |= sign;
    } else if (e == 31) {
        bits = sign | 0x7f800000u | (m << 13);
    } else {
        bits = sign | ((e - 15 + 127) << 23) | (m << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

} // namespace together
