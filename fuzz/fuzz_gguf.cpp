// SPDX-License-Identifier: MIT
// libFuzzer target: a .gguf file (header, metadata, tensor infos, data), opened as the loader opens a downloaded
// one: every tensor of a type together reads has its first and last row widened (ASan: inside the mapping); then
// what the program takes from the file: its config, its tensors under Hugging Face names with a slice of each
// small one (rows reordered for interleaved q and k), and its vocabulary, encoding and decoding a text.
#include "base/error.h"
#include "model/ggml_types.h"
#include "model/gguf.h"
#include "model/gguf_model.h"
#include "model/model_config.h"
#include "model/shard_spec.h"
#include "text/tokenizer.h"

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>
#include <unistd.h>

namespace {

using namespace together;

void widenRows(const Gguf& g)
{
    volatile float sum = 0;
    std::vector<float> row;
    for (const auto& [name, t] : g.tensors()) {
        if (!ggmlTypeInfo(t.type).runnable || t.rowLength() > (1 << 16))
            continue;
        row.resize(static_cast<size_t>(t.rowLength()));
        const int64_t rowBytes = ggmlRowBytes(t.type, t.rowLength());
        const int64_t rows = t.numel() / t.rowLength();
        dequantizeRow(t.type, t.data, row.data(), t.rowLength());
        dequantizeRow(t.type, t.data + (rows - 1) * rowBytes, row.data(), t.rowLength());
        sum = sum + row.front() + row.back();
    }
}

void asModel(const Gguf& g)
{
    const ModelConfig config = ModelConfig::fromJsonText(ggufConfigJson(g), "fuzz.gguf");
    const SafeTensors st = ggufTensors(g, config);
    const SafeTensorsWeights weights(st);
    for (const auto& spec : config.globalTensors()) {
        if (!st.contains(spec.name) || st.get(spec.name).shape != spec.shape || st.get(spec.name).nbytes > (1u << 20))
            continue;
        TensorSlice whole{spec.name, spec.shape, -1, 0, 0};
        std::vector<std::byte> scratch;
        (void)weights.get(whole, scratch);
    }
    for (int64_t l = 0; l < std::min<int64_t>(config.numLayers, 2); ++l)
        for (const auto& spec : config.layerTensors(l)) {
            if (!st.contains(spec.name) || st.get(spec.name).shape != spec.shape || st.get(spec.name).nbytes > (1u << 20))
                continue;
            const bool rows = spec.shape.size() == 2 && spec.shape[0] % (2 * std::max<int64_t>(config.headDim, 1)) == 0;
            TensorSlice half{spec.name, spec.shape, rows ? 0 : -1, 0, rows ? spec.shape[0] / 2 : 0};
            std::vector<std::byte> scratch;
            (void)weights.get(half, scratch);
        }
}

void asVocabulary(const Gguf& g)
{
    const Tokenizer t = Tokenizer::fromGguf(g);
    const std::vector<int> ids = t.encode("Hello world, <s> 1234 \xE2\x96\x81x \xF0\x9F\x98\x80", true);
    (void)t.decode(ids, false);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    static const std::string path = "/tmp/together-fuzz-" + std::to_string(::getpid()) + ".gguf";
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f)
        return 0;
    std::fwrite(data, 1, size, f);
    std::fclose(f);
    try {
        const Gguf g = Gguf::open(path);
        widenRows(g);
        try {
            asModel(g);
        } catch (const Error&) {
        }
        try {
            asVocabulary(g);
        } catch (const Error&) {
        }
    } catch (const Error&) {
    }
    return 0;
}
