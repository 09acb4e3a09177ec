// SPDX-License-Identifier: MIT
// The GGUF reader: llama.cpp's own files (../shared/refmodels/gguf) against the Hugging Face folder of the same
// model, the block formats against llama.cpp's quantizer, and hostile files.
#include "base/error.h"
#include "model/ggml_types.h"
#include "model/gguf.h"
#include "model/gguf_model.h"
#include "model/model_config.h"
#include "model/random_model.h"
#include "model/shard_spec.h"
#include "model/safetensors.h"
#include "test_support.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

using namespace together;
namespace fs = std::filesystem;

namespace {

std::string ggufDir()
{
    const std::string d = test::sharedDir().empty() ? "" : test::sharedDir() + "/refmodels/gguf";
    return !d.empty() && fs::exists(d + "/stories260K-F32.gguf") ? d : "";
}

#define SKIP_WITHOUT_GGUF()                                                                                            \
    if (ggufDir().empty()) {                                                                                           \
        GTEST_SKIP() << "../shared/refmodels/gguf is not here: llama.cpp's GGUF files are needed";                   \
    }

std::vector<float> widen(const GgufTensor& t)
{
    std::vector<float> out(static_cast<size_t>(t.numel()));
    const int64_t row = t.rowLength(), rows = t.numel() / row;
    const int64_t rowBytes = ggmlRowBytes(t.type, row);
    for (int64_t r = 0; r < rows; ++r)
        dequantizeRow(t.type, t.data + r * rowBytes, out.data() + r * row, row);
    return out;
}

std::vector<float> floatsOf(const TensorView& v)
{
    EXPECT_EQ(v.dtype, DType::F32);
    std::vector<float> out(static_cast<size_t>(v.numel()));
    std::memcpy(out.data(), v.data, v.nbytes);
    return out;
}

double relativeRms(const std::vector<float>& ref, const std::vector<float>& got)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        num += (ref[i] - got[i]) * (ref[i] - got[i]);
        den += ref[i] * ref[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
}

std::string errorOpening(const std::string& path)
{
    try {
        Gguf::open(path);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

// Raw bytes of a GGUF file, built field by field so tests can write what the writer never would.
struct Raw {
    std::string b;
    Raw& u32(uint32_t v) { return put(&v, 4); }
    Raw& u64(uint64_t v) { return put(&v, 8); }
    Raw& str(const std::string& s) { return u64(s.size()).put(s.data(), s.size()); }
    Raw& put(const void* p, size_t n)
    {
        b.append(static_cast<const char*>(p), n);
        return *this;
    }
    Raw& pad(size_t a)
    {
        b.resize((b.size() + a - 1) / a * a, '\0');
        return *this;
    }
    std::string save(const std::string& dir, const std::string& name) const
    {
        const std::string p = dir + "/" + name;
        std::ofstream(p, std::ios::binary) << b;
        return p;
    }
};

// "GGUF" v3 with the given counts.
Raw header(uint64_t tensors, uint64_t kvs, uint32_t version = 3)
{
    Raw r;
    r.put("GGUF", 4).u32(version).u64(tensors).u64(kvs);
    return r;
}

// One F32 tensor [2, 4] named "w" at data offset `offset`.
Raw& tensorInfo(Raw& r, const std::string& name, uint64_t offset, uint32_t type = 0, uint64_t ne0 = 4, uint64_t ne1 = 2)
{
    return r.str(name).u32(2).u64(ne0).u64(ne1).u32(type).u64(offset);
}

class GgufTest : public ::testing::Test {
protected:
    std::string dir = test::makeTempDir("gguf");
};

} // namespace

TEST_F(GgufTest, ReadsLlamaCppsFileOfStories260K)
{
    SKIP_WITHOUT_GGUF();
    const Gguf g = Gguf::open(ggufDir() + "/stories260K-F32.gguf");
    EXPECT_EQ(g.getString("general.architecture"), "llama");
    EXPECT_EQ(g.getInt("llama.block_count"), 5);
    EXPECT_EQ(g.getInt("llama.embedding_length"), 64);
    EXPECT_EQ(g.getInt("llama.attention.head_count"), 8);
    EXPECT_EQ(g.getInt("llama.attention.head_count_kv"), 4);
    EXPECT_EQ(g.getString("tokenizer.ggml.model"), "llama");
    ASSERT_NE(g.getStrings("tokenizer.ggml.tokens"), nullptr);
    EXPECT_EQ(g.getStrings("tokenizer.ggml.tokens")->size(), 512u);
    EXPECT_EQ(g.getFloats("tokenizer.ggml.scores")->size(), 512u);
    EXPECT_EQ(g.getInts("tokenizer.ggml.token_type")->size(), 512u);
    EXPECT_THROW(g.getInt("general.architecture"), Error);
    const GgufTensor& emb = g.get("token_embd.weight");
    EXPECT_EQ(emb.type, GgmlType::F32);
    EXPECT_EQ(emb.shape, (std::vector<int64_t>{512, 64}));
    EXPECT_EQ(g.get("blk.0.ffn_gate.weight").shape, (std::vector<int64_t>{172, 64}));
    EXPECT_EQ(g.get("blk.4.ffn_down.weight").shape, (std::vector<int64_t>{64, 172}));
    EXPECT_EQ(g.get("blk.0.attn_k.weight").shape, (std::vector<int64_t>{32, 64}));
}

// The same weights as the Hugging Face folder: bit for bit, with q and k rows in llama.cpp's interleaved rotary
// order (within each head, row 2i is the folder's row i and row 2i+1 its row i + head_dim/2).
TEST_F(GgufTest, HoldsTheSameWeightsAsTheHuggingFaceFolderWithQAndKInterleaved)
{
    SKIP_WITHOUT_GGUF();
    const std::string hf = test::stories260KDir();
    ASSERT_FALSE(hf.empty());
    const Gguf g = Gguf::open(ggufDir() + "/stories260K-F32.gguf");
    const SafeTensors st = SafeTensors::open(hf + "/hf");
    EXPECT_EQ(widen(g.get("token_embd.weight")), floatsOf(st.get("model.embed_tokens.weight")));
    EXPECT_EQ(widen(g.get("output_norm.weight")), floatsOf(st.get("model.norm.weight")));
    const std::vector<std::pair<std::string, std::string>> same = {
        {"attn_norm", "input_layernorm"}, {"ffn_norm", "post_attention_layernorm"}, {"attn_v", "self_attn.v_proj"},
        {"attn_output", "self_attn.o_proj"}, {"ffn_gate", "mlp.gate_proj"},        {"ffn_up", "mlp.up_proj"},
        {"ffn_down", "mlp.down_proj"}};
    for (int l = 0; l < 5; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".", m = "model.layers." + std::to_string(l) + ".";
        for (const auto& [gn, hn] : same)
            EXPECT_EQ(widen(g.get(b + gn + ".weight")), floatsOf(st.get(m + hn + ".weight"))) << b + gn;
        for (const auto& [gn, hn] : std::vector<std::pair<std::string, std::string>>{{"attn_q", "q_proj"}, {"attn_k", "k_proj"}}) {
            const std::vector<float> gw = widen(g.get(b + gn + ".weight"));
            const std::vector<float> hw = floatsOf(st.get(m + "self_attn." + hn + ".weight"));
            const int64_t cols = 64, headDim = 8, rows = static_cast<int64_t>(hw.size()) / cols;
            for (int64_t r = 0; r < rows; ++r) {
                const int64_t head = r / headDim, i = r % headDim;
                const int64_t hfRow = head * headDim + (i % 2) * (headDim / 2) + i / 2;
                for (int64_t c = 0; c < cols; ++c)
                    ASSERT_EQ(gw[r * cols + c], hw[hfRow * cols + c]) << b + gn << " row " << r;
            }
        }
    }
}

// llama.cpp's quantizer wrote these from the F16 file's weights: each type's blocks, widened, come back within
// that type's rounding error (a misread scale or nibble order is off by far more).
TEST_F(GgufTest, QuantizedBlocksWidenToTheWeightsLlamaCppQuantized)
{
    SKIP_WITHOUT_GGUF();
    const Gguf ref = Gguf::open(ggufDir() + "/rand256-F16.gguf");
    const std::vector<std::pair<std::string, double>> files = {
        {"Q8_0", 0.01}, {"Q6_K", 0.02}, {"Q5_K_M", 0.05}, {"Q4_K_M", 0.1}, {"Q4_0", 0.12}};
    for (const auto& [quant, bound] : files) {
        const Gguf g = Gguf::open(ggufDir() + "/rand256-" + quant + ".gguf");
        std::map<std::string, int> types;
        for (const auto& [name, t] : g.tensors()) {
            ++types[ggmlTypeName(t.type)];
            const GgufTensor& r = ref.get(name);
            ASSERT_EQ(t.shape, r.shape) << quant << " " << name;
            const double err = relativeRms(widen(r), widen(t));
            EXPECT_LT(err, bound) << quant << " " << name << " (" << ggmlTypeName(t.type) << ")";
            if (t.type != GgmlType::F32 && t.type != GgmlType::F16) {
                EXPECT_GT(err, 0.0) << quant << " " << name;
            }
        }
        const std::string main = quant.substr(0, quant.find("_M"));
        EXPECT_GT(types[main], 0) << quant << " holds no " << main << " tensors";
        if (quant == "Q4_K_M" || quant == "Q5_K_M") {
            EXPECT_GT(types["Q6_K"], 0) << quant;
        }
    }
}

TEST_F(GgufTest, MixedSmallModelFileUsesTheFallbackTypes)
{
    SKIP_WITHOUT_GGUF();
    const Gguf f32 = Gguf::open(ggufDir() + "/stories260K-F32.gguf");
    const Gguf g = Gguf::open(ggufDir() + "/stories260K-Q4_K_M.gguf");
    std::map<std::string, int> types;
    for (const auto& [name, t] : g.tensors()) {
        ++types[ggmlTypeName(t.type)];
        EXPECT_LT(relativeRms(widen(f32.get(name)), widen(t)), 0.1) << name << " " << ggmlTypeName(t.type);
    }
    EXPECT_GT(types["Q5_0"], 0);
}

TEST_F(GgufTest, WritesWhatItReadsInEveryWritableType)
{
    std::mt19937 rng(3);
    std::normal_distribution<float> n(0.0f, 0.5f);
    std::vector<float> w(4 * 512);
    for (float& x : w)
        x = n(rng);
    const std::vector<std::pair<GgmlType, double>> types = {{GgmlType::F32, 0},      {GgmlType::F16, 1e-3},
                                                            {GgmlType::BF16, 8e-3},  {GgmlType::Q8_0, 0.01},
                                                            {GgmlType::Q4_0, 0.12}, {GgmlType::Q4_K, 0.1}};
    std::vector<GgufTensorToWrite> tensors;
    for (const auto& [type, bound] : types) {
        std::vector<std::byte> bytes(static_cast<size_t>(4 * ggmlRowBytes(type, 512)));
        for (int r = 0; r < 4; ++r)
            quantizeRow(type, w.data() + r * 512, bytes.data() + r * ggmlRowBytes(type, 512), 512);
        tensors.push_back({std::string("t.") + ggmlTypeName(type), type, {4, 512}, std::move(bytes)});
    }
    const std::string path = dir + "/all.gguf";
    writeGguf(path,
              {{"general.architecture", ggufString("llama")},
               {"an.int", ggufInt(-7, 5)},
               {"a.float", ggufFloat(0.25)},
               {"a.bool", ggufBool(true)},
               {"some.strings", ggufStrings({"a", "", "\xE2\x96\x81x"})},
               {"some.floats", ggufFloats({1.5, -2})},
               {"some.ints", ggufInts({1, 2, 3})}},
              tensors);
    const Gguf g = Gguf::open(path);
    EXPECT_EQ(g.version(), 3u);
    EXPECT_EQ(g.getInt("an.int"), -7);
    EXPECT_EQ(g.getFloat("a.float"), 0.25);
    EXPECT_EQ(g.getBool("a.bool"), true);
    EXPECT_EQ(*g.getStrings("some.strings"), (std::vector<std::string>{"a", "", "\xE2\x96\x81x"}));
    EXPECT_EQ(*g.getFloats("some.floats"), (std::vector<double>{1.5, -2}));
    EXPECT_EQ(*g.getInts("some.ints"), (std::vector<int64_t>{1, 2, 3}));
    for (const auto& [type, bound] : types) {
        const GgufTensor& t = g.get(std::string("t.") + ggmlTypeName(type));
        EXPECT_EQ(t.type, type);
        EXPECT_EQ(t.fileOffset % 32, 0u);
        const double err = relativeRms(w, widen(t));
        EXPECT_LE(err, bound) << ggmlTypeName(type);
    }
    const Gguf unmapped = Gguf::open(path, false);
    EXPECT_EQ(unmapped.get("t.Q4_K").data, nullptr);
    std::vector<std::byte> bytes(unmapped.get("t.Q4_K").nbytes);
    unmapped.get("t.Q4_K").file->read(unmapped.get("t.Q4_K").fileOffset, bytes.size(), bytes.data());
    EXPECT_EQ(0, std::memcmp(bytes.data(), g.get("t.Q4_K").data, bytes.size()));
}

TEST_F(GgufTest, SplitModelReadsAsOneFromAnyPart)
{
    auto part = [&](int no, const std::string& tensor) {
        std::vector<std::pair<std::string, GgufValue>> meta = {{"split.no", ggufInt(no, 2)}, {"split.count", ggufInt(2, 2)},
                                                               {"split.tensors.count", ggufInt(2, 5)}};
        if (no == 0)
            meta.insert(meta.begin(), {"general.architecture", ggufString("llama")});
        std::vector<std::byte> bytes(8 * 4);
        writeGguf(dir + "/m-0000" + std::to_string(no + 1) + "-of-00002.gguf", meta, {{tensor, GgmlType::F32, {2, 4}, bytes}});
    };
    part(0, "a");
    part(1, "b");
    for (const char* name : {"/m-00001-of-00002.gguf", "/m-00002-of-00002.gguf"}) {
        const Gguf g = Gguf::open(dir + name);
        EXPECT_EQ(g.files().size(), 2u);
        EXPECT_TRUE(g.contains("a"));
        EXPECT_TRUE(g.contains("b"));
        EXPECT_EQ(g.getString("general.architecture"), "llama");
    }
    fs::rename(dir + "/m-00002-of-00002.gguf", dir + "/elsewhere.gguf");
    EXPECT_NE(errorOpening(dir + "/m-00001-of-00002.gguf").find("part 2 of 2 of this split model is missing"), std::string::npos);
    fs::copy_file(dir + "/m-00001-of-00002.gguf", dir + "/alone.gguf");
    EXPECT_NE(errorOpening(dir + "/alone.gguf").find("open it by its split name"), std::string::npos);
}

TEST_F(GgufTest, RefusesEachKindOfBrokenFileByName)
{
    struct Case {
        const char* what;
        Raw raw;
        const char* message;
    };
    std::vector<Case> cases;
    cases.push_back({"magic", Raw().put("GGML", 4).u32(3).u64(0).u64(0), "not a GGUF file"});
    cases.push_back({"version 1", header(0, 0, 1), "version 1 is not supported"});
    cases.push_back({"big endian", header(0, 0, 0x03000000), "big-endian"});
    cases.push_back({"tensor count", header(1ull << 40, 0), "the tensor count is"});
    cases.push_back({"kv count past the end", header(0, 1000), "more than the rest of the file can hold"});
    {
        Raw r = header(0, 1);
        r.str("k").u32(8).u64(1ull << 40);
        cases.push_back({"string length", r, "allowed"});
    }
    {
        Raw r = header(0, 1);
        r.str("k").u32(9).u32(9).u64(1);
        cases.push_back({"array of arrays", r, "arrays of arrays"});
    }
    {
        Raw r = header(0, 1);
        r.str("k").u32(9).u32(4).u64(1ull << 23).u32(1);
        cases.push_back({"array longer than the file", r, "array length"});
    }
    {
        Raw r = header(0, 1);
        r.str("k").u32(13).u32(0);
        cases.push_back({"value type", r, "unknown value type 13"});
    }
    {
        Raw r = header(0, 2);
        r.str("k").u32(4).u32(1).str("k").u32(4).u32(2);
        cases.push_back({"duplicate key", r, "appears twice"});
    }
    {
        Raw r = header(0, 1);
        r.str("general.alignment").u32(4).u32(24);
        cases.push_back({"alignment", r, "power of two"});
    }
    {
        Raw r = header(1, 0);
        r.str("w").u32(5).u64(1).u64(1).u64(1).u64(1).u64(1).u32(0).u64(0);
        cases.push_back({"five dimensions", r, "5 dimensions"});
    }
    {
        Raw r = header(1, 0);
        tensorInfo(r, "w", 0, 0, 4, 0);
        cases.push_back({"empty dimension", r, "(empty)"});
    }
    {
        Raw r = header(1, 0);
        r.str("w").u32(4).u64(1ull << 31).u64(1ull << 31).u64(1ull << 31).u64(4).u32(0).u64(0);
        cases.push_back({"element count overflow", r, "too many elements"});
    }
    {
        Raw r = header(1, 0);
        tensorInfo(r, "w", 0, 77);
        cases.push_back({"tensor type", r, "unknown tensor type id 77"});
    }
    {
        Raw r = header(1, 0);
        tensorInfo(r, "w", 0, 12, 100, 1);
        cases.push_back({"partial block", r, "not whole Q4_K blocks of 256"});
    }
    {
        Raw r = header(1, 0);
        tensorInfo(r, "w", 8).pad(32).b.append(64, '\0');
        cases.push_back({"misaligned offset", r, "not a multiple of the alignment"});
    }
    {
        Raw r = header(1, 0);
        tensorInfo(r, "w", 0).pad(32).b.append(31, '\0');
        cases.push_back({"data past the end", r, "run past the end of the file"});
    }
    {
        Raw r = header(2, 0);
        tensorInfo(r, "a", 0);
        tensorInfo(r, "b", 0).pad(32).b.append(64, '\0');
        cases.push_back({"overlap", r, "overlap"});
    }
    {
        Raw r = header(2, 0);
        tensorInfo(r, "a", 0);
        tensorInfo(r, "a", 32).pad(32).b.append(64, '\0');
        cases.push_back({"duplicate tensor", r, "tensor a appears twice"});
    }
    for (const Case& c : cases) {
        const std::string msg = errorOpening(c.raw.save(dir, "bad.gguf"));
        EXPECT_NE(msg.find(c.message), std::string::npos) << c.what << ": " << msg;
        EXPECT_NE(msg.find("bad.gguf"), std::string::npos) << c.what << ": " << msg;
    }
}

// Every prefix of a valid file is refused with a message (never a crash or a read past the end: ASan builds).
TEST_F(GgufTest, EveryTruncationIsRefused)
{
    std::vector<std::byte> q(static_cast<size_t>(2 * ggmlRowBytes(GgmlType::Q8_0, 64)));
    writeGguf(dir + "/ok.gguf", {{"general.architecture", ggufString("llama")}, {"toks", ggufStrings({"a", "b"})}},
              {{"w", GgmlType::Q8_0, {2, 64}, q}, {"n", GgmlType::F32, {64}, std::vector<std::byte>(256)}});
    std::ifstream in(dir + "/ok.gguf", std::ios::binary);
    const std::string whole((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_NO_THROW(Gguf::open(dir + "/ok.gguf"));
    // The file ends with the last tensor's bytes; a cut anywhere before them leaves it short.
    const size_t lastTensorEnd = whole.size();
    for (size_t n = 0; n < lastTensorEnd; ++n) {
        std::ofstream(dir + "/cut.gguf", std::ios::binary | std::ios::trunc) << whole.substr(0, n);
        EXPECT_FALSE(errorOpening(dir + "/cut.gguf").empty()) << "a cut at " << n << " bytes was accepted";
    }
}

TEST_F(GgufTest, UnsupportedTypesAreNamed)
{
    EXPECT_STREQ(ggmlTypeName(GgmlType::Q2_K), "Q2_K");
    EXPECT_FALSE(ggmlTypeInfo(GgmlType::IQ2_XS).runnable);
    EXPECT_TRUE(ggmlTypeInfo(GgmlType::Q5_1).runnable);
    EXPECT_EQ(ggmlTypeInfo(31u), nullptr);
    std::vector<float> out(256);
    std::vector<std::byte> block(84);
    try {
        dequantizeRow(GgmlType::Q2_K, block.data(), out.data(), 256);
        FAIL() << "Q2_K was widened";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("Q2_K"), std::string::npos);
    }
}

namespace {

std::vector<float> sliceFloats(const WeightProvider& w, const TensorSlice& s)
{
    std::vector<std::byte> scratch;
    const TensorView v = w.get(s, scratch);
    std::vector<float> out(static_cast<size_t>(v.numel()));
    EXPECT_EQ(v.dtype, DType::F32) << s.name;
    EXPECT_EQ(v.nbytes, out.size() * 4) << s.name;
    std::memcpy(out.data(), v.data, v.nbytes);
    return out;
}

} // namespace

// A random model of each architecture written as GGUF and read back: every tensor-parallel slice (rows by head
// through the interleaved q and k, columns of o and down) is the folder's, exactly in F32, within rounding in Q8_0
// and Q4_K; mapped or read by pread alike. The config and tokenizer ids come back too.
TEST_F(GgufTest, ExportedModelsSliceLikeTheirFolders)
{
    for (const char* arch : {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}) {
        RandomModelSpec spec = modelShape("default");
        spec.architecture = arch;
        spec.numLayers = 2;
        spec.intermediateSize = 512; // whole Q4_K blocks for down's rows
        const std::string folder = dir + "/" + arch;
        writeRandomModel(folder, spec);
        const ModelConfig config = ModelConfig::fromDirectory(folder);
        const SafeTensors ref = SafeTensors::open(folder);
        const SafeTensorsWeights refWeights(ref);
        for (const auto& [type, bound] : std::vector<std::pair<GgmlType, double>>{{GgmlType::F32, 0.0}, {GgmlType::Q8_0, 0.01}, {GgmlType::Q4_K, 0.12}}) {
            const std::string file = dir + "/" + arch + "-" + ggmlTypeName(type) + ".gguf";
            exportGguf(folder, file, type);
            const ModelConfig got = ModelConfig::fromDirectory(file);
            EXPECT_EQ(got.architecture, config.architecture);
            EXPECT_EQ(got.hiddenSize, config.hiddenSize);
            EXPECT_EQ(got.numKvHeads, config.numKvHeads);
            EXPECT_EQ(got.headDim, config.headDim);
            EXPECT_EQ(got.vocabSize, config.vocabSize);
            EXPECT_EQ(got.attentionBias, config.attentionBias) << arch;
            EXPECT_EQ(got.qkNorm, config.qkNorm) << arch;
            EXPECT_EQ(got.tieWordEmbeddings, config.tieWordEmbeddings);
            EXPECT_EQ(got.bosTokenId, config.bosTokenId);
            for (bool map : {true, false}) {
                const SafeTensors st = SafeTensors::open(file, map);
                got.validate(st);
                const SafeTensorsWeights weights(st);
                for (int rank = 0; rank < 2; ++rank)
                    for (const TensorSlice& s : shardTensors(config, {0, 1, rank, 2, true, true})) {
                        const double err = relativeRms(sliceFloats(refWeights, s), sliceFloats(weights, s));
                        if (bound == 0.0)
                            EXPECT_EQ(err, 0.0) << arch << " " << s.name << " rank " << rank << " map " << map;
                        else
                            EXPECT_LT(err, bound) << arch << " " << ggmlTypeName(type) << " " << s.name << " rank " << rank;
                    }
            }
        }
    }
}

TEST_F(GgufTest, TypesTogetherDoesNotRunAreRefusedByTensorBeforeLoading)
{
    RandomModelSpec spec = modelShape("default");
    spec.numLayers = 1;
    writeRandomModel(dir + "/m", spec);
    exportGguf(dir + "/m", dir + "/ok.gguf", GgmlType::F16);
    test::rewriteGguf(dir + "/ok.gguf", dir + "/q2k.gguf", [](GgufTensorToWrite& t) {
        if (t.name == "blk.0.ffn_gate.weight")
            test::retypeWithZeros(t, GgmlType::Q2_K);
    });
    EXPECT_NO_THROW(ModelConfig::fromDirectory(dir + "/q2k.gguf"));
    try {
        SafeTensors::open(dir + "/q2k.gguf");
        FAIL() << "a Q2_K tensor was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("blk.0.ffn_gate.weight is Q2_K"), std::string::npos) << e.what();
    }
}

TEST_F(GgufTest, Llama3RotaryScalingIsReadFromRopeFreqsAndCheckedValueByValue)
{
    auto write = [&](const std::string& name, double factor, float tamper) {
        std::vector<float> d;
        for (double x : llama3RopeDivisors(500000.0, 64, factor, 1, 4, 8192))
            d.push_back(static_cast<float>(x));
        d[20] += tamper;
        std::vector<std::byte> freqs(d.size() * 4), emb(static_cast<size_t>(512 * 256 * 2));
        std::memcpy(freqs.data(), d.data(), freqs.size());
        writeGguf(dir + "/" + name,
                  {{"general.architecture", ggufString("llama")},
                   {"llama.embedding_length", ggufInt(256)},
                   {"llama.feed_forward_length", ggufInt(512)},
                   {"llama.block_count", ggufInt(1)},
                   {"llama.attention.head_count", ggufInt(4)},
                   {"llama.rope.freq_base", ggufFloat(500000.0)},
                   {"llama.context_length", ggufInt(131072)}},
                  {{"token_embd.weight", GgmlType::F16, {512, 256}, emb}, {"rope_freqs.weight", GgmlType::F32, {32}, freqs}});
        return dir + "/" + name;
    };
    const ModelConfig c = ModelConfig::fromDirectory(write("l3.gguf", 32.0, 0));
    EXPECT_EQ(c.ropeScaling.type, "llama3");
    EXPECT_DOUBLE_EQ(c.ropeScaling.factor, 32.0);
    EXPECT_EQ(c.ropeScaling.originalMaxPositionEmbeddings, 8192);
    EXPECT_TRUE(c.tieWordEmbeddings);
    EXPECT_EQ(c.headDim, 64);
    EXPECT_EQ(c.maxPositionEmbeddings, 131072);
    try {
        ModelConfig::fromDirectory(write("other.gguf", 8.0, 0.5f));
        FAIL() << "a rotary scaling other than Llama 3's was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("not Llama 3's rotary scaling"), std::string::npos) << e.what();
    }
}

// Found by an attacker's review: each was a crash, a read outside the file, or a silently wrong slice.
TEST_F(GgufTest, HostileShapesAndValuesFoundByReviewAreRefused)
{
    { // a row of 2^62 F32 weights: its byte count wrapped to 0 (a division by zero later)
        Raw r = header(1, 0);
        r.str("w").u32(1).u64(1ull << 62).u32(0).u64(0);
        EXPECT_NE(errorOpening(r.save(dir, "wrap.gguf")).find("too large"), std::string::npos);
        Raw f64 = header(1, 0);
        f64.str("w").u32(1).u64((1ull << 61) + 1).u32(28).u64(0);
        EXPECT_NE(errorOpening(f64.save(dir, "wrap64.gguf")).find("too large"), std::string::npos);
    }
    for (const char* name : {"m-00000-of-00002.gguf", "m-00003-of-00002.gguf"}) {
        Raw r = header(0, 0);
        EXPECT_NE(errorOpening(r.save(dir, name)).find("no part of one"), std::string::npos) << name;
    }
    { // an odd head size beside rope_freqs: the check read past its values
        std::vector<std::byte> freqs(4), emb(static_cast<size_t>(64 * 6 * 4));
        writeGguf(dir + "/odd.gguf",
                  {{"general.architecture", ggufString("llama")}, {"llama.embedding_length", ggufInt(6)}, {"llama.feed_forward_length", ggufInt(8)},
                   {"llama.block_count", ggufInt(1)}, {"llama.attention.head_count", ggufInt(2)}, {"llama.attention.key_length", ggufInt(3)}},
                  {{"token_embd.weight", GgmlType::F32, {64, 6}, emb}, {"rope_freqs.weight", GgmlType::F32, {1}, freqs}});
        try {
            ModelConfig::fromDirectory(dir + "/odd.gguf");
            FAIL() << "accepted";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("an even size is needed"), std::string::npos) << e.what();
        }
    }
}

// A quantized bias (qwen2 files may hold one): a tensor-parallel slice of it is the rank's part, not the whole
// vector read from the bytes after it.
TEST_F(GgufTest, QuantizedBiasSlicesAreTheRanksPart)
{
    RandomModelSpec spec = modelShape("default");
    spec.architecture = "Qwen2ForCausalLM";
    spec.numLayers = 1;
    writeRandomModel(dir + "/q", spec);
    exportGguf(dir + "/q", dir + "/q.gguf", GgmlType::F32);
    test::rewriteGguf(dir + "/q.gguf", dir + "/qbias.gguf", [](GgufTensorToWrite& t) {
        if (t.name != "blk.0.attn_q.bias" && t.name != "blk.0.attn_k.bias")
            return;
        std::vector<float> v(t.bytes.size() / 4);
        std::memcpy(v.data(), t.bytes.data(), t.bytes.size());
        t.type = GgmlType::Q8_0;
        t.bytes.assign(static_cast<size_t>(ggmlRowBytes(GgmlType::Q8_0, t.shape[0])), std::byte{0});
        quantizeRow(GgmlType::Q8_0, v.data(), t.bytes.data(), t.shape[0]);
    });
    const ModelConfig config = ModelConfig::fromDirectory(dir + "/q");
    const SafeTensors ref = SafeTensors::open(dir + "/q");
    for (bool map : {true, false}) {
        const SafeTensors st = SafeTensors::open(dir + "/qbias.gguf", map);
        for (int rank = 0; rank < 2; ++rank)
            for (const TensorSlice& s : shardTensors(config, {0, 0, rank, 2, true, true}))
                if (s.name.find("bias") != std::string::npos) {
                    const auto want = sliceFloats(SafeTensorsWeights(ref), s), got = sliceFloats(SafeTensorsWeights(st), s);
                    ASSERT_EQ(want.size(), got.size()) << s.name;
                    EXPECT_LT(relativeRms(want, got), 0.01) << s.name << " rank " << rank;
                }
    }
}
