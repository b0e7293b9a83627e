/*
 * Message blocks (src/mailbox.h): a thread's cache reuses the blocks it
 * frees, holds at most MSG_CACHE_MAX of them, trades magazines with its
 * depot (bounded too) and gives every block back when trimmed; a large
 * message is not a block; the sender holds a cache puts off are let go of
 * at its flush. Built with the sanitizers too, where LSan checks that the
 * trims free every block.
 */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "isolate.h"
#include "mailbox.h"

static int refs_of(ic_isolate *iso) { return atomic_load(&iso->refs); }

int main(void)
{
  msg_depot depot;
  CHECK(msg_depot_init(&depot) == 0);
  msg_cache a = {0}, b = {0};
  a.depot = b.depot = &depot;

  /* A small message is a block, and its block comes back for the next. */
  ic_msg *m = msg_new_in(&a, MSG_USER, "\x01", 1);
  CHECK(m && m->block && m->len == 1 && m->data[0] == 1 && m->sender == NULL && m->spare == NULL);
  msg_free_in(&a, m);
  CHECK(a.n == 1);
  ic_msg *m2 = msg_new_in(&a, MSG_REQUEST, "\x02\x03", 2);
  CHECK(m2 == m && a.n == 0 && m2->kind == MSG_REQUEST && m2->len == 2 && m2->data[1] == 3 && !m2->spare);
  msg_free_in(&a, m2);

  /* A message too big for a block goes back to malloc. */
  char big[200];
  memset(big, 7, sizeof big);
  ic_msg *l = msg_new_in(&a, MSG_USER, big, sizeof big);
  CHECK(l && !l->block && l->len == sizeof big && l->data[199] == 7);
  unsigned before = a.n;
  msg_free_in(&a, l);
  CHECK(a.n == before);

  /* Freeing many: the cache stays bounded, the rest goes to the depot
   * (bounded too), then to malloc. */
  enum { MANY = MSG_CACHE_MAX + MSG_MAGAZINE * (MSG_DEPOT_MAX + 4) };
  static ic_msg *v[MANY];
  int made = 1;
  for (int i = 0; i < MANY; i++) made &= (v[i] = msg_new_in(NULL, MSG_USER, "x", 1)) != NULL;
  CHECK(made);
  for (int i = 0; i < MANY; i++) {
    msg_free_in(&a, v[i]);
    if (a.n > MSG_CACHE_MAX) break;
  }
  CHECK(a.n <= MSG_CACHE_MAX);
  CHECK(atomic_load(&depot.n) == MSG_DEPOT_MAX);

  /* Another thread's empty cache takes a magazine from the depot. */
  ic_msg *fromdepot = msg_new_in(&b, MSG_USER, "y", 1);
  CHECK(fromdepot && fromdepot->block && b.n == MSG_MAGAZINE - 1);
  CHECK(atomic_load(&depot.n) == MSG_DEPOT_MAX - 1);
  msg_free_in(&b, fromdepot);

  /* Trims give every block back. */
  msg_cache_trim(&a);
  msg_cache_trim(&b);
  CHECK(a.n == 0 && a.free == NULL && b.n == 0 && b.free == NULL);
  msg_depot_trim(&depot);
  CHECK(atomic_load(&depot.n) == 0);

  /* Holds on senders: put off while messages from one sender come in a
   * run, all let go of at the flush (and at once when there is no cache). */
  ic_isolate *s1 = isolate_new(NULL, ISO_MAIN, 0), *s2 = isolate_new(NULL, ISO_MAIN, 0);
  CHECK(s1 && s2);
  if (s1 && s2) {
    for (int i = 0; i < 3; i++) {
      ic_msg *x = msg_new_in(&a, MSG_USER, "z", 1);
      isolate_retain(s1);
      x->sender = s1;
      msg_free_in(&a, x);
    }
    CHECK(refs_of(s1) == 4);
    ic_msg *y = msg_new_in(&a, MSG_USER, "z", 1);
    isolate_retain(s2);
    y->sender = s2;
    msg_free_in(&a, y); /* another sender: the run of s1 is let go of */
    CHECK(refs_of(s1) == 1 && refs_of(s2) == 2);
    msg_cache_flush(&a);
    CHECK(refs_of(s2) == 1 && a.rel == NULL);
    ic_msg *z = msg_new_in(NULL, MSG_USER, "z", 1);
    isolate_retain(s2);
    z->sender = s2;
    msg_free_in(NULL, z);
    CHECK(refs_of(s2) == 1);
    /* A trim frees blocks only (it may run under the scheduler's lock). */
    ic_msg *t = msg_new_in(&a, MSG_USER, "z", 1);
    isolate_retain(s1);
    t->sender = s1;
    msg_free_in(&a, t);
    CHECK(refs_of(s1) == 2);
    msg_cache_trim(&a);
    CHECK(refs_of(s1) == 2 && a.n == 0);
    msg_cache_flush(&a);
    CHECK(refs_of(s1) == 1);
  }
  if (s1) isolate_release(s1);
  if (s2) isolate_release(s2);
  msg_depot_fini(&depot);

  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
