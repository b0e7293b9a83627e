#include "scheduler.h"

#include <errno.h>
#include <stdlib.h>

#include "cluster.h"
#include "isolate.h"

static void queue_append(sched *s, ic_isolate *iso);

/* After this many back-to-back LIFO hand-offs a worker takes the next isolate
 * from the shared queue instead, so a ping-pong pair cannot starve others. */
#define LIFO_STREAK_MAX 64

int sched_init(sched *s, struct ic_cluster *c, int nworkers, double slice_seconds) {
  s->cluster = c;
  s->slice_ns = plat_seconds_to_ns(slice_seconds);
  s->monitor_started = s->monitor_sleeping = 0;
  atomic_init(&s->lifo_watch, LIFO_WATCH_OFF);
  s->nworkers = nworkers;
  s->head = s->tail = NULL;
  atomic_init(&s->nidle, 0);
  s->stopping = 0;
  atomic_init(&s->halted, 0);
  s->workers = calloc((size_t)nworkers, sizeof *s->workers);
  if (!s->workers) return ENOMEM;
  if (plat_mutex_init(&s->lock)) { free(s->workers); return ENOMEM; }
  if (plat_cond_init(&s->cond)) { plat_mutex_destroy(&s->lock); free(s->workers); return ENOMEM; }
  if (plat_cond_init(&s->monitor_cond)) {
    plat_cond_destroy(&s->cond);
    plat_mutex_destroy(&s->lock);
    free(s->workers);
    return ENOMEM;
  }
  if (msg_depot_init(&s->depot)) {
    plat_cond_destroy(&s->monitor_cond);
    plat_cond_destroy(&s->cond);
    plat_mutex_destroy(&s->lock);
    free(s->workers);
    return ENOMEM;
  }
  for (int i = 0; i < nworkers; i++) {
    s->workers[i].sched = s;
    s->workers[i].index = i;
    atomic_init(&s->workers[i].lifo, NULL);
    atomic_init(&s->workers[i].lifo_pushes, 0);
    atomic_init(&s->workers[i].exit_state, THREAD_RUNNING);
    atomic_init(&s->workers[i].current, NULL);
    atomic_init(&s->workers[i].turn_start, 0);
    atomic_init(&s->workers[i].watched, 0);
    plat_mutex_init(&s->workers[i].cur_lock);
    s->workers[i].mcache.depot = &s->depot;
  }
  return 0;
}

/* How long an isolate may wait in the LIFO slot while the sender goes on
 * sending before an idle worker may take it. */
#define LIFO_WAIT_NS 50000u

void sched_check_lifo(worker *w) {
  if (!atomic_load_explicit(&w->lifo, memory_order_relaxed)) return;
  /* The send that just filled the slot costs no clock read (in a ping-pong
   * every send is one); the timing starts with the next send that finds the
   * same occupant. */
  uint64_t pushes = atomic_load_explicit(&w->lifo_pushes, memory_order_relaxed);
  if (w->lifo_mark != pushes) {
    w->lifo_mark = pushes;
    w->lifo_since = 0;
    return;
  }
  uint64_t now = plat_now_ns();
  if (w->lifo_since == 0) {
    w->lifo_since = now;
  } else if (now - w->lifo_since > LIFO_WAIT_NS) {
    ic_isolate *waiting = atomic_exchange(&w->lifo, NULL);
    if (waiting) queue_append(w->sched, waiting);
  }
}

/* Returns what w runs now, which cannot end its turn until worker_unwatch. */
static ic_isolate *worker_watch(worker *w) {
  plat_mutex_lock(&w->cur_lock);
  atomic_store(&w->watched, 1);
  return atomic_load(&w->current);
}

static void worker_unwatch(worker *w) {
  atomic_store(&w->watched, 0);
  plat_mutex_unlock(&w->cur_lock);
}

/* The fast watch ends after this many looks that moved nothing (the slots
 * were empty, or their occupants changed in between, as in a ping-pong on
 * one worker), and then rests for LIFO_WATCH_REST slow ticks before a
 * hand-off may start it again, so a pattern that never needs it does not
 * keep the monitor waking every LIFO_WAIT. */
#define LIFO_WATCH_USELESS_TICKS 40
#define LIFO_WATCH_REST 8

/* Idle looks, a slice apart, before the monitor sleeps until a worker wakes
 * it. A worker woken while the monitor sleeps wakes it first, which costs
 * the way from a post to an idle isolate's turn a wake-up of one more
 * thread: with work coming every few hundred microseconds (requests from
 * another node) that was one per message. Lingering a few slices keeps
 * that wake-up off the path while work keeps coming, at the cost of a few
 * looks after the last. */
#define MONITOR_LINGER_LOOKS 50

static void *monitor_main(void *arg) {
  sched *s = arg;
  int useless = 0; /* fast looks in a row that moved nothing */
  int rest = 0;    /* slow ticks left before the watch may start again */
  int idle = 0;    /* looks in a row that found every worker idle */
  plat_thread_precise_timers(); /* a LIFO_WAIT look, not twice that */
  plat_mutex_lock(&s->lock);
  while (!s->stopping) {
    if (atomic_load_explicit(&s->nidle, memory_order_relaxed) == s->nworkers && !s->head) {
      atomic_store(&s->lifo_watch, LIFO_WATCH_OFF);
      useless = rest = 0;
      if (idle < MONITOR_LINGER_LOOKS) {
        idle++;
        plat_cond_wait_until(&s->monitor_cond, &s->lock, plat_now_ns() + s->slice_ns);
        continue;
      }
      idle = 0;
      s->monitor_sleeping = 1;
      plat_cond_wait(&s->monitor_cond, &s->lock);
      s->monitor_sleeping = 0;
      continue;
    }
    idle = 0;
    int watch = atomic_load(&s->lifo_watch);
    plat_mutex_unlock(&s->lock);
    uint64_t now = plat_now_ns();
    int moved = 0;
    for (int i = 0; i < s->nworkers; i++) {
      worker *w = &s->workers[i];
      ic_isolate *cur = worker_watch(w);
      uint64_t start = atomic_load_explicit(&w->turn_start, memory_order_relaxed);
      /* turn_start may be later than `now` (read before the lock). Asked
       * again at every tick while the turn goes on: the Lua thread that
       * runs may have changed since the last ask. */
      if (cur && now > start && now - start > s->slice_ns) isolate_preempt(cur);
      /* An isolate waiting in the LIFO slot while a turn goes on: the
       * shared queue (and an idle worker) take it. At the fast pace only
       * one that has waited since the last look (no hand-off in between:
       * the slot is pushed to only by its owner, so an unchanged count
       * means the same occupant); at the slow pace, a slice apart, any. */
      uint64_t pushes = atomic_load_explicit(&w->lifo_pushes, memory_order_relaxed);
      if (cur && (watch != LIFO_WATCH_ON || pushes == w->lifo_seen) &&
          atomic_load_explicit(&w->lifo, memory_order_relaxed)) {
        ic_isolate *waiting = atomic_exchange(&w->lifo, NULL);
        if (waiting) {
          queue_append(s, waiting);
          moved = 1;
        }
      }
      w->lifo_seen = pushes;
      worker_unwatch(w);
    }
    plat_mutex_lock(&s->lock);
    if (watch == LIFO_WATCH_ON) {
      useless = moved ? 0 : useless + 1;
      /* A hand-off racing this store finds the watch resting: the slow
       * tick still moves what it left, a slice later. */
      if (useless >= LIFO_WATCH_USELESS_TICKS) {
        atomic_store(&s->lifo_watch, LIFO_WATCH_RESTING);
        useless = 0;
        rest = LIFO_WATCH_REST;
      }
    } else if (watch == LIFO_WATCH_RESTING && --rest <= 0) {
      atomic_store(&s->lifo_watch, LIFO_WATCH_OFF);
    }
    watch = atomic_load(&s->lifo_watch);
    if (!s->stopping)
      plat_cond_wait_until(&s->monitor_cond, &s->lock,
                           now + (watch == LIFO_WATCH_ON ? LIFO_WAIT_NS : s->slice_ns));
  }
  plat_mutex_unlock(&s->lock);
  return NULL;
}

static void queue_append_locked(sched *s, ic_isolate *iso) {
  iso->runq_next = NULL;
  if (s->tail) s->tail->runq_next = iso; else s->head = iso;
  s->tail = iso;
}

static void queue_append(sched *s, ic_isolate *iso) {
  plat_mutex_lock(&s->lock);
  if (s->stopping) {
    /* The workers are gone or going: shutdown closes what is left
     * (reap_leftovers); only the run queue's hold is given back. */
    plat_mutex_unlock(&s->lock);
    isolate_release(iso);
    return;
  }
  queue_append_locked(s, iso);
  int wake = atomic_load_explicit(&s->nidle, memory_order_relaxed) > 0;
  plat_mutex_unlock(&s->lock);
  /* After the unlock: a worker woken while the lock is held would at once
   * wait for it, a second sleep and wake-up. Whoever queues holds the
   * isolate, and so the cluster that owns s. */
  if (wake) plat_cond_signal(&s->cond);
}

int sched_push(sched *s, ic_isolate *iso, worker *from) {
  if (from && from->sched == s) {
    /* Hand-off: run it next on this thread. The previous occupant goes to
     * the shared queue, where an idle worker can pick it up. */
    ic_isolate *prev = atomic_exchange(&from->lifo, iso);
    uint64_t pushes = atomic_load_explicit(&from->lifo_pushes, memory_order_relaxed) + 1;
    atomic_store_explicit(&from->lifo_pushes, pushes, memory_order_relaxed);
    /* What sched_check_lifo does for a send that finds a new occupant
     * (the caller is from's owner), so that the send which filled the
     * slot need not call it. */
    from->lifo_mark = pushes;
    from->lifo_since = 0;
    if (prev) queue_append(s, prev);
    /* Someone idle could run it if this turn goes on: make sure the
     * monitor watches the slot (a flag test on the fast path). */
    int off = LIFO_WATCH_OFF;
    if (atomic_load_explicit(&s->lifo_watch, memory_order_relaxed) == LIFO_WATCH_OFF &&
        atomic_load_explicit(&s->nidle, memory_order_relaxed) > 0 &&
        atomic_compare_exchange_strong(&s->lifo_watch, &off, LIFO_WATCH_ON)) {
      plat_mutex_lock(&s->lock);
      plat_cond_signal(&s->monitor_cond);
      plat_mutex_unlock(&s->lock);
    }
    return 1;
  }
  queue_append(s, iso);
  return 0;
}

/* Next isolate for w, blocking while there is none; NULL when stopping. */
static ic_isolate *sched_next(sched *s, worker *w) {
  ic_isolate *iso = atomic_exchange(&w->lifo, NULL);
  if (iso && atomic_load_explicit(&s->halted, memory_order_acquire)) {
    /* A worker left running past shutdown woke it: shutdown closes it. */
    isolate_release(iso);
    return NULL;
  }
  if (iso) {
    if (w->lifo_streak < LIFO_STREAK_MAX) {
      w->lifo_streak++;
      return iso;
    }
    /* Streak over: let the queue go first, the slot joins its tail. */
    w->lifo_streak = 0;
    plat_mutex_lock(&s->lock);
    queue_append_locked(s, iso);
  } else {
    w->lifo_streak = 0;
    plat_mutex_lock(&s->lock);
  }
  for (;;) {
    if (s->head) {
      ic_isolate *next = s->head;
      s->head = next->runq_next;
      if (!s->head) s->tail = NULL;
      /* More waiting and others asleep: pass the baton. */
      if (s->head && atomic_load_explicit(&s->nidle, memory_order_relaxed) > 0)
        plat_cond_signal(&s->cond);
      plat_mutex_unlock(&s->lock);
      return next;
    }
    if (s->stopping) {
      plat_mutex_unlock(&s->lock);
      return NULL;
    }
    /* Nothing to do: no spare message blocks kept idle (the depot's go
     * with the last worker to rest). */
    msg_cache_trim(&w->mcache);
    if (atomic_fetch_add_explicit(&s->nidle, 1, memory_order_relaxed) + 1 == s->nworkers) msg_depot_trim(&s->depot);
    worker_clock_stale(w);
    plat_cond_wait(&s->cond, &s->lock);
    atomic_fetch_sub_explicit(&s->nidle, 1, memory_order_relaxed);
    /* Busy again: the monitor watches while anyone works. */
    if (s->monitor_sleeping) plat_cond_signal(&s->monitor_cond);
  }
}

static void *worker_main(void *arg) {
  worker *w = arg;
  sched *s = w->sched;
  ic_isolate *iso;
  while ((iso = sched_next(s, w)) != NULL) {
    int r = isolate_run(iso, w);
    if (r == RUN_AGAIN) {
      /* Still has work: to the back of the queue, for fairness. */
      queue_append(s, iso);
    } else {
      /* RUN_IDLE or RUN_DONE: the run queue's hold ends here. */
      isolate_release(iso);
    }
  }
  msg_cache_flush(&w->mcache); /* (each turn flushes; this is for good measure) */
  msg_cache_trim(&w->mcache);
  /* Left running by a shutdown: the hold it took on the cluster (which
   * owns this worker's struct) ends with the thread, as the last thing. */
  if (atomic_exchange(&w->exit_state, THREAD_EXITED) == THREAD_LEFT) cluster_release(s->cluster);
  return NULL;
}

int sched_start(sched *s) {
  int mrc = plat_thread_start(&s->monitor, monitor_main, s, 256u << 10);
  if (mrc) return mrc;
  s->monitor_started = 1;
  for (int i = 0; i < s->nworkers; i++) {
    /* Deep Lua recursion in handlers and in the codec runs on this stack. */
    int rc = plat_thread_start(&s->workers[i].thread, worker_main, &s->workers[i], 8u << 20);
    if (rc) return rc;
    s->workers[i].started = 1;
  }
  return 0;
}

/* A worker still in a turn past the deadline: its isolate is stuck in a
 * blocking C call (Lua code would have met the kill). The thread is left
 * to the process: it keeps the cluster alive until it ends (worker_main),
 * and its isolate leaves the registry so nothing else closes the state the
 * thread still runs. */
static void leave_worker(sched *s, worker *w) {
  cluster_retain(s->cluster);
  if (atomic_exchange(&w->exit_state, THREAD_LEFT) == THREAD_EXITED) {
    /* It ended just now after all: an ordinary join. */
    cluster_release(s->cluster);
    plat_thread_join(w->thread);
    return;
  }
  ic_isolate *iso = worker_watch(w);
  if (iso) isolate_retain(iso);
  worker_unwatch(w);
  plat_thread_detach(w->thread);
  plat_pin_code();
  if (iso) {
    cluster_leave_isolate(s->cluster, iso);
    isolate_release(iso);
  }
}

void sched_stop(sched *s, uint64_t deadline) {
  plat_mutex_lock(&s->lock);
  s->stopping = 1;
  atomic_store(&s->halted, 1);
  plat_cond_broadcast(&s->cond);
  plat_cond_signal(&s->monitor_cond);
  plat_mutex_unlock(&s->lock);
  if (s->monitor_started) {
    plat_thread_join(s->monitor);
    s->monitor_started = 0;
  }
  for (int i = 0; i < s->nworkers; i++) {
    worker *w = &s->workers[i];
    if (w->started) {
      if (plat_thread_join_until(w->thread, deadline) == ETIMEDOUT) leave_worker(s, w);
      w->started = 0;
    }
    ic_isolate *left = atomic_exchange(&w->lifo, NULL);
    if (left) isolate_release(left);
  }
  plat_mutex_lock(&s->lock);
  ic_isolate *iso = s->head;
  s->head = s->tail = NULL;
  plat_mutex_unlock(&s->lock);
  while (iso) {
    ic_isolate *next = iso->runq_next;
    isolate_release(iso);
    iso = next;
  }
}

void sched_fini(sched *s) {
  for (int i = 0; i < s->nworkers; i++) plat_mutex_destroy(&s->workers[i].cur_lock);
  msg_depot_fini(&s->depot);
  plat_cond_destroy(&s->monitor_cond);
  plat_cond_destroy(&s->cond);
  plat_mutex_destroy(&s->lock);
  free(s->workers);
  s->workers = NULL;
}
