// SPDX-License-Identifier: MIT
#include "base/unicode.h"

#include "base/error.h"

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <array>

namespace together::unicode {

int utf8SequenceLength(unsigned char lead)
{
    if (lead < 0x80)
        return 1;
    if ((lead >> 5) == 0x6)
        return 2;
    if ((lead >> 4) == 0xe)
        return 3;
    if ((lead >> 3) == 0x1e)
        return 4;
    return 1;
}

void appendUtf8(std::string& out, char32_t cp)
{
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xe0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else {
        out.push_back(static_cast<char>(0xf0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
}

namespace {

// Decodes one valid sequence at pos; returns its length, or 0 when the bytes there are not valid UTF-8.
int validSequenceAt(std::string_view s, size_t pos, char32_t* cpOut)
{
    unsigned char b = static_cast<unsigned char>(s[pos]);
    int len = utf8SequenceLength(b);
    if (len == 1)
        return b < 0x80 ? (cpOut ? (*cpOut = b, 1) : 1) : 0;
    if (pos + len > s.size())
        return 0;
    char32_t cp = b & (0x7f >> len);
    for (int i = 1; i < len; ++i) {
        unsigned char c = static_cast<unsigned char>(s[pos + i]);
        if ((c & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (c & 0x3f);
    }
    static const char32_t minForLen[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < minForLen[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    if (cpOut)
        *cpOut = cp;
    return len;
}

} // namespace

char32_t decodeCodepoint(std::string_view s, size_t& pos)
{
    char32_t cp = 0xfffd;
    int len = validSequenceAt(s, pos, &cp);
    if (len == 0) {
        pos += 1;
        return 0xfffd;
    }
    pos += len;
    return cp;
}

size_t nextCodepoint(std::string_view s, size_t pos)
{
    if (pos >= s.size())
        return s.size();
    const int len = validSequenceAt(s, pos, nullptr);
    return pos + (len == 0 ? 1 : static_cast<size_t>(len));
}

size_t countCodepoints(std::string_view s)
{
    size_t n = 0;
    for (size_t i = 0; i < s.size(); i = nextCodepoint(s, i))
        ++n;
    return n;
}

size_t codepointOffset(std::string_view s, size_t index)
{
    size_t i = 0;
    for (; i < s.size() && index > 0; --index)
        i = nextCodepoint(s, i);
    return i;
}

std::vector<std::string> splitCodepoints(std::string_view s)
{
    std::vector<std::string> out;
    for (size_t i = 0; i < s.size();) {
        const size_t end = nextCodepoint(s, i);
        out.emplace_back(s.substr(i, end - i));
        i = end;
    }
    return out;
}

std::string sanitizeUtf8(std::string_view s)
{
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
        int len = validSequenceAt(s, i, nullptr);
        if (len == 0) {
            out += "\xEF\xBF\xBD";
            i += 1;
        } else {
            out.append(s.substr(i, len));
            i += len;
        }
    }
    return out;
}

size_t incompleteUtf8Tail(std::string_view s)
{
    // Look back at most 3 bytes for a lead byte whose sequence runs past the end.
    for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
        unsigned char c = static_cast<unsigned char>(s[s.size() - back]);
        if ((c & 0xc0) == 0x80)
            continue; // continuation byte: keep looking for the lead
        int len = utf8SequenceLength(c);
        if (len > 1 && static_cast<size_t>(len) > back) {
            // Only hold back if what we have so far could still become valid.
            for (size_t k = 1; k < back; ++k)
                if ((static_cast<unsigned char>(s[s.size() - back + k]) & 0xc0) != 0x80)
                    return 0;
            return back;
        }
        return 0;
    }
    return 0;
}

namespace {

struct ByteTables {
    std::array<std::string, 256> toUnicode;
    std::array<int, 0x200> fromUnicode; // the alphabet lies below U+0200
    ByteTables()
    {
        fromUnicode.fill(-1);
        // Printable Latin-1 bytes map to themselves; the rest are shifted to U+0100 and up, in byte order.
        int next = 0;
        for (int b = 0; b < 256; ++b) {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
            char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++);
            appendUtf8(toUnicode[b], cp);
            fromUnicode[cp] = b;
        }
    }
};

const ByteTables& tables()
{
    static const ByteTables t;
    return t;
}

std::string icuNormalize(std::string_view s, bool compat)
{
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* n = compat ? icu::Normalizer2::getNFKCInstance(status) : icu::Normalizer2::getNFCInstance(status);
    if (U_FAILURE(status))
        throw Error("ICU normalizer unavailable");
    icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
    icu::UnicodeString r = n->normalize(u, status);
    if (U_FAILURE(status))
        throw Error("ICU normalization failed");
    std::string out;
    r.toUTF8String(out);
    return out;
}

} // namespace

const std::string& byteToUnicode(unsigned char b) { return tables().toUnicode[b]; }

int unicodeToByte(char32_t cp) { return cp < 0x200 ? tables().fromUnicode[cp] : -1; }

std::string normalizeNfc(std::string_view s) { return icuNormalize(s, false); }
std::string normalizeNfkc(std::string_view s) { return icuNormalize(s, true); }

std::string toLowerUnicode(std::string_view s)
{
    icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
    u.toLower();
    std::string out;
    u.toUTF8String(out);
    return out;
}

bool isSpaceAscii(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

} // namespace together::unicode
