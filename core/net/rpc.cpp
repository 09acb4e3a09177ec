// SPDX-License-Identifier: MIT
#include "net/rpc.h"

#include "base/error.h"
#include "wire/protocol.h"

#include <grpc/support/log.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>

#include <sys/resource.h>

namespace together {

namespace {

const std::map<std::string, std::string>& dialMap()
{
    static const std::map<std::string, std::string> m = [] {
        std::map<std::string, std::string> out;
        const char* e = std::getenv("TOGETHER_TEST_DIAL_VIA");
        std::string s = e ? e : "";
        size_t i = 0;
        while (i < s.size()) {
            size_t comma = s.find(',', i);
            std::string item = s.substr(i, comma == std::string::npos ? std::string::npos : comma - i);
            size_t eq = item.find('=');
            if (eq != std::string::npos)
                out[item.substr(0, eq)] = item.substr(eq + 1);
            if (comma == std::string::npos)
                break;
            i = comma + 1;
        }
        return out;
    }();
    return m;
}

std::string firstValue(const std::vector<grpc::string_ref>& props)
{
    return props.empty() ? std::string() : std::string(props.front().data(), props.front().size());
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

} // namespace

void raiseOpenFileLimit()
{
    rlimit r {};
    if (::getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &r);
    }
}

std::shared_ptr<grpc::Channel> openChannel(const Credentials& credentials, const std::string& address)
{
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxMessageBytes);
    args.SetMaxSendMessageSize(kMaxMessageBytes);
    args.SetSslTargetNameOverride(kTlsPeerName);
    // A worker that restarts is reachable again within a second, not after gRPC's default backoff (up to 2 min).
    // (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is left alone: gRPC uses it as the time a connection attempt, TLS
    // handshake included, may take.)
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    // Each link gets its own connection: a stalled stage must not hold up another's traffic.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    const auto& via = dialMap();
    auto it = via.find(address);
    return grpc::CreateCustomChannel(it == via.end() ? address : it->second, credentials.channelCredentials(), args);
}

std::unique_ptr<grpc::Server> startServer(grpc::ServerBuilder& builder, const Credentials& credentials, const std::string& listen,
                                          int* port)
{
    raiseOpenFileLimit();
    builder.AddListeningPort(listen, credentials.serverCredentials(), port);
    builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
    builder.SetMaxSendMessageSize(kMaxMessageBytes);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxConcurrentStreams);
    builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, 10000);
    // gRPC sets SO_REUSEPORT by default: a second daemon on the same port would silently share it.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    auto server = builder.BuildAndStart();
    if (!server || *port == 0)
        return nullptr;
    return server;
}

std::string peerIdentity(const grpc::ServerContext& context)
{
    auto auth = context.auth_context();
    return auth ? firstValue(auth->FindPropertyValues("x509_common_name")) : std::string();
}

std::string peerIdentity(const grpc::ClientContext& context)
{
    auto auth = context.auth_context();
    return auth ? firstValue(auth->FindPropertyValues("x509_common_name")) : std::string();
}

bool isHandshakeFailure(const grpc::Status& status)
{
    const std::string& m = status.error_message();
    return status.error_code() == grpc::StatusCode::UNAVAILABLE &&
           (contains(m, "Handshake") || contains(m, "handshake") || contains(m, "SSL") || contains(m, "certificate") ||
            contains(m, "tsi_"));
}

std::string describeRpcError(const grpc::Status& status, const std::string& address)
{
    const std::string& m = status.error_message();
    if (isHandshakeFailure(status))
        return address + " refused the TLS handshake: it holds another cluster key (or is not a together worker)";
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE && contains(m, "Connection refused"))
        return address + ": nothing listens there (connection refused)";
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
        return address + " did not answer in time" + (m.empty() || m == "Deadline Exceeded" ? std::string() : " (" + m + ")");
    return address + ": " + m;
}

namespace {

struct GrpcLog {
    std::mutex mutex;
    std::function<void(const std::string&)> sink;
    std::chrono::steady_clock::time_point windowStart;
    int inWindow = 0;
};

GrpcLog& grpcLog()
{
    static GrpcLog g;
    return g;
}

void onGrpcLog(gpr_log_func_args* args)
{
    GrpcLog& g = grpcLog();
    std::lock_guard lock(g.mutex);
    if (!g.sink)
        return;
    const auto now = std::chrono::steady_clock::now();
    // Only refused handshakes are rate-limited: any stranger can cause those. Everything else (a failed
    // accept, say) is rare and must not be drowned.
    const std::string message = args->message;
    if (message.find("andshake") == std::string::npos) {
        g.sink("grpc: " + message);
        return;
    }
    if (now - g.windowStart > std::chrono::seconds(10)) {
        if (g.inWindow > 20)
            g.sink("grpc: " + std::to_string(g.inWindow - 20) + " more refused handshakes");
        g.windowStart = now;
        g.inWindow = 0;
    }
    if (++g.inWindow <= 20)
        g.sink("grpc: " + message);
}

} // namespace

void routeGrpcLog(std::function<void(const std::string&)> sink)
{
    if (!sink && std::getenv("TOGETHER_GRPC_LOG"))
        return; // gRPC's own stderr output, for debugging
    {
        std::lock_guard lock(grpcLog().mutex);
        grpcLog().sink = std::move(sink);
    }
    gpr_set_log_function(onGrpcLog);
}

std::pair<uint16_t, uint16_t> parsePortRange(const std::string& text)
{
    auto number = [&](const std::string& s) {
        if (s.empty() || s.size() > 5 || s.find_first_not_of("0123456789") != std::string::npos || std::stoi(s) > 65535)
            throw Error("--ports takes a range like 7610-7650 (or 0 for any free port), got '" + text + "'");
        return static_cast<uint16_t>(std::stoi(s));
    };
    const size_t dash = text.find('-');
    if (dash == std::string::npos) {
        uint16_t p = number(text);
        return {p, p};
    }
    uint16_t lo = number(text.substr(0, dash)), hi = number(text.substr(dash + 1));
    if (lo == 0 || hi < lo)
        throw Error("--ports: the range " + text + " is empty or starts at 0");
    return {lo, hi};
}

} // namespace together
