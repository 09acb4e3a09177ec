// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <cstdio>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace together {

// A long-running process's log: every line goes to stderr, to a file (appended; when it passes 8 MiB it is
// renamed to FILE.1 and a new one begun) and to an in-memory ring of the most recent lines, which the daemon
// serves to masters (WorkerControl.RecentLog). Thread-safe. Write errors (a closed terminal, a full disk) are
// ignored: logging never stops the service.
class ServiceLog {
public:
    struct Line {
        uint64_t sequence = 0;
        int64_t unixMs = 0;
        std::string text;
    };

    // `file` may be empty (no file); `echo` writes each line to stderr too.
    explicit ServiceLog(std::string file, size_t capacity = 2000, bool echo = true);
    ~ServiceLog();
    ServiceLog(const ServiceLog&) = delete;
    ServiceLog& operator=(const ServiceLog&) = delete;

    void write(const std::string& text);
    // Lines with sequence > afterSequence, oldest first, at most maxLines (the newest ones when more).
    std::vector<Line> recent(uint64_t afterSequence, size_t maxLines) const;
    const std::string& file() const { return m_file; }

    static constexpr uint64_t kRotateBytes = 8u << 20;

private:
    void openFile();
    std::string m_file;
    size_t m_capacity;
    bool m_echo;
    mutable std::mutex m_mutex;
    std::deque<Line> m_lines;
    uint64_t m_next = 1;
    FILE* m_out = nullptr;
    uint64_t m_fileBytes = 0;
};

} // namespace together
