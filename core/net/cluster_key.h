// SPDX-License-Identifier: MIT
#pragma once

#include "base/files.h"

#include <string>
#include <string_view>

namespace together {

// The one secret of a cluster: 256 random bits. Every credential (the TLS certificates of every process)
// is derived from it (core/credentials.h); the key itself never crosses the network.
//
// Typeable form: 52 Crockford base32 symbols for the 256 bits (the last symbol's 4 low bits are zero) and
// 4 check symbols (20 bits of SHA-256 over a label and the key), in groups of four:
//   "3QK7-...-W2ZC" (14 groups). Parsing ignores case, spaces and dashes, reads O as 0 and I/L as 1, and
// refuses a key whose check symbols do not match (a typo), naming the problem.
class ClusterKey {
public:
    static ClusterKey generate();
    // The typeable form (or, for key files written by earlier versions, 64 hex digits).
    static ClusterKey fromText(std::string_view text);
    // A key file: the typeable form on its first non-comment line; refused when group or others can read it.
    static ClusterKey fromFile(const std::string& path);
    // Writes the key file with mode 0600, atomically (base/files.h); creates missing folders 0700. Refuses to
    // overwrite an existing file unless `existing` is Replace (a new key in place of the old one).
    void writeFile(const std::string& path, AtomicFile::Existing existing = AtomicFile::Existing::Keep) const;

    std::string text() const;
    // A short public name of the key: the first 8 bytes of HMAC-SHA256(key, a fixed label), as 16 hex digits.
    // Beacons carry it so a master can tell "another cluster key" without a connection; it reveals nothing
    // usable about the key.
    std::string fingerprint() const;
    const std::string& bytes() const { return m_bytes; }

private:
    std::string m_bytes;
};

// $config/cluster.key (core/user_dirs.h): where keygen --out defaults, the worker stores a typed key, and the
// master looks when no --key-file is given.
std::string defaultKeyFile();

// Asks for the key on the controlling terminal (up to three tries on a typo). Throws Error when there is no
// terminal.
ClusterKey readKeyFromTerminal(const std::string& prompt);

} // namespace together
