/* ic_cluster_isolate_stats: a row per isolate, Lua and native. */
#include <stdio.h>
#include <string.h>

#include "isolate_cluster.h"

#include "check.h"

static void echo_native(ic_native *self, ic_message *msg, void *ud) {
  (void)ud;
  if (msg->is_request) ic_reply(ic_native_cluster(self), msg, msg->data, msg->len);
}

static const char ECHO[] = "return function(context) context:on_message(function(m) return m end) end";

int main(void) {
  ic_cluster *c = NULL;
  ic_cluster_options o = {.workers = 2};
  CHECK(ic_cluster_create(&o, &c) == IC_OK);
  ic_isolate_stats *rows = (ic_isolate_stats *)1;
  size_t n = 7;
  CHECK(ic_cluster_isolate_stats(c, &rows, &n) == IC_OK);
  CHECK(rows == NULL && n == 0);
  CHECK(ic_cluster_isolate_stats(NULL, &rows, &n) == IC_EINVAL);
  CHECK(ic_cluster_isolate_stats(c, NULL, &n) == IC_EINVAL);

  ic_spawn_options lo = {"/lua", 0, 0, 0, NULL}, no = {"/native", 0, 0, 0, NULL};
  ic_native_options nat = {echo_native, NULL, NULL};
  ic_ref lua, native;
  CHECK(ic_spawn_lua(c, ECHO, strlen(ECHO), "=echo", NULL, 0, &lo, &lua) == IC_OK);
  CHECK(ic_spawn_native(c, &nat, &no, &native) == IC_OK);
  for (int i = 0; i < 5; i++) {
    char *reply = NULL;
    size_t len = 0;
    CHECK(ic_request(c, lua, "\x01", 1, 10, &reply, &len) == IC_OK);
    ic_free(reply);
    CHECK(ic_request(c, native, "\x02", 1, 10, &reply, &len) == IC_OK && len == 1 && reply[0] == 2);
    ic_free(reply);
  }
  /* The numbers are those of each isolate's last finished turn: the Lua
   * isolate may still be in the turn that answered (bounded wait). */
  for (int i = 0; i < 1000; i++) {
    CHECK(ic_cluster_isolate_stats(c, &rows, &n) == IC_OK);
    if (n == 2 && rows[0].memory > 0) break;
    ic_isolate_stats_free(rows, n);
    rows = NULL;
    char *reply = NULL;
    size_t len = 0;
    (void)ic_request(c, native, "\x02", 1, 0.01, &reply, &len); /* a short pause that waits on something */
    ic_free(reply);
  }
  CHECK(n == 2);
  if (n == 2) {
    CHECK(rows[0].ref.id == lua.id && rows[1].ref.id == native.id); /* spawn order */
    CHECK(rows[0].path && strcmp(rows[0].path, "/lua") == 0);
    CHECK(strcmp(rows[0].kind, "lua") == 0 && strcmp(rows[1].kind, "native") == 0);
    CHECK(rows[0].messages_in >= 5 && rows[1].messages_in >= 5);
    CHECK(rows[0].memory > 0 && rows[1].memory == 0);
    CHECK(rows[0].mailbox == 0);
    CHECK(strcmp(rows[0].state, "idle") == 0 || strcmp(rows[0].state, "running") == 0);
  }
  ic_isolate_stats_free(rows, n);
  ic_isolate_stats_free(NULL, 0);
  ic_stats s;
  CHECK(ic_cluster_stats(c, &s) == IC_OK && s.isolates == 2);
  CHECK(ic_cluster_shutdown(c, 10) == 1);
  ic_cluster_destroy(c);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
