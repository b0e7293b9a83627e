/* A C program's events in a multi-node cluster (ic_subscribe_events,
 * ic_next_event): another node joining and leaving (IC_EVENT_NODE_UP /
 * IC_EVENT_NODE_DOWN with its name and reason), and the up and down events
 * of that node's isolates with their refs, paths, reasons and node names,
 * in the order they happened. Two nodes in this process on a real
 * nats-server (spec/c/nats_server.h); 77 (skipped) without one. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "isolate_cluster.h"
#include "nats_server.h"

static const char IDLE[] = "return function(context) context:on_message(function() end) end";

static int same(ic_ref a, ic_ref b) { return a.node == b.node && a.id == b.id; }

/* The next event of `kind` about `who` (a ref, or for node events the zero
 * ref) within 20 s, skipping any other; 0 with *ev filled, or -1. */
static int next_of(ic_cluster *c, int kind, ic_ref who, ic_event *ev) {
  for (int i = 0; i < 1000; i++) {
    int rc = ic_next_event(c, 20, ev);
    if (rc != IC_OK) {
      fprintf(stderr, "test_node_events: waiting for event kind %d: %s\n", kind, ic_strerror(rc));
      return -1;
    }
    if (ev->kind == kind && same(ev->ref, who)) return 0;
    ic_event_free(ev);
  }
  return -1;
}

/* Spawns an idle Lua isolate at path (or none) on c; IC_OK or the error. */
static int spawn_idle(ic_cluster *c, const char *path, ic_ref *out) {
  ic_spawn_options so = {path, 0, 0, 0, NULL};
  return ic_spawn_lua(c, IDLE, strlen(IDLE), "=idle", NULL, 0, &so, out);
}

/* The next up event of r (it must be there): path and node name. */
static void check_up(ic_cluster *c, ic_ref r, const char *path, const char *node) {
  ic_event ev;
  CHECK(next_of(c, IC_EVENT_UP, r, &ev) == 0);
  CHECK(ev.path && strcmp(ev.path, path) == 0);
  CHECK(ev.node && strcmp(ev.node, node) == 0);
  ic_event_free(&ev);
}

int main(void) {
  pid_t srv;
  char url[64];
  int skip = nats_test_start("test_node_events", &srv, url, sizeof url);
  if (skip) return skip;
  const char *urls[] = {url};
  char cname[32];
  snprintf(cname, sizeof cname, "cev-%d", (int)getpid());
  ic_cluster_options co = {2, 0, 0, NULL, NULL};
  char err[256];
  ic_node_options oa = {urls, 1, cname, "a", NULL, NULL, NULL, NULL, 0, 0, 0, NULL, NULL};
  ic_node_options ob = oa;
  ob.name = "b";
  ic_cluster *a = NULL, *b = NULL;
  CHECK(ic_node_create(&co, &oa, &a, err, sizeof err) == IC_OK);
  if (!a) {
    fprintf(stderr, "test_node_events: %s\n", err);
    stop_server(srv);
    return 1;
  }
  CHECK(ic_subscribe_events(a) == IC_OK);
  CHECK(ic_node_create(&co, &ob, &b, err, sizeof err) == IC_OK);
  if (!b) {
    fprintf(stderr, "test_node_events: %s\n", err);
    ic_cluster_destroy(a);
    stop_server(srv);
    return 1;
  }
  ic_ref none = {0, 0};
  ic_event ev;

  /* b joins. */
  CHECK(next_of(a, IC_EVENT_NODE_UP, none, &ev) == 0);
  CHECK(ev.node && strcmp(ev.node, "b") == 0);
  CHECK(ev.reason == NULL && ev.path == NULL);
  ic_event_free(&ev);

  /* An isolate of b comes up and is killed; one of a comes up. */
  ic_ref rb, ra;
  CHECK(spawn_idle(b, "/on-b", &rb) == IC_OK);
  check_up(a, rb, "/on-b", "b");
  CHECK(spawn_idle(a, "/on-a", &ra) == IC_OK);
  check_up(a, ra, "/on-a", "a");
  CHECK(ic_kill(b, rb) == IC_OK);
  CHECK(next_of(a, IC_EVENT_DOWN, rb, &ev) == 0);
  CHECK(ev.reason && strcmp(ev.reason, "killed") == 0);
  ic_event_free(&ev);

  /* b leaves with an isolate up: its down, then b's own, reason "left". */
  ic_ref rb2;
  CHECK(spawn_idle(b, "/last-on-b", &rb2) == IC_OK);
  check_up(a, rb2, "/last-on-b", "b");
  ic_cluster_destroy(b);
  CHECK(next_of(a, IC_EVENT_DOWN, rb2, &ev) == 0);
  CHECK(ev.reason && (strcmp(ev.reason, "shutdown") == 0 || strcmp(ev.reason, "node down") == 0));
  ic_event_free(&ev);
  CHECK(next_of(a, IC_EVENT_NODE_DOWN, none, &ev) == 0);
  CHECK(ev.node && strcmp(ev.node, "b") == 0);
  CHECK(ev.reason && strcmp(ev.reason, "left") == 0);
  ic_event_free(&ev);

  /* Events not taken when the cluster goes are released with it: two more
   * nodes join and spawn; once a has heard of both isolates, one take reads
   * the whole log (node events among what stays untaken). */
  CHECK(spawn_idle(a, NULL, NULL) == IC_OK);
  ic_node_options oc = oa, od = oa;
  oc.name = "c";
  od.name = "d";
  ic_cluster *nc = NULL, *nd = NULL;
  CHECK(ic_node_create(&co, &oc, &nc, err, sizeof err) == IC_OK);
  CHECK(ic_node_create(&co, &od, &nd, err, sizeof err) == IC_OK);
  ic_ref found;
  if (nc && nd) {
    CHECK(spawn_idle(nc, "/on-c", NULL) == IC_OK);
    CHECK(spawn_idle(nd, "/on-d", NULL) == IC_OK);
    CHECK(ic_lookup(a, "/on-c", 20, &found) == IC_OK);
    CHECK(ic_lookup(a, "/on-d", 20, &found) == IC_OK);
  }
  CHECK(ic_next_event(a, 10, &ev) == IC_OK);
  ic_event_free(&ev);
  ic_cluster_destroy(a);
  ic_cluster_destroy(nc);
  ic_cluster_destroy(nd);
  stop_server(srv);
  printf("test_node_events: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
