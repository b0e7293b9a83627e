/*
 * inbound — what this node knows of the data each live peer incarnation
 * sends it: the receiving half of the reliable link (the next sequence
 * number to deliver, whether an ack is due), when the peer was last heard
 * on its data subject, and the requests sent to it that still await an
 * answer (failed at once when it goes down).
 *
 * Shared by the data subscription's cnats callback, which accepts and
 * delivers frames (src/net/net.c), and the net thread (acks, membership).
 * So it has a lock of its own, held only for a few memory operations:
 * never while publishing, posting to an isolate or taking another lock.
 * Lock order: net->lock (or c->lock, then net->lock), then this one; a
 * cnats callback takes this one alone, so it never waits for long.
 *
 * Delivery is exclusive: at any time either the callback or the net thread
 * delivers a peer's data frames (the net thread only those the callback
 * handed it, see "deferred" in src/net/node.h), so inbound_peek followed by
 * inbound_advance, with the delivery between them outside the lock, is not
 * raced by another deliverer.
 */
#ifndef IC_NET_INBOUND_H
#define IC_NET_INBOUND_H

#include <stddef.h>
#include <stdint.h>

#include "link.h"
#include "platform.h"

/* A request sent to a peer and not yet answered: failed at once when the
 * peer goes down. */
typedef struct pending_req {
  uint64_t from_id, corr;
} pending_req;

/* At most this many unanswered requests are remembered per peer (the oldest
 * is forgotten: it has almost surely timed out). */
#define INBOUND_PENDING_MAX 65536

typedef struct inbound_peer {
  uint32_t inc;
  link_rx rx;
  uint64_t last_seen_ns;  /* a data frame or heartbeat came (0: none since it joined) */
  uint64_t hb_counter;    /* of the newest heartbeat taken (inbound_heard) */
  size_t since_ack;       /* frames accepted since the last ack was taken */
  pending_req *pending;   /* ring of unanswered requests */
  size_t pending_head, pending_count, pending_cap;
} inbound_peer;

typedef struct inbound {
  plat_mutex lock;
  plat_cond settled;      /* a delivery claimed by inbound_claim ended */
  inbound_peer *v;        /* the live peers */
  size_t n, cap;
  uint32_t self;          /* this node's incarnation: frames for another are dropped */
  uint64_t claimed, ended; /* deliveries claimed and ended so far (inbound_quiesce) */
} inbound;

void inbound_init(inbound *in);
void inbound_fini(inbound *in);

/* This node's incarnation (it changes when the node rejoins). */
void inbound_set_self(inbound *in, uint32_t inc);

/* A live peer: 0, or -1 when out of memory. Adding one already there resets nothing. */
int inbound_add(inbound *in, uint32_t inc);
/* Forgets a peer (it went down); returns its unanswered requests
 * (malloc'ed, *n set; NULL with *n 0 when none or out of memory). */
pending_req *inbound_remove(inbound *in, uint32_t inc, size_t *n);

enum { INBOUND_STRANGER = -1 }; /* besides LINK_DELIVER, LINK_DUPLICATE, LINK_GAP */
/* A data frame from from_inc for to_inc with seq arrived at now_ns: what
 * to do with it (INBOUND_STRANGER: not for this incarnation, or from an
 * unknown peer). Records an ack as due, and the peer as heard when the
 * frame is the next one (a duplicate may be anyone's replay). Advances
 * nothing: a frame to deliver is delivered, then inbound_advance'd. */
int inbound_peek(inbound *in, uint32_t to_inc, uint32_t from_inc, uint64_t seq, uint64_t now_ns);
/* inbound_peek that, on LINK_DELIVER, also claims the delivery: until its
 * inbound_unclaim, an inbound_quiesce waits. For a deliverer on another
 * thread than the one that takes peers down (the data callback), so that a
 * frame it accepted from a peer about to go down reaches its isolate before
 * that peer's down events: the net thread removes the peer (no new claim
 * for it can then succeed), quiesces, then tells the cluster. */
int inbound_claim(inbound *in, uint32_t to_inc, uint32_t from_inc, uint64_t seq, uint64_t now_ns);
void inbound_unclaim(inbound *in);
/* Waits until every delivery claimed before the call has ended. Takes no
 * other lock: the caller must hold none that a claimed delivery may wait
 * for (a claimed delivery takes c->lock and mailbox locks, never
 * net->lock). */
void inbound_quiesce(inbound *in);
/* Frame seq of from_inc was delivered: the next one is expected. A reply
 * (is_reply) answers this node's pending request (to_id, corr). Returns how
 * many frames the peer has had accepted since its last ack was taken (0
 * when the peer is gone). */
size_t inbound_advance(inbound *in, uint32_t from_inc, uint64_t seq, int is_reply, uint64_t to_id, uint64_t corr);

/* Records a request sent to peer inc (from local isolate from_id). */
void inbound_add_pending(inbound *in, uint32_t inc, uint64_t from_id, uint64_t corr);

/* If an ack to peer inc is due: 1, with the cumulative sequence number to
 * ack in *cum (the ack is then no longer due); else 0. */
int inbound_take_ack(inbound *in, uint32_t inc, uint64_t *cum);
/* When a data frame (or a heartbeat: inbound_heard) of peer inc last came,
 * or 0; at most not_after. The callbacks stamp on their own threads, so a
 * stamp may be later than the time a caller took just before asking: it
 * counts as that time (the caller's `now - last_seen` must not wrap). */
uint64_t inbound_last_seen(inbound *in, uint32_t inc, uint64_t not_after);
/* Peer inc (if a live peer) was heard at now_ns: its heartbeat with that
 * counter came. Only a counter newer than the last one taken counts (a
 * replayed heartbeat is not a sign of life). */
void inbound_heard(inbound *in, uint32_t inc, uint64_t counter, uint64_t now_ns);

#endif
