/* The baseline for `rollout controller run` (docs/performance.md): a plain sequential client
 * that sends each query of a file (one a line) as POST /api/v1/query, form-encoded like the
 * controller, over one keep-alive connection (one curl handle, reused), and checks that every
 * answer is a success. It does no locking, no Redis, no decision: only the HTTP round trips.
 * Build: cc -O2 -o prometheus_baseline prometheus_baseline.c -lcurl
 * Run:   prometheus_baseline http://127.0.0.1:9090 QUERIES_FILE */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct buffer { char *data; size_t length, capacity; };

static size_t collect(char *chunk, size_t size, size_t count, void *context) {
    struct buffer *buffer = context;
    size_t length = size * count;
    if (buffer->length + length + 1 > buffer->capacity) {
        buffer->capacity = (buffer->length + length + 1) * 2;
        buffer->data = realloc(buffer->data, buffer->capacity);
        if (!buffer->data) return 0;
    }
    memcpy(buffer->data + buffer->length, chunk, length);
    buffer->length += length;
    buffer->data[buffer->length] = 0;
    return length;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s PROMETHEUS_URL QUERIES_FILE\n", argv[0]); return 2; }
    FILE *in = fopen(argv[2], "rb");
    if (!in) { perror(argv[2]); return 1; }
    char url[1024];
    snprintf(url, sizeof url, "%s/api/v1/query", argv[1]);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *curl = curl_easy_init();
    struct curl_slist *headers = NULL;
    headers = curl_slist_append(headers, "Content-Type: application/x-www-form-urlencoded");
    headers = curl_slist_append(headers, "Accept: application/json");
    headers = curl_slist_append(headers, "Expect:");
    struct buffer answer = {0};
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &answer);
    curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
    char *line = NULL;
    size_t capacity = 0;
    ssize_t length;
    long sent = 0;
    while ((length = getline(&line, &capacity, in)) > 0) {
        if (line[length - 1] == '\n') line[--length] = 0;
        if (length == 0) continue;
        char *escaped = curl_easy_escape(curl, line, (int)length);
        size_t body_length = strlen(escaped) + 7;
        char *body = malloc(body_length);
        snprintf(body, body_length, "query=%s", escaped);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
        answer.length = 0;
        CURLcode code = curl_easy_perform(curl);
        long status = 0;
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        if (code != CURLE_OK || status != 200 || !answer.data || !strstr(answer.data, "\"status\":\"success\"")) {
            fprintf(stderr, "query %ld failed: %s, HTTP %ld: %s\n", sent + 1, curl_easy_strerror(code), status, answer.data ? answer.data : "");
            return 1;
        }
        curl_free(escaped);
        free(body);
        sent++;
    }
    long connections = 0;
    curl_easy_getinfo(curl, CURLINFO_NUM_CONNECTS, &connections);
    /* NUM_CONNECTS counts the last transfer's new connections: 0 means it reused the first. */
    printf("queries: %ld, new connections on the last query: %ld\n", sent, connections);
    curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
    curl_global_cleanup();
    return 0;
}
