#include "sigint.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>

/*
 * Process-level state, the one exception to "no globals" in the runtime: a
 * signal handler gets no argument, so what it must reach has to be found
 * through static storage. It is kept to the minimum:
 *  - waiting: the main isolates blocked now (their semaphore and flag are
 *    what the handler touches; both are async-signal-safe: an atomic store
 *    and sem_post). A fixed array of atomics, since a handler can run on
 *    any thread at any time and may take no lock;
 *  - in_handler: handlers running now, so sigint_end never returns (and
 *    lets the isolate be freed) while a handler on another thread still
 *    holds its pointer;
 *  - the saved previous action and a count of blocked calls, under a mutex
 *    that only ordinary code takes.
 * Several clusters and several threads with main states of their own share
 * it; each waiting call has a slot of its own.
 */
#define SIGINT_SLOTS 32

static _Atomic(ic_isolate *) waiting[SIGINT_SLOTS];
static atomic_int in_handler;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;
static int installed; /* blocked calls with the handler in place; install_lock */
static struct sigaction saved; /* the action before the first of them; install_lock */

static void on_sigint(int sig) {
  (void)sig;
  int saved_errno = errno;
  atomic_fetch_add(&in_handler, 1);
  for (int i = 0; i < SIGINT_SLOTS; i++) {
    ic_isolate *m = atomic_load(&waiting[i]);
    if (!m) continue;
    atomic_store(&m->sigint, 1);
    plat_sem_post(&m->th->wsem);
  }
  atomic_fetch_sub(&in_handler, 1);
  errno = saved_errno;
}

int sigint_begin(ic_isolate *main) {
  atomic_store(&main->sigint, 0);
  sigset_t mask;
  if (pthread_sigmask(SIG_BLOCK, NULL, &mask) || sigismember(&mask, SIGINT)) return -1;
  pthread_mutex_lock(&install_lock);
  if (installed == 0) {
    struct sigaction ours;
    if (sigaction(SIGINT, NULL, &saved) || saved.sa_handler == SIG_IGN) {
      pthread_mutex_unlock(&install_lock);
      return -1;
    }
    sigemptyset(&ours.sa_mask);
    ours.sa_flags = 0; /* no SA_RESTART: the wait is to end */
    ours.sa_handler = on_sigint;
    if (sigaction(SIGINT, &ours, NULL)) {
      pthread_mutex_unlock(&install_lock);
      return -1;
    }
  }
  int slot = -1;
  for (int i = 0; i < SIGINT_SLOTS && slot < 0; i++) {
    ic_isolate *expected = NULL;
    if (atomic_compare_exchange_strong(&waiting[i], &expected, main)) slot = i;
  }
  if (slot < 0) {
    /* More blocked calls at once than slots: this one is not interruptible. */
    if (installed == 0) sigaction(SIGINT, &saved, NULL);
    pthread_mutex_unlock(&install_lock);
    return -1;
  }
  installed++;
  pthread_mutex_unlock(&install_lock);
  return slot;
}

int sigint_end(ic_isolate *main, int token) {
  if (token < 0) return atomic_exchange(&main->sigint, 0);
  atomic_store(&waiting[token], NULL);
  /* A handler that read the slot before the store may still post main's
   * semaphore: it finishes in a few instructions. */
  while (atomic_load(&in_handler)) sched_yield();
  pthread_mutex_lock(&install_lock);
  if (--installed == 0) sigaction(SIGINT, &saved, NULL);
  pthread_mutex_unlock(&install_lock);
  /* Cleared: a later wait that did not install the handler (the C API)
   * must not take an old SIGINT for a new one. */
  return atomic_exchange(&main->sigint, 0);
}
