/*
 * mailbox — the messages in flight to one isolate.
 *
 * A mailbox is an intrusive multi-producer / single-consumer queue (the
 * Vyukov design): push is one atomic exchange and one store, pop needs no
 * atomic read-modify-write at all, and neither ever takes a lock. The bound
 * is kept by a separate counter that producers reserve a slot in before they
 * push, so a full mailbox refuses a message instead of growing.
 *
 * Threads: mailbox_push and mailbox_reserve from any thread; mailbox_pop only
 * from the one thread that currently runs the owning isolate.
 */
#ifndef IC_MAILBOX_H
#define IC_MAILBOX_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "platform.h"

struct ic_isolate;

/* Bytes shared by several messages (one encode, many receivers). */
typedef struct ic_blob {
  atomic_size_t refs;
  size_t len;
  char data[];
} ic_blob;

/* A blob of a copy of data[0..len) (data NULL: room for len bytes to fill
 * in), refs = 1; NULL when out of memory. */
ic_blob *blob_new(const char *data, size_t len);
void blob_retain(ic_blob *b);
void blob_release(ic_blob *b);

/* What a message is for; the receiving pump dispatches on it. */
enum {
  MSG_USER = 1,    /* ref:send */
  MSG_REQUEST,     /* ref:request; corr names the request */
  MSG_REPLY,       /* the answer to request corr */
  MSG_REPLY_ERROR, /* the handler of request corr raised; data is the error text */
  MSG_TIMER,       /* timer corr fired */
  MSG_CONTROL,     /* corr is one of the CONTROL_* codes below */
  MSG_DOWN,        /* monitor corr fired; data is the down reason (src/monitor.h) */
};
enum { CONTROL_SHUTDOWN = 1, CONTROL_KILL, CONTROL_STOP, CONTROL_CHILD_DOWN };

/* The link a mailbox threads its messages through: the first member of
 * every message, so that a pointer to one is a pointer to the other. */
typedef struct msg_link {
  _Atomic(struct msg_link *) next;
} msg_link;

typedef struct ic_msg {
  msg_link link;
  struct ic_isolate *sender; /* strong reference (isolate_retain) or NULL */
  uint32_t from_node;        /* a message from another node: its sender's */
  uint64_t from_id;          /*   ref (node incarnation, id); sender is NULL */
  uint64_t corr;
  ic_blob *shared;           /* set when data points into a shared blob */
  struct ic_msg *spare;      /* a local request's failure, made by the requester
                                (msg_add_spare): whoever cannot answer the
                                request otherwise sends this; else NULL */
  const char *data;          /* MessagePack bytes */
  size_t len;
  uint8_t kind;
  uint8_t block;             /* allocated as a MSG_BLOCK-byte block (msg_cache) */
  char inline_data[];
} ic_msg;

/*
 * A thread's spare message blocks. Most messages are small ({i, "x"} is a
 * few bytes), so a message whose bytes fit is allocated as a block of
 * MSG_BLOCK bytes, and a thread that frees one keeps it for its next
 * message instead of handing it back to malloc: a sender reuses what its
 * thread received (a ping-pong pair, an isolate answering on the worker it
 * runs on). A cache belongs to one thread (a pool worker: its own and its
 * isolates' messages while they run there); it holds at most MSG_CACHE_MAX
 * blocks, and its owner empties it when it has nothing to do
 * (msg_cache_trim), so idle memory does not grow. A block may be freed
 * into any thread's cache, or with no cache at all (then to malloc).
 */
#define MSG_BLOCK 120 /* malloc keeps chunks this small on its fast lists */
#define MSG_CACHE_MAX 64
#define MSG_MAGAZINE (MSG_CACHE_MAX / 2) /* blocks moved to or from a depot at once */
#define MSG_DEPOT_MAX 16                 /* magazines a depot keeps */

/*
 * Where the caches of one pool's threads trade blocks, a magazine (a chain
 * of MSG_MAGAZINE blocks) at a time: in a fan-in the receiver's thread
 * frees what the senders' threads allocate, and without this the blocks
 * would pile up on one side while the other side allocates. One lock per
 * magazine, not per message; at most MSG_DEPOT_MAX magazines, emptied when
 * the pool has nothing to do.
 */
typedef struct msg_depot {
  plat_mutex lock;
  ic_msg *mags[MSG_DEPOT_MAX]; /* each linked through the blocks' spare field */
  atomic_int n;                /* written under lock; read without it as a hint */
} msg_depot;

int msg_depot_init(msg_depot *d);
/* Frees every block it holds. Any thread. */
void msg_depot_trim(msg_depot *d);
void msg_depot_fini(msg_depot *d);

typedef struct msg_cache {
  ic_msg *free;       /* linked through their spare field */
  unsigned n;
  msg_depot *depot;   /* shared with the other threads of the pool, or NULL */
  /* Holds on senders let go of together (msg_free_in): the messages a
   * thread frees mostly come in runs from one sender, and one atomic
   * subtraction per run touches the sender's count once instead of once a
   * message. */
  struct ic_isolate *rel;
  int rel_n;
} msg_cache;

/* msg_new and msg_free with the calling thread's cache (NULL: none). */
ic_msg *msg_new_in(msg_cache *c, int kind, const char *data, size_t len);
void msg_free_in(msg_cache *c, ic_msg *m);
/* Lets go of the sender holds msg_free_in put off. The owner thread, at
 * the latest at the end of each turn. */
void msg_cache_flush(msg_cache *c);
/* Gives every block back to malloc (only that: it may run under a lock
 * that letting go of an isolate could take). The owner thread only. */
void msg_cache_trim(msg_cache *c);

/* A message owning a private copy of data[0..len) (or, with data NULL, room
 * for len bytes to fill in). NULL when out of memory. */
ic_msg *msg_new(int kind, const char *data, size_t len);
/* A message pointing into b (retained). NULL when out of memory. */
ic_msg *msg_new_shared(int kind, ic_blob *b);
/* Frees the message, its bytes (or its hold on the blob), its sender hold
 * and its spare. */
void msg_free(ic_msg *m);

/* Bytes of error text a spare holds ("isolate down: <reason>", cut). */
#define MSG_SPARE_TEXT 120

/* Gives request m its spare: a MSG_REPLY_ERROR with room for
 * MSG_SPARE_TEXT bytes of text, so that the request can be failed at its
 * requester with no allocation at all (the receiver went down, or ran out
 * of memory for the reply). The requester's thread, before the post. 0 or
 * ENOMEM (the request is not to be sent then). */
int msg_add_spare(ic_msg *m);
/* Takes m's spare (NULL if none), filled with `text` (cut to fit) as the
 * error answer to m->corr. */
ic_msg *msg_take_spare(ic_msg *m, const char *text);
/* Fills spare (taken) as the error answer `text` to request corr. */
ic_msg *msg_fill_spare(ic_msg *spare, uint64_t corr, const char *text);

typedef struct mailbox {
  _Atomic(msg_link *) head; /* producers' end */
  msg_link *tail;           /* consumer's end */
  atomic_size_t count;      /* reserved + queued messages */
  size_t capacity;          /* 0 = unbounded (system queues) */
  msg_link stub;            /* the node that keeps the list never empty: a bare
                               link, not a message (every isolate has two queues) */
} mailbox;

void mailbox_init(mailbox *q, size_t capacity);

/* Reserves room for one message: 1 on success, 0 when the mailbox is full.
 * Every successful reserve must be followed by mailbox_push (or unreserve). */
int mailbox_reserve(mailbox *q);
void mailbox_unreserve(mailbox *q);

/* Appends m. The slot must have been reserved. Never fails. */
void mailbox_push(mailbox *q, ic_msg *m);

/* Takes the oldest message, or NULL when there is none or a producer is
 * half-way through a push (then mailbox_count() is still > 0: try later).
 * Releases the message's slot. Owning consumer only. */
ic_msg *mailbox_pop(mailbox *q);

static inline size_t mailbox_count(mailbox *q) {
  return atomic_load_explicit(&q->count, memory_order_acquire);
}

#endif
