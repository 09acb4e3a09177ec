// SPDX-License-Identifier: MIT
#pragma once

#include "net/credentials.h"

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

namespace together {

// Every gRPC link of the cluster goes through these two functions, so TLS and the limits are the same
// everywhere: messages up to kMaxMessageBytes (wire/protocol.h) both ways, at most kMaxConcurrentStreams calls
// at once per connection, a TLS handshake must finish within 10 s.
//
// Test-only redirection: $TOGETHER_TEST_DIAL_VIA="host:port=via:port,..." makes openChannel dial `via` whenever
// it is asked for `host:port` (the test harness's TCP proxy adds delay, stalls or cuts links that way). TLS still
// runs end to end through it.
std::shared_ptr<grpc::Channel> openChannel(const Credentials& credentials, const std::string& address);

// Raises the soft limit on open files to the hard one. gRPC 1.51's listener stops accepting for good after
// accept4() fails with EMFILE, and a stranger can open idle connections until it does; startServer calls it.
void raiseOpenFileLimit();

// Adds `listen` (host:port; port 0 = any) with TLS and the limits to `builder`, builds and starts the server.
// Returns null when the address cannot be bound (in use, or not an address of this machine); `port` gets the
// bound port.
std::unique_ptr<grpc::Server> startServer(grpc::ServerBuilder& builder, const Credentials& credentials, const std::string& listen,
                                          int* port);

// The common name in the peer's certificate ("master 3f0c..."), or "" when there is none.
std::string peerIdentity(const grpc::ServerContext& context);
std::string peerIdentity(const grpc::ClientContext& context);

// A failed call's status as a person reads it: a TLS handshake failure becomes "ADDRESS refused the TLS
// handshake: it holds another cluster key (or is not a together worker)", a closed port "ADDRESS: nothing
// listens there (connection refused)". Always begins with the address.
std::string describeRpcError(const grpc::Status& status, const std::string& address);
// True when the status says the TLS handshake failed (the peer holds another key, or speaks no TLS).
bool isHandshakeFailure(const grpc::Status& status);

constexpr int kMaxConcurrentStreams = 32;

// The ports a worker's shards listen on (serve --ports): "7610-7650" -> {7610, 7650}; "0" -> {0, 0} (any free
// port); throws Error naming the problem.
std::pair<uint16_t, uint16_t> parsePortRange(const std::string& text);

// gRPC writes its own diagnostics (each refused TLS handshake, each failed connection) to stderr. A daemon
// routes them into its log with `sink` (at most 20 lines per 10 s: a port scanner must not fill the disk);
// a front end passes no sink and they are dropped, unless $TOGETHER_GRPC_LOG is set. Call before any channel
// or server exists.
void routeGrpcLog(std::function<void(const std::string&)> sink);

} // namespace together
