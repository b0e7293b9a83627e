#include "reasm.h"

#include <stdlib.h>
#include <string.h>

void reasm_init(reasm *r, size_t per_message, size_t all) {
  memset(r, 0, sizeof *r);
  r->per_message = per_message;
  r->all = all;
}

void reasm_fini(reasm *r) {
  for (size_t i = 0; i < r->n; i++) free(r->v[i].buf);
  free(r->v);
  r->v = NULL;
  r->n = r->cap = r->bytes = 0;
}

static reasm_part *find(reasm *r, uint32_t inc) {
  for (size_t i = 0; i < r->n; i++)
    if (r->v[i].key.inc == inc) return &r->v[i];
  return NULL;
}

static void drop(reasm *r, reasm_part *p) {
  r->bytes -= p->cap;
  free(p->buf);
  *p = r->v[--r->n];
}

static int same(const reasm_key *a, const reasm_key *b) {
  return a->kind == b->kind && a->to_id == b->to_id && a->from_id == b->from_id && a->corr == b->corr &&
         a->total == b->total;
}

static int refuse(reasm *r, reasm_part *p, reasm_key *dropped, const char **why, const char *text) {
  *dropped = p->key;
  *why = text;
  drop(r, p);
  return REASM_REFUSED;
}

int reasm_add(reasm *r, const reasm_key *key, size_t off, const char *data, size_t len, char **out, size_t *out_len,
              reasm_key *dropped, const char **why, uint64_t now_ns) {
  reasm_part *p = find(r, key->inc);
  if (off == 0) {
    if (p) return refuse(r, p, dropped, why, "a new message began before it was complete");
    *dropped = *key;
    *why = "bad size";
    if (key->total > r->per_message || len == 0 || len >= key->total) return REASM_REFUSED;
    if (r->n == r->cap) {
      size_t cap = r->cap ? r->cap * 2 : 4;
      reasm_part *v = realloc(r->v, cap * sizeof *v);
      *why = "out of memory";
      if (!v) return REASM_REFUSED;
      r->v = v;
      r->cap = cap;
    }
    p = &r->v[r->n++];
    memset(p, 0, sizeof *p);
    p->key = *key;
  } else if (!p) {
    return REASM_IGNORED;
  } else if (!same(key, &p->key) || off != p->have || len == 0 || len > p->key.total - p->have) {
    return refuse(r, p, dropped, why, "a chunk out of place");
  }
  if (p->have + len > p->cap) {
    /* Grows with what has come (doubling), never past the total. */
    size_t cap = p->cap ? p->cap * 2 : len;
    if (cap < p->have + len) cap = p->have + len;
    if (cap > p->key.total) cap = p->key.total;
    if (r->bytes - p->cap + cap > r->all)
      return refuse(r, p, dropped, why, "too many chunked messages in progress");
    char *buf = realloc(p->buf, cap);
    if (!buf) return refuse(r, p, dropped, why, "out of memory");
    r->bytes = r->bytes - p->cap + cap;
    p->buf = buf;
    p->cap = cap;
  }
  memcpy(p->buf + p->have, data, len);
  p->have += len;
  p->last_ns = now_ns;
  if (p->have < p->key.total) return REASM_MORE;
  *out = p->buf;
  *out_len = p->have;
  r->bytes -= p->cap;
  *p = r->v[--r->n];
  return REASM_WHOLE;
}

int reasm_expire(reasm *r, uint64_t now_ns, uint64_t idle_ns, reasm_key *dropped) {
  for (size_t i = 0; i < r->n; i++) {
    reasm_part *p = &r->v[i];
    if (now_ns > p->last_ns && now_ns - p->last_ns > idle_ns) {
      *dropped = p->key;
      drop(r, p);
      return 1;
    }
  }
  return 0;
}

int reasm_forget(reasm *r, uint32_t inc, reasm_key *dropped) {
  reasm_part *p = find(r, inc);
  if (!p) return 0;
  *dropped = p->key;
  drop(r, p);
  return 1;
}
