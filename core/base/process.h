// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

#include <sys/types.h>

namespace together {

// Child processes (daemons under `--local`, shards under a daemon) are started with posix_spawn (never a
// bare fork once gRPC or OpenMP threads exist). The child gets "--report-fd N --parent-pid P": it arms
// PR_SET_PDEATHSIG so it dies with its parent, and writes one line to fd N when it is ready
// ("listening HOST:PORT") or an error line ("error: ...") when it cannot start.
struct ChildProcess {
    pid_t pid = -1;
    int reportFd = -1; // read end
    int stderrFd = -1; // read end of the child's stderr, when captured
};

// `captureStderr`: the child's stderr goes to a pipe (ChildProcess::stderrFd) instead of ours.
ChildProcess spawnWithReport(const std::string& exe, std::vector<std::string> args, bool captureStderr = false);
// Reads the child's ready line; throws Error on timeout, on an "error:" line, or when the child exits first.
std::string readReportLine(const ChildProcess& child, int timeoutMs);
// The same, then closes the report pipe; when there is no good line, the child is killed and reaped first.
std::string readReportLineOrKill(ChildProcess& child, int timeoutMs);
// Child side: when `expectedParent` > 0, die with the parent (SIGKILL when it goes) and exit now if it is
// already gone. A process started by hand (no parent pid given) outlives the shell that started it.
void dieWithParent(pid_t expectedParent);
void writeReport(int fd, const std::string& line);
// Folder of the running executable (to find together-worker next to together-cli).
std::string selfExecutableDir();
// "exited with status N" / "killed by signal N (SIGKILL)".
std::string describeWaitStatus(int status);

} // namespace together
