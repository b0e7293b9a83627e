/*
 * scheduler — the worker pool that runs pooled isolates M:N.
 *
 * Two levels, as in skynet: a run queue of isolates that have work, and each
 * isolate's own mailbox. An isolate is in the run queue at most once (its
 * sched flag) so it runs on one worker at a time. A worker that wakes an idle
 * isolate while running another keeps it in its LIFO slot and runs it next,
 * on the same thread, without waking anybody (the hand-off Go and Tokio use
 * for ping-pong patterns); the slot is bounded by a streak limit so the
 * global queue is never starved.
 */
#ifndef IC_SCHED_H
#define IC_SCHED_H

#include <stdatomic.h>
#include <stdint.h>

#include "mailbox.h"
#include "platform.h"

struct ic_isolate;
struct ic_cluster;
struct sched;

typedef struct worker {
  struct sched *sched;
  plat_thread thread;
  /* Next isolate to run on this worker. Taken with an atomic exchange:
   * the monitor (or a send that finds it waiting too long) moves it to the
   * shared queue so an idle worker runs it, when the current turn goes on. */
  _Atomic(struct ic_isolate *) lifo;
  _Atomic uint64_t lifo_pushes; /* hand-offs into the slot, counted by the owner */
  uint64_t lifo_seen;        /* lifo_pushes at the monitor's last look (monitor only) */
  uint64_t lifo_mark;        /* lifo_pushes when a send last looked (owner only) */
  uint64_t lifo_since;       /* when a later send first found that occupant (owner only) */
  unsigned lifo_streak;      /* consecutive LIFO runs */
  int index;
  int started;
  atomic_int exit_state;     /* THREAD_* (isolate.h): who lets go when it ends */
  /* What the worker runs now, for the monitor. The worker switches
   * `current` without a lock; the monitor (or a shutdown leaving the
   * worker) that reads it holds cur_lock and sets `watched` first, and a
   * worker ending its turn that then finds `watched` set waits for
   * cur_lock: both sides are sequentially consistent, so either the
   * reader sees NULL or the worker waits, and the isolate cannot end its
   * turn (and go away) under the reader (worker_watch in scheduler.c).
   * turn_start is written before `current` is set, and stays as it is
   * until the turn ends. */
  plat_mutex cur_lock;
  _Atomic(struct ic_isolate *) current;
  _Atomic uint64_t turn_start;
  atomic_int watched;
  /* When the last turn ended, while the worker goes straight on to the
   * next one (a hand-off, or the queue's next without a wait): that turn
   * starts then, without a clock read of its own. 0 = read the clock
   * (owner only). */
  uint64_t clock;
  msg_cache mcache; /* spare message blocks (mailbox.h): this thread's */
} worker;

enum { LIFO_WATCH_OFF, LIFO_WATCH_ON, LIFO_WATCH_RESTING };

typedef struct sched {
  struct ic_cluster *cluster;
  worker *workers;
  int nworkers;
  plat_mutex lock;           /* guards the queue, nidle, stopping */
  plat_cond cond;
  struct ic_isolate *head, *tail;
  _Atomic int nidle;         /* written under lock; read without it as a hint */
  int stopping;
  atomic_int halted;         /* stopping, for a worker left running by a shutdown
                                (read without the lock on the LIFO path) */
  /* The monitor (like Go's sysmon) preempts a turn that has run longer
   * than the time slice. It sleeps once every worker has been idle for a
   * few slices (MONITOR_LINGER_LOOKS in scheduler.c). While an
   * isolate waits in a LIFO slot and a worker is idle, it watches the slots
   * every LIFO_WAIT and moves an isolate that waited a whole look to the
   * shared queue, so a sender that computes on after its send does not hold
   * the receiver back (lifo_watch ON; a hand-off turns it on from OFF and
   * wakes the monitor under lock; see monitor_main for RESTING). */
  plat_thread monitor;
  plat_cond monitor_cond;
  msg_depot depot;           /* the workers' caches trade message blocks here */
  int monitor_started, monitor_sleeping;
  atomic_int lifo_watch;
  uint64_t slice_ns;
} sched;

int sched_init(sched *s, struct ic_cluster *c, int nworkers, double slice_seconds);

/* Called on a send from an isolate running on w: if the LIFO slot has
 * waited long (the sender keeps running), hands it to the shared queue so an
 * idle worker can take it. Owner thread only. */
void sched_check_lifo(worker *w);

/* Called by a worker around each turn of an isolate: the turn's start
 * (worker_clock), and at its end the clock then. The hand-off path takes
 * no lock: a turn begins and ends with two atomic stores, and an end waits
 * only while a reader is looking (see worker above). */
static inline void worker_begin_turn(worker *w, struct ic_isolate *iso, uint64_t now) {
  atomic_store_explicit(&w->turn_start, now, memory_order_relaxed);
  atomic_store_explicit(&w->current, iso, memory_order_release);
}

static inline void worker_end_turn(worker *w, uint64_t now) {
  w->clock = now;
  atomic_store(&w->current, NULL);
  if (atomic_load(&w->watched)) {
    plat_mutex_lock(&w->cur_lock);
    plat_mutex_unlock(&w->cur_lock);
  }
}
/* The time the next turn of w starts: when its last one ended, or now. */
static inline uint64_t worker_clock(worker *w) { return w->clock ? w->clock : plat_now_ns(); }
/* The worker did something slow since its last turn ended (waited, or
 * closed an isolate): the next turn reads the clock. */
static inline void worker_clock_stale(worker *w) { w->clock = 0; }
/* Starts the worker threads. 0 or errno. */
int sched_start(sched *s);
/* Queues iso (already marked SCHEDULED, with a run-queue hold). `from` is the
 * caller's worker or NULL. Any thread. Returns 1 when iso went into from's
 * LIFO slot (a hand-off), else 0. */
int sched_push(sched *s, struct ic_isolate *iso, worker *from);
/* Stops and joins the workers; isolates still queued are released. A
 * worker still in a turn at deadline (monotonic ns; an isolate stuck in a
 * blocking C call) is left running: detached, holding the cluster until it
 * ends, its isolate taken out of the registry (cluster_leave_isolate). */
void sched_stop(sched *s, uint64_t deadline);
void sched_fini(sched *s);

#endif
