/*
 * The timer wheel (src/timer.h) against a model: random arms, re-arms and
 * cancels keep the heap ordered and the name index exact (every entry's
 * slot points back at it, nothing else is in the index), a cancelled timer
 * never fires, every other one fires exactly once, and only one-shot timers
 * hold a drain back. Isolates here are bare structs (kind ISO_MAIN: no
 * cluster, no Lua state); a fired timer lands in their system queue.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "isolate.h"
#include "timer.h"

static int passed, failed;

static void check(int ok, const char *what)
{
  if (ok) {
    passed++;
  } else {
    failed++;
    printf("FAIL: %s\n", what);
  }
}

#define NISO 4
#define NID 64

typedef struct model {
  int armed;     /* armed in the wheel now */
  int periodic;
  int cancelled; /* was armed, then cancelled (must not fire) */
  int fired;
} model;

static model m[NISO][NID];
static ic_isolate *isos[NISO];

static int iso_index(const ic_isolate *iso)
{
  for (int i = 0; i < NISO; i++)
    if (isos[i] == iso) return i;
  return -1;
}

/* Heap order, index exactness, and agreement with the model. */
static int consistent(timer_wheel *t)
{
  size_t used = 0;
  for (size_t j = 0; j < t->index_cap; j++) {
    if (!t->index[j]) continue;
    used++;
    size_t pos = t->index[j] - 1;
    if (pos >= t->len || t->heap[pos].slot != j) return 0;
  }
  if (used != t->len) return 0;
  size_t armed = 0;
  for (int i = 0; i < NISO; i++)
    for (int k = 0; k < NID; k++) armed += m[i][k].armed;
  if (armed != t->len) return 0;
  for (size_t i = 0; i < t->len; i++) {
    const timer_entry *e = &t->heap[i];
    int k = iso_index(e->iso);
    if (k < 0 || e->id >= NID || !m[k][e->id].armed || m[k][e->id].periodic != e->periodic) return 0;
    if (i > 0) {
      const timer_entry *p = &t->heap[(i - 1) / 2];
      if (p->deadline > e->deadline || (p->deadline == e->deadline && p->seq > e->seq)) return 0;
    }
  }
  return 1;
}

static int any_oneshot_armed(void)
{
  for (int i = 0; i < NISO; i++)
    for (int k = 0; k < NID; k++)
      if (m[i][k].armed && !m[i][k].periodic) return 1;
  return 0;
}

int main(void)
{
  srand(12345);
  for (int i = 0; i < NISO; i++) isos[i] = isolate_new(NULL, ISO_MAIN, 0);
  timer_wheel t;
  check(timer_init(&t) == 0, "timer_init");

  /* Random operations with the thread stopped: nothing fires. The long
   * delays keep the deadlines apart from "now". */
  int ok = 1;
  for (int step = 0; step < 20000 && ok; step++) {
    int i = rand() % NISO, k = rand() % NID;
    if (rand() % 3) {
      int periodic = rand() % 4 == 0;
      uint64_t delay = (uint64_t)(rand() % 1000 + 1) * 1000000000ull;
      if (timer_arm(&t, isos[i], (uint64_t)k, delay, periodic)) ok = 0;
      m[i][k].armed = 1;
      m[i][k].periodic = periodic;
    } else {
      timer_cancel(&t, isos[i], (uint64_t)k);
      m[i][k].armed = 0;
    }
    if (!consistent(&t)) ok = 0;
  }
  check(ok, "20,000 random arms and cancels keep the heap and the index consistent");
  check(timer_held_before(&t, UINT64_MAX) == any_oneshot_armed(), "held_before: one-shot timers only");
  check(!timer_held_before(&t, plat_now_ns()), "held_before: nothing due before now");

  /* Everything cancelled but a few periodic ones: nothing holds a drain. */
  for (int i = 0; i < NISO; i++)
    for (int k = 0; k < NID; k++) {
      if (m[i][k].armed && !m[i][k].periodic) {
        timer_cancel(&t, isos[i], (uint64_t)k);
        m[i][k].armed = 0;
      }
    }
  check(consistent(&t), "consistent after cancelling every one-shot timer");
  check(!timer_held_before(&t, UINT64_MAX), "periodic timers never hold a drain");
  for (int i = 0; i < NISO; i++)
    for (int k = 0; k < NID; k++) {
      if (m[i][k].armed) timer_cancel(&t, isos[i], (uint64_t)k);
      m[i][k] = (model){0, 0, 0, 0};
    }
  check(t.len == 0 && consistent(&t), "empty after cancelling everything");

  /* With the thread: short timers, half of them cancelled at once. */
  check(timer_start(&t) == 0, "timer_start");
  for (int i = 0; i < NISO; i++)
    for (int k = 0; k < NID; k++) {
      timer_arm(&t, isos[i], (uint64_t)k, (uint64_t)(rand() % 20) * 1000000ull, 0);
      if (rand() % 2) {
        timer_cancel(&t, isos[i], (uint64_t)k);
        m[i][k].cancelled = 1;
      }
    }
  uint64_t until = plat_now_ns() + 10ull * 1000000000ull;
  while (timer_held_before(&t, UINT64_MAX) && plat_now_ns() < until) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  check(!timer_held_before(&t, UINT64_MAX), "every timer fired within 10 s");
  int exact = 1;
  for (int i = 0; i < NISO; i++) {
    ic_msg *msg;
    while ((msg = mailbox_pop(&isos[i]->sysq)) != NULL) {
      if (msg->kind != MSG_TIMER || msg->corr >= NID) exact = 0;
      else m[i][msg->corr].fired++;
      msg_free(msg);
    }
  }
  int cancelled_fired = 0;
  for (int i = 0; i < NISO; i++)
    for (int k = 0; k < NID; k++) {
      model *x = &m[i][k];
      /* A cancel may come after the timer already fired: then it fired once. */
      if (x->fired > 1 || (!x->cancelled && x->fired != 1)) exact = 0;
      if (x->cancelled && x->fired) cancelled_fired++;
    }
  check(exact, "each timer not cancelled fired exactly once");
  check(cancelled_fired < NISO * NID / 4, "cancelled timers (nearly all) did not fire");
  check(timer_arm(&t, isos[0], 1, 1000000000ull, 0) == 0, "arm before stop");
  timer_stop(&t);
  check(timer_arm(&t, isos[0], 2, 0, 0) == ECANCELED, "arm after stop: ECANCELED");
  timer_fini(&t);
  for (int i = 0; i < NISO; i++) isolate_release(isos[i]);

  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
