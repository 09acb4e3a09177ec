// SPDX-License-Identifier: MIT
#include "master/local_daemons.h"

#include "base/error.h"
#include "base/files.h"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <sys/wait.h>
#include <unistd.h>

namespace together {

LocalDaemons::LocalDaemons(size_t count, const std::string& keyFile, const std::vector<std::string>& extraArgs)
{
    const std::string exe = workerExecutable();
    m_stateRoot = TempDir("local").release(); // removed in stopAll()
    try {
        for (size_t i = 0; i < count; ++i) {
            std::vector<std::string> args = {"serve", "--local", "--listen", "127.0.0.1:0", "--key-file", keyFile,
                                             "--state-dir", m_stateRoot + "/worker" + std::to_string(i)};
            args.insert(args.end(), extraArgs.begin(), extraArgs.end());
            ChildProcess c = spawnWithReport(exe, args);
            m_children.push_back(c);
            std::string line = readReportLine(c, 30000);
            ::close(c.reportFd);
            m_children.back().reportFd = -1;
            if (line.rfind("listening ", 0) != 0)
                throw Error("local worker: unexpected ready line: " + line);
            m_addresses.push_back(line.substr(10));
        }
    } catch (...) {
        stopAll();
        throw;
    }
}

LocalDaemons::~LocalDaemons() { stopAll(); }

void LocalDaemons::stopAll()
{
    for (auto& c : m_children)
        ::kill(c.pid, SIGTERM);
    for (auto& c : m_children) {
        int status = 0;
        for (int i = 0; i < 100 && ::waitpid(c.pid, &status, WNOHANG) == 0; ++i)
            ::usleep(20000);
        if (::waitpid(c.pid, &status, WNOHANG) == 0) {
            ::kill(c.pid, SIGKILL);
            ::waitpid(c.pid, &status, 0);
        }
        if (c.reportFd >= 0)
            ::close(c.reportFd);
    }
    m_children.clear();
    if (!m_stateRoot.empty()) {
        std::error_code ec;
        std::filesystem::remove_all(m_stateRoot, ec);
        m_stateRoot.clear();
    }
}

std::string LocalDaemons::workerExecutable()
{
    if (const char* e = std::getenv("TOGETHER_WORKER"); e && *e)
        return e;
    return selfExecutableDir() + "/together-worker";
}

} // namespace together
