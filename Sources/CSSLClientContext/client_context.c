// A provider that passes OpenSSL's default provider through, less the decoders a TLS client never needs.
// The technique is OpenSSL's own test "filter provider" (test/filterprov.c): the outer provider answers with the inner
// provider's algorithm tables and its provider context, so every algorithm runs the default provider's code with the
// default provider's own state.
#include "CSSLClientContext.h"

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <string.h>

enum { max_decoders = 64 };

/// Set once by `make_context` (under pthread_once), read-only afterwards.
static OSSL_LIB_CTX *inner_context;      // holds the default provider
static OSSL_PROVIDER *inner_default;
static OSSL_ALGORITHM kept_decoders[max_decoders + 1];  // zero-terminated
static int kept_count, all_count;
static OSSL_LIB_CTX *client_context;

/// Whether `names` (an algorithm's colon-separated names) includes `name`.
static int has_name(const char *names, const char *name) {
    size_t length = strlen(name);
    for (const char *at = names; at != NULL && *at != '\0'; at = strchr(at, ':'), at = at ? at + 1 : NULL) {
        if (strncmp(at, name, length) == 0 && (at[length] == ':' || at[length] == '\0')) return 1;
    }
    return 0;
}

/// Key types that only agree on keys and cannot sign, so no certificate chain a server sends can need them
/// decoded: Diffie-Hellman (both encodings) and the X25519 and X448 key exchange keys. A certificate with such a
/// key still parses, without a usable key (OpenSSL 3.0 leaves a key it cannot decode unset rather than failing the
/// certificate). Every other type is kept, including ones a later OpenSSL adds (a post-quantum signature scheme).
static const char *const key_agreement_only[] = { "DH", "DHX", "X25519", "X448" };

/// A decoder that reads a DER SubjectPublicKeyInfo of a key that can sign, or the one that finds a key's type.
static int reads_public_key(const OSSL_ALGORITHM *algorithm) {
    const char *properties = algorithm->property_definition;
    if (properties == NULL || strstr(properties, "input=der") == NULL
        || strstr(properties, "structure=SubjectPublicKeyInfo") == NULL) return 0;
    for (size_t i = 0; i < sizeof key_agreement_only / sizeof *key_agreement_only; i++) {
        if (has_name(algorithm->algorithm_names, key_agreement_only[i])) return 0;
    }
    return 1;
}

static const OSSL_ALGORITHM *filter_query(void *provctx, int operation, int *no_cache) {
    (void)provctx;
    if (operation == OSSL_OP_DECODER) {
        *no_cache = 0;
        return kept_decoders;
    }
    return OSSL_PROVIDER_query_operation(inner_default, operation, no_cache);
}

static void filter_unquery(void *provctx, int operation, const OSSL_ALGORITHM *algorithms) {
    (void)provctx;
    if (operation != OSSL_OP_DECODER) OSSL_PROVIDER_unquery_operation(inner_default, operation, algorithms);
}

static const OSSL_PARAM *filter_gettable_params(void *provctx) {
    (void)provctx;
    return OSSL_PROVIDER_gettable_params(inner_default);
}

static int filter_get_params(void *provctx, OSSL_PARAM params[]) {
    (void)provctx;
    return OSSL_PROVIDER_get_params(inner_default, params);
}

/// TLS-GROUP and TLS-SIGALG: libssl learns its key exchange groups and signature algorithms from these.
static int filter_get_capabilities(void *provctx, const char *capability, OSSL_CALLBACK *callback, void *argument) {
    (void)provctx;
    return OSSL_PROVIDER_get_capabilities(inner_default, capability, callback, argument);
}

static const OSSL_DISPATCH filter_dispatch[] = {
    { OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))filter_gettable_params },
    { OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))filter_get_params },
    { OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))filter_query },
    { OSSL_FUNC_PROVIDER_UNQUERY_OPERATION, (void (*)(void))filter_unquery },
    { OSSL_FUNC_PROVIDER_GET_CAPABILITIES, (void (*)(void))filter_get_capabilities },
    { 0, NULL },
};

static int filter_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in, const OSSL_DISPATCH **out,
                       void **provctx) {
    (void)handle;
    (void)in;
    *provctx = OSSL_PROVIDER_get0_provider_ctx(inner_default);
    *out = filter_dispatch;
    return 1;
}

/// Counts the providers of the default context that are not the default provider (or the base one, which has only
/// encoders and decoders).
static int count_other(OSSL_PROVIDER *provider, void *count) {
    const char *name = OSSL_PROVIDER_get0_name(provider);
    if (strcmp(name, "default") != 0 && strcmp(name, "base") != 0) ++*(int *)count;
    return 1;
}

static void make_context(void) {
    // openssl.cnf is read now if it was not already: what it loads into the default context decides below.
    if (OPENSSL_init_ssl(OPENSSL_INIT_LOAD_CONFIG, NULL) != 1) return;
    int others = 0;
    OSSL_PROVIDER_do_all(NULL, count_other, &others);
    if (others != 0 || EVP_default_properties_is_fips_enabled(NULL) || !OSSL_PROVIDER_available(NULL, "default"))
        return;

    OSSL_LIB_CTX *inner = OSSL_LIB_CTX_new();
    OSSL_PROVIDER *deflt = inner != NULL ? OSSL_PROVIDER_load(inner, "default") : NULL;
    if (deflt == NULL) goto fail_inner;
    int no_cache = 0;
    const OSSL_ALGORITHM *decoders = OSSL_PROVIDER_query_operation(deflt, OSSL_OP_DECODER, &no_cache);
    if (decoders == NULL) goto fail_inner;
    int kept = 0, all = 0;
    for (const OSSL_ALGORITHM *decoder = decoders; decoder->algorithm_names != NULL; decoder++) {
        all++;
        if (reads_public_key(decoder)) {
            if (kept == max_decoders) goto fail_inner;
            kept_decoders[kept++] = *decoder;
        }
    }
    // The default provider's tables are static: the copies stay valid while the provider is loaded (for good).
    OSSL_PROVIDER_unquery_operation(deflt, OSSL_OP_DECODER, decoders);
    if (kept == 0) goto fail_inner;
    inner_context = inner;
    inner_default = deflt;

    OSSL_LIB_CTX *outer = OSSL_LIB_CTX_new();
    if (outer == NULL) goto fail_outer;
    if (OSSL_PROVIDER_add_builtin(outer, "kaizen-client", filter_init) != 1) goto fail_outer;
    if (OSSL_PROVIDER_load(outer, "kaizen-client") == NULL) goto fail_outer;
    kept_count = kept;
    all_count = all;
    client_context = outer;
    return;

fail_outer:
    OSSL_LIB_CTX_free(outer);
    inner_context = NULL;
    inner_default = NULL;
fail_inner:
    memset(kept_decoders, 0, sizeof kept_decoders);
    if (deflt != NULL) OSSL_PROVIDER_unload(deflt);
    OSSL_LIB_CTX_free(inner);
    // The clients use the default context instead: what failed here must not show up in their errors.
    ERR_clear_error();
}

static pthread_once_t once = PTHREAD_ONCE_INIT;

OSSL_LIB_CTX *kaizen_client_library_context(void) {
    pthread_once(&once, make_context);
    return client_context;
}

void kaizen_client_library_context_decoders(int *kept, int *all) {
    pthread_once(&once, make_context);
    *kept = kept_count;
    *all = all_count;
}
