// SPDX-License-Identifier: MIT
// The layering of the tree: cmake/layers.txt (the table the build reads) against every #include, the table's own
// rules, the build files and docs/ARCHITECTURE.md.
#include "layering.h"
#include "test_support.h"

#include "base/error.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;
using namespace together;
using namespace together::layering;

namespace {

const std::string kRoot = TOGETHER_SOURCE_DIR;

Table table() { return Table::read(kRoot + "/cmake/layers.txt"); }

std::string report(const std::vector<Violation>& vs)
{
    std::string s;
    for (auto& v : vs)
        s += "  " + describe(v) + "\n";
    return s;
}

std::string readAll(const fs::path& p)
{
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void append(const fs::path& p, const std::string& text)
{
    std::ofstream out(p, std::ios::app | std::ios::binary);
    out << text;
}

// A copy of the tree's sources and table, to break on purpose.
std::string scratchCopy()
{
    const std::string dir = test::makeTempDir("layering");
    for (const char* top : {"cmake", "core", "worker", "app", "fuzz"})
        fs::copy(kRoot + "/" + top, dir + "/" + top, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
    return dir;
}

} // namespace

TEST(Layering, TheTreeFollowsTheTable)
{
    const auto violations = check(kRoot, table());
    EXPECT_TRUE(violations.empty()) << "includes that cmake/layers.txt does not allow:\n" << report(violations);
}

// The architecture's rules, as properties of the table: what no later edit of a row may undo.
TEST(Layering, TheTableKeepsTheLayersApart)
{
    const Table t = table();
    EXPECT_EQ(t.cycle(), "") << "the libraries' uses must not form a cycle";
    auto closure = [&](const std::string& n) { return t.closure(n); };
    auto lib = [&](const std::string& n) {
        const Library* l = t.library(n);
        EXPECT_NE(l, nullptr) << n;
        return l ? *l : Library{};
    };
    EXPECT_TRUE(lib("base").uses.empty()) << "base uses nothing of ours";
    // base <- model <- wire <- net <- master
    EXPECT_TRUE(closure("model") == std::set<std::string>{"base"});
    EXPECT_TRUE(closure("wire").count("model") && !closure("wire").count("net"));
    EXPECT_TRUE(closure("net").count("wire") && !closure("net").count("master"));
    EXPECT_TRUE(closure("master").count("net") && closure("master").count("text"));
    // text never reaches the network, nor wire's messages
    for (const char* far : {"net", "wire", "master"})
        EXPECT_FALSE(closure("text").count(far)) << "text must not depend on " << far;
    EXPECT_FALSE(lib("text").packages.count("grpc") || lib("text").packages.count("rpc") || lib("text").packages.count("messages"));
    // core never reaches the worker's or the app's libraries, Qt or libtorch
    for (const char* core : {"base", "model", "text", "wire", "net", "master"}) {
        for (auto& l : t.libraries) {
            if (l.folder.rfind("worker", 0) == 0 || l.folder.rfind("app", 0) == 0) {
                EXPECT_FALSE(closure(core).count(l.name)) << core << " reaches " << l.name;
            }
            if (l.name == core || closure(core).count(l.name)) {
                for (const char* p : {"qt-core", "qt-widgets", "torch", "gloo"})
                    EXPECT_FALSE(l.packages.count(p)) << core << " reaches " << p << " through " << l.name;
            }
        }
    }
    // wire is what fuzz targets link: messages, never gRPC
    for (auto& n : closure("fuzz"))
        EXPECT_FALSE(lib(n).packages.count("grpc") || lib(n).packages.count("rpc")) << "fuzz reaches gRPC through " << n;
    // libtorch only in the worker's libraries that run the model
    for (auto& l : t.libraries) {
        if (l.packages.count("torch")) {
            EXPECT_EQ(l.folder.rfind("worker", 0), 0u) << l.name << " uses libtorch";
        }
    }
    // the front ends never link the worker's libraries
    for (const char* front : {"common", "cli", "session", "gui"})
        for (const char* w : {"kernels", "engine", "shard", "daemon"})
            EXPECT_FALSE(closure(front).count(w)) << front << " reaches " << w;
    // the widgets reach the cluster through the session: no tokenizer, template, socket or message of their own
    for (const char* far : {"text", "net", "wire"})
        EXPECT_FALSE(lib("gui").uses.count(far)) << "gui must not use " << far << " directly";
    EXPECT_FALSE(lib("session").packages.count("qt-widgets")) << "the session has no widgets";
}

TEST(Layering, EveryLibraryIsBuiltFromItsFolder)
{
    const Table t = table();
    for (auto& l : t.libraries) {
        const fs::path cmake = fs::path(kRoot) / l.folder / "CMakeLists.txt";
        ASSERT_TRUE(fs::exists(cmake)) << l.name << ": " << l.folder << " has no CMakeLists.txt";
        const std::string text = readAll(cmake);
        const bool declared = text.find("together_library(" + l.name + "\n") != std::string::npos ||
                              text.find("together_library(" + l.name + " ") != std::string::npos ||
                              text.find("LAYER " + l.name) != std::string::npos;
        EXPECT_TRUE(declared) << cmake << " declares no target of the row '" << l.name << "' (together_library or together_program LAYER)";
    }
    // No target bypasses the table: every folder of core/, worker/ and app/ with sources is a library's.
    for (const char* top : {"core", "worker", "app"})
        for (auto& e : fs::recursive_directory_iterator(fs::path(kRoot) / top))
            if (e.is_regular_file() && e.path().filename() == "CMakeLists.txt") {
                const std::string text = readAll(e.path());
                EXPECT_EQ(text.find("add_library("), std::string::npos) << e.path() << ": declare libraries with together_library()";
                EXPECT_EQ(text.find("add_executable("), std::string::npos) << e.path() << ": declare programs with together_program()";
                EXPECT_EQ(text.find("include_directories("), text.find("target_include_directories("))
                    << e.path() << ": include folders come from cmake/layers.txt";
            }
    EXPECT_EQ(readAll(kRoot + "/CMakeLists.txt").find("include_directories("), std::string::npos) << "no global include folders";
}

TEST(Layering, ArchitectureDocListsTheTable)
{
    const auto documented = documentedUses(readAll(kRoot + "/docs/ARCHITECTURE.md"));
    const Table t = table();
    ASSERT_FALSE(documented.empty()) << "docs/ARCHITECTURE.md has no table whose columns start 'library | folder | may use'";
    for (auto& l : t.libraries) {
        auto it = documented.find(l.name);
        if (it == documented.end()) {
            ADD_FAILURE() << "docs/ARCHITECTURE.md does not list the library " << l.name;
            continue;
        }
        EXPECT_EQ(it->second, l.uses) << "docs/ARCHITECTURE.md lists other uses for " << l.name << " than cmake/layers.txt";
    }
    EXPECT_EQ(documented.size(), t.libraries.size()) << "docs/ARCHITECTURE.md lists libraries cmake/layers.txt does not have";
}

// The check fails on a forbidden include however it is spelled: each spelling is added, alone, to a file of a
// scratch copy of the tree, whose check is clean before.
TEST(Layering, AForbiddenIncludeFailsInEverySpelling)
{
    const std::string dir = scratchCopy();
    const Table t = Table::read(dir + "/cmake/layers.txt");
    ASSERT_TRUE(check(dir, t).empty()) << report(check(dir, t));
    const fs::path victim = fs::path(dir) / "core/text/chat.cpp";
    const std::string original = readAll(victim);
    fs::create_symlink("../net/rpc.h", fs::path(dir) / "core/text/alias.h");
    fs::create_directories(fs::path(dir) / "tests");
    std::ofstream(fs::path(dir) / "tests/helper.h") << "#pragma once\n";
    struct Case {
        std::string what, text, expect;
    };
    const std::vector<Case> cases = {
        {"the library's spelling", "#include \"net/rpc.h\"\n", "text may not use net (core/net/rpc.h)"},
        {"angle brackets", "#include <net/rpc.h>\n", "text may not use net"},
        {"relative to the file", "#include \"../net/rpc.h\"\n", "text may not use net"},
        {"from the repository's root", "#include \"core/net/rpc.h\"\n", "text may not use net"},
        {"spaces and a doubled slash", "  #   include   \"net//rpc.h\"\n", "text may not use net"},
        {"a detour", "#include \"./../../core/master/../net/rpc.h\"\n", "text may not use net"},
        {"a comment inside", "#include /* harmless */ \"net/rpc.h\" // really\n", "text may not use net"},
        {"a line continuation", "#include \\\n  \"net/rpc.h\"\n", "text may not use net"},
        {"a symlink beside the file", "#include \"alias.h\"\n", "text may not use net (core/net/rpc.h)"},
        {"a computed include", "#define HEADER \"net/rpc.h\"\n#include HEADER\n", "a computed #include"},
        {"a header of no library", "#include \"../../tests/helper.h\"\n", "tests/helper.h belongs to no library"},
        {"a header that is nowhere", "#include \"../nowhere.h\"\n", "is not a header of this tree"},
        {"a package the row does not name", "#include <grpcpp/grpcpp.h>\n", "text may not use the package grpc"},
        {"gRPC's generated services", "#include \"proto/together.grpc.pb.h\"\n", "text may not use the package rpc"},
        {"Qt", "#include <QWidget>\n", "may not use the package"},
        {"libtorch's heavy header", "#include <torch/torch.h>\n", "<torch/torch.h> is banned"},
        {"an upward edge", "#include \"master/controller.h\"\n", "text may not use master"},
    };
    for (auto& c : cases) {
        {
            std::ofstream out(victim, std::ios::trunc | std::ios::binary);
            out << original << c.text;
        }
        const auto vs = check(dir, t);
        ASSERT_EQ(vs.size(), 1u) << c.what << ":\n" << report(vs);
        EXPECT_EQ(vs[0].file, "core/text/chat.cpp") << c.what;
        EXPECT_NE(vs[0].why.find(c.expect), std::string::npos) << c.what << ": " << describe(vs[0]);
        EXPECT_GT(vs[0].line, 0) << c.what;
    }
    // Where the rules differ by library: the widgets may not tokenize, the session may not hold widgets, a header
    // counts like a source, and a file outside every library's folder is named.
    {
        std::ofstream(victim, std::ios::trunc | std::ios::binary) << original;
    }
    append(fs::path(dir) / "app/gui/plan_edit.h", "#include \"text/tokenizer.h\"\n");
    append(fs::path(dir) / "app/session/theme.cpp", "#include <QtWidgets/QWidget>\n");
    append(fs::path(dir) / "worker/kernels/q8_256.inc", "#include <ATen/ATen.h>\n");
    std::ofstream(fs::path(dir) / "core/stray.cpp") << "int x;\n";
    const auto vs = check(dir, t);
    const std::string all = report(vs);
    EXPECT_EQ(vs.size(), 4u) << all;
    EXPECT_NE(all.find("app/gui/plan_edit.h:"), std::string::npos) << all;
    EXPECT_NE(all.find("gui may not use text"), std::string::npos) << all;
    EXPECT_NE(all.find("session may not use the package qt-widgets"), std::string::npos) << all;
    EXPECT_NE(all.find("kernels may not use the package torch"), std::string::npos) << all;
    EXPECT_NE(all.find("core/stray.cpp: the file belongs to no library"), std::string::npos) << all;
}

// What looks like an include but is not one is left alone.
TEST(Layering, StringsAndCommentsAreNotIncludes)
{
    const std::string dir = scratchCopy();
    const Table t = Table::read(dir + "/cmake/layers.txt");
    append(fs::path(dir) / "core/text/chat.cpp",
           "// #include \"net/rpc.h\"\n"
           "/*\n#include \"net/rpc.h\"\n*/\n"
           "static const char* kNotCode = R\"x(\n#include \"net/rpc.h\"\n)x\";\n"
           "static const char kQuote = '\"';\n"
           "static const long kMillion = 1'000'000;\n"
           "#include <net/if.h>\n"); // the system's, not net's
    const auto vs = check(dir, t);
    EXPECT_TRUE(vs.empty()) << report(vs);
}

TEST(Layering, ABrokenTableIsNamed)
{
    const std::string dir = test::makeTempDir("layering-table");
    std::ofstream(dir + "/layers.txt") << "[libraries]\nbase core/base - nosuchthing\n[packages]\njson x nlohmann/\n";
    try {
        Table::read(dir + "/layers.txt");
        FAIL() << "a row naming an unknown library or package must be refused";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("layers.txt:2: 'nosuchthing' is neither a library nor a package"), std::string::npos) << e.what();
    }
}
