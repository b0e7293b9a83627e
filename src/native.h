/*
 * native — isolates whose handler is a C function (ic_spawn_native in
 * include/isolate_cluster.h). The cluster core runs them like any other
 * isolate (same mailboxes, scheduler, kill, shutdown, down events); only
 * where a Lua isolate would enter its Lua state, isolate_run calls in here.
 *
 * Threads: everything here runs on the thread that runs the isolate's turn
 * (its owner), except native_free (the last holder).
 */
#ifndef IC_NATIVE_H
#define IC_NATIVE_H

#include "cluster.h"
#include "isolate.h"

struct ic_native;

/* One message of the isolate's mailbox or system queue (not MSG_CONTROL). */
void native_dispatch(ic_isolate *iso, ic_msg *m);
/* The isolate goes down: fails its pending requests (their callbacks run)
 * and calls its on_down. */
void native_finish(ic_isolate *iso);
/* Frees the native state (iso's last holder). */
void native_free(struct ic_native *n);

/* Spawns a native isolate of the registered kind `name` (len bytes,
 * NUL-terminated) with the rest of *a (props, path, mailbox, creator...):
 * the kind's factory makes its handlers from a->props. Returns 0 with *out
 * retained, or an errno value with a message in err: EINVAL (no such kind,
 * or a name with a NUL byte), ECHILD (the factory refused), or
 * cluster_spawn's. Any thread (the spawner's). */
int native_spawn_kind(struct ic_cluster *c, const char *name, size_t len, spawn_args *a, ic_isolate **out,
                      char *err, size_t errlen);
/* Frees the registered kinds (the cluster's last holder). */
void native_kinds_free(struct ic_cluster *c);

/* Shared with src/api.c: exactly one well-formed MessagePack value of type
 * (enum mp_type, or -1 for any); the text of an error reply's value
 * (malloc'ed, NULL when out of memory); a send from `from`. */
int api_one_value(const char *data, size_t len, int type);
char *api_error_text(const char *data, size_t len);
int api_send_from(struct ic_cluster *c, ic_isolate *from, uint64_t to_node, uint64_t to_id, const void *msgpack,
                  size_t len, int kind, uint64_t corr, const char **why_out);

#endif
