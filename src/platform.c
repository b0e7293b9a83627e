/* pthread_timedjoin_np, dladdr, RTLD_NODELETE. */
#define _GNU_SOURCE

#include "platform.h"

#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

uint64_t plat_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t plat_seconds_to_ns(double seconds) {
  if (!(seconds > 0)) return 0; /* also NaN */
  if (seconds > 1e9) return (uint64_t)1e18;
  return (uint64_t)(seconds * 1e9);
}

int plat_mutex_init(plat_mutex *m) { return pthread_mutex_init(m, NULL); }
void plat_mutex_destroy(plat_mutex *m) { pthread_mutex_destroy(m); }

int plat_cond_init(plat_cond *c) {
  pthread_condattr_t a;
  int rc = pthread_condattr_init(&a);
  if (rc) return rc;
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  rc = pthread_cond_init(c, &a);
  pthread_condattr_destroy(&a);
  return rc;
}

void plat_cond_destroy(plat_cond *c) { pthread_cond_destroy(c); }

int plat_cond_wait_until(plat_cond *c, plat_mutex *m, uint64_t deadline_ns) {
  struct timespec ts;
  ts.tv_sec = (time_t)(deadline_ns / 1000000000u);
  ts.tv_nsec = (long)(deadline_ns % 1000000000u);
  int rc = pthread_cond_timedwait(c, m, &ts);
  return rc == ETIMEDOUT ? ETIMEDOUT : 0;
}

int plat_sem_init(plat_sem *s) { return sem_init(s, 0, 0) ? errno : 0; }
void plat_sem_destroy(plat_sem *s) { sem_destroy(s); }

int plat_sem_wait_until(plat_sem *s, uint64_t deadline_ns) {
  int rc;
  if (deadline_ns == UINT64_MAX) {
    rc = sem_wait(s);
  } else {
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline_ns / 1000000000u);
    ts.tv_nsec = (long)(deadline_ns % 1000000000u);
    rc = sem_clockwait(s, CLOCK_MONOTONIC, &ts);
  }
  return rc && errno == ETIMEDOUT ? ETIMEDOUT : 0;
}

void plat_thread_precise_timers(void) {
#ifdef __linux__
  (void)prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL); /* 1 us */
#endif
}

int plat_thread_start(plat_thread *t, void *(*fn)(void *), void *arg, size_t stack_bytes) {
  pthread_attr_t a;
  int rc = pthread_attr_init(&a);
  if (rc) return rc;
  if (stack_bytes) pthread_attr_setstacksize(&a, stack_bytes);
  /* The runtime's threads never take SIGINT (they inherit this mask): the
   * process's handler, lua.c's or the main state's own while it waits
   * (src/sigint.c), runs on a thread of the program's, as it expects. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  rc = pthread_create(t, &a, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&a);
  return rc;
}

int plat_thread_join(plat_thread t) { return pthread_join(t, NULL); }

int plat_thread_join_until(plat_thread t, uint64_t deadline_ns) {
  /* pthread_timedjoin_np counts on the realtime clock: convert. */
  uint64_t now = plat_now_ns();
  uint64_t left = deadline_ns > now ? deadline_ns - now : 0;
  if (left > (uint64_t)1e18) return pthread_join(t, NULL); /* no deadline */
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t at = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + left;
  ts.tv_sec = (time_t)(at / 1000000000u);
  ts.tv_nsec = (long)(at % 1000000000u);
  int rc = pthread_timedjoin_np(t, NULL, &ts);
  return rc == ETIMEDOUT || rc == EBUSY ? ETIMEDOUT : rc;
}

void plat_thread_detach(plat_thread t) { pthread_detach(t); }

void plat_pin_code(void) {
  Dl_info info;
  if (!dladdr((void *)plat_pin_code, &info) || !info.dli_fname) return;
  /* NOLOAD: only marks the object already loaded; NODELETE: a later
   * dlclose (lua_close of the state that required the module) keeps it. */
  (void)dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
}

int plat_ncpu(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}
