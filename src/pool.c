#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Under AddressSanitizer the pool tells it which bytes are handed out: the
 * rest of a chunk and every freed block are poisoned, so a read past a
 * block's size or after its free is reported as for malloc'ed memory, and a
 * block freed twice aborts. */
#if defined(__SANITIZE_ADDRESS__)
#define POOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_ASAN 1
#endif
#endif
#ifdef POOL_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* A chunk: one header slot (the link, padded to keep blocks aligned), then
 * blocks. 4 KiB in all, so an idle isolate wastes little of its last. */
#define CHUNK_BYTES 4096
#define CHUNK_HEADER 16

static size_t class_of(size_t n) { return (n - 1) / POOL_STEP; }

void pool_init(pool *p) { memset(p, 0, sizeof *p); }

int pool_same_class(size_t a, size_t b) { return class_of(a) == class_of(b); }

void pool_resize(void *block, size_t n, size_t m) {
  POISON(block, (class_of(n) + 1) * POOL_STEP);
  UNPOISON(block, m);
}

void *pool_alloc(pool *p, size_t n) {
  size_t c = class_of(n);
  void *block = p->free[c];
  if (block) {
    UNPOISON(block, sizeof(void *));
    memcpy(&p->free[c], block, sizeof(void *));
    POISON(block, (c + 1) * POOL_STEP);
    UNPOISON(block, n);
    return block;
  }
  size_t size = (c + 1) * POOL_STEP;
  if ((size_t)(p->end - p->bump) < size) {
    /* The rest of the current chunk (less than one block) is left unused. */
    char *chunk = malloc(CHUNK_BYTES);
    if (!chunk) return NULL;
    memcpy(chunk, &p->chunks, sizeof(void *));
    p->chunks = chunk;
    p->bump = chunk + CHUNK_HEADER;
    p->end = chunk + CHUNK_BYTES;
    POISON(p->bump, (size_t)(p->end - p->bump));
  }
  block = p->bump;
  p->bump += size;
  UNPOISON(block, n);
  return block;
}

void pool_free(pool *p, void *block, size_t n) {
  size_t c = class_of(n);
#ifdef POOL_ASAN
  if (__asan_address_is_poisoned(block)) {
    fprintf(stderr, "pool: block %p of %zu bytes freed twice (or never handed out)\n", block, n);
    abort();
  }
  POISON(block, (c + 1) * POOL_STEP);
  UNPOISON(block, sizeof(void *));
#endif
  memcpy(block, &p->free[c], sizeof(void *));
  p->free[c] = block;
#ifdef POOL_ASAN
  POISON(block, sizeof(void *));
#endif
}

void pool_release(pool *p) {
  void *chunk = p->chunks;
  while (chunk) {
    void *next;
    memcpy(&next, chunk, sizeof next);
    UNPOISON((char *)chunk + CHUNK_HEADER, CHUNK_BYTES - CHUNK_HEADER);
    free(chunk);
    chunk = next;
  }
  pool_init(p);
}
