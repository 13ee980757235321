#ifndef C_ROLLOUT_CRYPTO_H
#define C_ROLLOUT_CRYPTO_H

// OpenSSL 3 (Debian libssl-dev). Swift imports the functions from these headers directly;
// this target adds only what Swift cannot import (C macros) and the SHA-256 fast path.
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

/// The first 8 bytes, big-endian, of SHA-256(prefix ":" middle ":" key), where a NULL
/// prefix or middle (with its ":") is left out. Used by bucketing: it hashes the pieces
/// without joining them in Swift (a small stack buffer here), so nothing is allocated.
uint64_t CRolloutCrypto_sha256_head64(const void *prefix, size_t prefix_len,
                                      const void *middle, size_t middle_len,
                                      const void *key, size_t key_len);

/// SHA-256 of one buffer through the low-level SHA256_Init/Update/Final sequence.
void CRolloutCrypto_sha256(const void *data, size_t len, uint8_t out[32]);

/// HMAC-SHA256 of `data` under `key` (OpenSSL's HMAC), for credentials the server signs: 1, or 0 when it failed (then `out` means nothing).
int CRolloutCrypto_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len, uint8_t out[32]);

/// SHA-256 of one buffer through the one-shot SHA256() (benchmark reference only).
void CRolloutCrypto_sha256_oneshot(const void *data, size_t len, uint8_t out[32]);

/// SSL_set_tlsext_host_name: the SNI host name.
int CRolloutCrypto_SSL_set_tlsext_host_name(SSL *ssl, const char *name);

/// SSL_CTX_set_min_proto_version.
int CRolloutCrypto_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version);

/// SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER).
void CRolloutCrypto_SSL_CTX_set_nonblocking_modes(SSL_CTX *ctx);

/// TLS1_2_VERSION.
int CRolloutCrypto_TLS1_2_VERSION(void);

#endif
