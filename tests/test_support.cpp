// SPDX-License-Identifier: MIT
#include "test_support.h"

#include "base/error.h"
#include "base/process.h"
#include "model/random_model.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <vector>

#include <algorithm>
#include <csignal>
#include <map>
#include <thread>

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

void rewriteGguf(const std::string& from, const std::string& to, const std::function<void(GgufTensorToWrite&)>& change)
{
    const Gguf g = Gguf::open(from);
    std::vector<GgufTensorToWrite> tensors;
    for (const auto& [name, t] : g.tensors()) {
        tensors.push_back({name, t.type, t.shape, std::vector<std::byte>(t.data, t.data + t.nbytes)});
        change(tensors.back());
    }
    writeGguf(to, std::vector<std::pair<std::string, GgufValue>>(g.metadata().begin(), g.metadata().end()), tensors);
}

void retypeWithZeros(GgufTensorToWrite& t, GgmlType type)
{
    int64_t rows = 1;
    for (size_t d = 0; d + 1 < t.shape.size(); ++d)
        rows *= t.shape[d];
    t.type = type;
    t.bytes.assign(static_cast<size_t>(rows * ggmlRowBytes(type, t.shape.back())), std::byte{0});
}

std::string fetchNpmOnce(const std::string& script, const std::string& cacheDir)
{
    static std::mutex mutex;
    static std::map<std::string, std::string> results;
    std::lock_guard lock(mutex);
    if (auto it = results.find(script); it != results.end())
        return it->second;
    std::string out, err;
    const int rc = runCommand("bash " + std::string(TOGETHER_SOURCE_DIR) + "/tests/js/" + script + " " + cacheDir, &out, &err);
    const std::string result = rc == 3   ? "skip: " + err
                               : rc != 0 ? script + " failed (exit " + std::to_string(rc) + "): " + err
                                         : std::string();
    return results[script] = result;
}

std::string binDir() { return TOGETHER_BIN_DIR; }
std::string workerBin() { return binDir() + "/together-worker"; }
std::string cliBin() { return binDir() + "/together-cli"; }

std::string writeTinyModel(const std::string& tag)
{
    std::string dir = makeTempDir(tag);
    writeRandomModel(dir, modelShape("tiny"));
    return dir;
}

std::string smallModel(const std::string& tag)
{
    std::string dir = makeTempDir(tag);
    writeRandomModel(dir, modelShape("small"));
    return dir;
}

RandomModelSpec largeMarginSpec(int64_t heads, int64_t kvHeads, int64_t intermediate)
{
    RandomModelSpec s = modelShape("large-margin");
    s.numHeads = heads;
    s.numKvHeads = kvHeads;
    s.intermediateSize = intermediate;
    return s;
}

std::string largeMarginModel(const std::string& tag, int64_t heads, int64_t kvHeads, int64_t intermediate)
{
    static std::map<std::string, std::string> made;
    if (!made.count(tag)) {
        made[tag] = makeTempDir("model-" + tag);
        writeRandomModel(made[tag], largeMarginSpec(heads, kvHeads, intermediate));
    }
    return made[tag];
}

nlohmann::json storiesReference()
{
    std::ifstream in(stories260KDir() + "/reference.json");
    return nlohmann::json::parse(in);
}

std::vector<TraceStep> readTrace(const std::string& path)
{
    std::vector<TraceStep> out;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        nlohmann::json j = nlohmann::json::parse(line);
        TraceStep s{j["token"], j["pos"], j["n_input"], {}};
        for (auto& t : j["top"])
            s.top.emplace_back(t[0].get<int>(), t[1].get<float>());
        out.push_back(s);
    }
    return out;
}

void expectSameTrace(const std::vector<TraceStep>& ref, const std::vector<TraceStep>& got, const std::string& what)
{
    ASSERT_EQ(got.size(), ref.size()) << what;
    for (size_t i = 0; i < ref.size(); ++i) {
        ASSERT_EQ(got[i].token, ref[i].token) << what << " step " << i;
        ASSERT_FALSE(got[i].top.empty());
        for (auto& [id, logit] : ref[i].top) {
            for (auto& [gid, glogit] : got[i].top) {
                if (gid == id) {
                    EXPECT_NEAR(glogit, logit, 1e-3) << what << " step " << i << " id " << id;
                }
            }
        }
        EXPECT_EQ(got[i].top.front().first, ref[i].top.front().first) << what << " step " << i;
    }
}

std::string referenceTrace(const std::string& model, const std::string& prompt, int tokens)
{
    std::string trace = test::makeTempDir("ref") + "/trace.jsonl";
    std::string out, err;
    int rc = test::runCommand(test::workerBin() + " generate --model " + model + " --prompt '" + prompt + "' --temperature 0 --dtype f32 --threads 1 --max-tokens " +
                                  std::to_string(tokens) + " --trace " + trace,
                              &out, &err);
    EXPECT_EQ(rc, 0) << err;
    return trace;
}

std::vector<pid_t> descendants(pid_t root)
{
    std::map<pid_t, pid_t> parent;
    for (auto& e : fs::directory_iterator("/proc")) {
        std::string name = e.path().filename();
        if (name.find_first_not_of("0123456789") != std::string::npos)
            continue;
        std::ifstream in(e.path() / "stat");
        std::string stat;
        std::getline(in, stat);
        auto close = stat.rfind(')');
        if (close == std::string::npos)
            continue;
        std::istringstream rest(stat.substr(close + 2));
        char state;
        pid_t ppid;
        rest >> state >> ppid;
        if (state != 'Z')
            parent[std::stoi(name)] = ppid;
    }
    std::vector<pid_t> out;
    std::vector<pid_t> frontier{root};
    while (!frontier.empty()) {
        pid_t p = frontier.back();
        frontier.pop_back();
        for (auto& [c, pp] : parent)
            if (pp == p) {
                out.push_back(c);
                frontier.push_back(c);
            }
    }
    return out;
}

std::string cmdline(pid_t pid)
{
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::replace(s.begin(), s.end(), '\0', ' ');
    return s;
}

bool alive(pid_t pid)
{
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string stat;
    if (!std::getline(in, stat))
        return false;
    auto close = stat.rfind(')');
    return close != std::string::npos && stat[close + 2] != 'Z';
}

bool waitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout)
{
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!condition()) {
        if (std::chrono::steady_clock::now() > end)
            return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return true;
}

Daemon::Daemon(const std::string& keyFile, const std::string& stateDir, const std::vector<std::string>& extraArgs)
{
    std::vector<std::string> args = {"serve", "--listen", "127.0.0.1:0", "--key-file", keyFile, "--state-dir", stateDir,
                                     "--discovery-interfaces", "none"};
    args.insert(args.end(), extraArgs.begin(), extraArgs.end());
    if (std::find(extraArgs.begin(), extraArgs.end(), "--ports") == extraArgs.end()) {
        args.push_back("--ports");
        args.push_back("0");
    }
    ChildProcess c = spawnWithReport(workerBin(), args);
    m_pid = c.pid;
    try {
        std::string line = readReportLine(c, 30000);
        ::close(c.reportFd);
        if (line.rfind("listening ", 0) != 0)
            throw Error("unexpected ready line: " + line);
        m_address = line.substr(10);
    } catch (...) {
        ::close(c.reportFd);
        stop();
        throw;
    }
}

Daemon::~Daemon() { stop(); }

void Daemon::stop()
{
    if (m_pid <= 0)
        return;
    ::kill(m_pid, SIGTERM);
    int status = 0;
    if (!waitFor([&] { return ::waitpid(m_pid, &status, WNOHANG) == m_pid; }, std::chrono::seconds(5))) {
        ::kill(m_pid, SIGKILL);
        ::waitpid(m_pid, &status, 0);
    }
    m_pid = -1;
}

std::vector<pid_t> Daemon::shards() const
{
    std::vector<pid_t> out;
    for (pid_t p : descendants(m_pid))
        if (cmdline(p).find("together-worker shard ") != std::string::npos)
            out.push_back(p);
    return out;
}

} // namespace together::test
