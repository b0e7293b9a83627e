/* Isolate up/down events, with their reasons, seen from a C program. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isolate_cluster.h"

#include "check.h"

static const char IDLE[] = "return function(context) context:on_message(function(m) return m end) end";
static const char SYNTAX[] = "return function(context) context:on_message(function(m) return m end end";
static const char RAISES[] = "return function(context) error('no entry today', 0) end";
static const char NOT_A_FUNCTION[] = "return 42";

static int spawn(ic_cluster *c, const char *src, const char *path, ic_ref *out) {
  ic_spawn_options o = {path, 0, 0, 0, NULL};
  return ic_spawn_lua(c, src, strlen(src), "=test", NULL, 0, &o, out);
}

/* The next event about r (others, e.g. of isolates still coming up, are
 * skipped), or kind 0 when none comes within 10 s. */
static ic_event next_about(ic_cluster *c, ic_ref r) {
  ic_event ev;
  while (ic_next_event(c, 10, &ev) == IC_OK) {
    if (ev.ref.id == r.id && ev.ref.node == r.node) return ev;
    ic_event_free(&ev);
  }
  memset(&ev, 0, sizeof ev);
  return ev;
}

/* Log lines, as a program's log function gets them (from any thread). */
typedef struct log_box {
  pthread_mutex_t lock;
  char text[4096];
  int lines;
} log_box;

static void collect(void *ud, const char *line) {
  log_box *b = ud;
  pthread_mutex_lock(&b->lock);
  size_t used = strlen(b->text);
  snprintf(b->text + used, sizeof b->text - used, "%s\n", line);
  b->lines++;
  pthread_mutex_unlock(&b->lock);
}

/* The runtime's log goes to the program's function, also after shutdown. */
static void test_log(void) {
  ic_cluster *c = NULL;
  ic_cluster_options o = {.workers = 1};
  CHECK(ic_cluster_create(&o, &c) == IC_OK);
  log_box box = {PTHREAD_MUTEX_INITIALIZER, "", 0};
  CHECK(ic_cluster_set_log(NULL, collect, &box) == IC_EINVAL);
  CHECK(ic_cluster_set_log(c, collect, &box) == IC_OK);
  CHECK(ic_subscribe_events(c) == IC_OK);
  ic_ref bad;
  CHECK(spawn(c, SYNTAX, "/bad", &bad) == IC_OK);
  ic_event ev = next_about(c, bad); /* logged before its down event */
  ic_event_free(&ev);
  pthread_mutex_lock(&box.lock);
  CHECK(box.lines == 1 && strstr(box.text, "/bad") && strstr(box.text, "went down: error"));
  pthread_mutex_unlock(&box.lock);
  CHECK(ic_cluster_set_log(c, NULL, NULL) == IC_OK); /* stderr again */
  CHECK(ic_cluster_set_log(c, collect, &box) == IC_OK);
  CHECK(ic_cluster_shutdown(c, 10) == 1);
  CHECK(spawn(c, SYNTAX, NULL, &bad) == IC_ESHUTDOWN);
  ic_cluster_destroy(c);
  CHECK(box.lines == 1);
}

int main(void) {
  test_log();
  ic_cluster *c = NULL;
  ic_cluster_options o = {.workers = 2};
  CHECK(ic_cluster_create(&o, &c) == IC_OK);
  ic_event ev;
  CHECK(ic_next_event(c, 0, &ev) == IC_EINVAL); /* not subscribed */
  CHECK(ic_subscribe_events(NULL) == IC_EINVAL);

  /* up before the subscription: not reported */
  ic_ref before;
  CHECK(spawn(c, IDLE, "/before", &before) == IC_OK);
  char *reply = NULL;
  size_t rlen = 0;
  CHECK(ic_request(c, before, "\x01", 1, 10, &reply, &rlen) == IC_OK); /* answers: it is up */
  ic_free(reply);
  CHECK(ic_subscribe_events(c) == IC_OK);
  CHECK(ic_subscribe_events(c) == IC_OK); /* idempotent */
  CHECK(ic_kill(c, before) == IC_OK);
  CHECK(ic_next_event(c, 10, &ev) == IC_OK);
  CHECK(ev.kind == IC_EVENT_DOWN && ev.ref.id == before.id);
  CHECK(ev.reason && strcmp(ev.reason, "killed") == 0);
  CHECK(ev.path && strcmp(ev.path, "/before") == 0);
  ic_event_free(&ev);
  CHECK(ev.path == NULL && ev.reason == NULL);

  /* up, with its path */
  ic_ref good;
  CHECK(spawn(c, IDLE, "/good", &good) == IC_OK);
  ev = next_about(c, good);
  CHECK(ev.kind == IC_EVENT_UP);
  CHECK(ev.path && strcmp(ev.path, "/good") == 0);
  CHECK(ev.reason == NULL);
  ic_event_free(&ev);

  /* a chunk that does not compile: spawned, then down with its reason */
  ic_ref bad;
  CHECK(spawn(c, SYNTAX, NULL, &bad) == IC_OK);
  ev = next_about(c, bad);
  CHECK(ev.kind == IC_EVENT_DOWN);
  CHECK(ev.path == NULL);
  CHECK(ev.reason && strncmp(ev.reason, "error", 5) == 0 && strstr(ev.reason, "expected") != NULL);
  ic_event_free(&ev);

  /* an entry that raises, and a chunk that returns no function */
  ic_ref raises, nofn;
  CHECK(spawn(c, RAISES, NULL, &raises) == IC_OK);
  ev = next_about(c, raises);
  CHECK(ev.kind == IC_EVENT_DOWN && ev.reason && strstr(ev.reason, "no entry today") != NULL);
  ic_event_free(&ev);
  CHECK(spawn(c, NOT_A_FUNCTION, NULL, &nofn) == IC_OK);
  ev = next_about(c, nofn);
  CHECK(ev.kind == IC_EVENT_DOWN && ev.reason && strncmp(ev.reason, "error", 5) == 0);
  ic_event_free(&ev);

  /* nothing more: a timeout; bad arguments */
  CHECK(ic_next_event(c, 0.05, &ev) == IC_ETIMEDOUT);
  CHECK(ev.kind == 0);
  CHECK(ic_next_event(c, NAN, &ev) == IC_EINVAL);
  CHECK(ic_next_event(c, 1, NULL) == IC_EINVAL);
  ic_event_free(NULL);

  /* shutdown: the live isolate's down event, then IC_ESHUTDOWN */
  CHECK(ic_cluster_shutdown(c, 10) == 1);
  ev = next_about(c, good);
  CHECK(ev.kind == IC_EVENT_DOWN && ev.reason != NULL);
  ic_event_free(&ev);
  CHECK(ic_next_event(c, 1, &ev) == IC_ESHUTDOWN);
  CHECK(ic_subscribe_events(c) == IC_ESHUTDOWN);
  ic_cluster_destroy(c);

  /* events never taken are released with the cluster (LeakSanitizer) */
  CHECK(ic_cluster_create(&o, &c) == IC_OK);
  CHECK(ic_subscribe_events(c) == IC_OK);
  CHECK(spawn(c, IDLE, "/left", &good) == IC_OK);
  CHECK(spawn(c, SYNTAX, NULL, &bad) == IC_OK);
  CHECK(ic_next_event(c, 10, &ev) == IC_OK); /* one taken, others left */
  ic_event_free(&ev);
  ic_cluster_destroy(c);

  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
