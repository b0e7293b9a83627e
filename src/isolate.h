/*
 * isolate — one Lua state with its mailboxes, run one turn at a time by a
 * worker thread (or by its own thread when dedicated).
 *
 * Lifetime: an ic_isolate is reference counted. Holders: the cluster registry
 * while the isolate is alive, the run queue while it is scheduled, every ref
 * userdata, every message naming it as sender, every armed timer. The Lua
 * state is closed when the isolate goes down; the struct is freed when the
 * last holder lets go, and frees whatever is still queued (dead letters).
 */
#ifndef IC_ISOLATE_H
#define IC_ISOLATE_H

#include <stdatomic.h>
#include <stdint.h>

#include "mailbox.h"
#include "monitor.h"
#include "platform.h"
#include "pool.h"

struct ic_cluster;
struct worker;
struct lua_State;

/* sched states: who may touch the Lua state right now. */
enum {
  SCHED_IDLE = 0,      /* nobody runs it; the first waker schedules it */
  SCHED_SCHEDULED = 1, /* queued or running; wakers do nothing */
  SCHED_DEAD = 2,      /* down for good; wakers do nothing */
};

/* How the isolate runs. */
enum { ISO_POOL = 0, ISO_DEDICATED = 1, ISO_MAIN = 2 };

/* What the Lua side is waiting for (returned by the runtime's dispatch). */
enum {
  WAIT_NONE = 0,    /* idle: the next message runs the message handler */
  WAIT_RECEIVE = 1, /* a handler waits in receive: the next message goes to it */
  WAIT_BLOCKED = 2, /* a handler waits for a reply/timer/lookup: messages stay queued */
  WAIT_PREEMPTED = 3, /* a handler used up its time slice: resume it next turn */
};

/* A runtime thread that shutdown may give up on: whoever comes second of
 * the thread ending (EXITED) and shutdown leaving it (LEFT) lets go of what
 * the thread holds, so neither frees what the other still uses. */
enum { THREAD_RUNNING = 0, THREAD_EXITED = 1, THREAD_LEFT = 2 };

/* Results of isolate_run. */
enum { RUN_IDLE = 0, RUN_AGAIN = 1, RUN_DONE = 2 };

/* The part of an isolate that only one running on a thread of its own
 * has: most isolates run on the pool and would carry it unused. */
typedef struct iso_thread {
  /* Dedicated isolates wait on these. */
  plat_mutex wlock;
  plat_cond wcond;
  /* The main state waits on this instead (ISO_MAIN only): a SIGINT handler
   * may post it (src/sigint.c), which a condition variable does not allow. */
  plat_sem wsem;
  plat_thread thread;
  atomic_int thread_state;      /* THREAD_*, for a dedicated thread */
} iso_thread;

typedef struct ic_isolate {
  struct ic_cluster *cluster;   /* strong reference */
  struct ic_isolate *late_next; /* on a net's late_release list (src/net/net.c) */
  atomic_int refs;
  atomic_int sched;
  atomic_int alive;             /* 1 until it goes down */
  atomic_int events_pending;    /* the cluster event log grew */
  atomic_int interrupt;         /* asks the running handler to stop (INTERRUPT_*) */
  atomic_int preempt;           /* asks the running handler to yield (slice over) */
  /* running_L: the Lua thread (coroutine or main) running now, or NULL.
   * Another thread (the monitor, a killer) installs a one-shot hook on it,
   * so the interpreter traces nothing while all is well. Written by the
   * owner only; a thread that installs a hook holds hook_lock and raises
   * `arming` while it reads running_L, and the owner, having stored a new
   * running_L, waits for such an arming (takes the lock once) before the
   * old thread could be collected (src/lhook.c, set_running). */
  plat_mutex hook_lock;
  _Atomic(struct lua_State *) running_L;
  _Atomic(struct lua_State *) armed_L; /* running_L once a hook is set on it (so the
                                          monitor's repeated asks set it only once) */
  atomic_int arming;
  int kind;                     /* ISO_* */
  uint64_t id;
  char *path;                   /* immutable after spawn */
  ic_blob *props;               /* MessagePack map, immutable; NULL = no properties */
  mailbox mbox;                 /* user messages and requests, bounded */
  mailbox sysq;                 /* replies, timers, control: unbounded but each
                                   entry answers something this isolate started */
  struct ic_isolate *runq_next; /* run-queue link, owned by the scheduler lock */

  /* Owned by the thread running the isolate. */
  struct lua_State *L;
  struct lua_State *pump;       /* the coroutine messages are resumed into */
  ic_blob *boot;                /* the encoded entry; consumed by the first run */
  struct lstate_ctx *lctx;      /* the Lua state's per-state data (owned by the state) */
  const char *lua_path, *lua_cpath; /* the creator's package.path/cpath, or NULL:
                                   in `paths`, shared with its siblings (src/spawn.c) */
  ic_blob *paths;
  uint64_t next_corr;           /* request ids (main state) */
  int wait;                     /* WAIT_* */
  atomic_int wait_seen;         /* `wait` as of the end of the last turn, for
                                   other threads (drain) */
  int ending;                   /* 1 once stop/kill/error decided; reason set */
  int shutdown_pending;         /* shutdown asked while a handler still computes */
  int shutdown_handled;         /* on_shutdown was started */
  int pump_ref;                 /* keeps the pump alive (registry reference) */
  char *reason;                 /* down reason, malloc'ed */
  uint64_t event_cursor;        /* next cluster event to read */
  uint64_t spawn_cursor;        /* event log position at spawn */
  uint64_t up_replayed;         /* up events before this log position were
                                   replayed by on_isolate_up{existing = true} */
  int subscribed;
  int up;                       /* announced up */
  struct worker *worker;        /* the pool worker running it now, or NULL */
  size_t mem_used, mem_limit;   /* bytes of Lua heap; limit 0 = none */
  pool pool;                    /* the Lua state's small blocks (isolate_alloc in lboot.c):
                                   touched only by the thread running the state, released
                                   by lstate_close or isolate_release */
  /* Requests this isolate has taken from its mailbox and not answered yet
   * (open addressing on sender and corr; owner thread only): when it goes
   * down, each requester gets "isolate down: <reason>" at once. */
  struct open_request *open_reqs;
  size_t open_len, open_cap;
  /* The same for requests from other nodes' isolates (few at a time: most
   * are answered in the turn that takes them), refused over the net. */
  struct remote_request *ropen;
  size_t ropen_len, ropen_cap;
  struct ic_isolate **children; /* spawned by this isolate and linked to it */
  struct ic_isolate *parent;    /* the isolate this one is linked to (strong), told
                                   when this one goes down; set before it starts */
  size_t live_children;         /* linked children not yet down (owner thread):
                                   they keep an isolate with nothing else to run up */
  size_t nchildren, children_cap;
  unsigned char hidden;         /* a runtime isolate (logger): never announced */
  unsigned char lean;           /* opts.lean: base and string opened on first use too */
  unsigned char base_pending;   /* a lean isolate's base library not opened yet (src/lboot.c) */
  unsigned char closing;        /* its Lua state is being closed (src/lboot.c) */
  unsigned char string_pending; /* the string library not opened yet (src/lboot.c) */
  atomic_int sigint;            /* the main state: a SIGINT came while it waited */
  /* Statistics (src/stats.c): each has one writer, the thread running the
   * isolate (stat_out: the sending thread), and is read by anyone; relaxed
   * atomics, no read-modify-write, no lock. */
  atomic_ullong stat_in;        /* messages taken from its mailbox */
  atomic_ullong stat_out;       /* messages it sent */
  atomic_ullong stat_run_ns;    /* time spent in its turns */
  atomic_size_t stat_mem;       /* mem_used as of the end of its last turn */
  struct ic_native *native;     /* a native isolate's C handler (native.h), or NULL;
                                   set before it starts, freed with the isolate */
  monitor_set monitors;         /* who watches this isolate go down (monitor.h) */
  uint64_t slice_deadline;      /* preemption: the current turn's end */
  /* The mailbox's messages the current turn has taken (TURN_BATCH); while
   * `batching`, the pump takes the next ones itself (isolate_next_message),
   * kept in `batch` (linked) until the dispatch returns. Owner only. */
  int turn_msgs, batching;
  ic_msg *batch;

  /* What only an isolate with a thread of its own needs (a dedicated one,
   * and the main state's): NULL for a pool isolate, else just after the
   * struct in the same block (isolate_new). */
  struct iso_thread *th;
} ic_isolate;

/* One more for a statistic with a single writer (see stat_in). */
static inline void isolate_stat_add(atomic_ullong *x, uint64_t d) {
  atomic_store_explicit(x, atomic_load_explicit(x, memory_order_relaxed) + d, memory_order_relaxed);
}

/* Allocates an isolate in the IDLE state with refs = 1 (the caller's hold). */
ic_isolate *isolate_new(struct ic_cluster *c, int kind, size_t mailbox_capacity);
void isolate_retain(ic_isolate *iso);
void isolate_release(ic_isolate *iso);
/* Lets go of n holds at once (n >= 1). */
void isolate_release_n(ic_isolate *iso, int n);
/* Lets go of a reference unless it is the last one: 1 when let go, 0 when
 * the caller still holds it (to release it on another thread). */
int isolate_release_unless_last(ic_isolate *iso);

/* Schedules iso if it is idle. Any thread. `from` is the worker the caller
 * runs on (for the LIFO hand-off) or NULL. */
void isolate_wake(ic_isolate *iso, struct worker *from);

/* Runs one turn on the calling thread, which must own iso (sched ==
 * SCHEDULED). Returns RUN_IDLE, RUN_AGAIN or RUN_DONE. */
int isolate_run(ic_isolate *iso, struct worker *w);

/* The pump, after a dispatch of a message from the mailbox that left the
 * isolate idle (WAIT_NONE): the next message for it to run in the same
 * resume, or NULL when the turn's batch is over (nothing queued, TURN_BATCH,
 * the slice, an interrupt, a preemption, an ending). The message stays the
 * isolate's (freed when the dispatch returns to isolate_run); a request is
 * already tracked (isolate_open_request). Owner thread only. */
ic_msg *isolate_next_message(ic_isolate *iso);

/* Sends a message: reserves, pushes, wakes. Takes ownership of m on success
 * and on failure. Returns 0, or an error text ("isolate down", "mailbox full"). */
const char *isolate_post(ic_isolate *to, ic_msg *m, struct worker *from);
/* As isolate_post, except that a full mailbox leaves m with the caller
 * (*kept = 1, returns "mailbox full"), for a sender that waits for room and
 * tries again. *kept = 0 otherwise: m was taken (posted, or freed). */
const char *isolate_post_or_keep(ic_isolate *to, ic_msg *m, struct worker *from, int *kept);
/* Same for the system queue (never full). */
const char *isolate_post_sys(ic_isolate *to, ic_msg *m, struct worker *from);

/* Starts the thread of a dedicated isolate. 0 or an errno value. */
int isolate_start_thread(ic_isolate *iso);

/* Takes iso down at once on the calling thread, which must own it or be the
 * only thread left (shutdown). */
void isolate_abandon(ic_isolate *iso, const char *reason);

/* Links child to parent: the child is shut down when the parent goes down.
 * Parent's thread only. 0 or ENOMEM. */
int isolate_link_child(ic_isolate *parent, ic_isolate *child);

/* A request iso has taken (m: a MSG_REQUEST with a local sender): its
 * sender (retained until it is answered), corr and spare (taken) are kept,
 * so that the requester is failed at once if iso goes down first. The
 * owner thread only. 0, or ENOMEM: then the request has been failed at its
 * requester ("not enough memory to take the request", with its spare) and
 * must not be handled. */
int isolate_open_request(ic_isolate *iso, ic_msg *m);
/* The request is answered: forgets it. Owner thread only. */
void isolate_close_request(ic_isolate *iso, ic_isolate *sender, uint64_t corr);
/* Forgets the request as isolate_close_request and returns its spare
 * (filled with `text` as its error answer when text is not NULL), or NULL
 * when it was not tracked or had none: for an answer that could not be
 * allocated. The caller posts or frees it. */
ic_msg *isolate_take_request(ic_isolate *iso, ic_isolate *sender, uint64_t corr, const char *text);
/* The same for a request from another node's isolate (node, id). */
int isolate_open_remote_request(ic_isolate *iso, uint32_t node, uint64_t id, uint64_t corr);
void isolate_close_remote_request(ic_isolate *iso, uint32_t node, uint64_t id, uint64_t corr);

/* A message about to be handled: from here a request is this isolate's
 * to answer (if it goes down first, the requester hears so at once,
 * isolate_finish). Returns 0, or nonzero when a local request could not be
 * tracked for want of memory: it has been failed at the requester (with
 * its spare) and is not to be handled. Owner thread only. */
static inline int isolate_take_up(ic_isolate *iso, ic_msg *m) {
  if (m->kind != MSG_REQUEST) return 0;
  if (m->sender) return isolate_open_request(iso, m);
  if (m->from_node) isolate_open_remote_request(iso, m->from_node, m->from_id, m->corr);
  return 0;
}

/* interrupt codes */
enum { INTERRUPT_KILL = 1, INTERRUPT_SHUTDOWN = 2 };

/* Stops the Lua code iso runs now (kill: INTERRUPT_KILL, shutdown timeout:
 * INTERRUPT_SHUTDOWN) within a few instructions. Any thread. */
void isolate_interrupt(ic_isolate *iso, int code);
/* Asks the handler iso runs now to yield at the next instruction it can.
 * Any thread. */
void isolate_preempt(ic_isolate *iso);

/* Kills iso (reason "killed"): at once if it runs Lua code now, else at its
 * next turn. Returns 0, or -1 when it is already down. Any thread; not for
 * the main state's isolate. */
int isolate_kill(ic_isolate *iso);

/* Decides that iso goes down with reason (copied) once its current turn ends. */
void isolate_set_ending(ic_isolate *iso, const char *reason);

#endif
