/*
 * pool — the small-block allocator behind each isolate's Lua state.
 *
 * Most of what a Lua state allocates is small (strings, closures, table
 * headers, upvalues): an idle isolate holds a few hundred such blocks.
 * glibc's malloc spends more instructions on each of them than Lua spends
 * using it, adds a header to every block, and scatters one isolate's blocks
 * among everybody's. The pool carves blocks of up to POOL_MAX bytes, in
 * 8-byte classes, from chunks of its own (1 KiB to 64 KiB, growing with the
 * pool), keeps a free list per class, and gives the chunks back all at once
 * when the state is closed.
 *
 * Not thread-safe: like the state it serves, a pool is used by one thread at
 * a time. Blocks never move between classes; the caller says each block's
 * size when it frees it (Lua's allocator interface does).
 */
#ifndef IC_POOL_H
#define IC_POOL_H

#include <stddef.h>

#define POOL_MAX 256
/* Classes 8 bytes apart: the strictest alignment a Lua state's objects need
 * (LUAI_MAXALIGN: a double, a pointer, a lua_Integer; a userdata's block
 * is never more aligned than that anyway, its header being 40 bytes). Half
 * the rounding of 16-byte classes: most of Lua's objects (a table's 56
 * bytes, a closure's 40, a string's 24 + length + 1) are a multiple of 8
 * and not of 16. */
#define POOL_STEP 8
#define POOL_CLASSES (POOL_MAX / POOL_STEP)

typedef struct pool {
  void *free[POOL_CLASSES]; /* per class: freed blocks, linked through their first word */
  char *bump, *end;         /* the untouched rest of the newest chunk */
  void *chunks;             /* every chunk, linked through its first word */
  size_t bytes;             /* of all the chunks */
} pool;

/* An empty pool (all zero is one too). */
void pool_init(pool *p);
/* A block of n bytes, 1 <= n <= POOL_MAX, POOL_STEP-aligned; NULL when no
 * memory is left for a new chunk. */
void *pool_alloc(pool *p, size_t n);
/* Gives back a block that pool_alloc(p, n) returned. */
void pool_free(pool *p, void *block, size_t n);
/* 1 when blocks of sizes a and b come from the same class. */
int pool_same_class(size_t a, size_t b);
/* A block of n bytes now holds m bytes of the same class, in place (only
 * the sanitizer's view of it changes). */
void pool_resize(void *block, size_t n, size_t m);
/* Frees every chunk: all blocks become invalid at once. */
void pool_release(pool *p);

#endif
