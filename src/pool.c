#include "pool.h"

#include <stdlib.h>
#include <string.h>

/* A chunk: one header slot (the link, padded to keep blocks 16-aligned),
 * then blocks. 4 KiB in all, so an idle isolate wastes little of its last. */
#define CHUNK_BYTES 4096
#define CHUNK_HEADER 16

static size_t class_of(size_t n) { return (n - 1) / 16; }

void pool_init(pool *p) { memset(p, 0, sizeof *p); }

int pool_same_class(size_t a, size_t b) { return class_of(a) == class_of(b); }

void *pool_alloc(pool *p, size_t n) {
  size_t c = class_of(n);
  void *block = p->free[c];
  if (block) {
    memcpy(&p->free[c], block, sizeof(void *));
    return block;
  }
  size_t size = (c + 1) * 16;
  if ((size_t)(p->end - p->bump) < size) {
    /* The rest of the current chunk (less than one block) is left unused. */
    char *chunk = malloc(CHUNK_BYTES);
    if (!chunk) return NULL;
    memcpy(chunk, &p->chunks, sizeof(void *));
    p->chunks = chunk;
    p->bump = chunk + CHUNK_HEADER;
    p->end = chunk + CHUNK_BYTES;
  }
  block = p->bump;
  p->bump += size;
  return block;
}

void pool_free(pool *p, void *block, size_t n) {
  size_t c = class_of(n);
  memcpy(block, &p->free[c], sizeof(void *));
  p->free[c] = block;
}

void pool_release(pool *p) {
  void *chunk = p->chunks;
  while (chunk) {
    void *next;
    memcpy(&next, chunk, sizeof next);
    free(chunk);
    chunk = next;
  }
  pool_init(p);
}
