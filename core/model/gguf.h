// SPDX-License-Identifier: MIT
#pragma once

#include "model/ggml_types.h"
#include "model/safetensors.h"

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace together {

// One metadata value of a GGUF file: a scalar, or an array of one scalar type (arrays of arrays are refused).
// Integers of every width are held as int64_t (uint64 values above INT64_MAX are refused), floats as double.
struct GgufValue {
    enum Kind { Int, Float, Bool, String, IntArray, FloatArray, BoolArray, StringArray } kind = Int;
    uint32_t fileType = 0; // the file's type id of the scalar or of the array's elements
    int64_t i = 0;
    double f = 0;
    bool b = false;
    std::string s;
    std::vector<int64_t> ints;  // IntArray and BoolArray
    std::vector<double> floats; // FloatArray
    std::vector<std::string> strings;
};

// One tensor of a GGUF file. `shape` is in the order the rest of the program uses (outermost first, as torch
// and safetensors write it): a GGUF's ne[0], the row length, is the last entry.
struct GgufTensor {
    std::string name;
    GgmlType type = GgmlType::F32;
    std::vector<int64_t> shape;
    uint64_t fileOffset = 0; // absolute, in `file`
    size_t nbytes = 0;
    const std::byte* data = nullptr; // nullptr when the file is not mapped: use file->read
    std::shared_ptr<MappedFile> file;

    int64_t numel() const;
    int64_t rowLength() const { return shape.empty() ? 1 : shape.back(); }
};

// A GGUF model: one file, or the parts of a split one ("name-00001-of-00003.gguf", opened from any part) read
// as one. The format (versions 2 and 3, little-endian): "GGUF", version u32, tensor count u64, metadata count
// u64; the metadata as key (u64 length + bytes), type u32, value; the tensor infos as name, dimension count u32,
// dimensions u64 each (row length first), type u32, data offset u64; then, aligned to general.alignment (32 by
// default), the data, each tensor at its offset from the data's start.
//
// Everything is checked on open, before anything is allocated from the file's numbers: every count and length
// against the bytes left, dimension products against overflow, each type id against the known ones, each
// row length against its type's block size, each tensor's range against the file's size and against the
// others (no overlaps). Errors name the file and the key or tensor.
class Gguf {
public:
    static Gguf open(const std::string& path, bool map = true);
    // True when the file begins with GGUF's magic (false for a folder or a short file).
    static bool isGguf(const std::string& path);

    const std::map<std::string, GgufValue>& metadata() const { return m_metadata; }
    const GgufValue* find(const std::string& key) const;
    // Typed reads: nullopt when the key is absent, an Error naming the key when it holds another type.
    std::optional<int64_t> getInt(const std::string& key) const;
    std::optional<double> getFloat(const std::string& key) const; // integers convert
    std::optional<bool> getBool(const std::string& key) const;
    std::optional<std::string> getString(const std::string& key) const;
    const std::vector<std::string>* getStrings(const std::string& key) const;
    const std::vector<double>* getFloats(const std::string& key) const;
    const std::vector<int64_t>* getInts(const std::string& key) const;

    bool contains(const std::string& name) const { return m_tensors.count(name) > 0; }
    const GgufTensor& get(const std::string& name) const; // throws naming the tensor
    const std::map<std::string, GgufTensor>& tensors() const { return m_tensors; }
    const std::vector<std::string>& files() const { return m_files; }
    uint32_t version() const { return m_version; }
    std::string where() const { return m_files.empty() ? "GGUF" : m_files.front(); }

private:
    void addFile(const std::string& file, bool map, bool first);
    // The value of `key` (nullptr when absent); an Error naming the key when its kind is none of `kinds`.
    const GgufValue* findAs(const std::string& key, std::initializer_list<GgufValue::Kind> kinds, const char* wanted) const;
    std::map<std::string, GgufValue> m_metadata;
    std::map<std::string, GgufTensor> m_tensors;
    std::vector<std::string> m_files;
    uint32_t m_version = 0;
};

// The parts a split file's name implies ("x-00002-of-00003.gguf" -> the three names), or just `path`.
std::vector<std::string> ggufSplitParts(const std::string& path);

// Writes a GGUF file (version 3, alignment 32): the metadata in the order given, then the tensors. Each
// tensor's bytes must be ggmlRowBytes(type, row length) * rows. Used by make-model and the tests.
struct GgufTensorToWrite {
    std::string name;
    GgmlType type;
    std::vector<int64_t> shape; // outermost first, as GgufTensor
    std::vector<std::byte> bytes;
};
void writeGguf(const std::string& file, const std::vector<std::pair<std::string, GgufValue>>& metadata,
               const std::vector<GgufTensorToWrite>& tensors);

// Value builders for writeGguf.
GgufValue ggufString(std::string s);
GgufValue ggufInt(int64_t v, uint32_t fileType = 4 /*uint32*/);
GgufValue ggufFloat(double v);
GgufValue ggufBool(bool v);
GgufValue ggufStrings(std::vector<std::string> v);
GgufValue ggufFloats(std::vector<double> v);
GgufValue ggufInts(std::vector<int64_t> v, uint32_t fileType = 5 /*int32*/);

} // namespace together
