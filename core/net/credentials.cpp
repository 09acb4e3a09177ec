// SPDX-License-Identifier: MIT
#include "net/credentials.h"

#include "base/error.h"
#include "base/hex.h"
#include "base/host_info.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>

namespace together {

namespace {

template <class T, void (*F)(T*)>
struct Deleter {
    void operator()(T* p) const { F(p); }
};
using PKey = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using Cert = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using Name = std::unique_ptr<X509_NAME, Deleter<X509_NAME, X509_NAME_free>>;
using Bio = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;

void check(bool ok, const char* what)
{
    if (!ok)
        throw Error(std::string("TLS credentials: ") + what + " failed");
}

std::string hkdf(const std::string& key, const std::string& salt, const std::string& info, size_t n)
{
    std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr));
    std::string out(n, '\0');
    size_t len = n;
    check(ctx && EVP_PKEY_derive_init(ctx.get()) > 0 && EVP_PKEY_CTX_set_hkdf_md(ctx.get(), EVP_sha256()) > 0 &&
              EVP_PKEY_CTX_set1_hkdf_salt(ctx.get(), reinterpret_cast<const unsigned char*>(salt.data()), static_cast<int>(salt.size())) > 0 &&
              EVP_PKEY_CTX_set1_hkdf_key(ctx.get(), reinterpret_cast<const unsigned char*>(key.data()), static_cast<int>(key.size())) > 0 &&
              EVP_PKEY_CTX_add1_hkdf_info(ctx.get(), reinterpret_cast<const unsigned char*>(info.data()), static_cast<int>(info.size())) > 0 &&
              EVP_PKEY_derive(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len) > 0 && len == n,
          "key derivation");
    return out;
}

Name commonName(const std::string& cn)
{
    Name n(X509_NAME_new());
    check(n && X509_NAME_add_entry_by_txt(n.get(), "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("together"), -1, -1, 0) &&
              X509_NAME_add_entry_by_txt(n.get(), "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(cn.data()),
                                         static_cast<int>(cn.size()), -1, 0),
          "certificate name");
    return n;
}

void addExtension(X509* cert, X509* issuer, int nid, const char* value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    check(ext != nullptr, "certificate extension");
    const int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    check(ok, "certificate extension");
}

std::string pem(X509* cert)
{
    Bio b(BIO_new(BIO_s_mem()));
    check(b && PEM_write_bio_X509(b.get(), cert), "certificate encoding");
    char* p = nullptr;
    long n = BIO_get_mem_data(b.get(), &p);
    return std::string(p, static_cast<size_t>(n));
}

std::string pem(EVP_PKEY* key)
{
    Bio b(BIO_new(BIO_s_mem()));
    check(b && PEM_write_bio_PrivateKey(b.get(), key, nullptr, nullptr, 0, nullptr, nullptr), "key encoding");
    char* p = nullptr;
    long n = BIO_get_mem_data(b.get(), &p);
    return std::string(p, static_cast<size_t>(n));
}

} // namespace

Credentials::Credentials(const ClusterKey& key, const std::string& identity)
    : m_identity(identity)
    , m_keyFingerprint(key.fingerprint())
{
    if (identity.empty() || identity.size() > 64)
        throw Error("TLS credentials: identity must be 1 to 64 characters");
    // The CA: deterministic from the key. Ed25519 signatures are deterministic too, so the certificate is the
    // same DER everywhere (its validity is fixed: 2020-01-01 to 9999-12-31).
    const std::string seed = hkdf(key.bytes(), "together cluster CA v1", "ed25519 seed", 32);
    PKey caKey(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(seed.data()), seed.size()));
    check(caKey != nullptr, "CA key");
    Cert ca(X509_new());
    Name caName = commonName("together cluster CA " + key.fingerprint());
    check(ca && X509_set_version(ca.get(), 2) && ASN1_INTEGER_set(X509_get_serialNumber(ca.get()), 1) &&
              X509_set_subject_name(ca.get(), caName.get()) && X509_set_issuer_name(ca.get(), caName.get()) &&
              ASN1_TIME_set_string_X509(X509_getm_notBefore(ca.get()), "20200101000000Z") &&
              ASN1_TIME_set_string_X509(X509_getm_notAfter(ca.get()), "99991231235959Z") && X509_set_pubkey(ca.get(), caKey.get()),
          "CA certificate");
    addExtension(ca.get(), ca.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
    addExtension(ca.get(), ca.get(), NID_key_usage, "critical,keyCertSign");
    addExtension(ca.get(), ca.get(), NID_subject_key_identifier, "hash");
    check(X509_sign(ca.get(), caKey.get(), nullptr) > 0, "CA signature");

    // This process's own key and certificate.
    PKey leafKey(EVP_EC_gen("P-256"));
    check(leafKey != nullptr, "key generation");
    Cert leaf(X509_new());
    Name leafName = commonName(identity);
    std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>> serial(BN_new());
    check(leaf && serial && BN_rand(serial.get(), 120, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) &&
              BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(leaf.get())) && X509_set_version(leaf.get(), 2) &&
              X509_set_subject_name(leaf.get(), leafName.get()) && X509_set_issuer_name(leaf.get(), caName.get()) &&
              // a day of slack both ways for machines whose clocks disagree
              X509_gmtime_adj(X509_getm_notBefore(leaf.get()), -2 * 86400) &&
              X509_gmtime_adj(X509_getm_notAfter(leaf.get()), 10L * 365 * 86400) && X509_set_pubkey(leaf.get(), leafKey.get()),
          "certificate");
    addExtension(leaf.get(), ca.get(), NID_basic_constraints, "critical,CA:FALSE");
    addExtension(leaf.get(), ca.get(), NID_key_usage, "critical,digitalSignature");
    addExtension(leaf.get(), ca.get(), NID_ext_key_usage, "serverAuth,clientAuth");
    addExtension(leaf.get(), ca.get(), NID_subject_alt_name, (std::string("DNS:") + kTlsPeerName).c_str());
    addExtension(leaf.get(), ca.get(), NID_authority_key_identifier, "keyid:always");
    check(X509_sign(leaf.get(), caKey.get(), nullptr) > 0, "certificate signature");

    m_caPem = pem(ca.get());
    m_certPem = pem(leaf.get());
    m_keyPem = pem(leafKey.get());
}

std::string newMasterIdentity()
{
    return ("master " + randomHex(4) + "@" + hostName()).substr(0, 64);
}

std::shared_ptr<grpc::ServerCredentials> Credentials::serverCredentials() const
{
    grpc::SslServerCredentialsOptions o(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    o.pem_root_certs = m_caPem;
    o.pem_key_cert_pairs.push_back({m_keyPem, m_certPem + m_caPem});
    return grpc::SslServerCredentials(o);
}

std::shared_ptr<grpc::ChannelCredentials> Credentials::channelCredentials() const
{
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = m_caPem;
    o.pem_private_key = m_keyPem;
    o.pem_cert_chain = m_certPem + m_caPem;
    return grpc::SslCredentials(o);
}

} // namespace together
