/*
 * Messages larger than the NATS server's max_payload, in chunks over the
 * reliable link (docs/multinode.md, "Limits").
 *
 * The sender cuts the payload into NET_CHUNK data frames that leave in one
 * go under net->lock, so they take consecutive sequence numbers on the link:
 * the link's order and exactly-once delivery then hold for the message as a
 * whole, and a peer has at most one chunked message in progress. Each
 * chunk's payload is a 9-byte header (the message's kind, u8; its total
 * length, u32; this chunk's offset, u32), then the bytes; to_id, from_id
 * and corr are the message's own.
 *
 * The receiver (the net thread: chunks are not plain kinds, so the data
 * callback hands them over) trusts nothing in them: src/net/reasm.h puts
 * them together within bounds (CHUNKED_MAX per message, REASSEMBLY_MAX for
 * all peers), and a chunk that breaks a rule drops its message (a dead
 * letter, or an error reply to a request). The whole message then goes
 * through the same checks as any other (the hardened decoder, in the net
 * thread's own state) before it is delivered.
 */
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "codec.h"
#include "isolate.h"
#include "reasm.h"

#include "node.h"

#define CHUNK_HEADER 9

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Payload bytes per chunk under the server's max_payload (0: no limit known). */
static size_t chunk_bytes(const struct net *n) {
  size_t overhead = envelope_size(ENVELOPE_DATA_BODY + CHUNK_HEADER, &n->key);
  if (n->max_payload <= 0 || (size_t)n->max_payload <= overhead + 64) return 0;
  return (size_t)n->max_payload - overhead;
}

int net__chunked(const struct net *n, size_t len) {
  size_t single = envelope_size(ENVELOPE_DATA_BODY + len, &n->key);
  return n->max_payload > 0 && single > (size_t)n->max_payload;
}

const char *net__send_chunked(struct net *n, member *m, int kind, uint64_t to_id, uint64_t corr, uint64_t from_id,
                              const char *data, size_t len) {
  size_t per = chunk_bytes(n);
  if (!per || len > CHUNKED_MAX) return "message too large for the NATS server's max_payload";
  if (!n->t || !m->up) return "isolate down";
  size_t count = (len + per - 1) / per;
  size_t flen = envelope_size(ENVELOPE_DATA_BODY + CHUNK_HEADER + per, &n->key);
  if (!link_room(&m->link, count, len + count * flen)) return "node unreachable";
  unsigned char *part = malloc(CHUNK_HEADER + per);
  if (!part) return "out of memory";
  const char *why = NULL;
  for (size_t i = 0; i < count && !why; i++) {
    size_t off = i * per, clen = len - off < per ? len - off : per;
    part[0] = (unsigned char)kind;
    put_u32(part + 1, (uint32_t)len);
    put_u32(part + 5, (uint32_t)off);
    memcpy(part + CHUNK_HEADER, data + off, clen);
    unsigned char *frame = malloc(envelope_size(ENVELOPE_DATA_BODY + CHUNK_HEADER + clen, &n->key));
    why = frame ? net__send_locked(n, m, frame, NET_CHUNK, to_id, corr, from_id, (const char *)part,
                                   CHUNK_HEADER + clen)
                : "out of memory";
    if (why) free(frame);
  }
  free(part);
  /* Only out of memory can stop it half way (the room was checked): the
   * receiver then drops the partial message when the next one starts. */
  if (!why && kind == MSG_REQUEST) inbound_add_pending(&n->in, m->inc, from_id, corr);
  return why;
}

/* A chunked message that could not be completed: refused like a malformed one. */
static void refused(struct net *n, const reasm_key *k, const char *why) {
  cluster_log(n->c, "isolate_cluster: dropped a chunked message from node %08x: %s", (unsigned)k->inc, why);
  if (k->kind == MSG_REQUEST)
    net__reply_error_to_remote(n, k->inc, k->from_id, k->corr, k->to_id, "chunked message refused");
  else if (k->kind == MSG_USER) atomic_fetch_add(&n->c->dead_letters, 1);
}

void net__chunks_expire(struct net *n, uint64_t now) {
  reasm_key k;
  while (reasm_expire(&n->reasm, now, REASSEMBLY_IDLE_NS, &k)) refused(n, &k, "incomplete for too long");
}

void net__chunks_forget(struct net *n, uint32_t inc) {
  reasm_key k;
  if (reasm_forget(&n->reasm, inc, &k) && k.kind == MSG_USER) atomic_fetch_add(&n->c->dead_letters, 1);
}

int net__chunk_arrived(struct net *n, const envelope *e) {
  const unsigned char *p = (const unsigned char *)e->payload;
  reasm_key k = {e->from_inc, 0, e->to_id, e->from_id, e->corr, 0}, dropped;
  const char *why;
  char *whole;
  size_t len, off = 1;
  if (e->payload_len >= CHUNK_HEADER) {
    k.kind = p[0];
    k.total = get_u32(p + 1);
    off = get_u32(p + 5);
  }
  /* A chunk without its header, or of another kind, matches nothing: it
   * breaks what is in progress. */
  if (e->payload_len < CHUNK_HEADER || !(k.kind == MSG_USER || k.kind == MSG_REQUEST || k.kind == MSG_REPLY ||
                                         k.kind == MSG_REPLY_ERROR)) {
    if (reasm_forget(&n->reasm, e->from_inc, &dropped)) refused(n, &dropped, "a malformed chunk");
    return 0;
  }
  /* A new message cuts off one still in progress (a sender that ran out of
   * memory half way, or one that lies). */
  if (off == 0 && reasm_forget(&n->reasm, e->from_inc, &dropped))
    refused(n, &dropped, "a new message began before it was complete");
  int rc = reasm_add(&n->reasm, &k, off, e->payload + CHUNK_HEADER, e->payload_len - CHUNK_HEADER, &whole, &len,
                     &dropped, &why, plat_now_ns());
  if (rc == REASM_REFUSED) refused(n, &dropped, why);
  if (rc != REASM_WHOLE) return 0;
  /* Whole: checked and delivered as if it had come in one frame. */
  envelope msg = *e;
  msg.kind = k.kind;
  msg.payload = whole;
  msg.payload_len = len;
  if (!net__payload_ok(n, whole, len, n->code_ok)) refused(n, &k, "malformed or untrusted");
  else net__deliver(n, &msg);
  free(whole);
  return k.kind;
}
