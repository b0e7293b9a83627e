/* Path claims (net.h: net_claim): the bounded round that makes an exact
 * path unique across the live nodes. See docs/multinode.md, "Claims". */
#include <stdlib.h>
#include <string.h>

#include <msgpuck.h>

#include "node.h"

/* A node that went down (or was forgotten) answers no claim: stop waiting
 * for it. net->lock held. */
void net__claims_forget(struct net *n, uint32_t inc) {
  for (claim *k = n->claims; k; k = k->next)
    for (size_t i = 0; i < k->nwaiting; i++)
      if (k->waiting[i] == inc) k->waiting[i] = k->waiting[--k->nwaiting];
  plat_cond_broadcast(&n->claims_cond);
}

static claim *claim_find_path(struct net *n, const char *path) {
  for (claim *k = n->claims; k; k = k->next)
    if (strcmp(k->path, path) == 0) return k;
  return NULL;
}

static void claim_unlink(struct net *n, claim *k) {
  for (claim **p = &n->claims; *p; p = &(*p)->next)
    if (*p == k) {
      *p = k->next;
      break;
    }
  free(k->path);
  free(k->waiting);
  free(k);
}

/* How often a claim's wait looks at its interrupt flag (set by a signal
 * handler, which cannot signal a condition variable). */
#define CLAIM_POLL_NS 50000000ull

const char *net_claim(struct net *n, const char *path, double timeout_s, atomic_int *interrupt) {
  size_t plen = strlen(path);
  char *payload = malloc(plen + 5);
  claim *k = calloc(1, sizeof *k);
  if (k) k->path = strdup(path);
  if (!payload || !k || !k->path) {
    free(payload);
    if (k) free(k->path);
    free(k);
    return "out of memory";
  }
  size_t len = (size_t)(mp_encode_str(payload, path, (uint32_t)plen) - payload);
  size_t flen = envelope_size(ENVELOPE_DATA_BODY + len, &n->key);
  plat_mutex_lock(&n->lock);
  /* Right after this node joined: wait until the nodes that started with it
   * are known (CLAIM_SETTLE_NS), so that they are asked too. */
  uint64_t deadline = plat_now_ns() + plat_seconds_to_ns(timeout_s);
  while (n->t && plat_now_ns() < n->claims_from_ns && plat_now_ns() < deadline) {
    uint64_t until = n->claims_from_ns;
    if (interrupt && plat_now_ns() + CLAIM_POLL_NS < until) until = plat_now_ns() + CLAIM_POLL_NS;
    plat_cond_wait_until(&n->claims_cond, &n->lock, until);
    if (interrupt && atomic_load(interrupt)) {
      plat_mutex_unlock(&n->lock);
      free(payload);
      free(k->path);
      free(k);
      return "interrupted";
    }
  }
  if (claim_find_path(n, path)) {
    /* This node claims it already (another spawn of it is under way). */
    plat_mutex_unlock(&n->lock);
    free(payload);
    free(k->path);
    free(k);
    return "path in use";
  }
  k->id = ++n->claim_seq;
  k->waiting = malloc((n->ms.n + 1) * sizeof *k->waiting);
  if (!k->waiting) {
    plat_mutex_unlock(&n->lock);
    free(payload);
    free(k->path);
    free(k);
    return "out of memory";
  }
  k->next = n->claims;
  n->claims = k;
  for (size_t i = 0; i < n->ms.n; i++) {
    member *m = n->ms.v[i];
    if (!m->up) continue;
    unsigned char *frame = malloc(flen);
    if (frame && !net__send_locked(n, m, frame, NET_CLAIM, 0, k->id, 0, payload, len)) k->waiting[k->nwaiting++] = m->inc;
    else free(frame); /* not asked: it cannot hold what it never heard of */
  }
  int interrupted = 0;
  while (k->nwaiting && !k->denied && n->t && plat_now_ns() < deadline) {
    uint64_t until = deadline;
    if (interrupt && plat_now_ns() + CLAIM_POLL_NS < until) until = plat_now_ns() + CLAIM_POLL_NS;
    plat_cond_wait_until(&n->claims_cond, &n->lock, until);
    if (interrupt && atomic_load(interrupt)) {
      interrupted = 1;
      break;
    }
  }
  /* No answer by the deadline (which is past the failure-detection bound,
   * so a node that went away has been declared down and forgotten by now):
   * refused rather than risk two owners. */
  const char *why = interrupted ? "interrupted" : k->denied ? "path in use" : k->nwaiting ? "no answer" : NULL;
  if (why) claim_unlink(n, k);
  else k->granted = 1;
  plat_mutex_unlock(&n->lock);
  free(payload);
  return why;
}

void net_claim_done(struct net *n, const char *path) {
  plat_mutex_lock(&n->lock);
  claim *k = claim_find_path(n, path);
  if (k && k->granted) claim_unlink(n, k);
  plat_mutex_unlock(&n->lock);
}

/* Another node claims a path: it may have it unless this node holds it (or
 * its replica says another node does), or claims it too and comes first
 * (the smaller node name: names are unique among live nodes, so exactly one
 * of two rival claims wins). Net thread. */
void net__answer_claim(struct net *n, const envelope *e) {
  const char *p = e->payload;
  if (!e->payload_len || mp_typeof(*p) != MP_STR) return;
  uint32_t l;
  const char *s = mp_decode_str(&p, &l);
  char path[512];
  if (l == 0 || l >= sizeof path || memchr(s, 0, l)) return;
  memcpy(path, s, l);
  path[l] = 0;
  remote_id r;
  ic_isolate *holder = cluster_find_path(n->c, path); /* hidden ones are this node's own */
  int deny = holder != NULL || paths_find(&n->replica, path, &r);
  if (holder) isolate_release(holder);
  plat_mutex_lock(&n->lock);
  member *m = membership_find(&n->ms, e->from_inc);
  claim *k = claim_find_path(n, path);
  if (k && (k->granted || (m && strcmp(n->name, m->name) < 0))) deny = 1;
  if (m && m->up) {
    char answer = deny ? (char)0xc2 : (char)0xc3; /* MessagePack false / true */
    unsigned char *frame = malloc(envelope_size(ENVELOPE_DATA_BODY + 1, &n->key));
    if (frame && net__send_locked(n, m, frame, NET_CLAIM_REPLY, 0, e->corr, 0, &answer, 1)) free(frame);
  }
  plat_mutex_unlock(&n->lock);
}

void net__claim_answered(struct net *n, const envelope *e) {
  int granted = e->payload_len == 1 && (unsigned char)e->payload[0] == 0xc3;
  plat_mutex_lock(&n->lock);
  for (claim *k = n->claims; k; k = k->next) {
    if (k->id != e->corr) continue;
    for (size_t i = 0; i < k->nwaiting; i++)
      if (k->waiting[i] == e->from_inc) k->waiting[i] = k->waiting[--k->nwaiting];
    if (!granted) k->denied = 1;
    plat_cond_broadcast(&n->claims_cond);
    break;
  }
  plat_mutex_unlock(&n->lock);
}

