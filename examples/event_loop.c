/*
 * A cluster inside an event loop: epoll watches the cluster's file
 * descriptor (ic_cluster_fd) next to the program's own (here a timerfd
 * that ticks every 10 ms), and the program never blocks in the cluster.
 * Three Lua workers compute and send their results to the program.
 *
 *   cc event_loop.c $(pkg-config --cflags --libs isolate_cluster)
 */
#define _GNU_SOURCE /* CLOCK_MONOTONIC, timerfd and epoll under -std=c11 too */
#define MP_SOURCE 1 /* msgpuck is header-only: its implementation, in this file */
#include <msgpuck.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <isolate_cluster.h>

/* Sums 1..n a little at a time (sleeping between parts, so the program has
 * time to tick) and sends { id = ..., sum = ... } to whoever asked. */
static const char WORKER[] =
    "return function(context)\n"
    "  context:on_message(function(n, sender)\n"
    "    local sum = 0\n"
    "    for i = 1, n do\n"
    "      sum = sum + i\n"
    "      if i % 1000 == 0 then context:sleep(0.005) end\n"
    "    end\n"
    "    sender:send({ id = context:property('id'), sum = sum })\n"
    "  end)\n"
    "end\n";

enum { WORKERS = 3 };

int main(void) {
  ic_cluster *c;
  if (ic_cluster_create(NULL, &c) != IC_OK) return 1;
  int efd = epoll_create1(EPOLL_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  int cfd = ic_cluster_fd(c);
  if (efd < 0 || tfd < 0 || cfd < 0) return 1;
  struct itimerspec every10ms = {{0, 10000000}, {0, 10000000}};
  timerfd_settime(tfd, 0, &every10ms, NULL);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = cfd};
  epoll_ctl(efd, EPOLL_CTL_ADD, cfd, &ev);
  ev.data.fd = tfd;
  epoll_ctl(efd, EPOLL_CTL_ADD, tfd, &ev);

  for (int i = 0; i < WORKERS; i++) {
    char props[16], msg[16];
    char *w = mp_encode_map(props, 1);
    w = mp_encode_str(w, "id", 2);
    w = mp_encode_uint(w, (uint64_t)i);
    ic_ref r;
    if (ic_spawn_lua(c, WORKER, strlen(WORKER), "=worker", props, (size_t)(w - props), NULL, &r) != IC_OK)
      return 1;
    ic_send(c, r, msg, (size_t)(mp_encode_uint(msg, 10000u * (uint64_t)(i + 1)) - msg));
  }

  int results = 0, ticks = 0, ok = 1;
  while (results < WORKERS && ticks < 3000) { /* 30 s at most */
    struct epoll_event got[2];
    int n = epoll_wait(efd, got, 2, 1000);
    for (int k = 0; k < n; k++) {
      if (got[k].data.fd == tfd) {
        uint64_t expirations;
        if (read(tfd, &expirations, sizeof expirations) == sizeof expirations) ticks += (int)expirations;
        continue;
      }
      /* The cluster's fd: take everything there is, without waiting. */
      ic_message m;
      while (ic_receive_msg(c, 0, &m) == IC_OK) {
        const char *p = m.data;
        uint64_t id = 0, sum = 0;
        uint32_t pairs = mp_typeof(*p) == MP_MAP ? mp_decode_map(&p) : 0;
        for (uint32_t j = 0; j < pairs; j++) {
          uint32_t kl;
          const char *key = mp_decode_str(&p, &kl);
          uint64_t v = mp_typeof(*p) == MP_UINT ? mp_decode_uint(&p) : 0;
          if (kl == 2 && memcmp(key, "id", 2) == 0) id = v;
          else sum = v;
        }
        uint64_t n_of = 10000u * (id + 1);
        printf("worker %llu: sum = %llu\n", (unsigned long long)id, (unsigned long long)sum);
        ok = ok && sum == n_of * (n_of + 1) / 2;
        results++;
        ic_message_free(&m);
      }
    }
  }
  printf("%d results; the timer ticked %d times meanwhile\n", results, ticks);
  close(tfd);
  close(efd);
  ok = ok && results == WORKERS && ic_cluster_shutdown(c, 5.0) == 1;
  ic_cluster_destroy(c);
  puts(ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
