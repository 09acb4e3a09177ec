// SPDX-License-Identifier: MIT
#pragma once

#include "engine/kv_store.h"
#include "net/credentials.h"
#include "proto/together.grpc.pb.h"

#include <string>

namespace together {

// Link probes between daemons (WorkerControl.ProbeLink): the transports inference uses, timed with payloads
// of 1 KiB to 4 MiB. The master fits the samples (core/survey) to latency and throughput per pair.

// The prober's side: streams each payload to the target's ProbeEcho and times its acknowledgement, then
// (when asked) runs two-rank all-reduces with the target over gloo, rendezvous on this daemon's `store`.
// Throws Error naming the target when the stream cannot be probed.
v1::ProbeLinkReply probeLink(const Credentials& credentials, const v1::ProbeLinkRequest& req, KvStoreService& store);

// The far end of the all-reduce probe: the same all-reduces, in the same order.
void answerAllReduceProbe(const Credentials& credentials, const v1::ProbeAllReduceRequest& req);

} // namespace together
