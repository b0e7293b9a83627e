/*
 * timer — one thread and a binary heap for every timer of a cluster, so an
 * armed timer costs a heap entry, never a thread. A fired timer is a
 * MSG_TIMER message in the isolate's system queue.
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
} timer_entry;

typedef struct timer_wheel {
  plat_mutex lock;
  plat_cond cond;
  plat_thread thread;
  timer_entry *heap;
  size_t len, cap;
  uint64_t seq;
  int stopping, started;
} timer_wheel;

int timer_init(timer_wheel *t);
int timer_start(timer_wheel *t);
/* Arms timer id for iso, firing after delay_ns. 0, or ENOMEM. Any thread. */
int timer_arm(timer_wheel *t, struct ic_isolate *iso, uint64_t id, uint64_t delay_ns);
/* Earliest deadline armed, or UINT64_MAX. */
uint64_t timer_next_deadline(timer_wheel *t);
/* Stops the thread and releases every armed timer. */
void timer_stop(timer_wheel *t);
void timer_fini(timer_wheel *t);

#endif
