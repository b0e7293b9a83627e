/*
 * reasm — reassembly of chunked messages from the peers (src/net/chunks.c
 * has the wire side): at most one message in progress per peer, since a
 * peer's chunks of one message take consecutive sequence numbers on its
 * link.
 *
 * Every chunk is untrusted. A message starts at offset 0 and must go on
 * exactly where it stands, with the same kind, ids, correlation and total;
 * its total is at most the table's per_message bound; a buffer grows with
 * the bytes that have actually arrived (never to a declared total up front),
 * and all partial messages together hold at most the table's all bound. So
 * a peer that lies makes this node hold no more than it really sent, and no
 * more than those bounds.
 *
 * Pure data structure: no NATS, no threads, no locks (the net thread alone
 * uses it).
 */
#ifndef IC_NET_REASM_H
#define IC_NET_REASM_H

#include <stddef.h>
#include <stdint.h>

/* The identity of a chunked message, the same in each of its chunks. */
typedef struct reasm_key {
  uint32_t inc; /* the peer */
  int kind;
  uint64_t to_id, from_id, corr;
  size_t total;
} reasm_key;

typedef struct reasm_part {
  reasm_key key;
  uint64_t last_ns;  /* when its last chunk came */
  size_t have, cap;
  char *buf;
} reasm_part;

typedef struct reasm {
  reasm_part *v;
  size_t n, cap;
  size_t bytes;           /* held by every partial message together */
  size_t per_message, all;
} reasm;

void reasm_init(reasm *r, size_t per_message, size_t all);
void reasm_fini(reasm *r);

enum {
  REASM_MORE = 0,     /* kept; more chunks to come */
  REASM_WHOLE = 1,    /* the message is complete: *out, *len (malloc'ed, the caller's) */
  REASM_REFUSED = 2,  /* the message is refused (*why, *dropped: its key); nothing is kept of it */
  REASM_IGNORED = 3,  /* a chunk of a message refused before: dropped */
};

/* A chunk of key's message at offset off, of len bytes. On REASM_REFUSED,
 * *dropped says which message was refused: the one in progress (broken by
 * this chunk, which is dropped too; a chunk at offset 0 while one is in
 * progress breaks it: a caller that takes it as a new message first
 * reasm_forget's the old one), or this new one. */
int reasm_add(reasm *r, const reasm_key *key, size_t off, const char *data, size_t len, char **out, size_t *out_len,
              reasm_key *dropped, const char **why, uint64_t now_ns);

/* Drops one partial message whose last chunk came more than idle_ns before
 * now_ns: 1 (and *dropped), or 0 when none is that old. A peer's chunks of
 * one message leave together, so one that stops half way while its peer
 * stays live is a sender that ran out of memory or lies: without this its
 * bytes would stay held (within the bounds) until its next message. */
int reasm_expire(reasm *r, uint64_t now_ns, uint64_t idle_ns, reasm_key *dropped);

/* Forgets peer inc's partial message: 1 (and *dropped) if there was one. */
int reasm_forget(reasm *r, uint32_t inc, reasm_key *dropped);

#endif
