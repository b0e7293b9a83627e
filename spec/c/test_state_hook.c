/* The state hook: every new Lua isolate gets the application's C functions;
 * a hook that raises or fails takes the isolate down with its reason. */
#include <lauxlib.h>
#include <lua.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "isolate_cluster.h"

#include "check.h"

static int app_add(lua_State *L) {
  lua_pushinteger(L, luaL_checkinteger(L, 1) + luaL_checkinteger(L, 2));
  return 1;
}

static int luaopen_app(lua_State *L) {
  static const luaL_Reg fns[] = {{"add", app_add}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}

static int give_app(void *L, void *ud) {
  atomic_fetch_add((atomic_int *)ud, 1);
  luaL_requiref(L, "app", luaopen_app, 1);
  lua_pop(L, 1);
  return 0;
}

static int raises(void *L, void *ud) {
  (void)ud;
  return luaL_error(L, "no app for you");
}

static int refuses(void *L, void *ud) {
  (void)L;
  (void)ud;
  return -1;
}

static const char USES_APP[] =
    "return function(context)\n"
    "  context:on_message(function(m) return app.add(m, require('app').add(1, 0)) end)\n"
    "end\n";

/* The down reason of a fresh isolate of c (running USES_APP), or "". */
static void down_reason(ic_cluster *c, char *out, size_t n) {
  out[0] = 0;
  CHECK(ic_subscribe_events(c) == IC_OK);
  ic_ref r;
  CHECK(ic_spawn_lua(c, USES_APP, strlen(USES_APP), "=app", NULL, 0, NULL, &r) == IC_OK);
  ic_event ev;
  while (ic_next_event(c, 10, &ev) == IC_OK) {
    int mine = ev.ref.id == r.id && ev.kind == IC_EVENT_DOWN;
    if (mine) snprintf(out, n, "%s", ev.reason ? ev.reason : "");
    ic_event_free(&ev);
    if (mine) break;
  }
}

int main(void) {
  atomic_int calls = 0;
  ic_cluster_options o = {.workers = 2, .state_hook = give_app, .state_hook_ud = &calls};
  ic_cluster *c = NULL;
  CHECK(ic_cluster_create(&o, &c) == IC_OK);
  for (int i = 0; i < 3; i++) {
    ic_ref r;
    CHECK(ic_spawn_lua(c, USES_APP, strlen(USES_APP), "=app", NULL, 0, NULL, &r) == IC_OK);
    char *reply = NULL;
    size_t len = 0;
    CHECK(ic_request(c, r, "\x29", 1, 10, &reply, &len) == IC_OK); /* 41 */
    CHECK(reply && len == 1 && reply[0] == 42);
    ic_free(reply);
  }
  CHECK(atomic_load(&calls) == 3);
  CHECK(ic_cluster_shutdown(c, 10) == 1);
  ic_cluster_destroy(c);

  char reason[512];
  o.state_hook = raises;
  CHECK(ic_cluster_create(&o, &c) == IC_OK);
  down_reason(c, reason, sizeof reason);
  CHECK(strncmp(reason, "error", 5) == 0 && strstr(reason, "no app for you") != NULL);
  ic_cluster_destroy(c);

  o.state_hook = refuses;
  CHECK(ic_cluster_create(&o, &c) == IC_OK);
  down_reason(c, reason, sizeof reason);
  CHECK(strncmp(reason, "error", 5) == 0 && strstr(reason, "state hook failed") != NULL);
  ic_cluster_destroy(c);

  /* without a hook: no app (the handler raises) */
  o.state_hook = NULL;
  CHECK(ic_cluster_create(&o, &c) == IC_OK);
  ic_ref r;
  CHECK(ic_spawn_lua(c, USES_APP, strlen(USES_APP), "=app", NULL, 0, NULL, &r) == IC_OK);
  char *reply = NULL;
  size_t len = 0;
  CHECK(ic_request(c, r, "\x29", 1, 10, &reply, &len) == IC_EREMOTE);
  CHECK(reply && strstr(reply, "app") != NULL);
  ic_free(reply);
  ic_cluster_destroy(c);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
