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
#include <malloc.h> /* malloc_usable_size, which ASan provides */
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* A chunk: the link to the next chunk (8 bytes, so blocks stay 8-byte
 * aligned), then blocks. A pool's first chunk (CHUNK_FIRST) holds about
 * half of what every isolate's boot takes in small blocks (5 KB for a lean
 * one, 6 KB with the base library); the next ones grow with the pool: a
 * sixteenth of what it holds already, between CHUNK_MIN and CHUNK_MAX
 * bytes. An isolate leaves the untouched rest of its newest chunk unused
 * for as long as it lives, half a chunk on average, and each chunk costs a
 * header and malloc's own: small chunks for a small heap (an idle isolate
 * holds 9 to 12 KB) keep both low, larger ones for a larger heap keep the
 * number of chunks down. Each size is a multiple of 16 less malloc's 8-byte
 * header (glibc), so that malloc rounds nothing up. */
#define CHUNK_LINK 8
#define CHUNK_FIRST (3072 - 8)
#define CHUNK_MIN (512 - 8)
#define CHUNK_MAX (65536 - 8)

static size_t class_of(size_t n) { return (n - 1) / POOL_STEP; }

void pool_init(pool *p) { memset(p, 0, sizeof *p); }

int pool_same_class(size_t a, size_t b) { return class_of(a) == class_of(b); }

void pool_resize(void *block, size_t n, size_t m) {
  POISON(block, (class_of(n) + 1) * POOL_STEP);
  UNPOISON(block, m);
}

/* Puts a block of class c on its free list (it is poisoned but for the
 * link while it lies there). */
static void push_free(pool *p, void *block, size_t c) {
  UNPOISON(block, sizeof(void *));
  memcpy(block, &p->free[c], sizeof(void *));
  p->free[c] = block;
  POISON(block, sizeof(void *));
}

/* A block of class c carved from a new chunk, or NULL when malloc has no
 * memory for one. Out of line (and cold): inlined, its registers would
 * cost every pool_alloc a prologue and an epilogue. */
__attribute__((noinline, cold)) static void *alloc_from_new_chunk(pool *p, size_t c, size_t n) {
  size_t want = p->bytes / 16;
  size_t size = !p->bytes ? CHUNK_FIRST
                : want < CHUNK_MIN ? CHUNK_MIN : want > CHUNK_MAX ? CHUNK_MAX : (want | 15) - 7;
  char *chunk = malloc(size);
  if (!chunk) return NULL;
  /* The rest of the chunk before it (less than the block that did not fit,
   * a multiple of 8 bytes) is a block of its class. */
  size_t rest = (size_t)(p->end - p->bump);
  if (rest >= POOL_STEP) push_free(p, p->bump, class_of(rest));
  memcpy(chunk, &p->chunks, sizeof(void *));
  p->chunks = chunk;
  p->bytes += size;
  char *block = chunk + CHUNK_LINK;
  p->bump = block + (c + 1) * POOL_STEP;
  p->end = chunk + size;
  POISON(block, size - CHUNK_LINK);
  UNPOISON(block, n);
  return block;
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
  if ((size_t)(p->end - p->bump) < size) return alloc_from_new_chunk(p, c, n);
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
#endif
  POISON(block, (c + 1) * POOL_STEP);
  push_free(p, block, c);
}

void pool_release(pool *p) {
  void *chunk = p->chunks;
  while (chunk) {
    void *next;
    memcpy(&next, chunk, sizeof next);
#ifdef POOL_ASAN
    UNPOISON(chunk, malloc_usable_size(chunk));
#endif
    free(chunk);
    chunk = next;
  }
  pool_init(p);
}
