/* The C subscriber of bench/fanout.py (--client c): the same job and the same stdin/stdout
 * protocol as `bench/fanout_client.py subscribe`, with less CPU per delivery, so that on a
 * 2-core machine the clients' core is not what limits the figure.
 *
 *   fanout_sub HOST PORT HOST_HEADER PATH CHANNEL CONNECTIONS SAMPLE_EVERY CONCURRENCY TIMEOUT_S
 *
 * Opens CONNECTIONS WebSocket connections (at most CONCURRENCY handshakes in flight), each
 * sends {"op":"subscribe","channel":CHANNEL} and waits for a reply containing "subscribed";
 * prints {"ready":n,"failed":f,"errors":[...],"pid":p}. Then one epoll loop reads every
 * connection, walks the (unmasked) server frame headers and counts complete data frames;
 * every SAMPLE_EVERY-th connection also reads "t":<CLOCK_MONOTONIC ns> out of each event
 * for the publish-to-delivery latency. Pings get pongs, a close frame is answered and counted.
 * Commands on stdin, one a line: mark (odd: start a latency window; even: end it and print
 * the samples), totals, quit. Every wait is bounded: the connect phase by
 * TIMEOUT_S * (1 + CONNECTIONS / CONCURRENCY), the whole run by 900 s.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, HANDSHAKE, SUBSCRIBING, LIVE, CLOSED };
#define SAMPLE_CAP 200000
#define SAMPLES_SENT 20000
#define RUN_LIMIT_S 900

typedef struct {
    int fd, state, sample;
    char *carry;
    size_t carry_len, carry_cap;
    double started;
} conn_t;

static conn_t *conns;
static int nconns, sample_every, concurrency;
static long long frames, unexpected;
static int live, dropped, failed, in_flight, next_conn;
static int close_codes[5000];
static long long *samples;
static int nsamples, sampling, marks;
static char errors[5][200];
static int nerrors;
static char request[1024], subscribe_frame[512];
static size_t request_len, subscribe_len;
static struct sockaddr_in addr;
static int ep;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void note_error(const char *what) {
    if (nerrors < 5) {
        snprintf(errors[nerrors], sizeof errors[0], "%s", what);
        nerrors++;
    }
}

/* A masked client frame (RFC 6455 5.3); payloads here are under 126 bytes. */
static size_t client_frame(char *out, int opcode, const char *payload, size_t n) {
    unsigned char key[4] = {0x12, 0x34, 0x56, 0x78};
    out[0] = (char)(0x80 | opcode);
    out[1] = (char)(0x80 | n);
    memcpy(out + 2, key, 4);
    for (size_t i = 0; i < n; i++) out[6 + i] = payload[i] ^ key[i & 3];
    return 6 + n;
}

static void send_all(conn_t *c, const char *buf, size_t n) {
    /* Small control writes into an almost empty send buffer: a short write would only
     * happen to a connection that is already lost. */
    if (write(c->fd, buf, n) != (ssize_t)n) note_error("short write");
}

static void conn_close(conn_t *c, const char *why) {
    if (c->state == CLOSED) return;
    if (c->state == LIVE) {
        live--;
        dropped++;
    } else {
        failed++;
        in_flight--;
        if (why) note_error(why);
    }
    c->state = CLOSED;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

static void start_connect(int i) {
    conn_t *c = &conns[i];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    c->sample = sample_every > 0 && i % sample_every == 0;
    c->started = now_s();
    in_flight++;
    if (c->fd < 0) {
        c->state = CLOSED;
        failed++;
        in_flight--;
        note_error(strerror(errno));
        return;
    }
    c->state = CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        conn_close(c, strerror(errno));
    }
}

static void on_sample(const char *p, const char *end) {
    const char *t = memmem(p, end - p, "\"t\":", 4);
    if (!t) {
        unexpected++;
        return;
    }
    t += 4;
    long long v = 0;
    int digits = 0;
    while (t < end && *t >= '0' && *t <= '9') {
        v = v * 10 + (*t++ - '0');
        digits++;
    }
    if (digits && nsamples < SAMPLE_CAP) samples[nsamples++] = now_ns() - v;
}

/* Walks the frames in buf[0..n); returns the bytes consumed (a partial frame stays). */
static size_t on_frames(conn_t *c, const char *buf, size_t n) {
    size_t pos = 0;
    long long count = 0;
    int sample = c->sample && sampling;
    while (pos + 2 <= n) {
        const unsigned char *h = (const unsigned char *)buf + pos;
        uint64_t len = h[1] & 0x7F;
        size_t start = pos + 2;
        if (len == 126) {
            if (pos + 4 > n) break;
            len = ((uint64_t)h[2] << 8) | h[3];
            start = pos + 4;
        } else if (len == 127) {
            if (pos + 10 > n) break;
            len = 0;
            for (int k = 0; k < 8; k++) len = (len << 8) | h[2 + k];
            start = pos + 10;
        }
        if (start + len > n) break;
        size_t end = start + len;
        int opcode = h[0] & 0x0F;
        if (opcode <= 2) {
            if (c->state == LIVE) {
                if (h[0] & 0x80) {
                    count++;
                    if (sample) on_sample(buf + start, buf + end);
                }
            } else if (memmem(buf + start, len, "\"subscribed\"", 12)) {
                c->state = LIVE;
                live++;
                in_flight--;
            } else {
                char why[200];
                snprintf(why, sizeof why, "subscribe answered %.*s", (int)(len < 150 ? len : 150), buf + start);
                conn_close(c, why);
                return n;
            }
        } else if (opcode == 9) {
            char out[140];
            send_all(c, out, client_frame(out, 10, buf + start, len < 125 ? len : 125));
        } else if (opcode == 8) {
            int code = len >= 2 ? ((unsigned char)buf[start] << 8) | (unsigned char)buf[start + 1] : 1005;
            if (code >= 0 && code < 5000) close_codes[code]++;
            char out[16];
            send_all(c, out, client_frame(out, 8, buf + start, len >= 2 ? 2 : 0));
            frames += count;
            conn_close(c, "closed by the server");
            return n;
        }
        pos = end;
    }
    frames += count;
    return pos;
}

static void on_readable(conn_t *c) {
    static char rbuf[1 << 16];
    ssize_t got = read(c->fd, rbuf, sizeof rbuf);
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
        conn_close(c, got == 0 ? "closed before subscribed" : strerror(errno));
        return;
    }
    if (got < 0) return;
    const char *data = rbuf;
    size_t n = (size_t)got;
    if (c->carry_len) {
        if (c->carry_len + n > c->carry_cap) {
            c->carry_cap = (c->carry_len + n) * 2;
            c->carry = realloc(c->carry, c->carry_cap);
        }
        memcpy(c->carry + c->carry_len, rbuf, n);
        c->carry_len += n;
        data = c->carry;
        n = c->carry_len;
    }
    size_t pos = 0;
    if (c->state == HANDSHAKE) {
        const char *end = memmem(data, n, "\r\n\r\n", 4);
        if (!end) {
            pos = 0;
            goto keep;
        }
        if (n < 12 || memcmp(data, "HTTP/1.1 101", 12) != 0) {
            char why[200];
            snprintf(why, sizeof why, "handshake answered %.*s", (int)((end - data) < 100 ? (end - data) : 100), data);
            conn_close(c, why);
            return;
        }
        c->state = SUBSCRIBING;
        send_all(c, subscribe_frame, subscribe_len);
        pos = (size_t)(end - data) + 4;
    }
    pos += on_frames(c, data + pos, n - pos);
    if (c->state == CLOSED) return;
keep:
    if (pos < n) {
        size_t left = n - pos;
        if (data == c->carry) {
            memmove(c->carry, c->carry + pos, left);
        } else {
            if (left > c->carry_cap) {
                c->carry_cap = left * 2;
                c->carry = realloc(c->carry, c->carry_cap);
            }
            memcpy(c->carry, data + pos, left);
        }
        c->carry_len = left;
    } else {
        c->carry_len = 0;
    }
}

static void print_codes(void) {
    printf("{");
    int first = 1;
    for (int k = 0; k < 5000; k++)
        if (close_codes[k]) {
            printf("%s\"%d\": %d", first ? "" : ", ", k, close_codes[k]);
            first = 0;
        }
    printf("}");
}

/* Returns 0 on quit or EOF. */
static int on_command(const char *line) {
    if (!strcmp(line, "mark")) {
        marks++;
        sampling = marks % 2 == 1;
        if (sampling) nsamples = 0;
        printf("{\"frames\": %lld, \"t\": %.9f, \"live\": %d, \"dropped\": %d}\n", frames, now_s(), live, dropped);
        if (!sampling) {
            int step = nsamples > SAMPLES_SENT ? nsamples / SAMPLES_SENT : 1;
            printf("{\"latency_us\": [");
            for (int k = 0, first = 1; k < nsamples; k += step, first = 0)
                printf("%s%lld", first ? "" : ",", samples[k] / 1000);
            printf("], \"sampled\": %d, \"samples_capped\": %s, \"unexpected\": %lld}\n", nsamples,
                   nsamples >= SAMPLE_CAP ? "true" : "false", unexpected);
        }
    } else if (!strcmp(line, "totals")) {
        printf("{\"frames\": %lld, \"live\": %d, \"dropped\": %d, \"close_codes\": ", frames, live, dropped);
        print_codes();
        printf(", \"open\": %d}\n", live);
    } else if (!strcmp(line, "quit")) {
        return 0;
    }
    fflush(stdout);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: %s HOST PORT HOST_HEADER PATH CHANNEL CONNECTIONS SAMPLE_EVERY CONCURRENCY TIMEOUT_S\n", argv[0]);
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 20000) {
        rl.rlim_cur = rl.rlim_max < 20000 ? rl.rlim_max : 20000;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "bad IPv4 address %s\n", argv[1]);
        return 2;
    }
    nconns = atoi(argv[6]);
    sample_every = atoi(argv[7]);
    concurrency = atoi(argv[8]);
    double timeout = atof(argv[9]);
    if (nconns < 1 || concurrency < 1 || timeout <= 0) {
        fprintf(stderr, "CONNECTIONS, CONCURRENCY and TIMEOUT_S must be positive\n");
        return 2;
    }
    request_len = (size_t)snprintf(request, sizeof request,
        "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", argv[4], argv[3]);
    char sub[256];
    int sublen = snprintf(sub, sizeof sub, "{\"op\":\"subscribe\",\"channel\":\"%s\"}", argv[5]);
    if (sublen >= 126 || request_len >= sizeof request) {
        fprintf(stderr, "channel or path too long\n");
        return 2;
    }
    subscribe_len = client_frame(subscribe_frame, 1, sub, (size_t)sublen);
    conns = calloc((size_t)nconns, sizeof *conns);
    samples = malloc(sizeof *samples * SAMPLE_CAP);
    ep = epoll_create1(0);
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);

    struct epoll_event evs[512];
    double t0 = now_s();
    double connect_deadline = t0 + timeout * (1.0 + (double)nconns / concurrency);
    int reported = 0;
    char line[256];
    size_t line_len = 0;
    while (now_s() - t0 < RUN_LIMIT_S) {
        if (!reported) {
            while (in_flight < concurrency && next_conn < nconns) start_connect(next_conn++);
            if ((live + failed + dropped >= nconns) || now_s() > connect_deadline) {
                int late = 0;
                for (int i = 0; i < next_conn; i++)
                    if (conns[i].state != LIVE && conns[i].state != CLOSED) {
                        conn_close(&conns[i], NULL);
                        late++;
                    }
                failed += nconns - next_conn;
                if (late || next_conn < nconns) note_error("timed out opening the connections");
                printf("{\"ready\": %d, \"failed\": %d, \"errors\": [", live, nconns - live);
                for (int k = 0; k < nerrors; k++) {
                    printf("%s\"", k ? ", " : "");
                    for (const char *p = errors[k]; *p; p++)
                        if (*p == '"' || *p == '\\') printf("\\%c", *p);
                        else if ((unsigned char)*p >= 32) putchar(*p);
                    printf("\"");
                }
                printf("], \"pid\": %d}\n", getpid());
                fflush(stdout);
                reported = 1;
            }
        }
        int k = epoll_wait(ep, evs, 512, 200);
        for (int e = 0; e < k; e++) {
            uint32_t i = evs[e].data.u32;
            if (i == UINT32_MAX) {
                ssize_t got = read(0, line + line_len, sizeof line - 1 - line_len);
                if (got <= 0) return 0;
                line_len += (size_t)got;
                char *nl;
                while ((nl = memchr(line, '\n', line_len))) {
                    *nl = 0;
                    if (!on_command(line)) return 0;
                    size_t used = (size_t)(nl - line) + 1;
                    memmove(line, nl + 1, line_len - used);
                    line_len -= used;
                }
                if (line_len == sizeof line - 1) line_len = 0;
                continue;
            }
            conn_t *c = &conns[i];
            if (c->state == CLOSED) continue;
            if (c->state == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    conn_close(c, strerror(err));
                    continue;
                }
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                c->state = HANDSHAKE;
                send_all(c, request, request_len);
                continue;
            }
            if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
        }
    }
    return 0;
}
