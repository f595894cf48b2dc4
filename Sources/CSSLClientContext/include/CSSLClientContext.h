// The OpenSSL library context of the proxy's TLS clients. Only OpenSSLTLS uses this target.
#ifndef KAIZEN_CSSL_CLIENT_CONTEXT_H
#define KAIZEN_CSSL_CLIENT_CONTEXT_H
#include <openssl/types.h>

/// The library context the proxy's TLS client contexts are made in: every algorithm, parameter and capability of
/// OpenSSL's default provider, through a provider that passes them on unchanged, but with only the decoders that read
/// a DER SubjectPublicKeyInfo.
///
/// Why: OpenSSL 3.0 decodes the public key of every certificate a server sends (`d2i_X509`) by building a decoder
/// chain from every decoder and key manager of the context, each time; with the default provider's 40 decoders that
/// is about 1.2 M instructions per certificate, more than half of parsing it. With the 12 that read a public key it
/// is about half that. What a certificate's key decodes to is the same: the decoders are the default provider's own.
///
/// Made on the first call and kept for the life of the process (it is never freed, as OpenSSL's own default context is
/// not). NULL when it cannot be made, or when the default context is set up differently from a plain default provider
/// (another provider, such as FIPS or legacy, or FIPS default properties, from openssl.cnf): the caller then uses the
/// default context, so such a configuration applies to the proxy's clients as before. (OpenSSL 3.0 has no way to read
/// other default properties; a configuration that sets them without another provider is not detected.)
OSSL_LIB_CTX *kaizen_client_library_context(void);

/// How many decoders the client context has, and the default provider has (for tests); 0 and 0 without the context.
void kaizen_client_library_context_decoders(int *kept, int *all);

#endif
