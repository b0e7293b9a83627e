/*
 * drain — waiting for the cluster to go quiet (drain), control messages to
 * every isolate, and shutdown: the stopper thread, killing what does not
 * stop by the deadline, joining the workers and dedicated threads, and
 * leaving behind a thread stuck in a blocking C call.
 *
 * Threads and locks: shutdown runs on the thread that asks for it or on
 * the stopper; c->lock is taken for the registry and the dedicated list,
 * never across a wait for another thread.
 */
#include "cluster_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "net/net.h"

/* Past a shutdown's deadline: how long killed Lua code has to stop, and how
 * long in all before a thread still in a blocking C call is left running. */
#define SHUTDOWN_KILL_MARGIN 0.25
#define SHUTDOWN_JOIN_MARGIN 0.5

/* ---- drain and shutdown ------------------------------------------------- */

static int isolate_busy(ic_isolate *iso) {
  return atomic_load(&iso->sched) == SCHED_SCHEDULED || mailbox_count(&iso->sysq) > 0 ||
         (mailbox_count(&iso->mbox) > 0 &&
          atomic_load_explicit(&iso->wait_seen, memory_order_relaxed) != WAIT_BLOCKED) ||
         atomic_load(&iso->events_pending);
}

static int cluster_quiet(ic_cluster *c, uint64_t deadline) {
  int quiet = 1;
  plat_mutex_lock(&c->lock);
  for (size_t i = 0; i < c->by_id_cap && quiet; i++) {
    ic_isolate *iso = c->by_id[i];
    if (!iso || iso == TOMB || iso->kind == ISO_MAIN) continue;
    if (isolate_busy(iso)) quiet = 0;
  }
  plat_mutex_unlock(&c->lock);
  /* A one-shot timer (or a wait's timeout) that fires before the deadline
   * is work still to come; a cancelled one or a finished wait's is gone
   * from the wheel, and an `every` never ends, so it is not waited for. */
  if (quiet && timer_held_before(&c->timers, deadline)) quiet = 0;
  return quiet;
}

int cluster_drain(ic_cluster *c, double timeout) {
  uint64_t deadline = plat_now_ns() + plat_seconds_to_ns(timeout);
  int calm = 0;
  /* Polls: draining happens once, at the end of a program, and polling keeps
   * the hot paths free of any drain bookkeeping. Two quiet looks in a row
   * rule out a message in flight between two isolates. */
  for (;;) {
    if (atomic_load(&c->state) != CLUSTER_RUNNING) return 1;
    if (atomic_load(&c->main->sigint)) return 0; /* Ctrl-C: stop draining */
    if (cluster_quiet(c, deadline)) {
      if (++calm >= 2) return 1;
    } else {
      calm = 0;
    }
    if (plat_now_ns() >= deadline) return 0;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
}

void cluster_broadcast_control(ic_cluster *c, int code) {
  /* Must reach every isolate even when memory has run out, or the shutdown
   * would wait out its whole deadline: so no allocation for the snapshot
   * (taken a chunk at a time), and an isolate whose control message cannot
   * be allocated is interrupted instead (it stops at its next turn, as a
   * kill does, without its on_shutdown handler). Called only once the
   * cluster has left CLUSTER_RUNNING: nothing registers any more, so the
   * table is not rebuilt and its slots stay put between chunks. */
  ic_isolate *chunk[64];
  size_t next = 0;
  for (;;) {
    size_t n = 0;
    plat_mutex_lock(&c->lock);
    for (; next < c->by_id_cap && n < sizeof chunk / sizeof chunk[0]; next++) {
      ic_isolate *iso = c->by_id[next];
      if (!iso || iso == TOMB || iso->kind == ISO_MAIN) continue;
      isolate_retain(iso);
      chunk[n++] = iso;
    }
    int more = next < c->by_id_cap;
    plat_mutex_unlock(&c->lock);
    for (size_t i = 0; i < n; i++) {
      ic_msg *m = msg_new(MSG_CONTROL, NULL, 0);
      if (code == CONTROL_KILL || !m) isolate_interrupt(chunk[i], INTERRUPT_SHUTDOWN);
      if (m) {
        m->corr = (uint64_t)code;
        isolate_post_sys(chunk[i], m, NULL);
      } else {
        isolate_wake(chunk[i], NULL);
      }
      isolate_release(chunk[i]);
    }
    if (!more) break;
  }
}

static int wait_live_zero(ic_cluster *c, uint64_t deadline) {
  plat_mutex_lock(&c->lock);
  while (c->live > 0) {
    if (plat_cond_wait_until(&c->live_cond, &c->lock, deadline) == ETIMEDOUT) break;
  }
  int done = c->live == 0;
  plat_mutex_unlock(&c->lock);
  return done;
}

/* Isolates left in the registry after the threads have stopped: close them
 * here, on the only thread left. */
static void reap_leftovers(ic_cluster *c) {
  for (;;) {
    ic_isolate *iso = NULL;
    plat_mutex_lock(&c->lock);
    for (size_t i = 0; i < c->by_id_cap; i++) {
      ic_isolate *x = c->by_id[i];
      if (x && x != TOMB && x->kind != ISO_MAIN) { iso = x; isolate_retain(iso); break; }
    }
    plat_mutex_unlock(&c->lock);
    if (!iso) return;
    isolate_abandon(iso, "shutdown");
    isolate_release(iso);
  }
}

void cluster_leave_isolate(ic_cluster *c, ic_isolate *iso) {
  cluster_log(c, "isolate_cluster: isolate %s (id %llu) did not stop (a blocking call?); its thread is left running",
              iso->path ? iso->path : "(no path)", (unsigned long long)iso->id);
  cluster_unregister(c, iso, "shutdown");
}

/* Joins the threads of dedicated isolates by deadline; one still stuck then
 * (in a blocking C call, beyond the reach of the count hook) is left to the
 * process rather than allowed to hang the shutdown. */
static void join_dedicated(ic_cluster *c, uint64_t deadline) {
  plat_mutex_lock(&c->lock);
  ic_isolate **d = c->dedicated;
  size_t n = c->ndedicated;
  c->dedicated = NULL;
  c->ndedicated = c->dedicated_cap = 0;
  plat_mutex_unlock(&c->lock);
  for (size_t i = 0; i < n; i++) {
    ic_isolate *iso = d[i];
    if (plat_thread_join_until(iso->th->thread, deadline) == ETIMEDOUT &&
        atomic_exchange(&iso->th->thread_state, THREAD_LEFT) != THREAD_EXITED) {
      /* Its hold stays with the thread, which lets go when its call
       * returns (dedicated_main); the struct outlives it. */
      plat_thread_detach(iso->th->thread);
      plat_pin_code();
      cluster_leave_isolate(c, iso);
      continue;
    }
    plat_thread_join(iso->th->thread); /* at once: it has ended or is ending */
    isolate_release(iso);
  }
  free(d);
}

/* The stopper holds the cluster (the main state may close its handle while
 * this shutdown still runs) and lets go as its last act. */
static void *stopper_main(void *arg) {
  ic_cluster *c = arg;
  cluster_shutdown(c, c->stopper_timeout);
  cluster_release(c);
  return NULL;
}

void cluster_request_shutdown(ic_cluster *c, double timeout) {
  plat_mutex_lock(&c->lock);
  if (!c->has_stopper && atomic_load(&c->state) == CLUSTER_RUNNING) {
    c->stopper_timeout = timeout;
    cluster_retain(c);
    if (plat_thread_start(&c->stopper, stopper_main, c, 256u << 10) == 0) c->has_stopper = 1;
    else cluster_release(c); /* not the last hold: the asking isolate has one */
  }
  plat_mutex_unlock(&c->lock);
}

int cluster_join_stopper(ic_cluster *c) {
  plat_mutex_lock(&c->lock);
  /* Once the cluster is down the stopper's work is done: joining it waits
   * for no more than the end of its function. Before, it is not waited for. */
  int join = c->has_stopper && atomic_load(&c->state) == CLUSTER_DOWN;
  if (join) c->has_stopper = 0;
  int left = c->has_stopper;
  plat_mutex_unlock(&c->lock);
  if (join) plat_thread_join(c->stopper);
  return !left;
}

void cluster_detach_stopper(ic_cluster *c) {
  plat_mutex_lock(&c->lock);
  int had = c->has_stopper;
  if (had) pthread_detach(c->stopper);
  c->has_stopper = 0;
  plat_mutex_unlock(&c->lock);
  /* The stopper, and the workers its shutdown still waits for, run on after
   * the cluster is closed (at the end of a script: while lua_close unloads
   * the module): the code they run must stay mapped. */
  if (had) plat_pin_code();
}

/* Whatever the main state waits for now, it looks again (it sees the state
 * change). Any thread. */
static void wake_main(ic_cluster *c) {
  atomic_store(&c->main->sched, SCHED_SCHEDULED);
  plat_sem_post(&c->main->th->wsem);
}

int cluster_wait_down(ic_cluster *c, uint64_t deadline) {
  plat_mutex_lock(&c->lock);
  while (atomic_load(&c->state) != CLUSTER_DOWN)
    if (plat_cond_wait_until(&c->live_cond, &c->lock, deadline) == ETIMEDOUT) break;
  int down = atomic_load(&c->state) == CLUSTER_DOWN;
  plat_mutex_unlock(&c->lock);
  return down;
}

int cluster_shutdown(ic_cluster *c, double timeout) {
  int expected = CLUSTER_RUNNING;
  if (!atomic_compare_exchange_strong(&c->state, &expected, CLUSTER_STOPPING)) {
    /* Already stopping or down: wait for whoever is doing it (another
     * thread: a shutdown asked for by an isolate), within this call's own
     * deadline, then report its result; not down by then: not in time. */
    int down = cluster_wait_down(c, plat_now_ns() + plat_seconds_to_ns(timeout));
    return down && atomic_load(&c->shutdown_in_time);
  }
  uint64_t start = plat_now_ns();
  uint64_t deadline = start + plat_seconds_to_ns(timeout);
  cluster_broadcast_control(c, CONTROL_SHUTDOWN);
  wake_main(c);
  int in_time = wait_live_zero(c, deadline);
  /* From here on it is past the deadline (or all is done): what follows is
   * the small margin, whatever the isolates do. */
  uint64_t past = plat_now_ns() > deadline ? plat_now_ns() : deadline;
  if (!in_time) {
    /* Interrupt what still runs: handlers stuck in Lua code are stopped by
     * the count hook within a few instructions. */
    cluster_broadcast_control(c, CONTROL_KILL);
    wait_live_zero(c, past + plat_seconds_to_ns(SHUTDOWN_KILL_MARGIN));
  }
  /* Every isolate is down or left running: say bye to the other nodes and
   * stop the net thread, before the scheduler it posts into stops. */
  uint64_t hard = past + plat_seconds_to_ns(SHUTDOWN_JOIN_MARGIN);
  net_stop(c->net, hard);
  rwatch_drop_all(c);
  /* A thread still in a turn then is in a blocking C call: left running. */
  sched_stop(&c->sched, hard);
  timer_stop(&c->timers);
  join_dedicated(c, hard);
  reap_leftovers(c);
  /* The main state's ref may be held by Lua values beyond this point; take
   * it out of the registry so the cluster owns nothing. */
  if (atomic_load(&c->api_subscribed)) {
    /* A C program's unread events (ic_next_event) outlive the log. */
    size_t n = 0;
    cluster_event *tail = cluster_read_events(c, c->main, &n);
    plat_mutex_lock(&c->lock);
    c->api_tail = tail;
    c->api_ntail = n;
    plat_mutex_unlock(&c->lock);
  }
  cluster_unregister(c, c->main, "shutdown");
  atomic_store(&c->main->alive, 0);
  /* The event log holds isolates (which hold the cluster): it goes now. */
  plat_mutex_lock(&c->lock);
  cluster_event *log = c->log;
  size_t nlog = c->log_len;
  c->log = NULL;
  c->log_len = c->log_cap = c->log_reserved = 0;
  c->log_base += nlog;
  plat_mutex_unlock(&c->lock);
  for (size_t i = 0; i < nlog; i++) {
    event_clear(&log[i]);
  }
  free(log);
  /* The logger isolate holds the cluster: let go of it (and back to stderr).
   * Another destination (nowhere, a C program's function) stays. */
  plat_mutex_lock(&c->log_lock);
  int had_logger = c->logger != NULL;
  plat_mutex_unlock(&c->log_lock);
  if (had_logger) cluster_set_logger(c, NULL, 0);
  atomic_store(&c->shutdown_in_time, in_time);
  plat_mutex_lock(&c->lock);
  atomic_store(&c->state, CLUSTER_DOWN);
  plat_cond_broadcast(&c->live_cond); /* other callers of cluster_shutdown */
  plat_mutex_unlock(&c->lock);
  /* A main thread blocked in receive/run returns now. */
  wake_main(c);
  return in_time;
}
