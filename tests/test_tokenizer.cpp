// SPDX-License-Identifier: MIT
#include "base/error.h"
#include "model/gguf.h"
#include "model/random_model.h"
#include "test_support.h"
#include "text/tokenizer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

using namespace together;
using json = nlohmann::json;

namespace {

// The Hugging Face folder and llama.cpp's GGUF file of stories260K (whose vocabulary is llama2.c's, with scores):
// both tokenize as llama2.c's run.c does.
std::vector<std::string> storiesTokenizers()
{
    std::vector<std::string> out = {test::stories260KDir() + "/hf"};
    const std::string gguf = test::sharedDir() + "/refmodels/gguf/stories260K-Q4_K_M.gguf";
    if (std::ifstream(gguf))
        out.push_back(gguf);
    else
        std::printf("[ skipped  ] %s is not here: the GGUF vocabulary is not checked\n", gguf.c_str());
    return out;
}

TEST(StoriesTokenizer, ReferenceCasesEncodeAndDecode)
{
    SKIP_WITHOUT_STORIES();
    json ref = test::storiesReference();
    ASSERT_EQ(ref["tokenizer_cases"].size(), 6u);
    for (const std::string& dir : storiesTokenizers()) {
        Tokenizer tok = Tokenizer::fromDirectory(dir);
        for (auto& c : ref["tokenizer_cases"]) {
            std::string text = c["text"];
            auto ids = tok.encode(text);
            EXPECT_EQ(ids, c["ids"].get<std::vector<int>>()) << dir << ": " << text;
            EXPECT_EQ(tok.decode(ids, /*skipSpecial=*/true), text) << dir;
        }
        for (auto& c : ref["cases"])
            EXPECT_EQ(tok.encode(c["prompt"].get<std::string>()), c["prompt_ids"].get<std::vector<int>>()) << dir;
    }
}

TEST(StoriesTokenizer, GgufVocabularyTokenizesTheCorpusAsTheFolder)
{
    SKIP_WITHOUT_STORIES();
    const std::vector<std::string> dirs = storiesTokenizers();
    if (dirs.size() < 2)
        GTEST_SKIP() << "no GGUF file of stories260K";
    const Tokenizer hf = Tokenizer::fromDirectory(dirs[0]), gguf = Tokenizer::fromDirectory(dirs[1]);
    std::ifstream in(std::string(TOGETHER_SOURCE_DIR) + "/tests/data/tokenizer_corpus.json");
    const json corpus = json::parse(in);
    int n = 0;
    for (const auto& t : corpus["texts"]) {
        const std::string text = t.get<std::string>();
        for (bool special : {true, false}) {
            const auto a = hf.encode(text, special), b = gguf.encode(text, special);
            EXPECT_EQ(a, b) << text;
            EXPECT_EQ(hf.decode(a), gguf.decode(b)) << text;
        }
        ++n;
    }
    EXPECT_GT(n, 15);
}

TEST(StoriesTokenizer, StreamingKeepsTheLeadingSpaceAndMatchesReferenceText)
{
    SKIP_WITHOUT_STORIES();
    Tokenizer tok = Tokenizer::fromDirectory(test::stories260KDir() + "/hf");
    json ref = test::storiesReference();
    for (auto& c : ref["cases"]) {
        StreamDecoder d(tok);
        std::string text;
        for (int id : c["generated_ids"].get<std::vector<int>>())
            text += d.push(id);
        text += d.flush();
        EXPECT_EQ(text, c["generated_text"].get<std::string>());
        // prompt + output reads as one text
        EXPECT_EQ(c["prompt"].get<std::string>() + text + "\n", c["run_c_stdout"].get<std::string>());
    }
}

TEST(StoriesTokenizer, ByteFallbackHoldsBackIncompleteUtf8)
{
    SKIP_WITHOUT_STORIES();
    Tokenizer tok = Tokenizer::fromDirectory(test::stories260KDir() + "/hf");
    // "😀" is not in the 512-token vocabulary: it becomes "▁" and the byte tokens <0xF0> <0x9F> <0x98> <0x80>.
    auto ids = tok.encode("😀", false);
    ASSERT_EQ(ids.size(), 5u);
    StreamDecoder d(tok);
    std::string out;
    std::vector<std::string> pieces;
    for (int id : ids)
        pieces.push_back(d.push(id));
    EXPECT_EQ(pieces[0], " ");
    EXPECT_EQ(pieces[1], ""); // the incomplete sequence is held back...
    EXPECT_EQ(pieces[2], "");
    EXPECT_EQ(pieces[3], "");
    EXPECT_EQ(pieces[4], "😀"); // ...until its last byte arrives
    for (auto& p : pieces)
        out += p;
    out += d.flush();
    EXPECT_EQ(out, " 😀");
    EXPECT_EQ(tok.decode(ids), "😀");
    // A lone lead byte at the end becomes U+FFFD, never invalid output.
    StreamDecoder d2(tok);
    std::string partial = d2.push(ids[1]);
    partial += d2.flush();
    EXPECT_EQ(partial, "\xEF\xBF\xBD");
}

class GeneratedTokenizer : public ::testing::Test {
protected:
    void SetUp() override
    {
        dir = test::writeTinyModel("tok");
        tok = std::make_unique<Tokenizer>(Tokenizer::fromDirectory(dir));
    }
    std::string dir;
    std::unique_ptr<Tokenizer> tok;
};

TEST_F(GeneratedTokenizer, ByteLevelRoundTripsAnyText)
{
    for (std::string s : {"Hello, world!", "  spaces  and\ttabs\n\nnewlines", "日本語 😀 e\u0301", "it's 12345 o'clock"}) {
        auto ids = tok->encode(s, false);
        EXPECT_EQ(tok->decode(ids), s);
        StreamDecoder d(*tok);
        std::string streamed;
        for (int id : ids)
            streamed += d.push(id);
        streamed += d.flush();
        EXPECT_EQ(streamed, s);
    }
    // merges make common words shorter than their bytes
    EXPECT_LT(tok->encode("Once upon a time there was a little girl", false).size(), 20u);
}

TEST_F(GeneratedTokenizer, SpecialTokensAndMask)
{
    auto bos = tok->tokenToId("<|begin_of_text|>");
    auto imStart = tok->tokenToId("<|im_start|>");
    ASSERT_TRUE(bos && imStart);
    auto ids = tok->encode("hi", true);
    EXPECT_EQ(ids.front(), *bos); // the post-processor's BOS
    std::string text = "<|im_start|>x";
    auto special = tok->encode(text, false);
    EXPECT_EQ(special.front(), *imStart);
    std::vector<bool> none(text.size(), false);
    auto plain = tok->encode(text, false, &none);
    EXPECT_EQ(std::count(plain.begin(), plain.end(), *imStart), 0);
    EXPECT_EQ(tok->decode(plain), text);
    EXPECT_TRUE(tok->isSpecial(*imStart));
    std::vector<int> withMarker = {*imStart};
    auto hi = tok->encode("hi", false);
    withMarker.insert(withMarker.end(), hi.begin(), hi.end());
    EXPECT_EQ(tok->decode(withMarker, /*skipSpecial=*/true), "hi");
    EXPECT_EQ(tok->decode(withMarker), "<|im_start|>hi");
}

TEST_F(GeneratedTokenizer, InvalidUtf8InputIsReplacedNotDropped)
{
    std::string bad = "ok\xff\xfeok";
    auto ids = tok->encode(bad, false);
    EXPECT_EQ(tok->decode(ids), "ok\xEF\xBF\xBD\xEF\xBF\xBDok");
}

TEST(TokenizerErrors, MalformedFilesAreNamed)
{
    try {
        Tokenizer::fromJson("{", "", "x/tokenizer.json");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("x/tokenizer.json: malformed JSON"), std::string::npos);
    }
    try {
        Tokenizer::fromJson(R"({"model":{"type":"Unigram","vocab":[]}})", "", "t.json");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("Unigram"), std::string::npos);
    }
    try {
        Tokenizer::fromJson(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}})", "", "t.json");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("merge 'a b'"), std::string::npos);
    }
    EXPECT_THROW(Tokenizer::fromDirectory("/nonexistent-dir"), Error);
}

} // namespace

namespace {

// A GGUF file holding only a SentencePiece-style ("llama") vocabulary.
std::string spmVocabulary(const std::string& name, const std::vector<std::string>& tokens, const std::vector<double>& scores)
{
    const std::string file = test::makeTempDir("spm-vocab") + "/" + name;
    std::vector<int64_t> types(tokens.size(), 1);
    types[0] = 2;
    writeGguf(file,
              {{"tokenizer.ggml.model", ggufString("llama")},
               {"tokenizer.ggml.tokens", ggufStrings(tokens)},
               {"tokenizer.ggml.scores", ggufFloats(scores)},
               {"tokenizer.ggml.token_type", ggufInts(types)},
               {"tokenizer.ggml.add_bos_token", ggufBool(false)}},
              {});
    return file;
}

std::string gguffError(const std::string& file)
{
    try {
        Tokenizer::fromDirectory(file);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

} // namespace

// Found by an attacker's review of the GGUF vocabulary.
TEST(GgufVocabulary, HostileVocabulariesAreRefusedOrReadRight)
{
    // A second copy of a token: merges make the first id (the second had no text to decode to).
    const std::string dup = spmVocabulary("dup.gguf", {"<unk>", "\xE2\x96\x81", "a", "b", "ab", "ab", "\xE2\x96\x81" "ab"}, {0, -1, -2, -3, -4, -1, -5});
    const Tokenizer t = Tokenizer::fromDirectory(dup);
    const std::vector<int> ids = t.encode("ab ab", false);
    EXPECT_EQ(t.decode(ids), "ab ab");
    for (int id : ids)
        EXPECT_NE(id, 5);
    // A normal token of 2000 bytes: merges are tried at every split, quadratic in its length.
    EXPECT_NE(gguffError(spmVocabulary("long.gguf", {"<unk>", "a", std::string(2000, 'a')}, {0, -1, -2})).find("2000 bytes long"),
              std::string::npos);
    EXPECT_NE(gguffError(spmVocabulary("nan.gguf", {"<unk>", "a", "aa"}, {0, -1, std::nan("")})).find("not a number"), std::string::npos);
    EXPECT_NE(gguffError(spmVocabulary("utf8.gguf", {"<unk>", "a", "\xC3"}, {0, -1, -2})).find("token 2 is not valid UTF-8"), std::string::npos);
}
