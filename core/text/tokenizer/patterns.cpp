// SPDX-License-Identifier: MIT
// Tokenizer: tokenizer.json's String and Regex patterns, which normalizers and pre-tokenizers match.
#include "text/tokenizer/internal.h"

#include "base/error.h"
#include "base/unicode.h"

namespace together::tokenizer::detail {

Regex::Regex(const std::string& pattern)
{
    int err = 0;
    PCRE2_SIZE offset = 0;
    // The pattern comes from the downloaded file: PCRE2 checks it is valid UTF-8 (with NO_UTF_CHECK an
    // invalid one is undefined behaviour).
    m_code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err, &offset,
                           nullptr);
    if (!m_code) {
        PCRE2_UCHAR buf[256];
        pcre2_get_error_message(err, buf, sizeof buf);
        throw Error("regex '" + pattern + "' does not compile at offset " + std::to_string(offset) + ": " +
                    reinterpret_cast<char*>(buf));
    }
    pcre2_jit_compile(m_code, PCRE2_JIT_COMPLETE);
    // A pattern that backtracks without end (a file's "(a+)+$") fails a match with an error instead of
    // running for minutes: real pre-tokenizer patterns take a few hundred steps per match.
    m_context = pcre2_match_context_create(nullptr);
    if (!m_context)
        throw std::bad_alloc();
    pcre2_set_match_limit(m_context, 1000000);
    pcre2_set_depth_limit(m_context, 10000);
}

Regex::~Regex()
{
    pcre2_match_context_free(m_context);
    pcre2_code_free(m_code);
}

std::vector<std::pair<size_t, size_t>> Regex::findAll(std::string_view s) const
{
    std::vector<std::pair<size_t, size_t>> out;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(m_code, nullptr);
    size_t start = 0;
    // Subjects are valid UTF-8 (encode() sanitizes its input), so skip PCRE2's per-call validity scan,
    // which would make a long text quadratic.
    while (start <= s.size()) {
        int rc = pcre2_match(m_code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start, PCRE2_NO_UTF_CHECK, md, m_context);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            pcre2_match_data_free(md);
            PCRE2_UCHAR buf[256];
            pcre2_get_error_message(rc, buf, sizeof buf);
            throw Error(std::string("tokenizer: a pre-tokenizer regex failed on this text: ") + reinterpret_cast<char*>(buf));
        }
        PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        size_t b = ov[0], e = ov[1];
        if (e == b) { // empty match: step over one code point
            if (b >= s.size())
                break;
            start = b + unicode::utf8SequenceLength(static_cast<unsigned char>(s[b]));
            continue;
        }
        out.emplace_back(b, e);
        start = e;
    }
    pcre2_match_data_free(md);
    return out;
}

std::vector<std::pair<size_t, size_t>> findLiteral(std::string_view s, const std::string& lit)
{
    std::vector<std::pair<size_t, size_t>> out;
    if (lit.empty())
        return out;
    size_t pos = 0;
    while ((pos = s.find(lit, pos)) != std::string_view::npos) {
        out.emplace_back(pos, pos + lit.size());
        pos += lit.size();
    }
    return out;
}

void readPattern(const json& p, std::string& literal, std::unique_ptr<Regex>& regex, const std::string& where)
{
    if (p.contains("String"))
        literal = p.at("String").get<std::string>();
    else if (p.contains("Regex"))
        regex = std::make_unique<Regex>(p.at("Regex").get<std::string>());
    else
        throw Error(where + ": pattern must be String or Regex");
}

} // namespace together::tokenizer::detail
