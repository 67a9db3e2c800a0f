/* A small UDP DNS load generator: keeps N queries in flight against one server.
 *
 *   dnsload HOST PORT QUERYFILE SECONDS INFLIGHT [COUNT]
 *
 * COUNT: stop once COUNT queries are answered, sending no more than that (a fixed
 * number of queries, for instruction counts: bench/dns_callgrind.py); SECONDS still bounds the run.
 * QUERYFILE: wire-format queries, each preceded by a 2-byte big-endian length (IDs are
 * overwritten).  Each in-flight slot owns an ID; a reply frees its slot, which sends the
 * next query of the file (round robin).  A slot unanswered for 1 s counts as lost and
 * sends again.  Batched with recvmmsg/sendmmsg so the generator is cheaper per query than
 * the servers it drives (dnsperf is not: it tops out near 150k queries/s on one core).
 * Prints one JSON line: sent, answered, lost, qps, avg_ms, p50_ms, p99_ms, rcodes.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <poll.h>

#define BATCH 64
#define MAXQ 512

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: dnsload HOST PORT QUERYFILE SECONDS INFLIGHT [COUNT]\n");
        return 2;
    }
    double seconds = atof(argv[4]);
    int inflight = atoi(argv[5]);
    unsigned long long count = argc == 7 ? strtoull(argv[6], NULL, 10) : 0;   /* 0: no limit */
    if (inflight < 1 || inflight > 60000) { fprintf(stderr, "inflight 1..60000\n"); return 2; }

    FILE *f = fopen(argv[3], "rb");
    if (!f) { perror("queries"); return 1; }
    size_t nq = 0, capq = 1024;
    unsigned char (*qs)[MAXQ] = malloc(capq * MAXQ);
    int *qlen = malloc(capq * sizeof(int));
    unsigned char lb[2];
    while (fread(lb, 1, 2, f) == 2) {
        int n = (lb[0] << 8) | lb[1];
        if (n < 12 || n > MAXQ) { fprintf(stderr, "bad query length %d\n", n); return 1; }
        if (nq == capq) { capq *= 2; qs = realloc(qs, capq * MAXQ); qlen = realloc(qlen, capq * sizeof(int)); }
        if (fread(qs[nq], 1, n, f) != (size_t)n) { fprintf(stderr, "short file\n"); return 1; }
        qlen[nq++] = n;
    }
    fclose(f);
    if (!nq) { fprintf(stderr, "no queries\n"); return 1; }

    struct sockaddr_in dst = {0};
    dst.sin_family = AF_INET;
    dst.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &dst.sin_addr);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int big = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) { perror("connect"); return 1; }

    double *sent_at = calloc(inflight, sizeof(double));
    size_t lat_cap = 1 << 20, nlat = 0;
    double *lat = malloc(lat_cap * sizeof(double));
    unsigned long long sent = 0, answered = 0, lost = 0, rcodes[16] = {0};
    size_t next = 0;

    static unsigned char sbuf[BATCH][MAXQ], rbuf[BATCH][4096];
    struct mmsghdr smsg[BATCH], rmsg[BATCH];
    struct iovec siov[BATCH], riov[BATCH];
    memset(smsg, 0, sizeof smsg);
    memset(rmsg, 0, sizeof rmsg);
    for (int i = 0; i < BATCH; i++) {
        siov[i].iov_base = sbuf[i];
        smsg[i].msg_hdr.msg_iov = &siov[i];
        smsg[i].msg_hdr.msg_iovlen = 1;
        riov[i].iov_base = rbuf[i];
        riov[i].iov_len = sizeof rbuf[i];
        rmsg[i].msg_hdr.msg_iov = &riov[i];
        rmsg[i].msg_hdr.msg_iovlen = 1;
    }
    int *pending = malloc(inflight * sizeof(int));   /* slots to (re)send */
    int npending = 0;
    for (int i = 0; i < inflight; i++) pending[npending++] = i;

    double start = now(), end = start + seconds, last_sweep = start;
    while (1) {
        double t = now();
        if (t >= end || (count && answered >= count)) break;
        /* send what is pending, in batches */
        while (npending > 0 && (!count || sent - lost < count)) {   /* (a lost query is sent again) */
            int n = npending < BATCH ? npending : BATCH;
            if (count && n > count - (sent - lost)) n = count - (sent - lost);
            for (int i = 0; i < n; i++) {
                int slot = pending[npending - 1 - i];
                size_t q = next++ % nq;
                memcpy(sbuf[i], qs[q], qlen[q]);
                sbuf[i][0] = slot >> 8;
                sbuf[i][1] = slot & 0xFF;
                siov[i].iov_len = qlen[q];
                sent_at[slot] = t;
            }
            int k = sendmmsg(fd, smsg, n, 0);
            if (k <= 0) break;
            npending -= k;
            sent += k;
        }
        struct pollfd p = {fd, POLLIN, 0};
        poll(&p, 1, 10);
        int got;
        while ((got = recvmmsg(fd, rmsg, BATCH, MSG_DONTWAIT, NULL)) > 0) {   /* drain */
        t = now();
        for (int i = 0; i < got; i++) {
            if (rmsg[i].msg_len < 12) continue;
            int slot = (rbuf[i][0] << 8) | rbuf[i][1];
            if (slot >= inflight || sent_at[slot] == 0) continue;
            double l = t - sent_at[slot];
            sent_at[slot] = 0;
            answered++;
            rcodes[rbuf[i][3] & 15]++;
            if (nlat == lat_cap) { lat_cap *= 2; lat = realloc(lat, lat_cap * sizeof(double)); }
            lat[nlat++] = l;
            pending[npending++] = slot;
        }
        if (got < BATCH) break;
        }
        t = now();
        if (t - last_sweep > 0.25) {   /* slots waiting more than 1 s: lost */
            last_sweep = t;
            for (int s = 0; s < inflight; s++) {
                if (sent_at[s] != 0 && t - sent_at[s] > 1.0) {
                    sent_at[s] = 0;
                    lost++;
                    pending[npending++] = s;
                }
            }
        }
    }
    double elapsed = now() - start;
    qsort(lat, nlat, sizeof(double), cmp_double);
    double sum = 0;
    for (size_t i = 0; i < nlat; i++) sum += lat[i];
    printf("{\"sent\": %llu, \"answered\": %llu, \"lost\": %llu, \"seconds\": %.3f, \"qps\": %.0f, "
           "\"avg_ms\": %.4f, \"p50_ms\": %.4f, \"p99_ms\": %.4f, \"noerror\": %llu, \"nxdomain\": %llu, "
           "\"other_rcode\": %llu}\n",
           sent, answered, lost, elapsed, answered / elapsed,
           nlat ? sum / nlat * 1e3 : 0, nlat ? lat[nlat / 2] * 1e3 : 0,
           nlat ? lat[(size_t)(nlat * 0.99)] * 1e3 : 0,
           rcodes[0], rcodes[3], answered - rcodes[0] - rcodes[3]);
    return 0;
}
