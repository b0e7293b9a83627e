#include "scheduler.h"

#include <errno.h>
#include <stdlib.h>

#include "cluster.h"
#include "isolate.h"

/* After this many back-to-back LIFO hand-offs a worker takes the next isolate
 * from the shared queue instead, so a ping-pong pair cannot starve others. */
#define LIFO_STREAK_MAX 64

int sched_init(sched *s, struct ic_cluster *c, int nworkers) {
  s->cluster = c;
  s->nworkers = nworkers;
  s->head = s->tail = NULL;
  s->nidle = 0;
  s->stopping = 0;
  s->workers = calloc((size_t)nworkers, sizeof *s->workers);
  if (!s->workers) return ENOMEM;
  if (plat_mutex_init(&s->lock)) { free(s->workers); return ENOMEM; }
  if (plat_cond_init(&s->cond)) { plat_mutex_destroy(&s->lock); free(s->workers); return ENOMEM; }
  for (int i = 0; i < nworkers; i++) {
    s->workers[i].sched = s;
    s->workers[i].index = i;
  }
  return 0;
}

static void queue_append_locked(sched *s, ic_isolate *iso) {
  iso->runq_next = NULL;
  if (s->tail) s->tail->runq_next = iso; else s->head = iso;
  s->tail = iso;
}

static void queue_append(sched *s, ic_isolate *iso) {
  plat_mutex_lock(&s->lock);
  queue_append_locked(s, iso);
  if (s->nidle > 0) plat_cond_signal(&s->cond);
  plat_mutex_unlock(&s->lock);
}

void sched_push(sched *s, ic_isolate *iso, worker *from) {
  if (from && from->sched == s) {
    /* Hand-off: run it next on this thread. The previous occupant goes to
     * the shared queue, where an idle worker can pick it up. */
    ic_isolate *prev = from->lifo;
    from->lifo = iso;
    if (prev) queue_append(s, prev);
    return;
  }
  queue_append(s, iso);
}

/* Next isolate for w, blocking while there is none; NULL when stopping. */
static ic_isolate *sched_next(sched *s, worker *w) {
  if (w->lifo) {
    ic_isolate *iso = w->lifo;
    if (w->lifo_streak < LIFO_STREAK_MAX) {
      w->lifo = NULL;
      w->lifo_streak++;
      return iso;
    }
    /* Streak over: let the queue go first, the slot joins its tail. */
    w->lifo = NULL;
    w->lifo_streak = 0;
    plat_mutex_lock(&s->lock);
    queue_append_locked(s, iso);
  } else {
    w->lifo_streak = 0;
    plat_mutex_lock(&s->lock);
  }
  for (;;) {
    if (s->head) {
      ic_isolate *iso = s->head;
      s->head = iso->runq_next;
      if (!s->head) s->tail = NULL;
      /* More waiting and others asleep: pass the baton. */
      if (s->head && s->nidle > 0) plat_cond_signal(&s->cond);
      plat_mutex_unlock(&s->lock);
      return iso;
    }
    if (s->stopping) {
      plat_mutex_unlock(&s->lock);
      return NULL;
    }
    s->nidle++;
    plat_cond_wait(&s->cond, &s->lock);
    s->nidle--;
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
  return NULL;
}

int sched_start(sched *s) {
  for (int i = 0; i < s->nworkers; i++) {
    /* Deep Lua recursion in handlers and in the codec runs on this stack. */
    int rc = plat_thread_start(&s->workers[i].thread, worker_main, &s->workers[i], 8u << 20);
    if (rc) return rc;
    s->workers[i].started = 1;
  }
  return 0;
}

void sched_stop(sched *s) {
  plat_mutex_lock(&s->lock);
  s->stopping = 1;
  plat_cond_broadcast(&s->cond);
  plat_mutex_unlock(&s->lock);
  for (int i = 0; i < s->nworkers; i++) {
    if (s->workers[i].started) {
      plat_thread_join(s->workers[i].thread);
      s->workers[i].started = 0;
    }
    if (s->workers[i].lifo) {
      ic_isolate *iso = s->workers[i].lifo;
      s->workers[i].lifo = NULL;
      isolate_release(iso);
    }
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
  plat_cond_destroy(&s->cond);
  plat_mutex_destroy(&s->lock);
  free(s->workers);
  s->workers = NULL;
}
