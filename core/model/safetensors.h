// SPDX-License-Identifier: MIT
#pragma once

#include "model/ggml_types.h"

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

namespace together {

enum class DType {
    F32,
    F16,
    BF16,
};

size_t dtypeSize(DType dtype);
const char* dtypeName(DType dtype);
// "F32" | "F16" | "BF16"; other safetensors dtypes are refused by name (quantized and integer ones as
// unsupported), anything else as unknown. `where` prefixes the message.
DType parseDType(const std::string& name, const std::string& where);

// The type of a tensor's bytes where they travel (the weight stream) or rest (the slice cache): a dtype, or
// for a GGUF matrix kept in its blocks (a native run) a runnable ggml block type, named as llama.cpp names it
// ("Q4_K"). F32, F16 and BF16 are the dtypes of the same names.
struct TensorType {
    DType dtype = DType::F32;
    std::optional<GgmlType> blocks;
};
std::string tensorTypeName(const TensorType& t);
TensorType parseTensorType(const std::string& name, const std::string& where); // throws Error naming it
// Bytes of a tensor of `shape` in the type; nullopt on a negative dimension, an overflow, or blocks whose
// last dimension is not a whole number of them.
std::optional<uint64_t> tensorTypeBytes(const TensorType& t, const std::vector<int64_t>& shape);

// A read-only file, either memory-mapped whole or (map = false) read with pread only where asked: a shard
// loading its slice from a local checkpoint never maps or reads other tensors. Closed when the last owner goes.
class MappedFile {
public:
    explicit MappedFile(const std::string& path, bool map = true);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const std::byte* data() const { return m_data; } // nullptr when not mapped
    size_t size() const { return m_size; }
    const std::string& path() const { return m_path; }
    // Reads exactly [offset, offset + length) into dst; throws Error naming the file on a short read.
    void read(uint64_t offset, size_t length, std::byte* dst) const;

private:
    std::string m_path;
    int m_fd = -1;
    const std::byte* m_data = nullptr;
    size_t m_size = 0;
};

// One tensor inside a mapped safetensors (or GGUF) file. `data` points into the map; valid while `file` lives.
struct TensorView {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    const std::byte* data = nullptr; // nullptr when the file is not mapped: use file->read(fileOffset, ...)
    size_t nbytes = 0;
    uint64_t fileOffset = 0;         // absolute offset of the data in the file
    std::shared_ptr<MappedFile> file;
    // A GGUF tensor's quantized type: the bytes are its blocks, and a slice (copySlice) widens to `dtype` (F32).
    std::optional<GgmlType> stored;
    // A GGUF "llama" q or k projection: the head size whose rows are in llama.cpp's interleaved rotary order
    // (row 2i of a head is row i of the Hugging Face layout, row 2i+1 its row i + head/2); slices come out in
    // the Hugging Face order. 0: rows as they are.
    int64_t interleavedHead = 0;
    // True when the bytes are not `dtype` values in the shape's order: only a slice copy reads them.
    bool encoded() const { return stored.has_value() || interleavedHead > 0; }
    TensorType type() const { return {dtype, stored}; }
    // The bytes' type in ggml's terms: the stored block type, or the dtype's (F32, F16, BF16).
    GgmlType ggmlType() const
    {
        return stored ? *stored : dtype == DType::F16 ? GgmlType::F16 : dtype == DType::BF16 ? GgmlType::BF16 : GgmlType::F32;
    }

    int64_t numel() const;
};

// A model's tensors across one file or the shards named by model.safetensors.index.json.
//
// The safetensors format: 8-byte little-endian header length N, N bytes of JSON mapping each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the byte after the header), then the
// data. Everything is validated on open: the header fits in the file, the JSON is well-formed, each tensor's
// dtype is known, its byte range lies inside the file and equals numel * dtype size, and no two ranges overlap.
// Every error names the file and the tensor.
class SafeTensors {
public:
    // Opens a model folder (model.safetensors, or model.safetensors.index.json and its shards) or one file.
    // With map = false only the headers are read (and validated); tensor bytes are read on demand.
    // A GGUF file (or split GGUF) opens too: its tensors under the Hugging Face names (model/gguf_model.h).
    static SafeTensors open(const std::string& path, bool map = true);
    static SafeTensors openFile(const std::string& file, bool map = true);
    static SafeTensors fromViews(std::map<std::string, TensorView> views);

    bool contains(const std::string& name) const { return m_tensors.count(name) > 0; }
    // Throws naming the tensor when it is missing.
    const TensorView& get(const std::string& name) const;
    // Throws when the tensor is missing or its shape differs, naming both shapes.
    const TensorView& expect(const std::string& name, const std::vector<int64_t>& shape) const;
    const std::map<std::string, TensorView>& tensors() const { return m_tensors; }

private:
    void addFile(const std::string& file, const std::vector<std::string>* onlyThese, bool map);
    std::map<std::string, TensorView> m_tensors;
};

std::string shapeString(const std::vector<int64_t>& shape);

// Writes a safetensors file. Tensors are laid out in the order given; data sizes are checked.
struct TensorToWrite {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<std::byte> bytes;
};
void writeSafeTensors(const std::string& file, const std::vector<TensorToWrite>& tensors);

// Float conversions used by the writer and by tests.
uint16_t floatToBf16(float f);
float bf16ToFloat(uint16_t v);
uint16_t floatToF16(float f);
float f16ToFloat(uint16_t v);

} // namespace together
