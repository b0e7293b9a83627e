#include "paths.h"

#include <stdlib.h>
#include <string.h>

/* A plain array: the replica holds other nodes' isolates, and lookups are
 * not on the message path (a ref, once looked up, sends without it). */

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
  plat_mutex_destroy(&p->lock);
}

static path_entry *find_id(paths *p, uint32_t node, uint64_t id) {
  for (size_t i = 0; i < p->n; i++)
    if (p->v[i].node == node && p->v[i].id == id) return &p->v[i];
  return NULL;
}

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
  if (r == 1) {
    p->v[p->n++] = (path_entry){node, id, pc, b, 0, 0};
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

/* Keeps the order entries came up in (lookup_isolates lists them so). */
static void remove_at(paths *p, size_t i) {
  entry_free(&p->v[i]);
  memmove(&p->v[i], &p->v[i + 1], (p->n - i - 1) * sizeof *p->v);
  p->n--;
}

/* Forgets the oldest down entries past the bound (the array is in up order). */
static void trim_down(paths *p) {
  for (size_t i = 0; i < p->n && p->ndown > PATHS_DOWN_KEEP;) {
    if (!p->v[i].down) {
      i++;
      continue;
    }
    remove_at(p, i);
    p->ndown--;
  }
}

static void mark_down(paths *p, path_entry *e) {
  e->down = 1;
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

int paths_find(paths *p, const char *path, remote_id *out) {
  plat_mutex_lock(&p->lock);
  int found = 0;
  for (size_t i = 0; i < p->n && !found; i++) {
    if (!p->v[i].down && p->v[i].path && strcmp(p->v[i].path, path) == 0) {
      *out = (remote_id){p->v[i].node, p->v[i].id};
      found = 1;
    }
  }
  plat_mutex_unlock(&p->lock);
  return found;
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
