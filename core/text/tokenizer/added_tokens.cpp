// SPDX-License-Identifier: MIT
// Tokenizer: added tokens and the post-processor, read from tokenizer.json, and encode: added tokens are split
// out of the text first, the text between them runs through the normalizer, pre-tokenizer and model, and the
// post-processor's ids go around it all.
#include "text/tokenizer/internal.h"

#include "base/error.h"
#include "base/unicode.h"

#include <algorithm>
#include <cctype>

namespace together {

using namespace tokenizer::detail;

void Tokenizer::Impl::readAddedTokens(const json& j)
{
    for (auto& a : j.value("added_tokens", json::array())) {
        AddedToken tok;
        tok.id = tokenId(a.at("id"), "added token");
        tok.content = a.at("content").get<std::string>();
        tok.special = a.value("special", false);
        tok.lstrip = a.value("lstrip", false);
        tok.rstrip = a.value("rstrip", false);
        tok.singleWord = a.value("single_word", false);
        if (tok.content.empty())
            continue;
        if (tok.content.size() > kMaxAddedTokenBytes)
            throw Error("added token " + std::to_string(tok.id) + " is " + std::to_string(tok.content.size()) +
                        " bytes long (the limit is " + std::to_string(kMaxAddedTokenBytes) + ")");
        addedById[tok.id] = added.size();
        addedByContent[tok.content] = tok.id;
        idToTokenStr[static_cast<size_t>(tok.id)] = tok.content;
        added.push_back(tok);
    }
    addedSorted.resize(added.size());
    for (size_t i = 0; i < added.size(); ++i)
        addedSorted[i] = static_cast<uint32_t>(i);
    // Bytes compared as unsigned, as matchAdded narrows by them.
    std::stable_sort(addedSorted.begin(), addedSorted.end(), [&](uint32_t x, uint32_t y) {
        const std::string &a = added[x].content, &b = added[y].content;
        return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(),
                                            [](char p, char q) { return static_cast<unsigned char>(p) < static_cast<unsigned char>(q); });
    });
}

// TemplateProcessing's special tokens around the single sequence. Their ids must name tokens of this vocabulary
// (they are decoded like any other).
void Tokenizer::Impl::readPostProcessor(const json& p, int depth)
{
    auto checkedId = [&](int id) {
        if (static_cast<size_t>(id) >= idToTokenStr.size())
            throw Error("post_processor uses token id " + std::to_string(id) + ", outside the vocabulary (size " +
                        std::to_string(idToTokenStr.size()) + ")");
        return id;
    };
    if (p.is_null())
        return;
    std::string ptype = p.value("type", "");
    if (ptype == "Sequence") {
        checkSequenceDepth(depth, "post_processor");
        for (auto& x : p.at("processors"))
            readPostProcessor(x, depth + 1);
    } else if (ptype == "TemplateProcessing") {
        bool seenSeq = false;
        for (auto& item : p.at("single")) {
            if (item.contains("Sequence")) {
                seenSeq = true;
                continue;
            }
            std::string name = item.at("SpecialToken").at("id").get<std::string>();
            const json& st = p.at("special_tokens").at(name);
            for (auto& id : st.at("ids"))
                (seenSeq ? suffixIds : prefixIds).push_back(checkedId(tokenId(id, "post_processor token " + name)));
        }
    } else if (ptype == "ByteLevel") {
        // offsets only; ids unchanged
    } else if (ptype == "BertProcessing" || ptype == "RobertaProcessing") {
        auto cls = p.at("cls"), sep = p.at("sep");
        prefixIds.push_back(checkedId(tokenId(cls.at(1), "post_processor cls")));
        suffixIds.push_back(checkedId(tokenId(sep.at(1), "post_processor sep")));
    } else {
        throw Error("post_processor type '" + ptype + "' is not supported");
    }
}

void Tokenizer::Impl::matchAdded(std::string_view text, size_t i, AddedMatches& out) const
{
    out.runs.clear();
    out.tokens.clear();
    size_t lo = 0, hi = addedSorted.size();
    for (size_t d = 0; lo < hi; ++d) {
        // Sorted by content, the tokens of length d come first in a run sharing its first d bytes.
        size_t end = lo;
        while (end < hi && added[addedSorted[end]].content.size() == d)
            ++end;
        if (end > lo)
            out.runs.emplace_back(lo, end);
        lo = end;
        if (lo == hi || i + d >= text.size())
            break;
        const auto c = static_cast<unsigned char>(text[i + d]);
        auto byteAt = [&](uint32_t idx) { return static_cast<unsigned char>(added[idx].content[d]); };
        const auto first = std::partition_point(addedSorted.begin() + lo, addedSorted.begin() + hi,
                                                [&](uint32_t idx) { return byteAt(idx) < c; });
        const auto last = std::partition_point(first, addedSorted.begin() + hi, [&](uint32_t idx) { return byteAt(idx) == c; });
        lo = first - addedSorted.begin();
        hi = last - addedSorted.begin();
    }
    for (auto r = out.runs.rbegin(); r != out.runs.rend(); ++r)
        for (size_t k = r->first; k < r->second; ++k)
            out.tokens.push_back(addedSorted[k]);
}

void Tokenizer::Impl::encodeChunk(const std::string& chunk, bool firstChunk, std::vector<int>& out) const
{
    std::string text = normalizer ? normalizer->apply(chunk, kMaxNormalizedGrowth * chunk.size() + 4096) : chunk;
    if (text.empty())
        return;
    std::vector<std::string> words{text};
    if (preTokenizer)
        words = preTokenizer->apply(std::move(words), firstChunk);
    for (auto& w : words)
        bpeWord(w, out);
}

std::vector<int> Tokenizer::encode(std::string_view rawText, bool addSpecialTokens, const std::vector<bool>* specialAllowed) const
{
    // Invalid UTF-8 becomes U+FFFD first, as text reaching a Hugging Face tokenizer is always valid Unicode.
    // Replacement changes byte offsets, so the special-token mask is then dropped to "nowhere allowed" for
    // safety rather than misaligned.
    std::string cleaned = unicode::sanitizeUtf8(rawText);
    std::vector<bool> noneAllowed;
    if (cleaned.size() != rawText.size() && specialAllowed) {
        noneAllowed.assign(cleaned.size(), false);
        specialAllowed = &noneAllowed;
    }
    std::string_view text = cleaned;
    std::vector<int> out;
    if (addSpecialTokens)
        out = m->prefixIds;
    auto isWordChar = [](unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; };
    size_t chunkStart = 0;
    bool firstChunk = true;
    size_t i = 0;
    Impl::AddedMatches candidates;
    while (i < text.size()) {
        const AddedToken* hit = nullptr;
        m->matchAdded(text, i, candidates);
        for (uint32_t idx : candidates.tokens) {
            const AddedToken& a = m->added[idx];
            if (a.special && specialAllowed) {
                bool ok = true;
                for (size_t k = i; k < i + a.content.size() && ok; ++k)
                    ok = (*specialAllowed)[k];
                if (!ok)
                    continue;
            }
            if (a.singleWord) {
                bool before = i > 0 && isWordChar(static_cast<unsigned char>(text[i - 1]));
                size_t e = i + a.content.size();
                bool after = e < text.size() && isWordChar(static_cast<unsigned char>(text[e]));
                if (before || after)
                    continue;
            }
            hit = &a;
            break;
        }
        if (!hit) {
            ++i;
            continue;
        }
        size_t chunkEnd = i;
        if (hit->lstrip)
            while (chunkEnd > chunkStart && unicode::isSpaceAscii(text[chunkEnd - 1]))
                --chunkEnd;
        m->encodeChunk(std::string(text.substr(chunkStart, chunkEnd - chunkStart)), firstChunk, out);
        out.push_back(hit->id);
        firstChunk = false;
        i += hit->content.size();
        if (hit->rstrip)
            while (i < text.size() && unicode::isSpaceAscii(text[i]))
                ++i;
        chunkStart = i;
    }
    m->encodeChunk(std::string(text.substr(chunkStart)), firstChunk, out);
    if (addSpecialTokens)
        out.insert(out.end(), m->suffixIds.begin(), m->suffixIds.end());
    return out;
}

} // namespace together
