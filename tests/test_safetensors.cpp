// SPDX-License-Identifier: MIT
#include "base/error.h"
#include "model/model_config.h"
#include "model/safetensors.h"
#include "test_support.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

using namespace together;
namespace fs = std::filesystem;

namespace {

// A file with the given header JSON and `dataBytes` bytes of data after it.
std::string writeRaw(const std::string& dir, const std::string& name, const std::string& header, size_t dataBytes,
                     uint64_t lengthOverride = 0)
{
    std::string path = dir + "/" + name;
    std::ofstream out(path, std::ios::binary);
    uint64_t n = lengthOverride ? lengthOverride : header.size();
    for (int i = 0; i < 8; ++i)
        out.put(static_cast<char>((n >> (8 * i)) & 0xff));
    out << header;
    out << std::string(dataBytes, '\0');
    return path;
}

std::string errorOf(const std::string& path)
{
    try {
        SafeTensors::openFile(path);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

std::vector<std::byte> floats(std::initializer_list<float> v)
{
    std::vector<std::byte> b(v.size() * 4);
    std::memcpy(b.data(), std::data(v), b.size());
    return b;
}

class SafeTensorsTest : public ::testing::Test {
protected:
    std::string dir = test::makeTempDir("st");
};

TEST_F(SafeTensorsTest, RoundTripsF32AndBf16)
{
    std::vector<std::byte> bf(4);
    uint16_t a = floatToBf16(1.5f), b = floatToBf16(-2.0f);
    std::memcpy(bf.data(), &a, 2);
    std::memcpy(bf.data() + 2, &b, 2);
    writeSafeTensors(dir + "/m.safetensors", {{"x", DType::F32, {2, 2}, floats({1, 2, 3, 4})}, {"y", DType::BF16, {2}, bf}});
    SafeTensors st = SafeTensors::openFile(dir + "/m.safetensors");
    ASSERT_EQ(st.tensors().size(), 2u);
    const TensorView& x = st.expect("x", {2, 2});
    EXPECT_EQ(x.dtype, DType::F32);
    float v[4];
    std::memcpy(v, x.data, 16);
    EXPECT_EQ(v[3], 4.0f);
    const TensorView& y = st.get("y");
    uint16_t y1;
    std::memcpy(&y1, y.data + 2, 2);
    EXPECT_EQ(bf16ToFloat(y1), -2.0f);
}

TEST_F(SafeTensorsTest, TruncatedDataIsNamed)
{
    std::string p = writeRaw(dir, "trunc.safetensors", R"({"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}})", 40);
    std::string e = errorOf(p);
    EXPECT_NE(e.find("trunc.safetensors"), std::string::npos) << e;
    EXPECT_NE(e.find("tensor w"), std::string::npos) << e;
    EXPECT_NE(e.find("truncated"), std::string::npos) << e;
}

TEST_F(SafeTensorsTest, HeaderLengthPastEndOfFile)
{
    std::string p = writeRaw(dir, "hdr.safetensors", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, 1ull << 40);
    std::string e = errorOf(p);
    EXPECT_NE(e.find("header length"), std::string::npos) << e;
    EXPECT_NE(e.find("past the end"), std::string::npos) << e;
}

TEST_F(SafeTensorsTest, TooShortForAHeader)
{
    std::string p = dir + "/tiny.safetensors";
    std::ofstream(p) << "abc";
    EXPECT_NE(errorOf(p).find("too short"), std::string::npos) << errorOf(p);
}

TEST_F(SafeTensorsTest, OverlappingTensors)
{
    std::string p = writeRaw(dir, "overlap.safetensors",
                             R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                             24);
    std::string e = errorOf(p);
    EXPECT_NE(e.find("overlap"), std::string::npos) << e;
    EXPECT_NE(e.find("a"), std::string::npos) << e;
    EXPECT_NE(e.find("b"), std::string::npos) << e;
}

TEST_F(SafeTensorsTest, ShapeDoesNotMatchBytes)
{
    std::string p = writeRaw(dir, "shape.safetensors", R"({"w":{"dtype":"F16","shape":[3,3],"data_offsets":[0,36]}})", 36);
    std::string e = errorOf(p);
    EXPECT_NE(e.find("tensor w"), std::string::npos) << e;
    EXPECT_NE(e.find("needs 18 bytes"), std::string::npos) << e;
    EXPECT_NE(e.find("span 36"), std::string::npos) << e;
}

TEST_F(SafeTensorsTest, UnknownAndQuantizedDtypes)
{
    std::string p = writeRaw(dir, "dtype.safetensors", R"({"w":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,2]}})", 2);
    EXPECT_NE(errorOf(p).find("unknown dtype 'Q4_K'"), std::string::npos) << errorOf(p);
    p = writeRaw(dir, "i8.safetensors", R"({"w":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}})", 2);
    EXPECT_NE(errorOf(p).find("not supported"), std::string::npos) << errorOf(p);
}

TEST_F(SafeTensorsTest, MalformedHeaderJson)
{
    std::string p = writeRaw(dir, "json.safetensors", R"({"w":{"dtype":"F32","shape":[1],)", 4);
    std::string e = errorOf(p);
    EXPECT_NE(e.find("not valid JSON"), std::string::npos) << e;
}

TEST_F(SafeTensorsTest, NegativeOrHugeShapes)
{
    std::string p = writeRaw(dir, "neg.safetensors", R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4);
    EXPECT_NE(errorOf(p).find("negative"), std::string::npos) << errorOf(p);
    p = writeRaw(dir, "huge.safetensors",
                 R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4);
    EXPECT_FALSE(errorOf(p).empty());
}

TEST_F(SafeTensorsTest, MissingTensorAndWrongShapeAgainstConfig)
{
    ModelConfig c = ModelConfig::fromJsonText(R"({"architectures":["LlamaForCausalLM"],"hidden_size":4,"intermediate_size":8,
        "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"vocab_size":10,"tie_word_embeddings":true})",
                                              "config.json");
    writeSafeTensors(dir + "/model.safetensors", {{"model.embed_tokens.weight", DType::F32, {10, 4}, std::vector<std::byte>(160)}});
    SafeTensors st = SafeTensors::open(dir);
    try {
        c.validate(st);
        FAIL() << "missing tensors accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("model.norm.weight is missing"), std::string::npos) << e.what();
    }
    writeSafeTensors(dir + "/model.safetensors", {{"model.embed_tokens.weight", DType::F32, {10, 5}, std::vector<std::byte>(200)}});
    SafeTensors st2 = SafeTensors::open(dir);
    try {
        c.validate(st2);
        FAIL() << "wrong shape accepted";
    } catch (const Error& e) {
        std::string m = e.what();
        EXPECT_NE(m.find("model.embed_tokens.weight has shape [10, 5]"), std::string::npos) << m;
        EXPECT_NE(m.find("[10, 4]"), std::string::npos) << m;
    }
}

TEST_F(SafeTensorsTest, ShardedIndex)
{
    writeSafeTensors(dir + "/model-00001-of-00002.safetensors", {{"a", DType::F32, {1}, floats({1})}});
    writeSafeTensors(dir + "/model-00002-of-00002.safetensors", {{"b", DType::F32, {2}, floats({2, 3})}});
    std::ofstream(dir + "/model.safetensors.index.json")
        << R"({"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})";
    SafeTensors st = SafeTensors::open(dir);
    EXPECT_TRUE(st.contains("a"));
    EXPECT_TRUE(st.contains("b"));
    EXPECT_NE(st.get("b").file->path().find("00002"), std::string::npos);

    std::ofstream(dir + "/model.safetensors.index.json")
        << R"({"weight_map":{"a":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}})";
    try {
        SafeTensors::open(dir);
        FAIL() << "index naming a missing tensor accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("tensor c is listed"), std::string::npos) << e.what();
    }
    std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map":{"a":"../etc/passwd"}})";
    EXPECT_THROW(SafeTensors::open(dir), Error);
}

TEST_F(SafeTensorsTest, MissingFolderContents)
{
    try {
        SafeTensors::open(dir);
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("no model.safetensors"), std::string::npos) << e.what();
    }
}

TEST(F16, ConversionsAreExactAndRoundToNearestEven)
{
    // Every half converts to float and back unchanged (NaNs to the quiet NaN).
    for (uint32_t v = 0; v < 65536; ++v) {
        const float f = f16ToFloat(static_cast<uint16_t>(v));
        const uint32_t e = (v >> 10) & 31, m = v & 1023;
        const float expect = e == 0 ? std::ldexp(static_cast<float>(m), -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1.0f + m / 1024.0f, static_cast<int>(e) - 15);
        if (e == 31 && m) {
            EXPECT_TRUE(std::isnan(f)) << v;
            EXPECT_EQ(floatToF16(f), 0x7e00) << v;
            continue;
        }
        EXPECT_EQ(std::fabs(f), expect) << v;
        EXPECT_EQ(std::signbit(f), (v & 0x8000) != 0) << v;
        EXPECT_EQ(floatToF16(f), v) << v;
    }
    EXPECT_EQ(floatToF16(65519.0f), 0x7bff);               // rounds down to the largest half, 65504
    EXPECT_EQ(floatToF16(65520.0f), 0x7c00);               // halfway to 65536: to infinity
    EXPECT_EQ(floatToF16(std::ldexp(1.0f, -25)), 0x0000);  // halfway to the smallest subnormal: to even (0)
    EXPECT_EQ(floatToF16(std::ldexp(3.0f, -26)), 0x0001);  // 0.75 of it: up
    EXPECT_EQ(floatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00); // halfway: to even
    EXPECT_EQ(floatToF16(-1e10f), 0xfc00);
#ifdef __FLT16_MAX__
    // The compiler's own conversion agrees on a sweep of floats (normals, subnormals, ties).
    for (uint32_t bits = 0; bits < 0x7f800000u; bits += 4093) {
        float f;
        std::memcpy(&f, &bits, 4);
        const _Float16 h = static_cast<_Float16>(f);
        uint16_t hb;
        std::memcpy(&hb, &h, 2);
        ASSERT_EQ(floatToF16(f), hb) << bits;
    }
#endif
}

TEST(Bf16, RoundsToNearestEven)
{
    EXPECT_EQ(bf16ToFloat(floatToBf16(1.0f)), 1.0f);
    EXPECT_EQ(bf16ToFloat(floatToBf16(1.00390625f)), 1.0f);    // halfway, rounds to even
    EXPECT_EQ(bf16ToFloat(floatToBf16(1.01171875f)), 1.015625f); // halfway, rounds up to even
    EXPECT_EQ(f16ToFloat(floatToF16(0.5f)), 0.5f);
}

} // namespace
