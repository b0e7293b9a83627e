#include "membership.h"

#include <stdlib.h>
#include <string.h>

void membership_init(membership *ms) { memset(ms, 0, sizeof *ms); }

static void member_free(member *m) {
  if (m->up) link_fini(&m->link);
  free(m->outbox);
  free(m);
}

void membership_fini(membership *ms) {
  for (size_t i = 0; i < ms->n; i++) member_free(ms->v[i]);
  free(ms->v);
  memset(ms, 0, sizeof *ms);
}

member *membership_find(membership *ms, uint32_t inc) {
  for (size_t i = 0; i < ms->n; i++)
    if (ms->v[i]->inc == inc) return ms->v[i];
  return NULL;
}

member *membership_find_name(membership *ms, const char *name, size_t len) {
  for (size_t i = 0; i < ms->n; i++) {
    member *m = ms->v[i];
    if (m->up && strlen(m->name) == len && memcmp(m->name, name, len) == 0) return m;
  }
  return NULL;
}

/* Forgets the oldest down member once too many are kept. */
static void prune_down(membership *ms) {
  size_t down = 0, oldest = SIZE_MAX;
  for (size_t i = 0; i < ms->n; i++) {
    if (ms->v[i]->up) continue;
    down++;
    if (oldest == SIZE_MAX || ms->v[i]->down_ns < ms->v[oldest]->down_ns) oldest = i;
  }
  if (down <= MEMBERSHIP_DOWN_KEEP) return;
  member_free(ms->v[oldest]);
  ms->v[oldest] = ms->v[--ms->n];
}

member *membership_add(membership *ms, uint32_t inc, const char *name, size_t len, uint64_t now_ns,
                       size_t window_frames, size_t window_bytes) {
  if (len > ENVELOPE_NAME_MAX) return NULL;
  if (ms->n == ms->cap) {
    size_t cap = ms->cap ? ms->cap * 2 : 16;
    member **v = realloc(ms->v, cap * sizeof *v);
    if (!v) return NULL;
    ms->v = v;
    ms->cap = cap;
  }
  member *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->inc = inc;
  memcpy(m->name, name, len);
  m->name[len] = 0;
  m->up = 1;
  m->last_seen_ns = now_ns;
  link_init(&m->link, window_frames, window_bytes);
  ms->v[ms->n++] = m;
  return m;
}

void membership_set_down(membership *ms, member *m, uint64_t now_ns, size_t *lost) {
  *lost = 0;
  if (!m->up) return;
  *lost = link_fini(&m->link);
  free(m->outbox);
  m->outbox = NULL;
  m->out_len = m->out_cap = m->out_frames = 0;
  m->up = 0;
  m->down_ns = now_ns;
  prune_down(ms);
}

static int forgotten(const candidate *c, uint64_t now_ns) { return now_ns - c->heard_ns > MEMBERSHIP_CANDIDATE_NS; }

candidate *membership_candidate(membership *ms, uint32_t inc, uint64_t now_ns) {
  for (size_t i = 0; i < ms->ncand; i++)
    if (ms->cand[i].inc == inc) return forgotten(&ms->cand[i], now_ns) ? NULL : &ms->cand[i];
  return NULL;
}

void membership_drop_candidate(membership *ms, candidate *c) {
  *c = ms->cand[--ms->ncand];
}

candidate *membership_add_candidate(membership *ms, uint32_t inc, const char *name, size_t len, uint64_t nonce,
                                    uint64_t now_ns) {
  if (len == 0 || len > ENVELOPE_NAME_MAX) return NULL;
  /* Those forgotten go first (one of them may be inc itself), then the oldest if still full. */
  for (size_t i = ms->ncand; i-- > 0;)
    if (ms->cand[i].inc == inc || forgotten(&ms->cand[i], now_ns)) membership_drop_candidate(ms, &ms->cand[i]);
  if (ms->ncand == MEMBERSHIP_CANDIDATES) {
    size_t oldest = 0;
    for (size_t i = 1; i < ms->ncand; i++)
      if (ms->cand[i].heard_ns < ms->cand[oldest].heard_ns) oldest = i;
    membership_drop_candidate(ms, &ms->cand[oldest]);
  }
  candidate *c = &ms->cand[ms->ncand++];
  memset(c, 0, sizeof *c);
  c->inc = inc;
  memcpy(c->name, name, len);
  c->nonce = nonce;
  c->heard_ns = now_ns;
  return c;
}

void membership_reset(membership *ms, void (*each)(member *m, void *ud), void *ud) {
  for (size_t i = 0; i < ms->n; i++) {
    each(ms->v[i], ud);
    member_free(ms->v[i]);
  }
  ms->n = 0;
  ms->ncand = 0;
}
