/*
 * platform — the few OS services the runtime needs: monotonic time, threads,
 * locks. Everything else in src/ uses these names, so a port only touches here.
 */
#ifndef IC_PLATFORM_H
#define IC_PLATFORM_H

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>

typedef pthread_mutex_t plat_mutex;
typedef pthread_cond_t plat_cond;
typedef pthread_t plat_thread;
typedef sem_t plat_sem;

/* Monotonic clock in nanoseconds. Any thread. */
uint64_t plat_now_ns(void);

/* Seconds (may be fractional, negative = 0) to nanoseconds, saturating. */
uint64_t plat_seconds_to_ns(double seconds);

int plat_mutex_init(plat_mutex *m);
void plat_mutex_destroy(plat_mutex *m);
#define plat_mutex_lock(m) pthread_mutex_lock(m)
#define plat_mutex_unlock(m) pthread_mutex_unlock(m)

/* Condition variables use the monotonic clock, so waits survive clock steps. */
int plat_cond_init(plat_cond *c);
void plat_cond_destroy(plat_cond *c);
#define plat_cond_signal(c) pthread_cond_signal(c)
#define plat_cond_broadcast(c) pthread_cond_broadcast(c)
#define plat_cond_wait(c, m) pthread_cond_wait(c, m)
/* Waits until the absolute monotonic time deadline_ns; returns 0 when
 * signalled (or spuriously woken), ETIMEDOUT when the deadline passed. */
int plat_cond_wait_until(plat_cond *c, plat_mutex *m, uint64_t deadline_ns);

/* Semaphores: what the main state waits on, since sem_post is
 * async-signal-safe (a SIGINT handler can wake the wait; see sigint.c).
 * wait_until: 0 when posted (or interrupted by a signal handler), ETIMEDOUT
 * at deadline_ns (monotonic; UINT64_MAX = none). */
int plat_sem_init(plat_sem *s);
void plat_sem_destroy(plat_sem *s);
#define plat_sem_post(s) sem_post(s)
int plat_sem_wait_until(plat_sem *s, uint64_t deadline_ns);

/* Asks that the calling thread's timed waits end close to their deadline
 * (Linux otherwise lets them run up to 50 us late). Best effort. */
void plat_thread_precise_timers(void);

/* Starts a joinable thread with a stack of stack_bytes (0 = default). */
int plat_thread_start(plat_thread *t, void *(*fn)(void *), void *arg, size_t stack_bytes);
int plat_thread_join(plat_thread t);
/* Joins t if it ends by deadline_ns (monotonic): 0, or ETIMEDOUT while it
 * still runs (then it is still joinable, or may be detached). */
int plat_thread_join_until(plat_thread t, uint64_t deadline_ns);
void plat_thread_detach(plat_thread t);
/* Keeps the code of this library mapped until the process ends, even if the
 * module is unloaded: a thread left running in a blocking call (shutdown
 * gave up on it) must not come back to unmapped code. Best effort. */
void plat_pin_code(void);

/* Number of online processors, at least 1. */
int plat_ncpu(void);

#endif
