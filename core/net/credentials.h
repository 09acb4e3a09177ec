// SPDX-License-Identifier: MIT
#pragma once

#include "net/cluster_key.h"

#include <memory>
#include <string>

namespace grpc {
class ChannelCredentials;
class ServerCredentials;
} // namespace grpc

namespace together {

// Mutual TLS for every gRPC link (master <-> daemon, master <-> shard, stage <-> stage, rendezvous), derived
// from the cluster key alone:
//  - the cluster CA: HKDF-SHA256 of the key seeds an Ed25519 key, and the CA certificate is built from it with
//    fixed names, serial and validity, so every holder of the key derives the same CA, byte for byte;
//  - each process makes a fresh P-256 key at start and a leaf certificate for it signed by that CA, with its
//    identity as the common name ("worker 3f0c...", "master ...", "shard ...") and the fixed DNS name
//    kTlsPeerName, which clients check instead of a host name (machines at home are known by address; holding
//    a certificate of the CA is the identity).
// Servers require a client certificate of the CA, so a peer without the key fails the TLS handshake before any
// request byte is read; clients require the server's, so an impostor at a worker's address learns nothing.
// TLS gives every call confidentiality, integrity and freshness: nothing recorded can be replayed.
class Credentials {
public:
    Credentials(const ClusterKey& key, const std::string& identity);

    std::shared_ptr<grpc::ServerCredentials> serverCredentials() const;
    std::shared_ptr<grpc::ChannelCredentials> channelCredentials() const;

    const std::string& identity() const { return m_identity; }
    const std::string& keyFingerprint() const { return m_keyFingerprint; }
    const std::string& caPem() const { return m_caPem; }
    const std::string& certPem() const { return m_certPem; }
    const std::string& privateKeyPem() const { return m_keyPem; }

private:
    std::string m_identity;
    std::string m_keyFingerprint;
    std::string m_caPem;
    std::string m_certPem;
    std::string m_keyPem;
};

constexpr const char* kTlsPeerName = "together.cluster";

// A master's certificate name: "master <8 random hex>@<host name>", fresh for each process. Daemons record
// it as the owner of a launch; discovery tells launches of other masters (busy) from this one's.
std::string newMasterIdentity();

} // namespace together
