/*
 * sigint — Ctrl-C for a main state blocked in the runtime (receive, run,
 * request, a waiting lookup, drain, shutdown), as lua.c gives it to a
 * running script: while such a call blocks, a SIGINT handler of the
 * runtime's own is installed (the previous one is saved and put back when
 * the last such call returns); it wakes the call, which then raises
 * "interrupted!" (or, for shutdown, finishes and hands the signal on).
 *
 * Not installed when the calling thread blocks SIGINT (the host takes its
 * signals itself, as the isolate-cluster command does with sigwait) or when
 * SIGINT is ignored (a background job).
 *
 * Threads: the thread of the main state that blocks; the handler itself
 * may run on any thread of the process that takes the signal.
 */
#ifndef IC_SIGINT_H
#define IC_SIGINT_H

#include "isolate.h"

/* Makes main's wait interruptible: clears main->sigint, and until
 * sigint_end a SIGINT sets it and posts main->wsem. Returns a token for
 * sigint_end (negative: not installed, see above). */
int sigint_begin(ic_isolate *main);
/* Undoes sigint_begin (restoring the previous handler after the last one).
 * Returns 1 if a SIGINT came meanwhile, and clears main->sigint. */
int sigint_end(ic_isolate *main, int token);

#endif
