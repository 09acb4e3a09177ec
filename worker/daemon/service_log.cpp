// SPDX-License-Identifier: MIT
#include "daemon/service_log.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>

namespace together {

ServiceLog::ServiceLog(std::string file, size_t capacity, bool echo)
    : m_file(std::move(file))
    , m_capacity(std::max<size_t>(1, capacity))
    , m_echo(echo)
{
    openFile();
}

ServiceLog::~ServiceLog()
{
    if (m_out)
        std::fclose(m_out);
}

void ServiceLog::openFile()
{
    if (m_file.empty())
        return;
    m_out = std::fopen(m_file.c_str(), "ae");
    if (!m_out)
        return;
    std::error_code ec;
    m_fileBytes = std::filesystem::file_size(m_file, ec);
}

void ServiceLog::write(const std::string& text)
{
    const auto now = std::chrono::system_clock::now();
    const int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
    std::time_t t = static_cast<std::time_t>(ms / 1000);
    std::tm tm {};
    ::localtime_r(&t, &tm);
    char stamp[64];
    std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02d %02d:%02d:%02d.%03d ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                  tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
    std::lock_guard lock(m_mutex);
    m_lines.push_back({m_next++, ms, text});
    while (m_lines.size() > m_capacity)
        m_lines.pop_front();
    if (m_echo) {
        std::fprintf(stderr, "%s\n", text.c_str());
        std::fflush(stderr);
    }
    if (m_out) {
        const std::string line = stamp + text + "\n";
        if (std::fwrite(line.data(), 1, line.size(), m_out) == line.size())
            m_fileBytes += line.size();
        std::fflush(m_out);
        if (m_fileBytes > kRotateBytes) {
            std::fclose(m_out);
            m_out = nullptr;
            std::error_code ec;
            std::filesystem::rename(m_file, m_file + ".1", ec);
            openFile();
        }
    }
}

std::vector<ServiceLog::Line> ServiceLog::recent(uint64_t afterSequence, size_t maxLines) const
{
    std::lock_guard lock(m_mutex);
    std::vector<Line> out;
    for (const Line& l : m_lines)
        if (l.sequence > afterSequence)
            out.push_back(l);
    if (out.size() > maxLines)
        out.erase(out.begin(), out.end() - static_cast<long>(maxLines));
    return out;
}

} // namespace together
