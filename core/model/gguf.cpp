// SPDX-License-Identifier: MIT
#include "model/gguf.h"

#include "base/error.h"
#include "base/files.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

namespace together {

namespace {

namespace fs = std::filesystem;

// The file's value type ids.
enum : uint32_t {
    kU8 = 0,
    kI8 = 1,
    kU16 = 2,
    kI16 = 3,
    kU32 = 4,
    kI32 = 5,
    kF32 = 6,
    kBool = 7,
    kString = 8,
    kArray = 9,
    kU64 = 10,
    kI64 = 11,
    kF64 = 12,
};

constexpr uint32_t kMagic = 0x46554747; // "GGUF" read as a little-endian u32
// Bounds on what a downloaded file may ask for; real files stay far below each (a 256k-token vocabulary, a
// million merges, a thousand or two tensors, names of a few dozen bytes, chat templates of a few KiB).
constexpr uint64_t kMaxKeyBytes = 65536;
constexpr uint64_t kMaxStringBytes = 64ull << 20;
constexpr uint64_t kMaxArrayItems = 1ull << 24;
constexpr uint64_t kMaxEntries = 1ull << 20; // metadata entries, and tensors, per file
constexpr uint64_t kMaxNameBytes = 256;
constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kMaxAlignment = 1ull << 20;
// Memory the parsed metadata may take (a 1-byte integer is held in 8, a string's length in 32): real files hold a
// few tens of MiB (a 256k-token vocabulary, a million merges).
constexpr uint64_t kMaxMetadataBytes = 512ull << 20;

size_t scalarBytes(uint32_t type)
{
    switch (type) {
    case kU8:
    case kI8:
    case kBool:
        return 1;
    case kU16:
    case kI16:
        return 2;
    case kU32:
    case kI32:
    case kF32:
        return 4;
    case kU64:
    case kI64:
    case kF64:
        return 8;
    case kString:
        return 8; // at least its length
    default:
        return 0;
    }
}

// Reads the file's bytes in order, each read checked against what is left.
class Cursor {
public:
    Cursor(const std::byte* data, size_t size, std::string where)
        : m_data(data)
        , m_size(size)
        , m_where(std::move(where))
    {
    }
    size_t pos() const { return m_pos; }
    // Charges `bytes` of parsed metadata against kMaxMetadataBytes.
    void charge(uint64_t bytes, const std::string& key)
    {
        m_held += bytes;
        if (m_held > kMaxMetadataBytes)
            fail(key + ": the metadata would take more than " + std::to_string(kMaxMetadataBytes >> 20) + " MiB of memory");
    }
    size_t left() const { return m_size - m_pos; }
    [[noreturn]] void fail(const std::string& what) const { throw Error(m_where + ": " + what); }

    const std::byte* take(uint64_t n, const char* what)
    {
        if (n > left())
            fail(std::string("truncated: ") + what + " needs " + std::to_string(n) + " bytes at offset " +
                 std::to_string(m_pos) + ", the file has " + std::to_string(left()) + " left");
        const std::byte* p = m_data + m_pos;
        m_pos += static_cast<size_t>(n);
        return p;
    }
    template <typename V>
    V read(const char* what)
    {
        V v;
        std::memcpy(&v, take(sizeof v, what), sizeof v);
        return v;
    }
    std::string string(uint64_t maxBytes, const char* what)
    {
        const auto n = read<uint64_t>(what);
        if (n > maxBytes)
            fail(std::string(what) + " is " + std::to_string(n) + " bytes long, more than the " +
                 std::to_string(maxBytes) + " allowed");
        const std::byte* p = take(n, what);
        return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
    }
    // A count of items that each take at least `itemBytes` in the file: bounded by `max` and by the bytes left.
    uint64_t count(uint64_t max, size_t itemBytes, const std::string& what)
    {
        const auto n = read<uint64_t>(what.c_str());
        if (n > max || (itemBytes > 0 && n > left() / itemBytes))
            fail(what + " is " + std::to_string(n) + ", more than " +
                 (n > max ? "the " + std::to_string(max) + " allowed" : "the rest of the file can hold"));
        return n;
    }

private:
    const std::byte* m_data;
    size_t m_size;
    size_t m_pos = 0;
    uint64_t m_held = 0;
    std::string m_where;
};

int64_t readInteger(Cursor& c, uint32_t type, const std::string& key)
{
    switch (type) {
    case kU8:
        return c.read<uint8_t>(key.c_str());
    case kI8:
        return c.read<int8_t>(key.c_str());
    case kU16:
        return c.read<uint16_t>(key.c_str());
    case kI16:
        return c.read<int16_t>(key.c_str());
    case kU32:
        return c.read<uint32_t>(key.c_str());
    case kI32:
        return c.read<int32_t>(key.c_str());
    case kI64:
        return c.read<int64_t>(key.c_str());
    case kBool: {
        const auto v = c.read<uint8_t>(key.c_str());
        if (v > 1)
            c.fail(key + ": a boolean holds " + std::to_string(v));
        return v;
    }
    default: { // kU64
        const auto v = c.read<uint64_t>(key.c_str());
        if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
            c.fail(key + ": " + std::to_string(v) + " is too large");
        return static_cast<int64_t>(v);
    }
    }
}

double readFloat(Cursor& c, uint32_t type, const std::string& key)
{
    if (type == kF32)
        return c.read<float>(key.c_str());
    return c.read<double>(key.c_str());
}

bool isFloatType(uint32_t t) { return t == kF32 || t == kF64; }

GgufValue readArray(Cursor& c, const std::string& key)
{
    GgufValue v;
    v.fileType = c.read<uint32_t>(key.c_str());
    const size_t item = scalarBytes(v.fileType);
    if (v.fileType == kArray)
        c.fail(key + ": arrays of arrays are not supported");
    if (item == 0)
        c.fail(key + ": unknown array element type " + std::to_string(v.fileType));
    const uint64_t n = c.count(kMaxArrayItems, item, key + ": array length");
    c.charge(n * (v.fileType == kString ? sizeof(std::string) : 8), key);
    if (v.fileType == kString) {
        v.kind = GgufValue::StringArray;
        v.strings.reserve(n);
        for (uint64_t k = 0; k < n; ++k) {
            v.strings.push_back(c.string(kMaxStringBytes, key.c_str()));
            c.charge(v.strings.back().size(), key);
        }
    } else if (isFloatType(v.fileType)) {
        v.kind = GgufValue::FloatArray;
        v.floats.reserve(n);
        for (uint64_t k = 0; k < n; ++k)
            v.floats.push_back(readFloat(c, v.fileType, key));
    } else {
        v.kind = v.fileType == kBool ? GgufValue::BoolArray : GgufValue::IntArray;
        v.ints.reserve(n);
        for (uint64_t k = 0; k < n; ++k)
            v.ints.push_back(readInteger(c, v.fileType, key));
    }
    return v;
}

GgufValue readValue(Cursor& c, const std::string& key)
{
    const auto type = c.read<uint32_t>(key.c_str());
    if (type == kArray)
        return readArray(c, key);
    GgufValue v;
    v.fileType = type;
    if (type == kString) {
        v.kind = GgufValue::String;
        v.s = c.string(kMaxStringBytes, key.c_str());
        c.charge(v.s.size(), key);
    } else if (isFloatType(type)) {
        v.kind = GgufValue::Float;
        v.f = readFloat(c, type, key);
    } else if (scalarBytes(type) > 0) {
        v.kind = type == kBool ? GgufValue::Bool : GgufValue::Int;
        v.i = readInteger(c, type, key);
        v.b = v.i != 0;
    } else {
        c.fail(key + ": unknown value type " + std::to_string(type));
    }
    return v;
}

struct TensorInfo {
    GgufTensor t;
    uint64_t offset = 0; // from the data's start
};

TensorInfo readTensorInfo(Cursor& c)
{
    TensorInfo info;
    GgufTensor& t = info.t;
    t.name = c.string(kMaxNameBytes, "a tensor name");
    if (t.name.empty())
        c.fail("a tensor has an empty name");
    const std::string what = "tensor " + t.name;
    const auto dims = c.read<uint32_t>(what.c_str());
    if (dims == 0 || dims > kMaxDims)
        c.fail(what + ": " + std::to_string(dims) + " dimensions (1 to 4 allowed)");
    uint64_t numel = 1;
    std::vector<int64_t> ne(dims);
    for (uint32_t d = 0; d < dims; ++d) {
        const auto n = c.read<uint64_t>(what.c_str());
        if (n == 0 || n > (uint64_t{1} << 62) / numel)
            c.fail(what + ": dimension " + std::to_string(d) + " is " + std::to_string(n) +
                   (n == 0 ? " (empty)" : ", too many elements"));
        numel *= n;
        ne[d] = static_cast<int64_t>(n);
    }
    t.shape.assign(ne.rbegin(), ne.rend());
    const auto typeId = c.read<uint32_t>(what.c_str());
    const GgmlTypeInfo* type = ggmlTypeInfo(typeId);
    if (!type)
        c.fail(what + ": unknown tensor type id " + std::to_string(typeId));
    t.type = type->type;
    if (ne[0] % type->blockSize != 0)
        c.fail(what + ": its rows of " + std::to_string(ne[0]) + " weights are not whole " + type->name +
               " blocks of " + std::to_string(type->blockSize));
    const uint64_t rows = numel / static_cast<uint64_t>(ne[0]);
    const uint64_t blocks = static_cast<uint64_t>(ne[0] / type->blockSize); // at least 1: ne[0] >= 1 is whole blocks
    const auto blockBytes = static_cast<uint64_t>(type->blockBytes);
    if (blocks > std::numeric_limits<uint64_t>::max() / 4 / blockBytes)
        c.fail(what + ": too large");
    const uint64_t rowBytes = blocks * blockBytes;
    if (rows > std::numeric_limits<uint64_t>::max() / 4 / rowBytes)
        c.fail(what + ": too large");
    t.nbytes = static_cast<size_t>(rows * rowBytes);
    info.offset = c.read<uint64_t>(what.c_str());
    return info;
}

} // namespace

int64_t GgufTensor::numel() const
{
    int64_t n = 1;
    for (int64_t d : shape)
        n *= d;
    return n;
}

std::vector<std::string> ggufSplitParts(const std::string& path)
{
    // "PREFIX-NNNNN-of-MMMMM.gguf": 5 digits each, as llama.cpp's gguf-split names the parts.
    constexpr size_t kTail = std::char_traits<char>::length("-00001-of-00002.gguf");
    if (path.size() <= kTail)
        return {path};
    const std::string tail = path.substr(path.size() - kTail);
    auto digits = [&](size_t at) { return tail.find_first_not_of("0123456789", at) >= at + 5; };
    if (tail[0] != '-' || !digits(1) || tail.compare(6, 4, "-of-") != 0 || !digits(10) || tail.compare(15, 5, ".gguf") != 0)
        return {path};
    const int index = std::stoi(tail.substr(1, 5)), count = std::stoi(tail.substr(10, 5));
    if (count < 1 || index < 1 || index > count)
        throw Error(path + ": the name says part " + std::to_string(index) + " of " + std::to_string(count) +
                    " of a split model, which is no part of one");
    const std::string prefix = path.substr(0, path.size() - kTail);
    std::vector<std::string> parts;
    char buf[32];
    for (int k = 1; k <= count; ++k) {
        std::snprintf(buf, sizeof buf, "-%05d-of-%05d.gguf", k, count);
        parts.push_back(prefix + buf);
    }
    return parts;
}

bool Gguf::isGguf(const std::string& path)
{
    std::error_code ec;
    if (!fs::is_regular_file(path, ec))
        return false;
    std::ifstream in(path, std::ios::binary);
    char head[4] = {};
    return in.read(head, 4) && std::memcmp(head, "GGUF", 4) == 0;
}

Gguf Gguf::open(const std::string& path, bool map)
{
    Gguf g;
    const std::vector<std::string> parts = ggufSplitParts(path);
    for (size_t k = 0; k < parts.size(); ++k) {
        std::error_code ec;
        if (parts.size() > 1 && !fs::exists(parts[k], ec))
            throw Error(path + ": part " + std::to_string(k + 1) + " of " + std::to_string(parts.size()) +
                        " of this split model is missing: " + parts[k]);
        g.addFile(parts[k], map, k == 0);
    }
    const std::optional<int64_t> count = g.getInt("split.count");
    if (count && *count != static_cast<int64_t>(parts.size()) && !(parts.size() == 1 && *count <= 1))
        throw Error(path + ": the file is part of a model split in " + std::to_string(*count) +
                    " files; open it by its split name (name-00001-of-" + std::to_string(*count) + ".gguf)");
    if (const auto total = g.getInt("split.tensors.count"); total && *total != static_cast<int64_t>(g.m_tensors.size()))
        throw Error(path + ": the split model should hold " + std::to_string(*total) + " tensors, its parts hold " +
                    std::to_string(g.m_tensors.size()));
    return g;
}

void Gguf::addFile(const std::string& file, bool map, bool first)
{
    auto mapped = std::make_shared<MappedFile>(file, true);
    Cursor c(mapped->data(), mapped->size(), file);
    const auto magic = c.read<uint32_t>("the magic");
    if (magic != kMagic)
        c.fail("not a GGUF file (it does not begin with \"GGUF\")");
    const auto version = c.read<uint32_t>("the version");
    if (version == 0x02000000u || version == 0x03000000u)
        c.fail("a big-endian GGUF file; only little-endian files are supported");
    if (version != 2 && version != 3)
        c.fail("GGUF version " + std::to_string(version) + " is not supported (versions 2 and 3 are)");
    if (first)
        m_version = version;
    const uint64_t tensorCount = c.count(kMaxEntries, 8 + 4 + 8 + 4 + 8, "the tensor count");
    const uint64_t kvCount = c.count(kMaxEntries, 8 + 4 + 1, "the metadata count");
    std::map<std::string, GgufValue> meta;
    for (uint64_t k = 0; k < kvCount; ++k) {
        std::string key = c.string(kMaxKeyBytes, "a metadata key");
        GgufValue v = readValue(c, key);
        if (!meta.emplace(key, std::move(v)).second)
            c.fail("metadata key " + key + " appears twice");
    }
    uint64_t alignment = 32;
    if (auto it = meta.find("general.alignment"); it != meta.end()) {
        if (it->second.kind != GgufValue::Int || it->second.i <= 0 ||
            static_cast<uint64_t>(it->second.i) > kMaxAlignment || (it->second.i & (it->second.i - 1)) != 0)
            c.fail("general.alignment must be a power of two up to " + std::to_string(kMaxAlignment));
        alignment = static_cast<uint64_t>(it->second.i);
    }
    std::vector<TensorInfo> infos;
    infos.reserve(tensorCount);
    for (uint64_t k = 0; k < tensorCount; ++k)
        infos.push_back(readTensorInfo(c));
    const uint64_t dataStart = (c.pos() + alignment - 1) / alignment * alignment;
    const uint64_t size = mapped->size();
    if (dataStart > size && tensorCount > 0)
        c.fail("truncated: the tensor data would begin at " + std::to_string(dataStart) + ", past the end (" +
               std::to_string(size) + " bytes)");
    std::vector<std::pair<uint64_t, const TensorInfo*>> ranges;
    for (const TensorInfo& info : infos) {
        const std::string what = "tensor " + info.t.name;
        if (info.offset % alignment != 0)
            c.fail(what + ": its offset " + std::to_string(info.offset) + " is not a multiple of the alignment " +
                   std::to_string(alignment));
        if (info.offset > size - dataStart || info.t.nbytes > size - dataStart - info.offset)
            c.fail(what + ": its " + std::to_string(info.t.nbytes) + " bytes at data offset " +
                   std::to_string(info.offset) + " run past the end of the file (" + std::to_string(size) + " bytes)");
        ranges.emplace_back(info.offset, &info);
    }
    std::sort(ranges.begin(), ranges.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (size_t k = 1; k < ranges.size(); ++k)
        if (ranges[k - 1].first + ranges[k - 1].second->t.nbytes > ranges[k].first)
            c.fail("tensors " + ranges[k - 1].second->t.name + " and " + ranges[k].second->t.name + " overlap");
    auto held = map ? mapped : std::make_shared<MappedFile>(file, false);
    for (TensorInfo& info : infos) {
        GgufTensor t = std::move(info.t);
        t.fileOffset = dataStart + info.offset;
        t.data = held->data() ? held->data() + t.fileOffset : nullptr;
        t.file = held;
        const std::string name = t.name;
        if (!m_tensors.emplace(name, std::move(t)).second)
            c.fail("tensor " + name + " appears twice" + (m_files.empty() ? "" : " (in two parts of the split model)"));
    }
    if (first) {
        m_metadata = std::move(meta);
    } else {
        const auto no = meta.find("split.no");
        if (no != meta.end() && no->second.kind == GgufValue::Int && no->second.i != static_cast<int64_t>(m_files.size()))
            c.fail("this part says it is part " + std::to_string(no->second.i + 1) + ", its name says " +
                   std::to_string(m_files.size() + 1));
    }
    m_files.push_back(file);
}

const GgufValue* Gguf::find(const std::string& key) const
{
    auto it = m_metadata.find(key);
    return it == m_metadata.end() ? nullptr : &it->second;
}

const GgufValue* Gguf::findAs(const std::string& key, std::initializer_list<GgufValue::Kind> kinds, const char* wanted) const
{
    const GgufValue* v = find(key);
    if (v && std::find(kinds.begin(), kinds.end(), v->kind) == kinds.end())
        throw Error(where() + ": metadata " + key + " is not " + wanted);
    return v;
}

std::optional<int64_t> Gguf::getInt(const std::string& key) const
{
    const GgufValue* v = findAs(key, {GgufValue::Int}, "an integer");
    return v ? std::optional<int64_t>(v->i) : std::nullopt;
}

std::optional<double> Gguf::getFloat(const std::string& key) const
{
    const GgufValue* v = findAs(key, {GgufValue::Int, GgufValue::Float}, "a number");
    return v ? std::optional<double>(v->kind == GgufValue::Int ? static_cast<double>(v->i) : v->f) : std::nullopt;
}

std::optional<bool> Gguf::getBool(const std::string& key) const
{
    const GgufValue* v = findAs(key, {GgufValue::Bool}, "a boolean");
    return v ? std::optional<bool>(v->b) : std::nullopt;
}

std::optional<std::string> Gguf::getString(const std::string& key) const
{
    const GgufValue* v = findAs(key, {GgufValue::String}, "a string");
    return v ? std::optional<std::string>(v->s) : std::nullopt;
}

const std::vector<std::string>* Gguf::getStrings(const std::string& key) const
{
    const GgufValue* v = findAs(key, {GgufValue::StringArray}, "an array of strings");
    return v ? &v->strings : nullptr;
}

const std::vector<double>* Gguf::getFloats(const std::string& key) const
{
    const GgufValue* v = findAs(key, {GgufValue::FloatArray}, "an array of numbers");
    return v ? &v->floats : nullptr;
}

const std::vector<int64_t>* Gguf::getInts(const std::string& key) const
{
    const GgufValue* v = findAs(key, {GgufValue::IntArray, GgufValue::BoolArray}, "an array of integers");
    return v ? &v->ints : nullptr;
}

const GgufTensor& Gguf::get(const std::string& name) const
{
    auto it = m_tensors.find(name);
    if (it == m_tensors.end())
        throw Error(where() + ": no tensor " + name);
    return it->second;
}

GgufValue ggufString(std::string s)
{
    GgufValue v;
    v.kind = GgufValue::String;
    v.fileType = kString;
    v.s = std::move(s);
    return v;
}

GgufValue ggufInt(int64_t i, uint32_t fileType)
{
    GgufValue v;
    v.kind = GgufValue::Int;
    v.fileType = fileType;
    v.i = i;
    return v;
}

GgufValue ggufFloat(double f)
{
    GgufValue v;
    v.kind = GgufValue::Float;
    v.fileType = kF32;
    v.f = f;
    return v;
}

GgufValue ggufBool(bool b)
{
    GgufValue v;
    v.kind = GgufValue::Bool;
    v.fileType = kBool;
    v.b = b;
    v.i = b;
    return v;
}

GgufValue ggufStrings(std::vector<std::string> s)
{
    GgufValue v;
    v.kind = GgufValue::StringArray;
    v.fileType = kString;
    v.strings = std::move(s);
    return v;
}

GgufValue ggufFloats(std::vector<double> f)
{
    GgufValue v;
    v.kind = GgufValue::FloatArray;
    v.fileType = kF32;
    v.floats = std::move(f);
    return v;
}

GgufValue ggufInts(std::vector<int64_t> i, uint32_t fileType)
{
    GgufValue v;
    v.kind = GgufValue::IntArray;
    v.fileType = fileType;
    v.ints = std::move(i);
    return v;
}

namespace {

class Writer {
public:
    std::vector<std::byte> out;
    template <typename V>
    void put(V v)
    {
        const auto* p = reinterpret_cast<const std::byte*>(&v);
        out.insert(out.end(), p, p + sizeof v);
    }
    void string(const std::string& s)
    {
        put<uint64_t>(s.size());
        const auto* p = reinterpret_cast<const std::byte*>(s.data());
        out.insert(out.end(), p, p + s.size());
    }
    void integer(uint32_t type, int64_t i)
    {
        switch (type) {
        case kU8:
        case kBool:
            return put<uint8_t>(static_cast<uint8_t>(i));
        case kI8:
            return put<int8_t>(static_cast<int8_t>(i));
        case kU16:
            return put<uint16_t>(static_cast<uint16_t>(i));
        case kI16:
            return put<int16_t>(static_cast<int16_t>(i));
        case kU32:
            return put<uint32_t>(static_cast<uint32_t>(i));
        case kI32:
            return put<int32_t>(static_cast<int32_t>(i));
        case kU64:
            return put<uint64_t>(static_cast<uint64_t>(i));
        default:
            return put<int64_t>(i);
        }
    }
    void number(uint32_t type, double f)
    {
        if (type == kF64)
            put<double>(f);
        else
            put<float>(static_cast<float>(f));
    }
    void value(const GgufValue& v)
    {
        const bool array = v.kind >= GgufValue::IntArray;
        put<uint32_t>(array ? kArray : v.fileType);
        if (array) {
            put<uint32_t>(v.fileType);
            const size_t n = v.kind == GgufValue::StringArray  ? v.strings.size()
                             : v.kind == GgufValue::FloatArray ? v.floats.size()
                                                               : v.ints.size();
            put<uint64_t>(n);
            for (size_t k = 0; k < n; ++k) {
                if (v.kind == GgufValue::StringArray)
                    string(v.strings[k]);
                else if (v.kind == GgufValue::FloatArray)
                    number(v.fileType, v.floats[k]);
                else
                    integer(v.fileType, v.ints[k]);
            }
        } else if (v.kind == GgufValue::String) {
            string(v.s);
        } else if (v.kind == GgufValue::Float) {
            number(v.fileType, v.f);
        } else {
            integer(v.fileType, v.kind == GgufValue::Bool ? v.b : v.i);
        }
    }
    void pad(size_t alignment) { out.resize((out.size() + alignment - 1) / alignment * alignment); }
};

} // namespace

void writeGguf(const std::string& file, const std::vector<std::pair<std::string, GgufValue>>& metadata,
               const std::vector<GgufTensorToWrite>& tensors)
{
    constexpr uint64_t kAlign = 32;
    Writer w;
    w.put<uint32_t>(kMagic);
    w.put<uint32_t>(3);
    w.put<uint64_t>(tensors.size());
    w.put<uint64_t>(metadata.size());
    for (const auto& [key, value] : metadata) {
        w.string(key);
        w.value(value);
    }
    uint64_t offset = 0;
    for (const GgufTensorToWrite& t : tensors) {
        if (t.shape.empty())
            throw Error("writeGguf: tensor " + t.name + " has no dimensions");
        int64_t rows = 1;
        for (size_t d = 0; d + 1 < t.shape.size(); ++d)
            rows *= t.shape[d];
        const GgmlTypeInfo& type = ggmlTypeInfo(t.type);
        if (t.shape.back() % type.blockSize != 0 ||
            static_cast<int64_t>(t.bytes.size()) != rows * ggmlRowBytes(t.type, t.shape.back()))
            throw Error("writeGguf: tensor " + t.name + " has " + std::to_string(t.bytes.size()) +
                        " bytes for its shape " + shapeString(t.shape) + " in " + type.name);
        w.string(t.name);
        w.put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
        for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it)
            w.put<uint64_t>(static_cast<uint64_t>(*it));
        w.put<uint32_t>(static_cast<uint32_t>(t.type));
        w.put<uint64_t>(offset);
        offset = (offset + t.bytes.size() + kAlign - 1) / kAlign * kAlign;
    }
    w.pad(kAlign);
    for (const GgufTensorToWrite& t : tensors) {
        w.out.insert(w.out.end(), t.bytes.begin(), t.bytes.end());
        w.pad(kAlign);
    }
    atomicWrite(file, std::string_view(reinterpret_cast<const char*>(w.out.data()), w.out.size()), 0644);
}

} // namespace together
