/*
 * monitor — who watches one isolate go down (context:monitor).
 *
 * A monitor_set belongs to the watched isolate (the target). Each entry
 * names a watcher and the watcher's own number for that monitor. When the
 * target goes down the set fires, once: every watcher gets a MSG_DOWN on its
 * system queue (corr = the monitor's number, payload = the down reason as a
 * MessagePack string), and the set stays fired, so a monitor added later
 * gets its notice at once with the reason "noproc". A down costs one message
 * per monitor of that isolate and nothing for anyone else: no event log, no
 * broadcast.
 *
 * The set is not tied to ic_isolate: a stand-in for an isolate of another
 * node can hold one, and the loss of that node fires it ("node down").
 *
 * Each entry's notice is allocated when the monitor is made, so a down
 * reaches every watcher even when memory has run out then: a reason that
 * fits in the notice (MONITOR_NOTICE_ROOM bytes: "normal", "killed",
 * "node down"... and short errors) needs no allocation at all; a longer one
 * (a traceback) is copied into a new message, or, without memory for it,
 * cut to fit the notice.
 *
 * Ownership: each entry holds its watcher (isolate_retain) and its notice
 * until it fires, is removed, or is pruned once the watcher is down.
 * Threads: any; s->lock guards the set and is never held while posting or
 * while another lock is taken.
 */
#ifndef IC_MONITOR_H
#define IC_MONITOR_H

#include <stddef.h>
#include <stdint.h>

#include "platform.h"

struct ic_isolate;

/* Bytes of down reason a notice made in advance holds. */
#define MONITOR_NOTICE_ROOM 160

struct ic_msg;

typedef struct monitor_link {
  struct ic_isolate *watcher; /* strong reference */
  uint64_t id;                /* the watcher's number for this monitor */
  struct ic_msg *notice;      /* the MSG_DOWN to post, owned */
} monitor_link;

typedef struct monitor_set {
  plat_mutex lock;
  monitor_link *v;
  size_t n, cap;
  int fired; /* the target is down: no more entries */
} monitor_set;

/* 0 or an errno value. */
int monitor_set_init(monitor_set *s);
/* Releases the watchers still listed (a set that never fired). */
void monitor_set_fini(monitor_set *s);

/* Adds watcher's monitor id. Returns 0; ESRCH when the set has fired (the
 * caller tells the watcher "noproc"); ENOMEM. */
int monitor_add(monitor_set *s, struct ic_isolate *watcher, uint64_t id);
/* Removes watcher's monitor id if it is still there (cancel). */
void monitor_remove(monitor_set *s, struct ic_isolate *watcher, uint64_t id);
/* Fires the set with reason (copied into each notice); idempotent. */
void monitor_fire(monitor_set *s, const char *reason);
/* Posts one down notice (MSG_DOWN, corr = id) to watcher. 0, or ENOMEM
 * (nothing posted: the caller reports it). */
int monitor_notify(struct ic_isolate *watcher, uint64_t id, const char *reason);

#endif
