// SPDX-License-Identifier: MIT
#include "shard/step_queue.h"

namespace together {

bool StepQueue::startGeneration(uint64_t generation, std::vector<Work> items)
{
    {
        std::lock_guard lock(m_mutex);
        if (generation <= m_lastStarted)
            return false;
        m_lastStarted = generation;
        for (auto& w : items)
            m_queue.push_back(std::move(w));
    }
    m_cv.notify_all();
    return true;
}

bool StepQueue::pushFromPipe(Work w)
{
    {
        std::unique_lock lock(m_mutex);
        const uint64_t size = w.hidden.size() + w.tokens.size() * 8 + 1024;
        m_cv.wait(lock, [&] {
            return m_shutdown || m_queue.empty() || (m_queue.size() < kMaxQueuedSteps && m_queuedBytes + size <= kMaxQueuedBytes);
        });
        if (m_shutdown)
            return false;
        m_queuedBytes += size;
        w.queuedBytes = size;
        m_queue.push_back(std::move(w));
    }
    m_cv.notify_all();
    return true;
}

void StepQueue::pushOwn(Work w)
{
    std::lock_guard lock(m_mutex);
    m_queue.push_back(std::move(w));
}

bool StepQueue::pop(Work& w, const std::function<void()>& idle)
{
    {
        std::unique_lock lock(m_mutex);
        if (m_queue.empty())
            idle();
        m_cv.wait(lock, [&] { return m_shutdown || !m_queue.empty(); });
        if (m_shutdown)
            return false;
        w = std::move(m_queue.front());
        m_queue.pop_front();
        m_queuedBytes -= w.queuedBytes;
    }
    m_cv.notify_all(); // a pipe waiting for room
    return true;
}

void StepQueue::shutdown()
{
    {
        std::lock_guard lock(m_mutex);
        m_shutdown = true;
    }
    m_cv.notify_all();
}

bool StepQueue::shuttingDown()
{
    std::lock_guard lock(m_mutex);
    return m_shutdown;
}

} // namespace together
