// SPDX-License-Identifier: MIT
// Mutual TLS derived from the cluster key, in one process: who gets through the handshake and who does not,
// and that a refused peer never reaches a handler.
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"

#include <gtest/gtest.h>

#include <atomic>

using namespace together;

namespace {

class CountingService final : public v1::WorkerControl::Service {
public:
    grpc::Status Hello(grpc::ServerContext* ctx, const v1::HelloRequest*, v1::HelloReply* rep) override
    {
        ++calls;
        lastPeer = peerIdentity(*ctx);
        rep->set_worker_id("w");
        return grpc::Status::OK;
    }
    std::atomic<int> calls{0};
    std::string lastPeer;
};

struct Server {
    explicit Server(const Credentials& c)
    {
        grpc::ServerBuilder b;
        b.RegisterService(&service);
        server = startServer(b, c, "127.0.0.1:0", &port);
        EXPECT_TRUE(server);
        address = "127.0.0.1:" + std::to_string(port);
    }
    ~Server() { server->Shutdown(); }
    CountingService service;
    std::unique_ptr<grpc::Server> server;
    int port = 0;
    std::string address;
};

grpc::Status hello(const std::shared_ptr<grpc::Channel>& ch, std::string* serverIdentity = nullptr)
{
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::HelloRequest req;
    v1::HelloReply rep;
    grpc::Status s = v1::WorkerControl::NewStub(ch)->Hello(&ctx, req, &rep);
    if (serverIdentity)
        *serverIdentity = peerIdentity(ctx);
    return s;
}

std::shared_ptr<grpc::Channel> rawChannel(const std::string& address, std::shared_ptr<grpc::ChannelCredentials> creds)
{
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride(kTlsPeerName);
    return grpc::CreateCustomChannel(address, creds, args);
}

} // namespace

TEST(Credentials, EveryHolderOfTheKeyDerivesTheSameAuthority)
{
    ClusterKey k = ClusterKey::generate();
    Credentials a(k, "worker a"), b(k, "master b");
    EXPECT_EQ(a.caPem(), b.caPem());
    EXPECT_NE(a.certPem(), b.certPem());
    EXPECT_NE(a.privateKeyPem(), b.privateKeyPem());
    EXPECT_NE(Credentials(ClusterKey::generate(), "worker a").caPem(), a.caPem());
    EXPECT_EQ(a.caPem().find(k.text()), std::string::npos);
}

TEST(Credentials, HoldersOfTheKeyTalkAndKnowWhoIsAtTheOtherEnd)
{
    ClusterKey k = ClusterKey::generate();
    Credentials serverCreds(k, "worker 0123456789abcdef"), clientCreds(k, "master 1234@host");
    Server s(serverCreds);
    std::string who;
    grpc::Status st = hello(openChannel(clientCreds, s.address), &who);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(who, "worker 0123456789abcdef");
    EXPECT_EQ(s.service.lastPeer, "master 1234@host");
}

TEST(Credentials, PeersWithoutTheKeyNeverReachAHandler)
{
    ClusterKey k = ClusterKey::generate(), other = ClusterKey::generate();
    Credentials serverCreds(k, "worker x");
    Server s(serverCreds);

    // Another cluster key.
    grpc::Status st = hello(openChannel(Credentials(other, "master m"), s.address));
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(isHandshakeFailure(st)) << st.error_message();
    EXPECT_NE(describeRpcError(st, s.address).find("another cluster key"), std::string::npos) << describeRpcError(st, s.address);

    // No TLS at all.
    st = hello(grpc::CreateChannel(s.address, grpc::InsecureChannelCredentials()));
    EXPECT_FALSE(st.ok());

    // TLS that trusts the cluster's CA (its certificate is public: every server sends it) but has no client
    // certificate, or a certificate of its own making.
    Credentials ours(k, "x");
    grpc::SslCredentialsOptions noCert;
    noCert.pem_root_certs = ours.caPem();
    st = hello(rawChannel(s.address, grpc::SslCredentials(noCert)));
    EXPECT_FALSE(st.ok());
    Credentials forged(other, "master evil");
    grpc::SslCredentialsOptions forgedCert;
    forgedCert.pem_root_certs = ours.caPem();
    forgedCert.pem_private_key = forged.privateKeyPem();
    forgedCert.pem_cert_chain = forged.certPem() + ours.caPem();
    st = hello(rawChannel(s.address, grpc::SslCredentials(forgedCert)));
    EXPECT_FALSE(st.ok());

    EXPECT_EQ(s.service.calls.load(), 0);
    // The server still serves the key's holders.
    EXPECT_TRUE(hello(openChannel(Credentials(k, "master ok"), s.address)).ok());
    EXPECT_EQ(s.service.calls.load(), 1);
}

TEST(Credentials, AClientRefusesAServerWithoutTheKey)
{
    // An impostor at a worker's address: the master's handshake fails, so it sends nothing (weights, prompts).
    ClusterKey k = ClusterKey::generate();
    Credentials impostor(ClusterKey::generate(), "worker impostor");
    Server s(impostor);
    grpc::Status st = hello(openChannel(Credentials(k, "master m"), s.address));
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(isHandshakeFailure(st)) << st.error_message();
    EXPECT_EQ(s.service.calls.load(), 0);
}

TEST(Rpc, ClosedPortsAreNamed)
{
    Credentials c(ClusterKey::generate(), "master m");
    grpc::Status st = hello(openChannel(c, "127.0.0.1:1"));
    EXPECT_NE(describeRpcError(st, "127.0.0.1:1").find("connection refused"), std::string::npos) << st.error_message();
}

TEST(Rpc, AServerPortIsNeverShared)
{
    Credentials c(ClusterKey::generate(), "worker w");
    Server first(c);
    grpc::ServerBuilder b;
    CountingService second;
    b.RegisterService(&second);
    int port = 0;
    EXPECT_EQ(startServer(b, c, first.address, &port), nullptr); // SO_REUSEPORT would let two daemons share it
}

