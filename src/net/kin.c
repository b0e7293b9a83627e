#include "kin.h"

#include <stdlib.h>
#include <string.h>

void kin_init(kin *k) { memset(k, 0, sizeof *k); }

void kin_fini(kin *k) {
  free(k->v);
  memset(k, 0, sizeof *k);
}

int kin_add(kin *k, uint32_t inc, uint64_t remote, uint64_t local) {
  if (k->n == k->cap) {
    size_t cap = k->cap ? k->cap * 2 : 16;
    kin_entry *v = realloc(k->v, cap * sizeof *v);
    if (!v) return -1;
    k->v = v;
    k->cap = cap;
  }
  k->v[k->n++] = (kin_entry){inc, remote, local};
  return 0;
}

static int matches(const kin_entry *e, uint32_t inc, uint64_t remote, int all) {
  return inc == 0 || (e->inc == inc && (all || e->remote == remote));
}

uint64_t *kin_take(kin *k, uint32_t inc, uint64_t remote, int all, size_t *n) {
  *n = 0;
  size_t count = 0;
  for (size_t i = 0; i < k->n; i++) count += matches(&k->v[i], inc, remote, all);
  if (!count) return NULL;
  uint64_t *out = malloc(count * sizeof *out);
  if (!out) return NULL;
  size_t w = 0;
  for (size_t i = 0; i < k->n; i++) {
    if (matches(&k->v[i], inc, remote, all)) out[(*n)++] = k->v[i].local;
    else k->v[w++] = k->v[i];
  }
  k->n = w;
  return out;
}

void kin_remove_local(kin *k, uint64_t local) {
  size_t w = 0;
  for (size_t i = 0; i < k->n; i++)
    if (k->v[i].local != local) k->v[w++] = k->v[i];
  k->n = w;
}
