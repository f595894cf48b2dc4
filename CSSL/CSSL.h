// System OpenSSL (libssl-dev) for the OpenSSLTLS module, the only module that imports CSSL.
// Macros Swift cannot import get `static inline` wrappers here as they are needed.
#ifndef KAIZEN_CSSL_H
#define KAIZEN_CSSL_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/bio.h>
#include <openssl/rand.h>
#include <openssl/ec.h>

static inline int CSSL_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}
static inline void CSSL_SSL_CTX_prefer_server_ciphers_unless_chacha(SSL_CTX *ctx) {
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA);
}
static inline int CSSL_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}
static inline int CSSL_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_max_proto_version(ctx, version);
}
static inline long CSSL_SSL_CTX_add1_chain_cert(SSL_CTX *ctx, X509 *cert) { return SSL_CTX_add1_chain_cert(ctx, cert); }
static inline long CSSL_SSL_add1_chain_cert(SSL *ssl, X509 *cert) { return SSL_add1_chain_cert(ssl, cert); }
static inline long CSSL_SSL_clear_chain_certs(SSL *ssl) { return SSL_clear_chain_certs(ssl); }
/// A new ECDSA P-256 key (EVP_EC_gen is a variadic macro).
static inline EVP_PKEY *CSSL_EVP_EC_gen_P256(void) { return EVP_EC_gen("P-256"); }
/// A new ECDSA P-256 key held as a legacy EC_KEY, for minted leaves. X509_set_pubkey encodes such a key's
/// SubjectPublicKeyInfo directly and keeps the key itself, where OpenSSL 3.0 takes a provider key through its
/// encoder and then its decoder: about 2.2 M instructions per certificate minted, against a few thousand.
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
static inline EVP_PKEY *CSSL_legacy_EC_P256_generate(void) {
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    if (ec == NULL) return NULL;
    EVP_PKEY *key = EVP_PKEY_new();
    if (key == NULL || EC_KEY_generate_key(ec) != 1 || EVP_PKEY_assign_EC_KEY(key, ec) != 1) {
        EVP_PKEY_free(key);
        EC_KEY_free(ec);
        return NULL;
    }
    /* OpenSSL converts a legacy key for its providers on first use and caches the result: do it once here, before
       event loops sign with the key side by side. */
    EVP_PKEY_CTX *first = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    if (first == NULL || EVP_PKEY_sign_init(first) != 1) {
        EVP_PKEY_CTX_free(first);
        EVP_PKEY_free(key);
        return NULL;
    }
    EVP_PKEY_CTX_free(first);
    return key;
}
#pragma clang diagnostic pop
static inline int CSSL_MBSTRING_UTF8(void) { return MBSTRING_UTF8; }
/// One-line names, UTF-8 kept (not escaped as \\UXXXX).
static inline unsigned long CSSL_XN_FLAG_ONELINE_UTF8(void) { return XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB; }
static inline void CSSL_BIO_set_retry_read(BIO *bio) { BIO_set_retry_read(bio); }
static inline void CSSL_BIO_clear_retry_flags(BIO *bio) { BIO_clear_retry_flags(bio); }
/// Client session caching by the application only (SSL_CTX_set_session_cache_mode is a macro).
static inline void CSSL_SSL_CTX_cache_client_sessions_externally(SSL_CTX *ctx) {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
}
/// A new index for an SSL's ex_data (SSL_get_ex_new_index is a macro).
static inline int CSSL_SSL_get_ex_new_index(void) { return SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL); }
/// A new index for an X509_STORE's ex_data (X509_STORE_get_ex_new_index is a macro).
static inline int CSSL_X509_STORE_get_ex_new_index(void) { return X509_STORE_get_ex_new_index(0, NULL, NULL, NULL, NULL); }
/// Frees a STACK_OF(X509) and the reference it holds to each certificate (sk_X509_pop_free is a macro).
static inline void CSSL_sk_X509_pop_free(STACK_OF(X509) *stack) { sk_X509_pop_free(stack, X509_free); }
#endif
