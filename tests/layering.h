// SPDX-License-Identifier: MIT
#pragma once

// The layering check (tests/test_layering.cpp): reads cmake/layers.txt, the table the build also reads, and
// checks every #include of every source file of the tree against it. A file may include headers of its own
// library, of the libraries its row names, and of the packages its row names; the include is resolved the way
// the compiler could resolve it (beside the file, under a library's include root, from the repository's root), so
// the spelling does not matter: "net/rpc.h", <net/rpc.h>, "../net/rpc.h", "core/net/rpc.h", a symlink to it, a
// line continuation or a comment inside the directive all name core/net/rpc.h.

#include <map>
#include <set>
#include <string>
#include <vector>

namespace together::layering {

struct Library {
    std::string name;
    std::string folder; // relative to the repository, no trailing slash
    std::set<std::string> uses;     // libraries
    std::set<std::string> packages; // packages
};

struct Package {
    std::string name;
    std::vector<std::string> targets;
    std::vector<std::string> headers; // "dir/" prefixes, exact names, or "Q*" (Qt's headers)
};

struct Table {
    std::vector<Library> libraries;
    std::map<std::string, Package> packages;
    std::map<std::string, std::string> banned; // header -> why

    // Throws Error naming the line of a malformed table.
    static Table read(const std::string& path);
    const Library* library(const std::string& name) const;
    // The library a file (relative to the repository) belongs to: the longest folder that holds it; null for none.
    const Library* libraryOf(const std::string& relativePath) const;
    // Every library reachable from `name` over "uses" (not counting itself).
    std::set<std::string> closure(const std::string& name) const;
    // A cycle of "uses" ("a -> b -> a"), or "" when there is none.
    std::string cycle() const;
};

struct Violation {
    std::string file; // relative to the repository
    int line = 0;
    std::string include; // the directive as written (continuations joined)
    std::string why;
};
std::string describe(const Violation& v);

// Checks every source file (.h .hpp .cpp .cc .inc) under the table's folders of the repository at `root`.
std::vector<Violation> check(const std::string& root, const Table& table);

// The libraries and their "may use" sets as docs/ARCHITECTURE.md's table of libraries lists them (the first
// Markdown table whose first column is "library"): name -> uses.
std::map<std::string, std::set<std::string>> documentedUses(const std::string& markdown);

} // namespace together::layering
