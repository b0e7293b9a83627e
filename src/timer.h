/*
 * timer — one thread and a binary heap for every timer of a cluster, so an
 * armed timer costs a heap entry, never a thread. A fired timer is a
 * MSG_TIMER message in the isolate's system queue.
 *
 * A timer is named by its isolate and the isolate's own id for it, and can
 * be cancelled by that name in O(log n): an index (open addressing on the
 * name) keeps each entry's heap position. A finished wait or a cancelled
 * timer therefore leaves nothing behind that would hold a drain back or
 * keep its isolate's struct alive until the old deadline.
 */
#ifndef IC_TIMER_H
#define IC_TIMER_H

#include <stddef.h>
#include <stdint.h>

#include "platform.h"

struct ic_isolate;

typedef struct timer_entry {
  uint64_t deadline;
  uint64_t seq;               /* ties broken by arming order */
  uint64_t id;                /* the isolate's timer id */
  struct ic_isolate *iso;     /* strong reference */
  size_t slot;                /* its slot in the index */
  int periodic;               /* an `every` timer: never work a drain waits for */
} timer_entry;

typedef struct timer_wheel {
  plat_mutex lock;
  plat_cond cond;
  plat_thread thread;
  timer_entry *heap;
  size_t len, cap;
  size_t *index;              /* heap position + 1 of each armed timer; 0 = free */
  size_t index_cap;           /* a power of two, at least twice len */
  uint64_t seq;
  uint64_t sleep_until;       /* what the thread waits for now (UINT64_MAX: a signal) */
  int stopping, started;
} timer_wheel;

int timer_init(timer_wheel *t);
int timer_start(timer_wheel *t);
/* Arms timer id for iso, firing after delay_ns; periodic marks the arming of
 * an `every` timer. 0, ENOMEM, or ECANCELED once the wheel has stopped. An
 * id still armed for iso is replaced. Any thread. */
int timer_arm(timer_wheel *t, struct ic_isolate *iso, uint64_t id, uint64_t delay_ns, int periodic);
/* Disarms timer id of iso if it has not fired yet (else nothing). Any thread. */
void timer_cancel(timer_wheel *t, struct ic_isolate *iso, uint64_t id);
/* Is a one-shot timer of a live isolate due before deadline? That is work
 * still to come for a drain; periodic timers never end, so they are not. */
int timer_held_before(timer_wheel *t, uint64_t deadline);
/* Stops the thread and releases every armed timer. */
void timer_stop(timer_wheel *t);
void timer_fini(timer_wheel *t);

#endif
