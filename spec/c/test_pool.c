/*
 * The isolates' small-block pool (src/pool.h): blocks never overlap, keep
 * their contents, are 16-byte aligned, are reused by class, and all go back
 * at once. Built with the sanitizers too, where ASan checks every access
 * against the chunks and LSan that pool_release frees them all.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

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
  check(((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) % 16 == 0, "16-byte alignment");
  pool_free(&p, b, 16);
  check(pool_alloc(&p, 9) == b, "a freed block comes back for its class");
  check(pool_same_class(17, 32) && !pool_same_class(16, 17) && pool_same_class(1, 16),
        "classes of 16 bytes");

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
      if ((uintptr_t)s->p % 16) bad_align++;
      s->tag = (unsigned char)(step * 7 + 1);
      memset(s->p, s->tag, s->n);
    }
  }
  for (int i = 0; i < SLOTS; i++) {
    if (slots[i].p && !intact(&slots[i])) overlap++;
  }
  check(overlap == 0, "no block overwrote another under random traffic");
  check(bad_align == 0, "every block 16-byte aligned");
  check(oom == 0, "no allocation failed");
  free(slots);

  pool_release(&p);
  check(p.chunks == NULL && p.bump == NULL, "released pool is empty");
  void *again = pool_alloc(&p, 40);
  check(again != NULL, "a released pool serves again");
  pool_release(&p);
  pool_release(&p); /* idempotent */

  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
