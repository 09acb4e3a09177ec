// SPDX-License-Identifier: MIT
#include "tests/test_support.h"

#include "core/random_model.h"

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace together::test {

std::string sharedDir()
{
    if (const char* e = std::getenv("TOGETHER_SHARED_DIR"); e && *e)
        return e;
    return TOGETHER_SHARED_DIR;
}

std::string stories260KDir()
{
    fs::path p = fs::path(sharedDir()) / "refmodels" / "stories260K";
    if (fs::exists(p / "hf" / "model.safetensors") && fs::exists(p / "reference.json"))
        return p.string();
    return {};
}

namespace {
struct TempDirs {
    std::vector<std::string> dirs;
    ~TempDirs()
    {
        for (auto& d : dirs) {
            std::error_code ec;
            fs::remove_all(d, ec);
        }
    }
};
TempDirs& tempDirs()
{
    static TempDirs t;
    return t;
}
} // namespace

std::string makeTempDir(const std::string& tag)
{
    std::random_device rd;
    fs::path p = fs::temp_directory_path() / ("together-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    fs::create_directories(p);
    tempDirs().dirs.push_back(p.string());
    return p.string();
}

int runCommand(const std::string& cmd, std::string* out, std::string* err)
{
    std::string errFile;
    std::string full = cmd;
    if (err) {
        errFile = makeTempDir("stderr") + "/err.txt";
        full += " 2>" + errFile;
    }
    FILE* f = ::popen(full.c_str(), "r");
    if (!f)
        return -1;
    std::array<char, 4096> buf;
    std::string o;
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0)
        o.append(buf.data(), n);
    int status = ::pclose(f);
    if (out)
        *out = o;
    if (err) {
        std::ifstream in(errFile);
        std::stringstream ss;
        ss << in.rdbuf();
        *err = ss.str();
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string binDir() { return TOGETHER_BIN_DIR; }
std::string workerBin() { return binDir() + "/together-worker"; }
std::string cliBin() { return binDir() + "/together-cli"; }

std::string writeTinyModel(const std::string& tag)
{
    std::string dir = makeTempDir(tag);
    RandomModelSpec s;
    s.hiddenSize = 16;
    s.intermediateSize = 32;
    s.numLayers = 1;
    s.numHeads = 2;
    s.numKvHeads = 1;
    writeRandomModel(dir, s);
    return dir;
}

nlohmann::json storiesReference()
{
    std::ifstream in(stories260KDir() + "/reference.json");
    return nlohmann::json::parse(in);
}

} // namespace together::test
