#include "inbound.h"

#include <stdlib.h>
#include <string.h>

void inbound_init(inbound *in) {
  memset(in, 0, sizeof *in);
  plat_mutex_init(&in->lock);
  plat_cond_init(&in->settled);
}

void inbound_fini(inbound *in) {
  for (size_t i = 0; i < in->n; i++) free(in->v[i].pending);
  free(in->v);
  plat_cond_destroy(&in->settled);
  plat_mutex_destroy(&in->lock);
  memset(in, 0, sizeof *in);
}

void inbound_set_self(inbound *in, uint32_t inc) {
  plat_mutex_lock(&in->lock);
  in->self = inc;
  plat_mutex_unlock(&in->lock);
}

/* in->lock held. */
static inbound_peer *find(inbound *in, uint32_t inc) {
  for (size_t i = 0; i < in->n; i++)
    if (in->v[i].inc == inc) return &in->v[i];
  return NULL;
}

int inbound_add(inbound *in, uint32_t inc) {
  int rc = 0;
  plat_mutex_lock(&in->lock);
  if (!find(in, inc)) {
    if (in->n == in->cap) {
      size_t cap = in->cap ? in->cap * 2 : 8;
      inbound_peer *v = realloc(in->v, cap * sizeof *v);
      if (v) {
        in->v = v;
        in->cap = cap;
      }
    }
    if (in->n < in->cap) {
      inbound_peer *p = &in->v[in->n++];
      memset(p, 0, sizeof *p);
      p->inc = inc;
      link_rx_init(&p->rx);
    } else {
      rc = -1;
    }
  }
  plat_mutex_unlock(&in->lock);
  return rc;
}

pending_req *inbound_remove(inbound *in, uint32_t inc, size_t *n) {
  pending_req *out = NULL;
  *n = 0;
  plat_mutex_lock(&in->lock);
  inbound_peer *p = find(in, inc);
  if (p) {
    if (p->pending_count) out = malloc(p->pending_count * sizeof *out);
    if (out) {
      for (size_t i = 0; i < p->pending_count; i++) out[i] = p->pending[(p->pending_head + i) % p->pending_cap];
      *n = p->pending_count;
    }
    free(p->pending);
    *p = in->v[--in->n];
  }
  plat_mutex_unlock(&in->lock);
  return out;
}

static int peek(inbound *in, uint32_t to_inc, uint32_t from_inc, uint64_t seq, uint64_t now_ns, int claim) {
  int verdict = INBOUND_STRANGER;
  plat_mutex_lock(&in->lock);
  inbound_peer *p = to_inc == in->self ? find(in, from_inc) : NULL;
  if (p) {
    p->rx.ack_due = 1;
    verdict = link_rx_peek(&p->rx, seq);
    /* Only the next frame is a sign of life: a duplicate may be a copy
     * published by anyone (a replay), and a live peer heartbeats anyway. */
    if (verdict == LINK_DELIVER && now_ns > p->last_seen_ns) p->last_seen_ns = now_ns;
    if (claim && verdict == LINK_DELIVER) in->claimed++;
  }
  plat_mutex_unlock(&in->lock);
  return verdict;
}

int inbound_peek(inbound *in, uint32_t to_inc, uint32_t from_inc, uint64_t seq, uint64_t now_ns) {
  return peek(in, to_inc, from_inc, seq, now_ns, 0);
}

int inbound_claim(inbound *in, uint32_t to_inc, uint32_t from_inc, uint64_t seq, uint64_t now_ns) {
  return peek(in, to_inc, from_inc, seq, now_ns, 1);
}

void inbound_unclaim(inbound *in) {
  plat_mutex_lock(&in->lock);
  in->ended++;
  plat_cond_broadcast(&in->settled);
  plat_mutex_unlock(&in->lock);
}

void inbound_quiesce(inbound *in) {
  plat_mutex_lock(&in->lock);
  /* Claims made after this point are not waited for: they can only be for
   * peers still live, so a steady stream never starves the caller. */
  uint64_t target = in->claimed;
  while (in->ended < target) plat_cond_wait(&in->settled, &in->lock);
  plat_mutex_unlock(&in->lock);
}

/* Forgets the request (from_id, corr) if recorded; replies mostly come in
 * request order, so the search starts from the oldest. */
static void answered(inbound_peer *p, uint64_t from_id, uint64_t corr) {
  for (size_t i = 0; i < p->pending_count; i++) {
    size_t k = (p->pending_head + i) % p->pending_cap;
    if (p->pending[k].from_id != from_id || p->pending[k].corr != corr) continue;
    if (i == 0) {
      p->pending_head = (p->pending_head + 1) % p->pending_cap;
    } else {
      for (size_t j = i; j + 1 < p->pending_count; j++)
        p->pending[(p->pending_head + j) % p->pending_cap] = p->pending[(p->pending_head + j + 1) % p->pending_cap];
    }
    p->pending_count--;
    return;
  }
}

size_t inbound_advance(inbound *in, uint32_t from_inc, uint64_t seq, int is_reply, uint64_t to_id, uint64_t corr) {
  size_t since = 0;
  plat_mutex_lock(&in->lock);
  inbound_peer *p = find(in, from_inc);
  if (p && link_rx_peek(&p->rx, seq) == LINK_DELIVER) {
    link_accept(&p->rx, seq);
    if (is_reply) answered(p, to_id, corr);
    since = ++p->since_ack;
  }
  plat_mutex_unlock(&in->lock);
  return since;
}

void inbound_add_pending(inbound *in, uint32_t inc, uint64_t from_id, uint64_t corr) {
  plat_mutex_lock(&in->lock);
  inbound_peer *p = find(in, inc);
  if (p && p->pending_count == p->pending_cap) {
    if (p->pending_cap >= INBOUND_PENDING_MAX) {
      p->pending_head = (p->pending_head + 1) % p->pending_cap;
      p->pending_count--;
    } else {
      size_t cap = p->pending_cap ? p->pending_cap * 2 : 16;
      pending_req *v = malloc(cap * sizeof *v);
      if (v) {
        for (size_t i = 0; i < p->pending_count; i++) v[i] = p->pending[(p->pending_head + i) % p->pending_cap];
        free(p->pending);
        p->pending = v;
        p->pending_cap = cap;
        p->pending_head = 0;
      }
    }
  }
  if (p && p->pending_count < p->pending_cap) {
    p->pending[(p->pending_head + p->pending_count) % p->pending_cap] = (pending_req){from_id, corr};
    p->pending_count++;
  }
  plat_mutex_unlock(&in->lock);
}

int inbound_take_ack(inbound *in, uint32_t inc, uint64_t *cum) {
  int due = 0;
  plat_mutex_lock(&in->lock);
  inbound_peer *p = find(in, inc);
  if (p && p->rx.ack_due) {
    p->rx.ack_due = 0;
    p->since_ack = 0;
    *cum = link_delivered(&p->rx);
    due = 1;
  }
  plat_mutex_unlock(&in->lock);
  return due;
}

uint64_t inbound_last_seen(inbound *in, uint32_t inc, uint64_t not_after) {
  plat_mutex_lock(&in->lock);
  inbound_peer *p = find(in, inc);
  uint64_t t = p ? p->last_seen_ns : 0;
  plat_mutex_unlock(&in->lock);
  return t < not_after ? t : not_after;
}

void inbound_heard(inbound *in, uint32_t inc, uint64_t counter, uint64_t now_ns) {
  plat_mutex_lock(&in->lock);
  inbound_peer *p = find(in, inc);
  if (p && counter > p->hb_counter) {
    p->hb_counter = counter;
    if (now_ns > p->last_seen_ns) p->last_seen_ns = now_ns;
  }
  plat_mutex_unlock(&in->lock);
}
