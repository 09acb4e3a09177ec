// SPDX-License-Identifier: MIT
// Chat templates: the lexer. Source -> text segments and tokens, with Jinja's whitespace rules.
#include "text/jinja/internal.h"

#include <cstring>

namespace together::jinja::detail {

[[noreturn]] void syntaxError(int line, const std::string& msg)
{
    throw Error("chat template line " + std::to_string(line) + ": " + msg);
}

namespace {

std::vector<Token> lexExpression(const std::string& src, int line)
{
    std::vector<Token> out;
    size_t i = 0;
    while (i < src.size()) {
        char c = src[i];
        if (c == '\n') {
            ++line;
            ++i;
            continue;
        }
        if (std::isspace(static_cast<unsigned char>(c))) {
            ++i;
            continue;
        }
        if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
            size_t j = i;
            while (j < src.size() && (std::isalnum(static_cast<unsigned char>(src[j])) || src[j] == '_'))
                ++j;
            out.push_back({Tok::Name, src.substr(i, j - i), line});
            i = j;
            continue;
        }
        if (std::isdigit(static_cast<unsigned char>(c))) {
            size_t j = i;
            bool isFloat = false;
            while (j < src.size() && (std::isdigit(static_cast<unsigned char>(src[j])) || src[j] == '_'))
                ++j;
            if (j + 1 < src.size() && src[j] == '.' && std::isdigit(static_cast<unsigned char>(src[j + 1]))) {
                isFloat = true;
                ++j;
                while (j < src.size() && std::isdigit(static_cast<unsigned char>(src[j])))
                    ++j;
            }
            std::string num = src.substr(i, j - i);
            num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
            out.push_back({isFloat ? Tok::Float : Tok::Int, num, line});
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            std::string s;
            size_t j = i + 1;
            while (j < src.size() && src[j] != c) {
                if (src[j] == '\\' && j + 1 < src.size()) {
                    char e = src[j + 1];
                    switch (e) {
                    case 'n':
                        s += '\n';
                        break;
                    case 't':
                        s += '\t';
                        break;
                    case 'r':
                        s += '\r';
                        break;
                    case '\\':
                        s += '\\';
                        break;
                    case '\'':
                        s += '\'';
                        break;
                    case '"':
                        s += '"';
                        break;
                    default:
                        s += '\\';
                        s += e;
                    }
                    j += 2;
                    continue;
                }
                if (src[j] == '\n')
                    ++line;
                s += src[j++];
            }
            if (j >= src.size())
                syntaxError(line, "unterminated string literal");
            out.push_back({Tok::String, s, line});
            i = j + 1;
            continue;
        }
        static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                    "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", "="};
        bool matched = false;
        for (const char* op : ops) {
            size_t n = std::strlen(op);
            if (src.compare(i, n, op) == 0) {
                out.push_back({Tok::Op, op, line});
                i += n;
                matched = true;
                break;
            }
        }
        if (!matched)
            syntaxError(line, std::string("unexpected character '") + c + "'");
    }
    out.push_back({Tok::End, "", line});
    return out;
}

} // namespace

// Splits the source into text and tags, applying whitespace control ({%- -%}) and HF's environment settings:
// trim_blocks (drop the newline after a block or comment tag) and lstrip_blocks (drop spaces and tabs before
// a block or comment tag at the start of a line).
std::vector<Segment> lex(const std::string& src)
{
    std::vector<Segment> segs;
    size_t i = 0;
    int line = 1;
    bool trimNextNewline = false;  // trim_blocks
    bool stripNextLeading = false; // "-%}" / "-}}"
    while (i <= src.size()) {
        size_t open = src.find('{', i);
        while (open != std::string::npos && open + 1 < src.size() && src[open + 1] != '{' && src[open + 1] != '%' &&
               src[open + 1] != '#')
            open = src.find('{', open + 1);
        if (open != std::string::npos && open + 1 >= src.size())
            open = std::string::npos;
        std::string text = src.substr(i, open == std::string::npos ? std::string::npos : open - i);
        char kind = open == std::string::npos ? 0 : src[open + 1];
        bool leftTrim = open != std::string::npos && open + 2 < src.size() && src[open + 2] == '-';
        bool leftKeep = open != std::string::npos && open + 2 < src.size() && src[open + 2] == '+';
        if (trimNextNewline && !text.empty()) {
            if (text[0] == '\n')
                text.erase(0, 1);
            else if (text.size() > 1 && text[0] == '\r' && text[1] == '\n')
                text.erase(0, 2);
        }
        if (stripNextLeading) {
            size_t k = 0;
            while (k < text.size() && std::isspace(static_cast<unsigned char>(text[k])))
                ++k;
            text.erase(0, k);
        }
        if (leftTrim) {
            while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
                text.pop_back();
        } else if ((kind == '%' || kind == '#') && !leftKeep) {
            // lstrip_blocks: only when nothing but spaces/tabs stands between the line start and the tag
            std::string original = src.substr(i, open - i);
            size_t nl = original.rfind('\n');
            size_t k = nl == std::string::npos ? 0 : nl + 1;
            bool onlyBlanks = original.find_first_not_of(" \t", k) == std::string::npos;
            bool atLineStart = nl != std::string::npos || i == 0 || src[i - 1] == '\n';
            if (onlyBlanks && atLineStart)
                while (!text.empty() && (text.back() == ' ' || text.back() == '\t'))
                    text.pop_back();
        }
        int textLine = line;
        line += static_cast<int>(std::count(src.begin() + static_cast<long>(i),
                                            open == std::string::npos ? src.end() : src.begin() + static_cast<long>(open), '\n'));
        if (!text.empty())
            segs.push_back({Segment::Text, text, {}, textLine});
        if (open == std::string::npos)
            break;
        std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
        size_t bodyStart = open + 2 + ((leftTrim || leftKeep) ? 1 : 0);
        size_t end = src.find(close, bodyStart);
        if (end == std::string::npos)
            syntaxError(line, std::string("unclosed '{") + kind + "'");
        std::string body = src.substr(bodyStart, end - bodyStart);
        bool rightTrim = !body.empty() && body.back() == '-';
        if (rightTrim || (!body.empty() && body.back() == '+'))
            body.pop_back();
        int tagLine = line;
        line += static_cast<int>(std::count(body.begin(), body.end(), '\n'));
        if (kind == '{')
            segs.push_back({Segment::Expr, {}, lexExpression(body, tagLine), tagLine});
        else if (kind == '%')
            segs.push_back({Segment::Stmt, {}, lexExpression(body, tagLine), tagLine});
        trimNextNewline = kind != '{';
        stripNextLeading = rightTrim;
        i = end + 2;
    }
    return segs;
}

} // namespace together::jinja::detail
