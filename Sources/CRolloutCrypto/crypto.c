// SHA256_Init/Update/Final are deprecated in OpenSSL 3.0 but still shipped, and about six
// times faster than the EVP path for short keys (docs/performance.md): bucketing uses them.
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <string.h>
#include "CRolloutCrypto.h"

/* Copies a short piece without a call to memcpy (whose call costs as much as copying a
 * 24-byte key): fixed-size word moves, the last one overlapping, never reading past `src`. */
static inline void copy_piece(unsigned char *dst, const unsigned char *src, size_t n) {
    uint64_t word;
    uint32_t half;
    if (n >= 8) {
        size_t at = 0;
        for (; at + 8 <= n; at += 8) {
            memcpy(&word, src + at, 8);
            memcpy(dst + at, &word, 8);
        }
        if (at < n) {
            memcpy(&word, src + n - 8, 8);
            memcpy(dst + n - 8, &word, 8);
        }
    } else if (n >= 4) {
        memcpy(&half, src, 4);
        memcpy(dst, &half, 4);
        memcpy(&half, src + n - 4, 4);
        memcpy(dst + n - 4, &half, 4);
    } else {
        for (size_t at = 0; at < n; at++) dst[at] = src[at];
    }
}

uint64_t CRolloutCrypto_sha256_head64(const void *prefix, size_t prefix_len,
                                      const void *middle, size_t middle_len,
                                      const void *key, size_t key_len) {
    SHA256_CTX ctx;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256_Init(&ctx);
    /* One SHA256_Update over the joined pieces when they fit a small stack buffer (the usual
     * case): each Update call has a fixed cost that is large next to a 24-byte key. */
    size_t total = (prefix ? prefix_len + 1 : 0) + (middle ? middle_len + 1 : 0) + key_len;
    if (total <= 256) {
        unsigned char joined[256];
        size_t at = 0;
        if (prefix != NULL) {
            copy_piece(joined + at, prefix, prefix_len);
            at += prefix_len;
            joined[at++] = ':';
        }
        if (middle != NULL) {
            copy_piece(joined + at, middle, middle_len);
            at += middle_len;
            joined[at++] = ':';
        }
        copy_piece(joined + at, key, key_len);
        SHA256_Update(&ctx, joined, total);
    } else {
        if (prefix != NULL) {
            SHA256_Update(&ctx, prefix, prefix_len);
            SHA256_Update(&ctx, ":", 1);
        }
        if (middle != NULL) {
            SHA256_Update(&ctx, middle, middle_len);
            SHA256_Update(&ctx, ":", 1);
        }
        SHA256_Update(&ctx, key, key_len);
    }
    SHA256_Final(digest, &ctx);
    uint64_t head = 0;
    for (int i = 0; i < 8; i++) {
        head = (head << 8) | (uint64_t)digest[i];
    }
    return head;
}

void CRolloutCrypto_sha256(const void *data, size_t len, uint8_t out[32]) {
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, data, len);
    SHA256_Final(out, &ctx);
}

void CRolloutCrypto_sha256_oneshot(const void *data, size_t len, uint8_t out[32]) {
    SHA256(data, len, out);
}

int CRolloutCrypto_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

int CRolloutCrypto_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}

void CRolloutCrypto_SSL_CTX_set_nonblocking_modes(SSL_CTX *ctx) {
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

int CRolloutCrypto_TLS1_2_VERSION(void) {
    return TLS1_2_VERSION;
}

int CRolloutCrypto_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len, uint8_t out[32]) {
    unsigned int out_len = 32;
    return HMAC(EVP_sha256(), key, (int)key_len, data, len, out, &out_len) != NULL && out_len == 32;
}
