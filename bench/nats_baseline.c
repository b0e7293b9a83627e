/*
 * Raw cnats baselines for bench/bench_nats.lua: what the NATS client library
 * itself achieves on this machine against the same nats-server, so that
 * isolate_cluster's cross-node figures can be read as ratios of it.
 *
 *   nats_baseline URL pubsub N   N 64-byte messages published on one
 *                                connection and received by an asynchronous
 *                                subscription on a second one (two nodes, in
 *                                the simplest form); prints messages/s from
 *                                the first publish to the last delivery
 *   nats_baseline URL rtt N      N request/reply round trips of 64 bytes
 *                                between two connections (natsConnection_Request
 *                                on one, a responder callback on the other);
 *                                prints the median and p99 in microseconds
 *
 * Output: "key value" lines (pubsub_msgs_per_s, pubsub_lost, rtt_median_us,
 * rtt_p99_us, rtt_n). Exit status 0 on success, 1 with a message on stderr.
 *
 * Threads: cnats delivers each subscription's messages on a thread of its
 * own; the counters they touch are guarded by one mutex and a condition
 * variable, the only state shared with the main thread.
 *
 * Build: needs libnats (pkg-config libnats); cc -O2 nats_baseline.c -lnats
 * -lpthread.
 */
#include <nats/nats.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BASELINE_MSG_SIZE 64

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct counter {
  pthread_mutex_t m;
  pthread_cond_t c;
  long got;
  long want;
  double last;
} counter;

static void on_count(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
  counter *k = closure;
  (void)nc;
  (void)sub;
  natsMsg_Destroy(msg);
  pthread_mutex_lock(&k->m);
  if (++k->got >= k->want) {
    k->last = now();
    pthread_cond_signal(&k->c);
  }
  pthread_mutex_unlock(&k->m);
}

static void on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
  (void)sub;
  (void)closure;
  const char *reply = natsMsg_GetReply(msg);
  if (reply != NULL) natsConnection_Publish(nc, reply, natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
  natsMsg_Destroy(msg);
}

static int fail(const char *what, natsStatus s) {
  fprintf(stderr, "nats_baseline: %s: %s (%s)\n", what, natsStatus_GetText(s), nats_GetLastError(NULL));
  return 1;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int bench_pubsub(natsConnection *pub, natsConnection *subc, long n) {
  counter k = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, n, 0 };
  natsSubscription *sub = NULL;
  natsStatus s = natsConnection_Subscribe(&sub, subc, "bench.pubsub", on_count, &k);
  if (s != NATS_OK) return fail("subscribe", s);
  /* Unlimited pending: a slow start of the delivery thread must not drop. */
  natsSubscription_SetPendingLimits(sub, -1, -1);
  natsConnection_Flush(subc);
  char payload[BASELINE_MSG_SIZE];
  memset(payload, 'x', sizeof payload);
  double t0 = now();
  for (long i = 0; i < n && s == NATS_OK; i++) {
    s = natsConnection_Publish(pub, "bench.pubsub", payload, (int)sizeof payload);
  }
  if (s == NATS_OK) s = natsConnection_FlushTimeout(pub, 60000);
  if (s != NATS_OK) {
    natsSubscription_Destroy(sub);
    return fail("publish", s);
  }
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 60;
  pthread_mutex_lock(&k.m);
  while (k.got < n) {
    if (pthread_cond_timedwait(&k.c, &k.m, &deadline) != 0) break;
  }
  long got = k.got;
  double last = k.last;
  pthread_mutex_unlock(&k.m);
  natsSubscription_Unsubscribe(sub);
  natsSubscription_Destroy(sub);
  if (got < n) last = now();
  printf("pubsub_msgs_per_s %.1f\npubsub_lost %ld\n", (double)got / (last - t0), n - got);
  return got < n;
}

static int bench_rtt(natsConnection *req, natsConnection *resp, long n) {
  natsSubscription *sub = NULL;
  natsStatus s = natsConnection_Subscribe(&sub, resp, "bench.rtt", on_request, NULL);
  if (s != NATS_OK) return fail("subscribe", s);
  natsConnection_Flush(resp);
  double *t = malloc(sizeof *t * (size_t)n);
  if (t == NULL) {
    natsSubscription_Destroy(sub);
    fprintf(stderr, "nats_baseline: out of memory\n");
    return 1;
  }
  char payload[BASELINE_MSG_SIZE];
  memset(payload, 'r', sizeof payload);
  long done = 0;
  for (; done < n; done++) {
    natsMsg *reply = NULL;
    double t0 = now();
    s = natsConnection_Request(&reply, req, "bench.rtt", payload, (int)sizeof payload, 5000);
    if (s != NATS_OK) break;
    t[done] = (now() - t0) * 1e6;
    natsMsg_Destroy(reply);
  }
  natsSubscription_Unsubscribe(sub);
  natsSubscription_Destroy(sub);
  if (s != NATS_OK) {
    free(t);
    return fail("request", s);
  }
  qsort(t, (size_t)n, sizeof *t, cmp_double);
  printf("rtt_n %ld\nrtt_median_us %.1f\nrtt_p99_us %.1f\n", n, t[n / 2], t[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1]);
  free(t);
  return 0;
}

/* One connection to url. send_asap: each publish is written at once instead
 * of being buffered for cnats's flusher thread, which otherwise adds up to
 * about a millisecond to every round trip (the flusher batches writes). The
 * throughput run keeps the default buffering, the latency run writes at once:
 * each measured the way cnats does best. */
static natsStatus connect_to(natsConnection **nc, const char *url, bool send_asap) {
  natsOptions *o = NULL;
  natsStatus s = natsOptions_Create(&o);
  if (s == NATS_OK) s = natsOptions_SetURL(o, url);
  if (s == NATS_OK) s = natsOptions_SetSendAsap(o, send_asap);
  if (s == NATS_OK) s = natsConnection_Connect(nc, o);
  natsOptions_Destroy(o);
  return s;
}

int main(int argc, char **argv) {
  if (argc != 4 || (strcmp(argv[2], "pubsub") != 0 && strcmp(argv[2], "rtt") != 0)) {
    fprintf(stderr, "usage: nats_baseline URL pubsub|rtt N\n");
    return 2;
  }
  long n = atol(argv[3]);
  if (n < 1) n = 1;
  bool asap = strcmp(argv[2], "rtt") == 0;
  natsConnection *a = NULL, *b = NULL;
  natsStatus s = connect_to(&a, argv[1], asap);
  if (s == NATS_OK) s = connect_to(&b, argv[1], asap);
  int rc;
  if (s != NATS_OK) {
    rc = fail("connect", s);
  } else if (strcmp(argv[2], "pubsub") == 0) {
    rc = bench_pubsub(a, b, n);
  } else {
    rc = bench_rtt(a, b, n);
  }
  natsConnection_Destroy(a);
  natsConnection_Destroy(b);
  nats_Close();
  return rc;
}
