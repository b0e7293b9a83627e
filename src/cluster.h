/*
 * cluster — the set of isolates of one node: the registry (ids and paths),
 * the event log (isolate up/down), the scheduler, the timers, and shutdown.
 * The code: src/cluster.c (creation, lifetime, log, the main state's
 * waits), registry.c, eventlog.c, remote_monitor.c, drain.c (drain and
 * shutdown), spawn.c; src/cluster_int.h is what they share.
 *
 * Locks: c->lock guards the registry, the paths, the event log and the
 * subscriber list. It may be held while taking the scheduler's lock or an
 * isolate's wlock (to wake it); never the other way round.
 */
#ifndef IC_CLUSTER_H
#define IC_CLUSTER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "isolate.h"
#include "platform.h"
#include "scheduler.h"
#include "timer.h"

typedef void (*ic_log_fn)(void *ud, const char *text);

enum { CLUSTER_RUNNING = 0, CLUSTER_STOPPING = 1, CLUSTER_DOWN = 2 };
enum { EVENT_UP = 1, EVENT_DOWN = 2, EVENT_NODE_UP = 3, EVENT_NODE_DOWN = 4 };

typedef struct cluster_event {
  int kind;
  ic_isolate *iso;  /* strong reference; NULL for a node event */
  char *reason;     /* EVENT_DOWN, EVENT_NODE_DOWN */
  char *node;       /* EVENT_NODE_*: the node's name */
  uint32_t rnode;   /* an isolate of another node (iso NULL): its ref */
  uint64_t rid;
} cluster_event;

struct net;
struct net_opts;

typedef struct ic_cluster {
  atomic_int refs;
  atomic_int state;           /* CLUSTER_* */
  atomic_int shutdown_in_time; /* the result of the shutdown, once DOWN */
  _Atomic uint32_t node_id;   /* the node part of every ref (a multi-node
                                 cluster: this node's incarnation, which
                                 changes when the node rejoins after it was
                                 declared down: src/net/membership.h) */
  struct net *net;            /* multi-node: the network side (src/net/net.h);
                                 NULL for a single node. Set before any
                                 isolate exists, freed with the cluster. */
  int nworkers;
  size_t default_mailbox;
  double slice_seconds;       /* preemption time slice */
  int (*state_hook)(void *L, void *ud); /* immutable; see cluster_opts */
  void *state_hook_ud;

  plat_mutex lock;
  uint64_t next_id;
  /* id -> isolate, open addressing, guarded by lock */
  ic_isolate **by_id;
  size_t by_id_cap, by_id_len, by_id_tomb;
  /* path -> isolate, open addressing on the path hash */
  ic_isolate **by_path;
  size_t by_path_cap, by_path_len, by_path_tomb;
  uint64_t path_seq;          /* unique segments for "/dir/" paths */
  ic_blob *spawn_paths;       /* the package paths of the last spawn (src/spawn.c) */
  size_t live;                /* isolates registered and not yet down */
  atomic_int main_path_waits; /* the main state waits for a path: register wakes it */
  plat_cond live_cond;        /* signalled when live drops, a path is taken,
                                 or the cluster is down */
  /* Monitors of other nodes' isolates (context:monitor of a remote ref):
   * one monitor_set per watched (node, id), fired by that isolate's down
   * event or its node's, then freed. Guarded by rwatch_lock, which is taken
   * with no other lock held (the sets' own locks are taken inside it). */
  plat_mutex rwatch_lock;
  struct remote_watch *rwatch;

  /* The event log: entries [log_base, log_base + log_len). log_reserved:
   * slots kept free for the events the registered isolates will surely
   * have (an up until announced, a down), so that they are never lost for
   * want of memory (src/eventlog.c). */
  cluster_event *log;
  size_t log_len, log_cap, log_reserved;
  uint64_t log_base;
  size_t log_trim_at;
  ic_isolate **subs;          /* isolates that read the log */
  size_t nsubs, subs_cap;

  sched sched;
  timer_wheel timers;
  ic_isolate *main;           /* the main state's isolate */
  ic_isolate **dedicated;     /* isolates with a thread of their own, to join */
  size_t ndedicated, dedicated_cap;
  plat_thread stopper;        /* runs a shutdown asked for by an isolate */
  int has_stopper;
  double stopper_timeout;

  /* Events read from the log for a C program (src/api.c, ic_next_event)
   * and not handed out yet: [api_evpos, api_nev). The thread of the main
   * state only; freed by cluster_close. */
  cluster_event *api_events;
  size_t api_nev, api_evpos;
  atomic_int api_subscribed;  /* ic_subscribe_events was called (main->subscribed
                                 is cleared when shutdown unregisters main) */
  atomic_int api_taking;      /* a thread is in ic_receive_msg, ic_request or
                                 ic_next_event: another gets IC_EBUSY (src/api.c) */
  struct native_kind *native_kinds; /* ic_register_native's list (c->lock); freed
                                       with the cluster (src/native.c) */
  /* What the program had not read of the log when shutdown dropped it:
   * written by shutdown before the cluster is DOWN, taken after (c->lock). */
  cluster_event *api_tail;
  size_t api_ntail;

  /* The program's file descriptor (mainq_fd): an eventfd, -1 until asked
   * for; closed with the cluster. main_fd_armed: 1 when the next post to
   * the main state must make it readable (mainq.h). */
  atomic_int main_fd;
  atomic_int main_fd_armed;

  ic_log_fn log_fn;
  void *log_ud;
  ic_isolate *logger;         /* the isolate log lines go to, or NULL */
  plat_mutex log_lock;        /* serialises log_fn calls */

  atomic_ullong dead_letters;
  atomic_ullong sent;
  atomic_ullong spawned;

  /* Bytecode of the isolate runtime's Lua part (loaded by an isolate on
   * first use, src/lpump.c), compiled once. */
  ic_blob *runtime_extras;
  char *boot_error;
} ic_cluster;

/* Called in every new Lua isolate's state (src/lboot.c l_boot); see
 * ic_state_hook in include/isolate_cluster.h. */
typedef int (*cluster_state_hook)(void *L, void *ud);

typedef struct cluster_opts {
  int workers;                /* 0 = number of cores */
  size_t mailbox;             /* default capacity; 0 = built-in default */
  double slice_seconds;       /* 0 = default */
  cluster_state_hook state_hook; /* or NULL */
  void *state_hook_ud;
} cluster_opts;

/* Creates a cluster with its threads running; NULL and *err set on failure. */
ic_cluster *cluster_new(const cluster_opts *o, const char **err);
/* The same, as a node of a multi-node cluster: also connects to its NATS
 * servers (src/net/net.h). NULL and a message in err on failure. */
ic_cluster *cluster_new_node(const cluster_opts *o, const struct net_opts *no, char *err, size_t errlen);
void cluster_retain(ic_cluster *c);
void cluster_release(ic_cluster *c);

/* Registers iso under path (NULL = no path; "/dir/" = unique segment appended).
 * Returns 0 or an error text in errbuf. Takes a registry hold on success. */
int cluster_register(ic_cluster *c, ic_isolate *iso, const char *path, char *errbuf, size_t errlen);
/* Removes iso from the registry, appends its down event; releases the hold. */
void cluster_unregister(ic_cluster *c, ic_isolate *iso, const char *reason);
/* Appends a node up/down event (name and reason copied). Any thread. */
void cluster_node_event(ic_cluster *c, int kind, const char *name, const char *reason);
/* Appends the up/down event of isolate (node, id) of another node, and
 * wakes waiting lookups. Net thread. */
void cluster_remote_event(ic_cluster *c, int kind, uint32_t node, uint64_t id, const char *reason);
/* context:monitor of another node's isolate (node, id) by watcher, with
 * the watcher's monitor number mid. 0; ESRCH when it is down already or
 * its node is not live (the caller answers "noproc"); ENOMEM. */
int cluster_remote_monitor(ic_cluster *c, uint32_t node, uint64_t id, ic_isolate *watcher, uint64_t mid);
/* Cancels such a monitor if it has not fired. */
void cluster_remote_demonitor(ic_cluster *c, uint32_t node, uint64_t id, ic_isolate *watcher, uint64_t mid);
/* Fires every monitor of node's isolates with "node down" (called once the
 * node is known down: also those of isolates the replica never listed). */
void cluster_remote_node_gone(ic_cluster *c, uint32_t node);
/* Calls fn for every isolate that is up (not hidden, not the main state),
 * under c->lock: fn must not take c->lock. */
void cluster_each_up(ic_cluster *c, void (*fn)(ic_isolate *iso, void *ud), void *ud);
/* Appends iso's up event. */
void cluster_announce_up(ic_cluster *c, ic_isolate *iso);

/* 1 when an isolate can hold exactly this path ("/name", valid, not a
 * "/dir/" prefix): a lookup of any other path is nil and need not wait. */
int cluster_path_is_name(const char *path);
/* Retained isolate or NULL. */
ic_isolate *cluster_find_id(ic_cluster *c, uint64_t id);
ic_isolate *cluster_find_path(ic_cluster *c, const char *path);
/* Is path held by an isolate of this node (hidden ones too)? */
int cluster_path_in_use(ic_cluster *c, const char *path);
/* Like cluster_find_path, waiting until deadline (monotonic ns) for the path
 * to be registered. In a multi-node cluster it returns NULL at once when
 * another node's isolate holds the path (the caller looks in the replica). */
ic_isolate *cluster_wait_path(ic_cluster *c, const char *path, uint64_t deadline);
/* Retained isolates whose path starts with prefix, in spawn order; *n set.
 * Caller frees the array and releases each. */
ic_isolate **cluster_find_prefix(ic_cluster *c, const char *prefix, size_t *n);

/* Every isolate registered now (not the main state's, not hidden ones),
 * retained, in no particular order; *n set. NULL with *n = 0 when there are
 * none or no memory (*n = SIZE_MAX then). One short hold of c->lock. */
ic_isolate **cluster_list_all(ic_cluster *c, size_t *n);

/* Subscribes iso to the event log, from its spawn position on (or, already
 * subscribed, from where it is). existing != 0: the isolates already up are
 * returned too (retained, *n set), and the up events now in the log are no
 * longer reported to iso (the list covers them); down events are. Otherwise
 * NULL is returned. */
ic_isolate **cluster_subscribe(ic_cluster *c, ic_isolate *iso, int existing, size_t *n);
/* Copies out the events from iso's cursor on (retained isos, dup'ed reasons)
 * and advances the cursor. */
cluster_event *cluster_read_events(ic_cluster *c, ic_isolate *iso, size_t *n);
void cluster_free_events(cluster_event *ev, size_t n);

/* Routes log lines to logger (an isolate spawned hidden: never announced
 * nor listed), or, with logger NULL, to stderr or (discard) nowhere. */
void cluster_set_logger(ic_cluster *c, ic_isolate *logger, int discard);

/* Routes log lines to fn(ud, line) (NULL: stderr), dropping a logger
 * isolate. fn is called with log_lock held (lines serialised), on any
 * thread. */
void cluster_set_log_fn(ic_cluster *c, ic_log_fn fn, void *ud);

/* Writes a line through the cluster's log function. Any thread. */
void cluster_log(ic_cluster *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Waits until no isolate has work (all mailboxes empty, nothing running, no
 * timer armed for less than the deadline), at most timeout seconds.
 * Returns 1 when quiet; 0 at the timeout or on a SIGINT to the main state.
 * Called by the main thread. */
int cluster_drain(ic_cluster *c, double timeout);

/* Waits until the cluster is down (a shutdown under way on another thread
 * finishes), at most until deadline (monotonic ns). Returns 1 when down. */
int cluster_wait_down(ic_cluster *c, uint64_t deadline);

/* Stops every isolate (running on_shutdown handlers), joins every thread.
 * Returns 1 if all of it finished within timeout seconds. Idempotent: while
 * another thread shuts the cluster down, waits for that up to timeout and
 * returns 0 if it has not finished by then. */
int cluster_shutdown(ic_cluster *c, double timeout);

/* What a new isolate is made of; every buffer is copied. */
typedef struct spawn_args {
  int kind;                   /* ISO_POOL or ISO_DEDICATED */
  size_t mailbox;             /* 0 = the cluster's default */
  size_t memory_limit;        /* 0 = none */
  const char *props;          /* MessagePack map, or NULL */
  size_t props_len;
  const char *boot;           /* the encoded entry (see lstate_boot) */
  size_t boot_len;
  const char *lua_path, *lua_cpath; /* package.path/cpath, or NULL for Lua's defaults */
  const char *path;           /* "/name", "/dir/" or NULL */
  int hidden;                 /* a runtime isolate: never announced nor listed */
  ic_isolate *creator;        /* the spawning isolate (its thread), or NULL */
  int detached;               /* not linked to the creator */
  struct ic_native *native;   /* a native isolate's handler (taken on success
                                 and failure), or NULL for a Lua isolate */
  uint64_t id;                /* 0 = the next id; else this one: chosen by the
                                 node that asked for the spawn (src/net/net.c) */
  int lean;                   /* only the base library opened at start */
} spawn_args;

/* Creates, registers and starts an isolate. Returns 0 with *out retained
 * (the caller releases it), or an errno code with a message in errbuf:
 * ECANCELED (after shutdown), EINVAL / EEXIST (path), ENOMEM, or a thread
 * error. Any thread. */
int cluster_spawn(ic_cluster *c, const spawn_args *a, ic_isolate **out, char *errbuf, size_t errlen);

/* Longest wait for the other nodes' answers to a path claim: beyond the
 * failure-detection bound (src/net/membership.h), so a node that cannot
 * answer has been declared down by then. */
#define SPAWN_CLAIM_TIMEOUT 5.0

/* The cross-node part of a spawn, shared by spawn_isolate (src/lspawn.c)
 * and the C API (src/api.c).
 *
 * spawn_claim: in a multi-node cluster an exact path "/name" is claimed
 * from the other nodes (net_claim: one round trip, at most
 * SPAWN_CLAIM_TIMEOUT seconds); for a spawn on another node (remote) a path
 * this node already knows held is refused first. Returns NULL, with
 * *claimed 1 when a claim is held (the caller ends it with net_claim_done
 * once the isolate is registered or failed to be; spawn_remote does it
 * itself), or why not: "path in use", "no answer", "interrupted" (when
 * *interrupt became set; NULL = never). Any thread but the net thread.
 *
 * spawn_remote: asks node `node` (by name, not this node) to spawn the
 * isolate of a (kind, mailbox, memory_limit, props, boot, path are read)
 * through net_spawn, and ends the claim. Returns NULL with the new ref in
 * *rnode, *rid, or net_spawn's reason ("no such node", "out of memory",
 * "node unreachable", a max_payload message, "path too long"). Queues the
 * request and does not wait for the node's answer: a spawn that fails there
 * is the new isolate's down event. */
const char *spawn_claim(ic_cluster *c, const char *path, int remote, atomic_int *interrupt, int *claimed);
const char *spawn_remote(ic_cluster *c, const char *node, const spawn_args *a, uint64_t creator_id, int linked,
                         int claimed, uint32_t *rnode, uint64_t *rid);

/* Blocks the thread of the main state until something is posted to it, the
 * cluster stops, or deadline (monotonic ns; UINT64_MAX = none). Returns 0 on
 * timeout. q is the queue the caller looks at. */
int cluster_main_wait(ic_cluster *c, mailbox *q, uint64_t deadline);
/* The main state's waiting lookup: like cluster_wait_path, and it also
 * returns (NULL) when a SIGINT comes (main->sigint). Main thread only. */
ic_isolate *cluster_main_wait_path(ic_cluster *c, const char *path, uint64_t deadline);

/* Starts iso (already registered): queues it, or starts its own thread.
 * Returns 0 or an errno value (then iso is taken down). */
int cluster_start_isolate(ic_cluster *c, ic_isolate *iso, struct worker *from);

/* Asks for a shutdown from inside an isolate: a helper thread runs it, since
 * the isolate's own worker must be joined. */
void cluster_request_shutdown(ic_cluster *c, double timeout);

/* Joins the thread of a shutdown asked for by an isolate if that shutdown
 * has finished (never waits for it to). Returns 1 when no such thread is
 * left. Main thread only. */
int cluster_join_stopper(ic_cluster *c);
/* Leaves a stopper still running to itself (it holds the cluster). */
void cluster_detach_stopper(ic_cluster *c);

/* Shutdown gives up on the thread running iso (stuck in a blocking C call):
 * iso leaves the registry (its down event is "shutdown") and its state is
 * left to that thread. Shutdown's thread only. */
void cluster_leave_isolate(ic_cluster *c, ic_isolate *iso);

/* After shutdown, on the main state's thread, before the owner's last
 * cluster_release: drops what was sent to the main state and never received. */
void cluster_close(ic_cluster *c);

/* Takes what shutdown saved of the log for a C program (api_tail): NULL
 * when there is none. The main state's thread. */
cluster_event *cluster_take_api_tail(ic_cluster *c, size_t *n);

/* Sends control code to every live isolate. */
void cluster_broadcast_control(ic_cluster *c, int code);

#endif
