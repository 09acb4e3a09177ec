// SPDX-License-Identifier: MIT
// base/files: atomicWrite, TempDir, FileLock, and that the tree writes its files and makes its temporary folders
// through them and no other way.
#include "test_support.h"

#include "base/error.h"
#include "base/files.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace together;

namespace {

std::string readAll(const std::string& p)
{
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::vector<std::string> namesIn(const std::string& dir)
{
    std::vector<std::string> out;
    for (auto& e : fs::directory_iterator(dir))
        out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
}

mode_t modeOf(const std::string& p)
{
    struct stat st {};
    EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
    return st.st_mode & 07777;
}

// Runs `body` in `n` child processes at once; returns how many exited 0.
int inProcesses(int n, const std::function<int(int)>& body)
{
    std::vector<pid_t> pids;
    for (int i = 0; i < n; ++i) {
        const pid_t p = ::fork();
        if (p == 0)
            ::_exit(body(i));
        pids.push_back(p);
    }
    int ok = 0;
    for (pid_t p : pids) {
        int status = 0;
        ::waitpid(p, &status, 0);
        ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    return ok;
}

} // namespace

TEST(AtomicWrite, ReplacesTheFileWholeWithItsModeAndLeavesNothingBeside)
{
    const std::string dir = test::makeTempDir("atomic");
    const std::string file = dir + "/state.json";
    atomicWrite(file, "first\n");
    EXPECT_EQ(readAll(file), "first\n");
    EXPECT_EQ(modeOf(file), 0644u);
    atomicWrite(file, "second, longer than the first\n", 0600);
    EXPECT_EQ(readAll(file), "second, longer than the first\n");
    EXPECT_EQ(modeOf(file), 0600u);
    const mode_t old = ::umask(077); // the mode less the umask, as open(2) makes it
    atomicWrite(dir + "/other.json", "x");
    ::umask(old);
    EXPECT_EQ(modeOf(dir + "/other.json"), 0600u);
    fs::remove(dir + "/other.json");
    EXPECT_EQ(namesIn(dir), std::vector<std::string>{"state.json"});
    atomicWrite(file, "");
    EXPECT_EQ(readAll(file), "");
}

// A symlink stays a link (the file it points to is replaced); a FIFO or a device is written in place.
TEST(AtomicWrite, FollowsSymlinksAndWritesSpecialFilesInPlace)
{
    const std::string dir = test::makeTempDir("atomic-special");
    fs::create_directories(dir + "/dotfiles");
    atomicWrite(dir + "/dotfiles/together.conf", "old");
    fs::create_symlink("dotfiles/together.conf", dir + "/together.conf");
    atomicWrite(dir + "/together.conf", "new");
    EXPECT_TRUE(fs::is_symlink(dir + "/together.conf"));
    EXPECT_EQ(readAll(dir + "/dotfiles/together.conf"), "new");
    fs::create_symlink("dotfiles/later.json", dir + "/later.json"); // dangling: the file is made where it points
    atomicWrite(dir + "/later.json", "made");
    EXPECT_TRUE(fs::is_symlink(dir + "/later.json"));
    EXPECT_EQ(readAll(dir + "/dotfiles/later.json"), "made");
    EXPECT_EQ(namesIn(dir), (std::vector<std::string>{"dotfiles", "later.json", "together.conf"}));

    const std::string fifo = dir + "/metrics.fifo";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    std::string got;
    std::thread reader([&] { got = readAll(fifo); });
    atomicWrite(fifo, "{\"steps\": 3}\n");
    reader.join();
    EXPECT_EQ(got, "{\"steps\": 3}\n");
    struct stat st {};
    ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "still the FIFO, not a file renamed over it";
}

TEST(AtomicWrite, AFailureLeavesTheOldFileAndNoTemporary)
{
    const std::string dir = test::makeTempDir("atomic-fail");
    const std::string file = dir + "/plan.json";
    atomicWrite(file, "old");
    {
        AtomicFile f(file, 0644);
        f.write("half of the new");
        EXPECT_TRUE(fs::exists(f.temporaryPath()));
        EXPECT_TRUE(AtomicFile::isTemporaryName(fs::path(f.temporaryPath()).filename().string())) << f.temporaryPath();
        // destroyed without commit: as if the program died or the write failed
    }
    EXPECT_EQ(readAll(file), "old");
    EXPECT_EQ(namesIn(dir), std::vector<std::string>{"plan.json"});

    // A path that cannot be replaced (a folder stands there): the error names it, the folder is untouched.
    fs::create_directories(dir + "/taken/inside");
    try {
        atomicWrite(dir + "/taken", "x");
        FAIL() << "a folder must not be replaced by a file";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(dir + "/taken"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(fs::is_directory(dir + "/taken/inside"));
    EXPECT_EQ(namesIn(dir), (std::vector<std::string>{"plan.json", "taken"}));

    // A folder that does not exist: named, nothing made.
    EXPECT_THROW(atomicWrite(dir + "/missing/x.json", "x"), Error);
    EXPECT_FALSE(fs::exists(dir + "/missing"));
}

// Writers racing on one file each replace it whole: a reader sees one version or another, never a mix, and no
// temporary file is left (each writer had its own).
TEST(AtomicWrite, ConcurrentWritersNeverMixAndReadersNeverSeeAPart)
{
    const std::string dir = test::makeTempDir("atomic-race");
    const std::string file = dir + "/workers.json";
    auto version = [](int writer) { return std::string(64 * 1024, static_cast<char>('a' + writer)); };
    atomicWrite(file, version(0));
    const int ok = inProcesses(5, [&](int i) {
        if (i == 4) { // the reader
            for (int k = 0; k < 400; ++k) {
                const std::string s = readAll(file);
                if (s.size() != 64 * 1024 || s.find_first_not_of(s[0]) != std::string::npos)
                    return 1;
            }
            return 0;
        }
        for (int k = 0; k < 50; ++k)
            atomicWrite(file, version(i));
        return 0;
    });
    EXPECT_EQ(ok, 5) << "a reader saw a partial or mixed file, or a writer failed";
    EXPECT_EQ(namesIn(dir), std::vector<std::string>{"workers.json"});
}

TEST(AtomicWrite, KeepRefusesAnExistingFileAndOnlyOneRacerWins)
{
    const std::string dir = test::makeTempDir("atomic-keep");
    const std::string file = dir + "/cluster.key";
    atomicWrite(file, "mine", 0600, AtomicFile::Existing::Keep);
    try {
        atomicWrite(file, "theirs", 0600, AtomicFile::Existing::Keep);
        FAIL() << "an existing file must be kept";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("refusing to overwrite"), std::string::npos) << e.what();
    }
    EXPECT_EQ(readAll(file), "mine");
    const std::string raced = dir + "/raced.key";
    const int winners = inProcesses(6, [&](int i) {
        try {
            atomicWrite(raced, "writer " + std::to_string(i), 0600, AtomicFile::Existing::Keep);
            return 0;
        } catch (const Error&) {
            return 1;
        }
    });
    EXPECT_EQ(winners, 1);
    EXPECT_EQ(readAll(raced).rfind("writer ", 0), 0u);
    EXPECT_EQ(namesIn(dir), (std::vector<std::string>{"cluster.key", "raced.key"}));
}

TEST(TempDir, IsUniquePrivateAndRemovedWithItsContents)
{
    const std::string parent = test::makeTempDir("tempdir");
    std::string kept;
    {
        TempDir a("verify", parent), b("verify", parent);
        EXPECT_NE(a.path(), b.path());
        EXPECT_EQ(fs::path(a.path()).parent_path(), fs::path(parent));
        EXPECT_EQ(fs::path(a.path()).filename().string().rfind("together-verify-", 0), 0u) << a.path();
        EXPECT_EQ(modeOf(a.path()), 0700u);
        fs::create_directories(a.path() + "/deep/er");
        std::ofstream(a.path() + "/deep/er/file") << "x";
        TempDir moved = std::move(b);
        kept = moved.release();
        EXPECT_TRUE(moved.path().empty());
    }
    EXPECT_EQ(namesIn(parent).size(), 1u) << "the released folder stays, the other is gone";
    EXPECT_TRUE(fs::is_directory(kept));
    TempDir system("default-parent");
    EXPECT_EQ(fs::path(system.path()).parent_path(), fs::temp_directory_path());
    EXPECT_THROW(TempDir("x", parent + "/no/such/folder"), Error);
}

TEST(FileLock, ExcludesOtherProcessesUntilReleased)
{
    const std::string dir = test::makeTempDir("lock");
    const std::string path = dir + "/calibration.lock";
    int ready[2], release[2];
    ASSERT_EQ(::pipe(ready), 0);
    ASSERT_EQ(::pipe(release), 0);
    const pid_t holder = ::fork();
    if (holder == 0) {
        FileLock lock(path);
        char c = 1;
        (void)!::write(ready[1], &c, 1);
        (void)!::read(release[0], &c, 1);
        ::_exit(0);
    }
    char c = 0;
    ASSERT_EQ(::read(ready[0], &c, 1), 1);
    EXPECT_EQ(FileLock::tryLock(path), nullptr) << "another process holds it";
    const pid_t waiter = ::fork();
    if (waiter == 0) {
        FileLock lock(path); // waits for the holder
        ::_exit(0);
    }
    ::usleep(300000);
    int status = 0;
    EXPECT_EQ(::waitpid(waiter, &status, WNOHANG), 0) << "a second holder waits while the first has it";
    (void)!::write(release[1], &c, 1);
    ::waitpid(holder, nullptr, 0);
    ASSERT_EQ(::waitpid(waiter, &status, 0), waiter);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "and takes it once the first lets go";
    auto mine = FileLock::tryLock(path);
    EXPECT_NE(mine, nullptr) << "free once its holder is gone";
    EXPECT_EQ(modeOf(path), 0600u);
    for (int fd : {ready[0], ready[1], release[0], release[1]})
        ::close(fd);
}

// Every file the programs keep goes through atomicWrite (or AtomicFile), and every temporary folder is a TempDir:
// no other way of writing a file or making a temporary one is in the tree, outside the few listed here with why.
TEST(Files, TheTreeWritesFilesAndTemporaryFoldersOneWay)
{
    const std::regex raw(R"(std::ofstream|\bfopen\s*\(|QSaveFile|O_WRONLY|O_CREAT|\brename\s*\(|mkdtemp|mkstemp|temp_directory_path|QTemporaryDir|QTemporaryFile|QDir::tempPath)");
    // file -> the calls it may make, and why
    const std::map<std::string, std::pair<std::string, std::string>> allowed = {
        {"core/base/files.cpp", {"*", "the one mechanism"}},
        {"core/base/user_dirs.cpp", {"temp_directory_path", "the last fallback of the user folders"}},
        {"core/model/random_model.cpp", {"rename", "a model folder is published whole: its TempDir renamed"}},
        {"core/net/cluster_key.cpp", {"fopen", "the terminal (/dev/tty), to ask for the key"}},
        {"worker/daemon/service_log.cpp", {"fopen rename", "the daemon's log: appended, rotated"}},
        {"worker/main.cpp", {"std::ofstream", "--trace streams a JSON line per step while generating"}},
        {"app/cli/run_command.cpp", {"std::ofstream", "--trace streams a JSON line per step while generating"}},
        {"app/session/settings.cpp", {"rename", "an unreadable settings file is kept aside"}},
        {"app/session/conversation.cpp", {"rename", "an unreadable conversations file is kept aside"}},
    };
    const std::string root = TOGETHER_SOURCE_DIR;
    std::vector<std::string> found;
    for (const char* top : {"core", "worker", "app"})
        for (auto& e : fs::recursive_directory_iterator(root + "/" + top)) {
            const std::string ext = e.path().extension().string();
            if (!e.is_regular_file() || (ext != ".cpp" && ext != ".h" && ext != ".inc"))
                continue;
            const std::string rel = e.path().lexically_relative(root).generic_string();
            std::istringstream in(readAll(e.path().string()));
            int n = 0;
            for (std::string line; std::getline(in, line);) {
                ++n;
                const std::string code = line.substr(0, line.find("//"));
                for (auto it = std::sregex_iterator(code.begin(), code.end(), raw); it != std::sregex_iterator(); ++it) {
                    std::string what = it->str();
                    what.erase(std::remove_if(what.begin(), what.end(), [](char c) { return c == '(' || c == ' '; }), what.end());
                    if (what == "rename" && code.find("QFile::rename") == std::string::npos && code.find("rename(") == std::string::npos)
                        continue;
                    auto a = allowed.find(rel);
                    if (a != allowed.end() && (a->second.first == "*" || (" " + a->second.first + " ").find(" " + what + " ") != std::string::npos))
                        continue;
                    found.push_back(rel + ":" + std::to_string(n) + ": " + what + ": " + line);
                }
            }
        }
    std::string all;
    for (auto& f : found)
        all += "  " + f + "\n";
    EXPECT_TRUE(found.empty()) << "write files with atomicWrite/AtomicFile and make temporary folders with TempDir (base/files.h):\n" << all;
}
