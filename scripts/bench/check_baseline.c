/* The C reference for `rollout check F --actors-from FILE` (docs/performance.md): reads the
 * file, hashes "feature:" + each line with libcrypto's fastest path, prints the same answers.
 * Build: cc -O2 -o check_baseline check_baseline.c -lcrypto
 * Run:   check_baseline FEATURE PERCENT_THOUSANDTHS FILE > out */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s FEATURE THOUSANDTHS FILE\n", argv[0]); return 2; }
    const char *feature = argv[1];
    unsigned long threshold = strtoul(argv[2], NULL, 10);
    FILE *in = fopen(argv[3], "rb");
    if (!in) { perror(argv[3]); return 1; }
    static char out[1 << 20];
    setvbuf(stdout, out, _IOFBF, sizeof out);
    char *line = NULL;
    size_t capacity = 0;
    ssize_t length;
    size_t feature_length = strlen(feature);
    while ((length = getline(&line, &capacity, in)) > 0) {
        if (line[length - 1] == '\n') line[--length] = 0;
        if (length > 0 && line[length - 1] == '\r') line[--length] = 0;
        unsigned char digest[SHA256_DIGEST_LENGTH];
        SHA256_CTX ctx;
        SHA256_Init(&ctx);
        SHA256_Update(&ctx, feature, feature_length);
        SHA256_Update(&ctx, ":", 1);
        SHA256_Update(&ctx, line, (size_t)length);
        SHA256_Final(digest, &ctx);
        unsigned long long head = 0;
        for (int i = 0; i < 8; i++) head = (head << 8) | digest[i];
        int on = length == 0 ? threshold >= 100000 : (head % 100000) < threshold;
        fputs(line, stdout);
        fputs(on ? "\ttrue\n" : "\tfalse\n", stdout);
    }
    free(line);
    fclose(in);
    return 0;
}
