/*
 * C baselines for bench/bench.lua, measured in the same run on the same
 * machine, so the Lua figures can be read as ratios:
 *
 *   pingpong  two threads handing one token back and forth through a
 *             mutex + condition variable each (what a plain threaded design
 *             pays per round trip)
 *   mpsc      two producer threads pushing into one consumer's
 *             mutex-protected queue (messages/s)
 *   copy      msgpuck encode + decode of a map of 10,000 string -> number
 *             entries (ms per copy)
 *   parallel  the same arithmetic loop of N steps run twice, on one thread
 *             and then on two threads at once (the speed-up, 1 -> 2; the
 *             best of three rounds of each)
 *
 * Usage: bench_baseline pingpong|mpsc|copy|parallel N   (prints one number)
 */
#define MP_SOURCE 1
#include <msgpuck.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct slot {
  pthread_mutex_t m;
  pthread_cond_t c;
  long value;
  int full;
} slot;

typedef struct pingpong {
  slot a, b;
  long n;
} pingpong;

static void slot_put(slot *s, long v) {
  pthread_mutex_lock(&s->m);
  s->value = v;
  s->full = 1;
  pthread_cond_signal(&s->c);
  pthread_mutex_unlock(&s->m);
}

static long slot_take(slot *s) {
  pthread_mutex_lock(&s->m);
  while (!s->full) pthread_cond_wait(&s->c, &s->m);
  s->full = 0;
  long v = s->value;
  pthread_mutex_unlock(&s->m);
  return v;
}

static void *pong_main(void *arg) {
  pingpong *p = arg;
  for (long i = 0; i < p->n; i++) slot_put(&p->b, slot_take(&p->a));
  return NULL;
}

static double bench_pingpong(long n) {
  pingpong p;
  memset(&p, 0, sizeof p);
  pthread_mutex_init(&p.a.m, NULL);
  pthread_cond_init(&p.a.c, NULL);
  pthread_mutex_init(&p.b.m, NULL);
  pthread_cond_init(&p.b.c, NULL);
  p.n = n;
  pthread_t t;
  pthread_create(&t, NULL, pong_main, &p);
  double t0 = now();
  for (long i = 0; i < n; i++) {
    slot_put(&p.a, i);
    slot_take(&p.b);
  }
  double dt = now() - t0;
  pthread_join(t, NULL);
  return (double)n / dt; /* round trips per second */
}

typedef struct queue {
  pthread_mutex_t m;
  pthread_cond_t c;
  long *items;
  long head, tail, cap;
  long per_producer;
} queue;

static void *producer_main(void *arg) {
  queue *q = arg;
  for (long i = 0; i < q->per_producer; i++) {
    pthread_mutex_lock(&q->m);
    q->items[q->tail++ % q->cap] = i;
    pthread_cond_signal(&q->c);
    pthread_mutex_unlock(&q->m);
  }
  return NULL;
}

static double bench_mpsc(long n) {
  queue q;
  memset(&q, 0, sizeof q);
  pthread_mutex_init(&q.m, NULL);
  pthread_cond_init(&q.c, NULL);
  q.cap = 2 * n + 1; /* never full: measures the hand-over, not backpressure */
  q.items = malloc((size_t)q.cap * sizeof *q.items);
  q.per_producer = n;
  pthread_t t1, t2;
  double t0 = now();
  pthread_create(&t1, NULL, producer_main, &q);
  pthread_create(&t2, NULL, producer_main, &q);
  long got = 0, sum = 0;
  while (got < 2 * n) {
    pthread_mutex_lock(&q.m);
    while (q.head == q.tail) pthread_cond_wait(&q.c, &q.m);
    while (q.head < q.tail) {
      sum += q.items[q.head++ % q.cap];
      got++;
    }
    pthread_mutex_unlock(&q.m);
  }
  double dt = now() - t0;
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  free(q.items);
  if (sum < 0) puts("");
  return (double)(2 * n) / dt; /* messages per second */
}

static double bench_copy(long n) {
  enum { ENTRIES = 10000 };
  char *buf = malloc(ENTRIES * 32 + 16);
  double t0 = now();
  double check = 0;
  for (long r = 0; r < n; r++) {
    char *w = mp_encode_map(buf, ENTRIES);
    char key[16];
    for (int i = 0; i < ENTRIES; i++) {
      int len = snprintf(key, sizeof key, "key%d", i);
      w = mp_encode_str(w, key, (uint32_t)len);
      w = mp_encode_double(w, i * 0.5);
    }
    const char *p = buf;
    uint32_t size = mp_decode_map(&p);
    for (uint32_t i = 0; i < size; i++) {
      uint32_t klen;
      const char *k = mp_decode_str(&p, &klen);
      check += mp_decode_double(&p) + (double)k[klen - 1];
    }
  }
  double dt = now() - t0;
  free(buf);
  if (check < 0) puts("");
  return dt / (double)n * 1000.0; /* ms per copy */
}

/* The loop of bench.lua's parallel workload: no memory traffic, so two
 * threads can only be held back by the machine, not by each other. */
static void *spin_main(void *arg) {
  long n = *(long *)arg;
  volatile double x = 0;
  for (long i = 0; i < n; i++) x = x + (double)(i % 7) * 0.5;
  return NULL;
}

/* Best of three interleaved rounds of each (one thread, two threads): the
 * machine is shared, and the best round is the one least disturbed. */
static double bench_parallel(long n) {
  double one = 1e30, two = 1e30;
  for (int round = 0; round < 3; round++) {
    pthread_t t1, t2;
    double t0 = now();
    spin_main(&n);
    spin_main(&n);
    double dt = now() - t0;
    if (dt < one) one = dt;
    t0 = now();
    pthread_create(&t1, NULL, spin_main, &n);
    pthread_create(&t2, NULL, spin_main, &n);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    dt = now() - t0;
    if (dt < two) two = dt;
  }
  return one / two; /* speed-up of two threads over one */
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s pingpong|mpsc|copy|parallel N\n", argv[0]);
    return 2;
  }
  long n = atol(argv[2]);
  double r;
  if (strcmp(argv[1], "pingpong") == 0) r = bench_pingpong(n);
  else if (strcmp(argv[1], "mpsc") == 0) r = bench_mpsc(n);
  else if (strcmp(argv[1], "copy") == 0) r = bench_copy(n);
  else if (strcmp(argv[1], "parallel") == 0) r = bench_parallel(n);
  else {
    fprintf(stderr, "unknown benchmark %s\n", argv[1]);
    return 2;
  }
  printf("%.6f\n", r);
  return 0;
}
