// SPDX-License-Identifier: MIT
#include "shard/token_stream.h"

#include "shard/step_queue.h"

#include <algorithm>
#include <chrono>
#include <thread>

namespace together {

TokenStream::TokenStream(StepQueue& queue)
    : m_queue(queue)
{
}

bool TokenStream::serve(grpc::ServerContext& ctx, grpc::ServerReaderWriter<v1::ObserveEvent, v1::ObserveRequest>& stream)
{
    uint64_t me;
    {
        std::lock_guard lock(m_mutex);
        me = ++m_observer;
    }
    m_cv.notify_all();
    std::atomic<bool> readerDone{false};
    std::thread reader([&] { readRequests(stream, readerDone); });
    bool ok = true;
    while (ok) {
        std::unique_lock lock(m_mutex);
        m_cv.wait_for(lock, std::chrono::milliseconds(200),
                      [&] { return !m_events.empty() || readerDone || m_observer != me || m_queue.shuttingDown(); });
        if (readerDone || m_observer != me || m_queue.shuttingDown() || ctx.IsCancelled())
            break;
        while (!m_events.empty() && ok) {
            v1::ObserveEvent e = std::move(m_events.front());
            m_events.pop_front();
            lock.unlock();
            ok = stream.Write(e);
            lock.lock();
        }
    }
    bool replaced;
    {
        std::lock_guard lock(m_mutex);
        replaced = m_observer != me;
    }
    ctx.TryCancel();
    reader.join();
    return replaced;
}

void TokenStream::readRequests(grpc::ServerReaderWriter<v1::ObserveEvent, v1::ObserveRequest>& stream, std::atomic<bool>& readerDone)
{
    v1::ObserveRequest r;
    while (stream.Read(&r)) {
        std::lock_guard lock(m_mutex);
        // Only the running generation or the next one (the master may stop a generation whose prompt
        // has not reached this stage yet): a far-future number must not stop or stall later answers.
        if (r.generation() == 0 || r.generation() > m_seenGeneration + 1)
            continue;
        if (r.stop())
            m_stopGeneration = std::max(m_stopGeneration, r.generation());
        if (r.generation() > m_ackGeneration || (r.generation() == m_ackGeneration && r.acknowledged() > m_acked)) {
            m_ackGeneration = r.generation();
            m_acked = r.acknowledged();
        }
        m_cv.notify_all();
    }
    readerDone = true;
    m_cv.notify_all();
}

void TokenStream::push(v1::ObserveEvent e)
{
    {
        std::lock_guard lock(m_mutex);
        if (m_events.size() < 100000)
            m_events.push_back(std::move(e));
    }
    m_cv.notify_all();
}

void TokenStream::seen(uint64_t generation)
{
    std::lock_guard lock(m_mutex);
    m_seenGeneration = generation;
}

bool TokenStream::stopped(uint64_t generation)
{
    std::lock_guard lock(m_mutex);
    return m_stopGeneration >= generation;
}

bool TokenStream::waitForWindow(uint64_t generation, uint64_t produced, uint64_t window)
{
    std::unique_lock lock(m_mutex);
    m_cv.wait(lock, [&] {
        const uint64_t acked = m_ackGeneration == generation ? m_acked : 0;
        return acked + window > produced || m_stopGeneration >= generation || m_queue.shuttingDown();
    });
    return m_stopGeneration >= generation;
}

void TokenStream::wake() { m_cv.notify_all(); }

} // namespace together
