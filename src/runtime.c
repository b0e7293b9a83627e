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

/* Offset of the main function's source in a Lua 5.4 binary chunk: the
 * header (signature 4, version 1, format 1, LUAC_DATA 6, three sizes,
 * LUAC_INT 8, LUAC_NUM 8) and the upvalue count (1). */
#define DUMP_SOURCE_AT (4 + 1 + 1 + 6 + 3 + sizeof(lua_Integer) + sizeof(lua_Number) + 1)

/* A stripped dump drops the source name too, but the preemption hook must
 * recognise the runtime's own functions by it (src/lhook.c, in_runtime).
 * Nested functions inherit the main function's source when loaded, so the
 * name is put back for the main function only (as an unstripped dump
 * writes it: size + 1 as Lua's varint, then the bytes). */
static char *restore_source(const dump_buf *b, const char *name, size_t *len) {
  size_t n = strlen(name);
  if (b->len <= DUMP_SOURCE_AT || (unsigned char)b->data[DUMP_SOURCE_AT] != 0x80 || n + 1 >= 0x80) return NULL;
  char *out = malloc(b->len + n + 1);
  if (!out) return NULL;
  memcpy(out, b->data, DUMP_SOURCE_AT);
  out[DUMP_SOURCE_AT] = (char)(0x80 | (n + 1));
  memcpy(out + DUMP_SOURCE_AT + 1, name, n);
  memcpy(out + DUMP_SOURCE_AT + 1 + n, b->data + DUMP_SOURCE_AT + 1, b->len - DUMP_SOURCE_AT - 1);
  *len = b->len + n;
  return out;
}

/* Does the binary chunk load, with `name` as its source? */
static int chunk_has_source(lua_State *L, const char *code, size_t len, const char *name) {
  int ok = 0;
  if (luaL_loadbufferx(L, code, len, name, "b") == LUA_OK) {
    lua_Debug ar;
    lua_getinfo(L, ">S", &ar);
    ok = strcmp(ar.source, name) == 0;
  } else {
    lua_pop(L, 1);
  }
  return ok;
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
    if (lua_dump(L, dump_writer, &b, 1) == 0 && !b.failed) {
      size_t named_len;
      char *named = restore_source(&b, name, &named_len);
      if (named && chunk_has_source(L, named, named_len, name)) {
        out = blob_new(named, named_len);
      } else {
        /* Not the layout expected: keep everything rather than guess. */
        lua_settop(L, 1);
        b.len = 0;
        if (lua_dump(L, dump_writer, &b, 0) == 0 && !b.failed) out = blob_new(b.data, b.len);
      }
      free(named);
    }
    free(b.data);
  }
  lua_close(L);
  return out;
}
