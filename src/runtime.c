#include "runtime.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

typedef struct dump_buf {
  char *data;
  size_t len, cap;
  int failed;
} dump_buf;

static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  (void)L;
  dump_buf *b = ud;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) { b->failed = 1; return 1; }
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

ic_blob *runtime_compile(const char *src, size_t len, const char *name, char **err) {
  *err = NULL;
  lua_State *L = luaL_newstate();
  if (!L) return NULL;
  ic_blob *out = NULL;
  if (luaL_loadbufferx(L, src, len, name, "t") != LUA_OK) {
    const char *m = lua_tostring(L, -1);
    *err = strdup(m ? m : "cannot load the isolate runtime");
  } else {
    dump_buf b = {NULL, 0, 0, 0};
    /* Stripped: the debug information would be most of each isolate's copy,
     * and a traceback only needs the user's own frames. */
    if (lua_dump(L, dump_writer, &b, 1) == 0 && !b.failed) out = blob_new(b.data, b.len);
    free(b.data);
  }
  lua_close(L);
  return out;
}
