#include "paths.h"

#include <stdlib.h>
#include <string.h>

#define PATHS_TOMB SIZE_MAX

void paths_init(paths *p) {
  memset(p, 0, sizeof *p);
  plat_mutex_init(&p->lock);
}

static void entry_free(path_entry *e) {
  free(e->path);
  if (e->props) blob_release(e->props);
}

void paths_fini(paths *p) {
  for (size_t i = 0; i < p->n; i++) entry_free(&p->v[i]);
  free(p->v);
  free(p->by_id);
  free(p->by_path);
  plat_mutex_destroy(&p->lock);
}

/* ---- the indexes ---------------------------------------------------------- */

static size_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return (size_t)x;
}

static size_t hash_id(uint32_t node, uint64_t id) { return mix(id ^ ((uint64_t)node << 32 | node)); }

static size_t hash_path(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return mix(h);
}

static void id_insert(paths *p, size_t i) {
  size_t mask = p->id_cap - 1, j = hash_id(p->v[i].node, p->v[i].id) & mask;
  while (p->by_id[j]) j = (j + 1) & mask;
  p->by_id[j] = i + 1;
}

static void path_insert(paths *p, size_t i) {
  size_t mask = p->path_cap - 1, j = hash_path(p->v[i].path) & mask;
  while (p->by_path[j] && p->by_path[j] != PATHS_TOMB) j = (j + 1) & mask;
  if (!p->by_path[j]) p->path_used++;
  p->by_path[j] = i + 1;
}

/* Both indexes afresh, at least twice the entries' room (-1: no memory,
 * the old ones stay). */
static int rebuild(paths *p, size_t room) {
  size_t cap = 64;
  while (cap < room * 2) cap *= 2;
  size_t *ids = calloc(cap, sizeof *ids), *pths = calloc(cap, sizeof *pths);
  if (!ids || !pths) {
    free(ids);
    free(pths);
    return -1;
  }
  free(p->by_id);
  free(p->by_path);
  p->by_id = ids;
  p->by_path = pths;
  p->id_cap = p->path_cap = cap;
  p->path_used = 0;
  for (size_t i = 0; i < p->n; i++) {
    id_insert(p, i);
    if (p->v[i].path && !p->v[i].down) path_insert(p, i);
  }
  return 0;
}

static path_entry *find_id(paths *p, uint32_t node, uint64_t id) {
  if (!p->id_cap) return NULL;
  size_t mask = p->id_cap - 1;
  for (size_t j = hash_id(node, id) & mask; p->by_id[j]; j = (j + 1) & mask) {
    path_entry *e = &p->v[p->by_id[j] - 1];
    if (e->node == node && e->id == id) return e;
  }
  return NULL;
}

/* The live entry with that path that came up first, or NULL. */
static path_entry *find_path(paths *p, const char *path) {
  if (!p->path_cap) return NULL;
  size_t mask = p->path_cap - 1, best = SIZE_MAX;
  for (size_t j = hash_path(path) & mask; p->by_path[j]; j = (j + 1) & mask) {
    size_t k = p->by_path[j];
    if (k == PATHS_TOMB) continue;
    if (k - 1 < best && strcmp(p->v[k - 1].path, path) == 0) best = k - 1;
  }
  return best == SIZE_MAX ? NULL : &p->v[best];
}

static void path_forget(paths *p, path_entry *e) {
  if (!e->path || !p->path_cap) return;
  size_t mask = p->path_cap - 1, want = (size_t)(e - p->v) + 1;
  for (size_t j = hash_path(e->path) & mask; p->by_path[j]; j = (j + 1) & mask)
    if (p->by_path[j] == want) {
      p->by_path[j] = PATHS_TOMB;
      return;
    }
}

/* ---- changes -------------------------------------------------------------- */

int paths_add(paths *p, uint32_t node, uint64_t id, const char *path, size_t path_len, const char *props,
              size_t props_len) {
  char *pc = NULL;
  ic_blob *b = NULL;
  if (path) {
    pc = malloc(path_len + 1);
    if (!pc) return -1;
    memcpy(pc, path, path_len);
    pc[path_len] = 0;
  }
  if (props && props_len) {
    b = blob_new(props, props_len);
    if (!b) {
      free(pc);
      return -1;
    }
  }
  plat_mutex_lock(&p->lock);
  int r = 1;
  path_entry *known = find_id(p, node, id);
  if (known && known->pending && !known->down) {
    known->pending = 0; /* it came up: its own announce is what counts */
    if (!known->props && b) {
      known->props = b;
      b = NULL;
    }
    r = 2;
  } else if (known) {
    r = 0; /* already known (up, or already down: a late repeat) */
  } else if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 64;
    path_entry *v = realloc(p->v, cap * sizeof *v);
    if (!v) r = -1;
    else {
      p->v = v;
      p->cap = cap;
    }
  }
  /* Room in the indexes (at most half full, tombstones counted). */
  if (r == 1 && ((p->n + 1) * 2 > p->id_cap || (p->path_used + 1) * 2 > p->path_cap) && rebuild(p, p->n + 1))
    r = -1;
  if (r == 1) {
    p->v[p->n] = (path_entry){node, id, pc, b, 0, 0};
    id_insert(p, p->n);
    if (pc) path_insert(p, p->n);
    p->n++;
    pc = NULL;
    b = NULL;
  }
  plat_mutex_unlock(&p->lock);
  free(pc);
  if (b) blob_release(b);
  return r == 2 ? 1 : r;
}

int paths_add_pending(paths *p, uint32_t node, uint64_t id, const char *path, const char *props,
                      size_t props_len) {
  int r = paths_add(p, node, id, path, path ? strlen(path) : 0, props, props_len);
  if (r != 1) return r == 0 ? 1 : -1;
  plat_mutex_lock(&p->lock);
  path_entry *e = find_id(p, node, id);
  if (e) e->pending = 1;
  plat_mutex_unlock(&p->lock);
  return 1;
}

int paths_state(paths *p, uint32_t node, uint64_t id) {
  plat_mutex_lock(&p->lock);
  path_entry *e = find_id(p, node, id);
  int st = !e ? 0 : e->down ? -1 : 1;
  plat_mutex_unlock(&p->lock);
  return st;
}

/* Drops the oldest down entries (in up order) down to PATHS_DOWN_KEEP, once
 * there are twice as many: one pass, and the indexes rebuilt. */
static void trim_down(paths *p) {
  if (p->ndown <= 2 * PATHS_DOWN_KEEP) return;
  size_t drop = p->ndown - PATHS_DOWN_KEEP, w = 0;
  for (size_t i = 0; i < p->n; i++) {
    if (drop && p->v[i].down) {
      entry_free(&p->v[i]);
      drop--;
      p->ndown--;
      continue;
    }
    p->v[w++] = p->v[i];
  }
  p->n = w;
  if (rebuild(p, p->n + 1)) {
    /* No memory for new indexes: the old ones name moved entries. Empty
     * ones (nothing found) would be wrong too, so they are made in place. */
    memset(p->by_id, 0, p->id_cap * sizeof *p->by_id);
    memset(p->by_path, 0, p->path_cap * sizeof *p->by_path);
    p->path_used = 0;
    for (size_t i = 0; i < p->n; i++) {
      id_insert(p, i);
      if (p->v[i].path && !p->v[i].down) path_insert(p, i);
    }
  }
}

static void mark_down(paths *p, path_entry *e) {
  e->down = 1;
  path_forget(p, e);
  p->ndown++;
}

int paths_remove(paths *p, uint32_t node, uint64_t id) {
  plat_mutex_lock(&p->lock);
  path_entry *e = find_id(p, node, id);
  int r = !e ? 0 : e->down ? -1 : 1;
  if (r == 1) {
    mark_down(p, e);
    trim_down(p);
  }
  plat_mutex_unlock(&p->lock);
  return r;
}

remote_id *paths_remove_node(paths *p, uint32_t node, size_t *n) {
  plat_mutex_lock(&p->lock);
  remote_id *out = malloc((p->n + 1) * sizeof *out);
  size_t k = 0;
  for (size_t i = 0; i < p->n; i++) {
    if (p->v[i].node != node || p->v[i].down) continue;
    if (out) out[k++] = (remote_id){node, p->v[i].id};
    mark_down(p, &p->v[i]);
  }
  trim_down(p);
  plat_mutex_unlock(&p->lock);
  *n = k;
  return out;
}

/* ---- lookups -------------------------------------------------------------- */

int paths_find(paths *p, const char *path, remote_id *out) {
  plat_mutex_lock(&p->lock);
  path_entry *e = find_path(p, path);
  if (e) *out = (remote_id){e->node, e->id};
  plat_mutex_unlock(&p->lock);
  return e != NULL;
}

char *paths_path_of(paths *p, uint32_t node, uint64_t id) {
  plat_mutex_lock(&p->lock);
  path_entry *e = find_id(p, node, id);
  char *s = e && e->path ? strdup(e->path) : NULL;
  plat_mutex_unlock(&p->lock);
  return s;
}

ic_blob *paths_props_of(paths *p, uint32_t node, uint64_t id) {
  plat_mutex_lock(&p->lock);
  path_entry *e = find_id(p, node, id);
  ic_blob *b = e ? e->props : NULL;
  if (b) blob_retain(b);
  plat_mutex_unlock(&p->lock);
  return b;
}

remote_id *paths_prefix(paths *p, const char *prefix, size_t *n) {
  size_t plen = prefix ? strlen(prefix) : 0, k = 0;
  plat_mutex_lock(&p->lock);
  remote_id *out = malloc((p->n + 1) * sizeof *out);
  if (out)
    for (size_t i = 0; i < p->n; i++) {
      const path_entry *e = &p->v[i];
      if (e->down) continue;
      if (prefix ? e->path && strncmp(e->path, prefix, plen) == 0 : !e->pending) out[k++] = (remote_id){e->node, e->id};
    }
  plat_mutex_unlock(&p->lock);
  *n = k;
  return out;
}
