/*
 * mainq — the blocking operations of the program's own ref (the main
 * state's isolate, ISO_MAIN): take the next message sent to it, and send a
 * request and wait for its reply. One implementation for the Lua main
 * state (src/lmodule.c) and for a C program (src/api.c).
 *
 * Threads: the thread of the main state, one call at a time (only it pops
 * the main isolate's queues).
 *
 * Ctrl-C: with `interruptible` set, a call is interruptible from its first
 * wait to its return (sigint.h), begun lazily so a call that never waits
 * costs nothing. A SIGINT that comes in the instant between the last look
 * and a message being taken is handed on with raise(SIGINT) to the handler
 * there was before (lua.c then raises at the next instruction).
 */
#ifndef IC_MAINQ_H
#define IC_MAINQ_H

#include <stdint.h>

#include "cluster.h"

/* A blocking call's Ctrl-C window (sigint.h): begun at the call's first
 * wait, ended on every way out, before anything may raise. */
typedef struct mainq_block {
  ic_isolate *main;
  int token, begun;
} mainq_block;

#define MAINQ_BLOCK(c) {(c)->main, -1, 0}

void mainq_block_begin(mainq_block *b);
/* Ends the window; 1 if a SIGINT came while it was open. */
int mainq_block_end(mainq_block *b);

enum {
  MAINQ_OK = 0,
  MAINQ_TIMEOUT,     /* nothing came before the deadline */
  MAINQ_STOPPED,     /* the cluster shuts down (receive) or is down (request) */
  MAINQ_INTERRUPTED, /* a SIGINT ended the wait (interruptible calls only) */
  MAINQ_REFUSED,     /* the request could not be posted (*why says why) */
};

/* Takes the next message sent to the main state (MSG_USER or MSG_REQUEST),
 * waiting until deadline (monotonic ns, UINT64_MAX = none). Replies still
 * queued from earlier requests (late ones) are dropped. MAINQ_OK: *out is
 * the caller's (msg_free). A message that comes while an interrupted call
 * returns stays queued for the next one. */
int mainq_receive(ic_cluster *c, uint64_t deadline, int interruptible, ic_msg **out);

/* Posts m (a MSG_REQUEST; taken on success and failure) to `to` (or, with
 * `to` NULL, to isolate to_id of another node, over the net) with the
 * main state's ref as its sender and a fresh correlation id, then waits up
 * to timeout_ns (from after the post) for its reply. MAINQ_OK: *reply (the
 * caller's) is a MSG_REPLY, or a MSG_REPLY_ERROR whose value is the error
 * (the text "isolate down: <reason>" when `to` went down before
 * answering). MAINQ_REFUSED: *why is "isolate down", "mailbox full" or
 * "out of memory" (for the request's spare, msg_add_spare). A
 * reply that comes after the call returned is dropped later. */
int mainq_request(ic_cluster *c, ic_isolate *to, uint32_t to_node, uint64_t to_id, ic_msg *m,
                  uint64_t timeout_ns, int interruptible, ic_msg **reply, const char **why);

/* Waits until the event log has something for the main state (it is
 * subscribed: main->events_pending), the cluster is down, or deadline.
 * While the cluster stops, waits for it to be down (the log is complete
 * then). Returns 0 at the deadline. */
int mainq_wait_events(ic_cluster *c, uint64_t deadline);

/* ---- the program's file descriptor ----------------------------------------
 *
 * An event loop watches one fd (an eventfd) that is readable when the main
 * state has something: a message, an event (subscribed), or a late reply
 * (readiness may be spurious; a receive that finds nothing re-arms it).
 * Armed-flag scheme: a post to the main state writes the fd only when
 * main_fd_armed is 1 and it is the one that clears it (one write per
 * batch); a receive that finds the queue empty reads the fd dry and arms
 * it again, then looks once more (a post in between is seen either way:
 * both sides use sequentially consistent atomics). A cluster whose fd was
 * never asked for pays one atomic load per post to the main state. */

/* The fd, created on first use (-1 with errno set when it cannot be).
 * Owned by the cluster: closed with it. Any thread. */
int mainq_fd(ic_cluster *c);

/* Writes the fd (mainq_notify's slow path). */
void mainq_signal(ic_cluster *c);

/* Makes the fd readable if it is armed. Any thread (every post and wake of
 * the main state). */
static inline void mainq_notify(ic_cluster *c) {
  /* Pairs with the fence in mainq_rearm: the post before this look, or the
   * arming before the receiver's look, is seen by the other side. */
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load(&c->main_fd_armed) && atomic_exchange(&c->main_fd_armed, 0)) mainq_signal(c);
}

/* Called when the main state found nothing to take: if the fd exists and
 * is not armed, empties it and arms it; returns 1 then (the caller must
 * look at its queues once more), else 0. The main state's thread. */
int mainq_rearm(ic_cluster *c);

#endif
