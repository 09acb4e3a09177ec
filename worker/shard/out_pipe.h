// SPDX-License-Identifier: MIT
#pragma once

#include "net/credentials.h"
#include "proto/together.grpc.pb.h"

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

namespace together {

class ShardStatus;

// A link of the ring this rank sends on: one long-lived bidirectional stream; the peer acknowledges each
// message, and the round trip (halved) is the link's time in this rank's step record.
//
// m_mutex guards the messages awaiting their acknowledgement (m_pending), shared by the runner (send) and this
// pipe's reader thread; the reader hands each acknowledgement to the status after releasing it.
class OutPipe {
public:
    OutPipe(const Credentials& credentials, std::string address, ShardStatus& status);
    ~OutPipe();
    // False when the stream broke (the peer died); the caller names the link.
    bool send(const v1::PipeMessage& message, uint64_t recordSequence);
    const std::string& address() const { return m_address; }

private:
    void readAcks();
    std::string m_address;
    ShardStatus& m_status;
    std::unique_ptr<v1::Shard::Stub> m_stub;
    grpc::ClientContext m_ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::PipeMessage, v1::PipeAck>> m_stream;
    std::mutex m_mutex;
    struct Pending {
        std::chrono::steady_clock::time_point sent;
        int64_t sentUs = 0;
        uint64_t record = 0;
    };
    std::map<std::pair<uint64_t, uint64_t>, Pending> m_pending; // by (generation, step)
    std::thread m_reader;
};

} // namespace together
