/* The C interface given NULL and odd arguments: every function answers with
 * an error code or a neutral value, never a crash, and a lookup of a path no
 * isolate can hold does not wait out its wait (as in Lua, where it is nil
 * at once). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "isolate_cluster.h"

#include "check.h"

/* The functions that return a value rather than a code. */
static void test_null_handles(void) {
  ic_ref r = ic_cluster_main(NULL);
  CHECK(r.node == 0 && r.id == 0);
  r = ic_native_ref(NULL);
  CHECK(r.node == 0 && r.id == 0);
  CHECK(ic_native_cluster(NULL) == NULL);
  ic_ref some = {1, 2};
  CHECK(ic_ref_encode(NULL, some) == 0);
}

/* A list of server URLs with a NULL in it, and connect timeouts that are
 * not a number of seconds >= 0: refused before anything connects. */
static void test_node_options(void) {
  ic_cluster *out = (ic_cluster *)&out;
  char err[256];
  const char *with_null[] = {"nats://127.0.0.1:1", NULL};
  ic_node_options no = {.nats = with_null, .nats_count = 2, .cluster = "adv", .name = "n1"};
  CHECK(ic_node_create(NULL, &no, &out, err, sizeof err) == IC_EINVAL);
  CHECK(out == NULL);
  CHECK(strstr(err, "nats") != NULL);

  const char *one[] = {"nats://127.0.0.1:1"};
  no.nats = one;
  no.nats_count = 1;
  no.connect_timeout = NAN;
  CHECK(ic_node_create(NULL, &no, &out, err, sizeof err) == IC_EINVAL);
  CHECK(strstr(err, "connect_timeout") != NULL);
  no.connect_timeout = -1;
  CHECK(ic_node_create(NULL, &no, &out, err, sizeof err) == IC_EINVAL);
  CHECK(strstr(err, "connect_timeout") != NULL);
}

typedef struct lookup_call {
  ic_cluster *c;
  const char *path;
  int rc;
  int done;
  pthread_mutex_t lock;
  pthread_cond_t cond;
} lookup_call;

static void *lookup_thread(void *ud) {
  lookup_call *l = ud;
  ic_ref out;
  int rc = ic_lookup(l->c, l->path, INFINITY, &out);
  pthread_mutex_lock(&l->lock);
  l->rc = rc;
  l->done = 1;
  pthread_cond_signal(&l->cond);
  pthread_mutex_unlock(&l->lock);
  return NULL;
}

/* ic_lookup(path, INFINITY) of a path no isolate can hold: "not there" at
 * once. Waited for up to 10 s (a deadline for a call that should not wait
 * at all); past it the cluster's shutdown ends the wait and the check
 * fails. */
static void test_lookup_unholdable(void) {
  static const char *paths[] = {"/", "/dir/", "", "a", "/a//b", "/a\tb"};
  for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
    ic_cluster *c = NULL;
    ic_cluster_options o = {.workers = 1};
    CHECK(ic_cluster_create(&o, &c) == IC_OK);
    lookup_call l = {c, paths[i], 0, 0, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, lookup_thread, &l) == 0);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    pthread_mutex_lock(&l.lock);
    while (!l.done && pthread_cond_timedwait(&l.cond, &l.lock, &deadline) == 0) {
    }
    int done = l.done;
    pthread_mutex_unlock(&l.lock);
    if (!done) fprintf(stderr, "ic_lookup(\"%s\", INFINITY) still waits\n", paths[i]);
    CHECK(done);
    ic_cluster_destroy(c); /* ends a wait still under way */
    pthread_join(t, NULL);
    if (done) CHECK(l.rc == IC_ETIMEDOUT);
  }
}

int main(void) {
  test_null_handles();
  test_node_options();
  test_lookup_unholdable();
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
