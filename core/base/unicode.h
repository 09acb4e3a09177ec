// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace together::unicode {

// Length of the UTF-8 sequence a lead byte starts (1 for an invalid lead byte, so scans always advance).
int utf8SequenceLength(unsigned char lead);
void appendUtf8(std::string& out, char32_t cp);
// Splits into code points' UTF-8 strings; invalid bytes come out one by one.
std::vector<std::string> splitCodepoints(std::string_view s);
// The same code points without building them: where the one starting at byte `pos` ends (an invalid byte is one
// code point of its own, as above; s.size() at or past the end), how many there are, and the byte offset of
// the `index`th (s.size() when there are no more).
size_t nextCodepoint(std::string_view s, size_t pos);
size_t countCodepoints(std::string_view s);
size_t codepointOffset(std::string_view s, size_t index);
// Replaces invalid UTF-8 with U+FFFD, as decoders do.
std::string sanitizeUtf8(std::string_view s);
// Bytes at the end of `s` that start a UTF-8 sequence not yet complete (0 if none): a streaming decoder holds
// them back until the rest arrives.
size_t incompleteUtf8Tail(std::string_view s);

// GPT-2's byte-level alphabet: every byte is mapped to a printable code point, so BPE works on strings.
const std::string& byteToUnicode(unsigned char b);
// Inverse; returns -1 for a code point outside the alphabet.
int unicodeToByte(char32_t cp);
char32_t decodeCodepoint(std::string_view s, size_t& pos);

std::string normalizeNfc(std::string_view s);
std::string normalizeNfkc(std::string_view s);
std::string toLowerUnicode(std::string_view s);

bool isSpaceAscii(char c);

} // namespace together::unicode
