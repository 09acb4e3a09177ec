// SPDX-License-Identifier: MIT
#include "shard/shard_status.h"

namespace together {

namespace {

using Clock = std::chrono::steady_clock;

} // namespace

uint64_t micros(Clock::duration d) { return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(d).count()); }

int64_t wallMicros()
{
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void ShardStatus::setActivity(const std::string& a)
{
    std::lock_guard lock(m_stateMutex);
    m_activity = a;
}

void ShardStatus::setError(const std::string& e, bool peerFailed)
{
    std::lock_guard lock(m_stateMutex);
    if (m_error.empty()) {
        m_error = e;
        m_peerFailed = peerFailed;
    }
    m_activity = "failed";
}

std::string ShardStatus::error()
{
    std::lock_guard lock(m_stateMutex);
    return m_error;
}

uint64_t ShardStatus::addRecord(v1::RankRecord r, int pendingAcks)
{
    std::lock_guard lock(m_recordMutex);
    r.set_sequence(++m_recordSequence);
    Record x;
    x.record = std::move(r);
    x.created = Clock::now();
    x.pendingAcks = pendingAcks;
    x.complete = pendingAcks == 0;
    m_records.push_back(std::move(x));
    while (m_records.size() > 20000)
        m_records.pop_front();
    return m_recordSequence;
}

void ShardStatus::linkMeasured(uint64_t sequence, int64_t sentUs, int64_t halfRoundTripUs)
{
    std::lock_guard lock(m_recordMutex);
    for (auto it = m_records.rbegin(); it != m_records.rend(); ++it)
        if (it->record.sequence() == sequence) {
            it->record.set_link_start_us(it->record.link_start_us() ? it->record.link_start_us() : sentUs);
            it->record.set_link_us(std::max(it->record.link_us(), halfRoundTripUs));
            if (--it->pendingAcks <= 0)
                it->complete = true;
            return;
        }
}

void ShardStatus::reportState(v1::StatusReply* rep)
{
    std::lock_guard lock(m_stateMutex);
    rep->set_activity(m_activity);
    rep->set_error(m_error);
    rep->set_peer_failed(m_peerFailed);
}

void ShardStatus::reportRecords(uint64_t after, v1::StatusReply* rep)
{
    std::lock_guard lock(m_recordMutex);
    const auto now = Clock::now();
    for (auto& r : m_records) {
        if (r.record.sequence() <= after)
            continue;
        // A record waits (briefly) for its link's acknowledgement; records go out in order.
        if (!r.complete && now - r.created < std::chrono::seconds(2))
            break;
        *rep->add_records() = r.record;
        if (rep->records_size() >= 2000)
            break;
    }
}

} // namespace together
