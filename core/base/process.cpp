// SPDX-License-Identifier: MIT
#include "base/process.h"

#include "base/error.h"

#include <cerrno>
#include <cstdlib>
#include <csignal>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace together {

namespace {
constexpr int kChildReportFd = 3;
}

ChildProcess spawnWithReport(const std::string& exe, std::vector<std::string> args, bool captureStderr)
{
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0)
        throw Error(std::string("pipe: ") + std::strerror(errno));
    int errFds[2] = {-1, -1};
    if (captureStderr && ::pipe2(errFds, O_CLOEXEC) != 0) {
        ::close(fds[0]);
        ::close(fds[1]);
        throw Error(std::string("pipe: ") + std::strerror(errno));
    }
    args.insert(args.begin(), exe);
    args.push_back("--report-fd");
    args.push_back(std::to_string(kChildReportFd));
    args.push_back("--parent-pid");
    args.push_back(std::to_string(::getpid()));
    std::vector<char*> argv;
    for (auto& a : args)
        argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    // dup2 onto a new number clears close-on-exec for the child's copy only
    posix_spawn_file_actions_adddup2(&fa, fds[1], kChildReportFd);
    if (captureStderr)
        posix_spawn_file_actions_adddup2(&fa, errFds[1], 2);
    pid_t pid = -1;
    int rc = ::posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(fds[1]);
    if (captureStderr)
        ::close(errFds[1]);
    if (rc != 0) {
        ::close(fds[0]);
        if (captureStderr)
            ::close(errFds[0]);
        throw Error("cannot start " + exe + ": " + std::strerror(rc));
    }
    return {pid, fds[0], errFds[0]};
}

std::string readReportLine(const ChildProcess& child, int timeoutMs)
{
    std::string line;
    int waited = 0;
    while (true) {
        pollfd p{child.reportFd, POLLIN, 0};
        int r = ::poll(&p, 1, 100);
        if (r > 0) {
            char c;
            ssize_t n = ::read(child.reportFd, &c, 1);
            if (n == 1) {
                if (c == '\n')
                    break;
                line += c;
                if (line.size() > 4096)
                    throw Error("child process wrote an overlong ready line");
                continue;
            }
            // EOF: the child closed the pipe without a line, typically because it exited
            int status = 0;
            pid_t w = ::waitpid(child.pid, &status, WNOHANG);
            throw Error(w == child.pid ? "child process " + describeWaitStatus(status) + " before it was ready"
                                       : std::string("child process closed its report pipe before it was ready"));
        }
        waited += 100;
        if (waited >= timeoutMs)
            throw Error("child process not ready after " + std::to_string(timeoutMs / 1000) + " s");
    }
    if (line.rfind("error: ", 0) == 0)
        throw Error(line.substr(7));
    return line;
}

std::string readReportLineOrKill(ChildProcess& child, int timeoutMs)
{
    std::string line;
    try {
        line = readReportLine(child, timeoutMs);
    } catch (...) {
        ::kill(child.pid, SIGKILL);
        ::waitpid(child.pid, nullptr, 0);
        ::close(child.reportFd);
        child.reportFd = -1;
        throw;
    }
    ::close(child.reportFd);
    child.reportFd = -1;
    return line;
}

void dieWithParent(pid_t expectedParent)
{
    if (expectedParent <= 0)
        return;
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != expectedParent)
        ::_exit(1); // the parent died before we armed the signal
}

void writeReport(int fd, const std::string& line)
{
    if (fd < 0)
        return;
    std::string l = line + "\n";
    ssize_t n = ::write(fd, l.data(), l.size());
    (void)n;
    ::close(fd);
}

std::string selfExecutableDir()
{
    std::error_code ec;
    auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec)
        return ".";
    return p.parent_path().string();
}

std::string describeWaitStatus(int status)
{
    if (WIFEXITED(status))
        return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) {
        int s = WTERMSIG(status);
        const char* name = s == SIGKILL ? " (SIGKILL)" : s == SIGTERM ? " (SIGTERM)" : s == SIGSEGV ? " (SIGSEGV)" : s == SIGABRT ? " (SIGABRT)" : "";
        return "killed by signal " + std::to_string(s) + name;
    }
    return "stopped";
}

} // namespace together
