// SPDX-License-Identifier: MIT
// Tokenizer: the BPE model. Its vocabulary and merges as tokenizer.json gives them, and a word into ids: merges
// applied by rank on a heap, byte fallback, unknown tokens.
#include "text/tokenizer/internal.h"

#include "base/error.h"
#include "base/unicode.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <queue>

namespace together {

using namespace tokenizer::detail;

// The id table spans the added tokens too, so their ids are read (and checked) here with the vocabulary's.
void Tokenizer::Impl::readModel(const json& j)
{
    const json& model = j.at("model");
    std::string type = model.value("type", "BPE");
    if (type != "BPE")
        throw Error("tokenizer model type '" + type + "' is not supported (only BPE)");
    int maxId = -1;
    for (auto& [tok, id] : model.at("vocab").items()) {
        const int i = tokenId(id, "vocabulary token '" + tok + "'");
        vocab[tok] = i;
        maxId = std::max(maxId, i);
    }
    for (auto& a : j.value("added_tokens", json::array()))
        maxId = std::max(maxId, tokenId(a.at("id"), "added token " + a.value("content", json("?")).dump()));
    idToTokenStr.assign(static_cast<size_t>(maxId + 1), std::string());
    for (auto& [tok, id] : vocab)
        idToTokenStr[static_cast<size_t>(id)] = tok;
    byteFallback = model.value("byte_fallback", false);
    ignoreMerges = model.value("ignore_merges", false);
    fuseUnk = model.value("fuse_unk", false);
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
        auto it = vocab.find(model["unk_token"].get<std::string>());
        if (it != vocab.end())
            unkId = it->second;
    }
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        auto it = vocab.find(name);
        byteTokenIds[b] = it == vocab.end() ? -1 : it->second;
    }
    int rank = 0;
    for (auto& mg : model.at("merges")) {
        std::string a, b;
        if (mg.is_string()) {
            std::string s = mg.get<std::string>();
            auto sp = s.find(' ', 1); // a merge's left side may itself be a lone space in some vocabularies
            if (sp == std::string::npos)
                throw Error("merge '" + s + "' has no space");
            a = s.substr(0, sp);
            b = s.substr(sp + 1);
        } else {
            a = mg.at(0).get<std::string>();
            b = mg.at(1).get<std::string>();
        }
        auto ia = vocab.find(a), ib = vocab.find(b), im = vocab.find(a + b);
        if (ia == vocab.end() || ib == vocab.end() || im == vocab.end())
            throw Error("merge '" + a + " " + b + "' uses tokens missing from the vocabulary");
        merges.emplace(pairKey(ia->second, ib->second), Merge{rank++, im->second});
    }
}

void Tokenizer::Impl::bpeWord(const std::string& word, std::vector<int>& out) const
{
    if (ignoreMerges) {
        if (auto it = vocab.find(word); it != vocab.end()) {
            out.push_back(it->second);
            return;
        }
    }
    const bool cacheable = word.size() <= 64;
    if (cacheable) {
        std::lock_guard lock(cacheMutex);
        if (auto it = wordCache.find(word); it != wordCache.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    // Symbols: one per code point, or per byte via <0xXX> where the code point is not in the vocabulary.
    struct Sym {
        int id;
        int prev, next;
        bool alive;
    };
    std::vector<Sym> syms;
    std::vector<int> result;
    bool lastUnk = false;
    auto pushSym = [&](int id) {
        int idx = static_cast<int>(syms.size());
        syms.push_back({id, idx - 1, idx + 1, true});
    };
    for (auto& cp : unicode::splitCodepoints(word)) {
        if (auto it = vocab.find(cp); it != vocab.end()) {
            pushSym(it->second);
            lastUnk = false;
            continue;
        }
        if (byteFallback) {
            bool all = true;
            for (unsigned char b : cp)
                all = all && byteTokenIds[b] >= 0;
            if (all) {
                for (unsigned char b : cp)
                    pushSym(byteTokenIds[b]);
                lastUnk = false;
                continue;
            }
        }
        if (!unkId)
            throw Error("text contains '" + cp + "', which the vocabulary cannot represent (no unk token)");
        if (!(fuseUnk && lastUnk))
            pushSym(*unkId);
        lastUnk = true;
    }
    if (!syms.empty())
        syms.back().next = -1;

    struct Cand {
        int rank;
        int left;
        int leftId, rightId;
        bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto consider = [&](int left) {
        if (left < 0)
            return;
        int right = syms[left].next;
        if (right < 0)
            return;
        auto it = merges.find(pairKey(syms[left].id, syms[right].id));
        if (it != merges.end())
            heap.push({it->second.rank, left, syms[left].id, syms[right].id});
    };
    for (int i = 0; i + 1 < static_cast<int>(syms.size()); ++i)
        consider(i);
    while (!heap.empty()) {
        Cand c = heap.top();
        heap.pop();
        Sym& l = syms[c.left];
        if (!l.alive || l.id != c.leftId || l.next < 0)
            continue;
        Sym& r = syms[l.next];
        if (!r.alive || r.id != c.rightId)
            continue;
        l.id = merges.at(pairKey(c.leftId, c.rightId)).merged;
        r.alive = false;
        l.next = r.next;
        if (r.next >= 0)
            syms[r.next].prev = c.left;
        consider(l.prev);
        consider(c.left);
    }
    for (int i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next)
        result.push_back(syms[i].id);
    out.insert(out.end(), result.begin(), result.end());
    if (cacheable) {
        std::lock_guard lock(cacheMutex);
        if (wordCache.size() > 200000)
            wordCache.clear();
        wordCache.emplace(word, std::move(result));
    }
}

} // namespace together
