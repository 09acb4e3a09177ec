// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <cstdint>

namespace together {

// Bump on any incompatible change to proto/together.proto; daemons refuse other versions in Hello.
constexpr uint32_t kProtocolVersion = 4;
constexpr const char* kSoftwareVersion = "together 0.4.0";
// gRPC message limit both ends set; payloads are chunked well below it.
constexpr int kMaxMessageBytes = 16 << 20;
// Weight chunks stay under this (a prompt's steps: kPrefillChunkBytes, model/shard_spec.h).
constexpr size_t kChunkBytes = 4 << 20;

} // namespace together
