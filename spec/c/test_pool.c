/*
 * The isolates' small-block pool (src/pool.h): blocks never overlap, keep
 * their contents, are 8-byte aligned, are reused by class, and all go back
 * at once. Built with the sanitizers too, where ASan checks every access
 * against the chunks and LSan that pool_release frees them all.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pool.h"

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

#ifdef TEST_ASAN
/* Runs what in a child process; 1 when the child died (ASan aborted it). */
static int dies(void (*what)(void))
{
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    /* ASan's report would only be noise in the test's output. */
    if (freopen("/dev/null", "w", stderr) == NULL) _exit(3);
    what();
    _exit(0);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return 0;
  return !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static volatile char sink;

static void use_after_free(void)
{
  pool p;
  pool_init(&p);
  char *b = pool_alloc(&p, 24);
  pool_free(&p, b, 24);
  sink = b[12];
}

static void past_the_end(void)
{
  pool p;
  pool_init(&p);
  char *b = pool_alloc(&p, 20);
  sink = b[20]; /* inside the 32-byte class, past the 20 asked for */
}

static void past_a_shrink(void)
{
  pool p;
  pool_init(&p);
  char *b = pool_alloc(&p, 30);
  pool_resize(b, 30, 18);
  sink = b[18];
}

static void double_free(void)
{
  pool p;
  pool_init(&p);
  char *b = pool_alloc(&p, 24);
  pool_free(&p, b, 24);
  pool_free(&p, b, 24);
}
#endif

static int passed, failed;

static void check(int ok, const char *what)
{
  if (ok) {
    passed++;
  } else {
    failed++;
    printf("FAIL %s\n", what);
  }
}

typedef struct live {
  unsigned char *p;
  size_t n;
  unsigned char tag;
} live;

static int intact(const live *b)
{
  for (size_t i = 0; i < b->n; i++) {
    if (b->p[i] != b->tag)
      return 0;
  }
  return 1;
}

int main(void)
{
  pool p;
  pool_init(&p);

  /* Alignment, and reuse of a freed block by its class. */
  void *a = pool_alloc(&p, 1), *b = pool_alloc(&p, 16), *c = pool_alloc(&p, POOL_MAX);
  check(a && b && c, "first blocks");
  check(((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) % 8 == 0, "8-byte alignment");
  pool_free(&p, b, 16);
  check(pool_alloc(&p, 9) == b, "a freed block comes back for its class");
  check(pool_same_class(9, 16) && !pool_same_class(8, 9) && pool_same_class(1, 8) && !pool_same_class(16, 17),
        "classes of 8 bytes");
  /* A 56-byte block (a Lua table) takes 56 bytes, not 64: the next block
   * of the chunk starts right after it. */
  void *t1 = pool_alloc(&p, 56), *t2 = pool_alloc(&p, 56);
  check((char *)t2 - (char *)t1 == 56, "blocks rounded to 8 bytes, not 16");

  /* The rest of a chunk that a block did not fit in serves its own class. */
  {
    pool q;
    pool_init(&q);
    void *first = pool_alloc(&q, POOL_MAX);
    void *chunk = q.chunks;
    char *rest = NULL;
    size_t rest_n = 0;
    while (q.chunks == chunk) {
      rest = q.bump;
      rest_n = (size_t)(q.end - q.bump);
      pool_alloc(&q, POOL_MAX);
    }
    check(first && rest_n > 0 && rest_n < POOL_MAX, "a chunk ends with a rest smaller than a block");
    check(rest_n % POOL_STEP != 0 || pool_alloc(&q, rest_n) == rest, "the rest of a chunk is a block of its class");
    pool_release(&q);
  }
  /* Chunks grow with the pool: a few hundred for 4 MB of blocks, not
   * thousands. */
  {
    pool q;
    pool_init(&q);
    int ok = 1;
    for (int i = 0; i < 4 * 1024 * 1024 / 128; i++) ok &= pool_alloc(&q, 128) != NULL;
    size_t chunks = 0;
    for (void *ch = q.chunks; ch; ch = *(void **)ch) chunks++;
    check(ok && chunks < 200 && q.bytes >= 4 * 1024 * 1024, "chunks grow with the pool");
    pool_release(&q);
  }

  /* Random traffic: no block ever overwrites another. */
  enum { SLOTS = 4096, STEPS = 400000 };
  live *slots = calloc(SLOTS, sizeof *slots);
  uint32_t rnd = 12345;
  int overlap = 0, bad_align = 0, oom = 0;
  for (int step = 0; step < STEPS; step++) {
    rnd = rnd * 1103515245u + 12345u;
    live *s = &slots[(rnd >> 8) % SLOTS];
    if (s->p) {
      if (!intact(s)) overlap++;
      pool_free(&p, s->p, s->n);
      s->p = NULL;
    } else {
      s->n = 1 + (rnd >> 20) % POOL_MAX;
      s->p = pool_alloc(&p, s->n);
      if (!s->p) {
        oom++;
        continue;
      }
      if ((uintptr_t)s->p % 8) bad_align++;
      s->tag = (unsigned char)(step * 7 + 1);
      memset(s->p, s->tag, s->n);
    }
  }
  for (int i = 0; i < SLOTS; i++) {
    if (slots[i].p && !intact(&slots[i])) overlap++;
  }
  check(overlap == 0, "no block overwrote another under random traffic");
  check(bad_align == 0, "every block 8-byte aligned");
  check(oom == 0, "no allocation failed");
  free(slots);

  pool_release(&p);
  check(p.chunks == NULL && p.bump == NULL, "released pool is empty");
  void *again = pool_alloc(&p, 40);
  check(again != NULL, "a released pool serves again");
  pool_release(&p);
  pool_release(&p); /* idempotent */

#ifdef TEST_ASAN
  check(dies(use_after_free), "ASan: a read after free aborts");
  check(dies(past_the_end), "ASan: a read past the size asked for aborts");
  check(dies(double_free), "ASan: a double free aborts");
  check(dies(past_a_shrink), "ASan: a read past a block shrunk in place aborts");
  {
    /* ...and a block grown in place may be used to its new size. */
    pool q;
    pool_init(&q);
    char *g = pool_alloc(&q, 17);
    pool_resize(g, 17, 32);
    memset(g, 1, 32);
    check(g[31] == 1, "a block grown in place is usable to its new size");
    pool_release(&q);
  }
#endif

  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
