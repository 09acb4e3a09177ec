// SPDX-License-Identifier: MIT
#pragma once

#include "proto/together.grpc.pb.h"

#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>

namespace together {

// The clocks of a step record: the steady clock for durations, the wall clock (µs since the epoch) for the
// times the master lines up across machines (the Status reply carries this rank's clock for that).
uint64_t micros(std::chrono::steady_clock::duration d);
int64_t wallMicros();

// What Status reports of this rank: what it is doing, the first error that stopped it, and one record per step
// it computed (times, all-reduces, the link the step went out on).
//
//  - m_stateMutex guards the activity, the error and whether a peer caused it. The runner sets the idle activity
//    while it holds the step queue's mutex (queue, then state); nothing else is taken while m_stateMutex is held.
//  - m_recordMutex guards the records and their sequence. A record that went out on links waits for every link's
//    acknowledgement (linkMeasured, from each OutPipe's reader thread) before Status hands it out, so the master
//    sees the link's time; nothing else is taken while m_recordMutex is held.
class ShardStatus {
public:
    void setActivity(const std::string& activity);
    // The first error sticks (a rank fails once); the activity says "failed" from then on.
    void setError(const std::string& error, bool peerFailed = false);
    std::string error();

    // Adds the record of one step with the next sequence number, which it returns (for the OutPipes to
    // acknowledge); `pendingAcks` is the number of links it went out on. The last 20000 records are kept.
    uint64_t addRecord(v1::RankRecord record, int pendingAcks);
    // From an OutPipe's reader: the acknowledgement of a message sent for record `sequence`.
    void linkMeasured(uint64_t sequence, int64_t sentUs, int64_t halfRoundTripUs);

    // Status: the activity, the error and peer_failed.
    void reportState(v1::StatusReply* reply);
    // Status: the records after `after`, in order, at most 2000; a record still waiting (under 2 s) for its
    // links' acknowledgements holds back itself and those after it.
    void reportRecords(uint64_t after, v1::StatusReply* reply);

private:
    struct Record {
        v1::RankRecord record;
        std::chrono::steady_clock::time_point created;
        int pendingAcks = 0;
        bool complete = true;
    };

    std::mutex m_stateMutex;
    std::string m_activity = "starting";
    std::string m_error;
    bool m_peerFailed = false;

    std::mutex m_recordMutex;
    std::deque<Record> m_records;
    uint64_t m_recordSequence = 0;
};

} // namespace together
