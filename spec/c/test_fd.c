/* The program's file descriptor: readable when there is something to take,
 * re-armed by a take that finds nothing; no wake-up lost under load. */
#include <msgpuck.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isolate_cluster.h"

#include "check.h"

/* Sends n messages to the sender, each from a turn of its own. */
static const char BURST[] =
    "return function(context)\n"
    "  context:on_message(function(n, sender)\n"
    "    for i = 1, n do sender:send(i) if i % 7 == 0 then context:sleep(0) end end\n"
    "  end)\n"
    "end\n";

static int readable(int fd, int ms) {
  struct pollfd p = {fd, POLLIN, 0};
  return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

/* Takes every message there is now; returns how many. */
static int drain(ic_cluster *c) {
  int n = 0;
  ic_message m;
  while (ic_receive_msg(c, 0, &m) == IC_OK) {
    n++;
    ic_message_free(&m);
  }
  return n;
}

int main(void) {
  ic_cluster *c = NULL;
  ic_cluster_options o = {.workers = 2};
  CHECK(ic_cluster_create(&o, &c) == IC_OK);
  CHECK(ic_cluster_fd(NULL) == IC_EINVAL);
  int fd = ic_cluster_fd(c);
  CHECK(fd >= 0);
  CHECK(ic_cluster_fd(c) == fd);

  /* readable at first (a look is due), quiet once a take found nothing */
  CHECK(readable(fd, 0));
  CHECK(drain(c) == 0);
  CHECK(!readable(fd, 0));

  ic_ref burst;
  CHECK(ic_spawn_lua(c, BURST, strlen(BURST), "=burst", NULL, 0, NULL, &burst) == IC_OK);
  /* many rounds of "wait for the fd, take all": a lost wake-up would leave
   * messages queued and the fd quiet (the 10 s poll fails) */
  for (int round = 0; round < 200; round++) {
    int want = 1 + round % 40, got = 0;
    char buf[8];
    CHECK(ic_send(c, burst, buf, (size_t)(mp_encode_uint(buf, (uint64_t)want) - buf)) == IC_OK);
    while (got < want) {
      if (!readable(fd, 10000)) break;
      got += drain(c);
    }
    if (got != want) {
      CHECK(got == want);
      break;
    }
  }
  CHECK(!readable(fd, 0) || drain(c) == 0);

  /* events make it readable too */
  CHECK(ic_subscribe_events(c) == IC_OK);
  ic_ref r;
  CHECK(ic_spawn_lua(c, BURST, strlen(BURST), "=burst", NULL, 0, NULL, &r) == IC_OK);
  CHECK(readable(fd, 10000));
  ic_event ev;
  int up = 0;
  for (int i = 0; i < 100 && !up; i++) {
    while (ic_next_event(c, 0, &ev) == IC_OK) {
      up |= ev.kind == IC_EVENT_UP && ev.ref.id == r.id;
      ic_event_free(&ev);
    }
    if (!up && !readable(fd, 10000)) break;
  }
  CHECK(up);

  CHECK(ic_cluster_shutdown(c, 10) == 1);
  ic_cluster_destroy(c);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
