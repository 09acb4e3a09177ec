// SPDX-License-Identifier: MIT
#include "shard/out_pipe.h"

#include "net/rpc.h"
#include "shard/shard_status.h"

namespace together {

namespace {

using Clock = std::chrono::steady_clock;

} // namespace

OutPipe::OutPipe(const Credentials& credentials, std::string address, ShardStatus& status)
    : m_address(std::move(address))
    , m_status(status)
    , m_stub(v1::Shard::NewStub(openChannel(credentials, m_address)))
{
    m_ctx.set_wait_for_ready(true);
    m_stream = m_stub->Pipe(&m_ctx);
    m_reader = std::thread([this] { readAcks(); });
}

OutPipe::~OutPipe()
{
    m_ctx.TryCancel();
    if (m_reader.joinable())
        m_reader.join();
}

bool OutPipe::send(const v1::PipeMessage& message, uint64_t recordSequence)
{
    {
        std::lock_guard lock(m_mutex);
        if (m_pending.size() > 10000)
            m_pending.erase(m_pending.begin());
        m_pending[{message.generation(), message.step()}] = Pending{Clock::now(), wallMicros(), recordSequence};
    }
    return m_stream->Write(message);
}

void OutPipe::readAcks()
{
    v1::PipeAck ack;
    while (m_stream->Read(&ack)) {
        Pending p;
        {
            std::lock_guard lock(m_mutex);
            auto it = m_pending.find({ack.generation(), ack.step()});
            if (it == m_pending.end())
                continue;
            p = it->second;
            m_pending.erase(it);
        }
        m_status.linkMeasured(p.record, p.sentUs, static_cast<int64_t>(micros(Clock::now() - p.sent)) / 2);
    }
}

} // namespace together
