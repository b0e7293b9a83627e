/*
 * lcheck — the argument and option checks the main state and every isolate
 * make alike (paths, seconds, integer and flag options, unknown options),
 * with the same messages in both.
 *
 * Threads: the thread that owns the lua_State. No lock, no state.
 */
#include "lstate_int.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

/* ---- arguments every state checks alike ------------------------------------ */

/* These errors carry no position: in an isolate the call passes through the
 * runtime's own functions first, and the message must read the same in the
 * main state and in isolates. */

const char *lstate_check_path(lua_State *L, int idx, const char *fname) {
  if (lua_type(L, idx) != LUA_TSTRING) {
    lua_pushfstring(L, "%s: a path must be a string, got %s", fname, luaL_typename(L, idx));
    lua_error(L);
  }
  size_t len;
  const char *path = lua_tolstring(L, idx, &len);
  if (strlen(path) != len) {
    /* Shown with its NUL bytes escaped, so the message itself is whole. */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < len; i++) {
      if (path[i]) luaL_addchar(&b, path[i]);
      else luaL_addstring(&b, "\\0");
    }
    luaL_pushresult(&b);
    lua_pushfstring(L, "%s: invalid path \"%s\": a path cannot contain a NUL byte", fname, lua_tostring(L, -1));
    lua_error(L);
  }
  return path;
}

double lstate_check_seconds(lua_State *L, int idx, const char *fname, const char *what, int positive) {
  int isnum;
  lua_Number t = lua_tonumberx(L, idx, &isnum);
  if (isnum && lua_type(L, idx) == LUA_TNUMBER && (positive ? t > 0 : t >= 0)) return (double)t;
  char got[64];
  if (!isnum || lua_type(L, idx) != LUA_TNUMBER) snprintf(got, sizeof got, "%s", luaL_typename(L, idx));
  else if (t != t) snprintf(got, sizeof got, "NaN");
  else snprintf(got, sizeof got, "%g", (double)t);
  lua_pushfstring(L, "%s: %s must be a %snumber of seconds%s, got %s", fname, what, positive ? "positive " : "",
                  positive ? "" : " >= 0", got);
  return lua_error(L);
}

lua_Integer lstate_opt_integer(lua_State *L, int t, const char *fname, const char *what, lua_Integer dflt,
                               lua_Integer min, lua_Integer max) {
  lua_Integer v = dflt;
  if (lua_getfield(L, t, what) != LUA_TNIL) {
    int ok = 0;
    /* lua_tointegerx alone would take "10" too: options are values, not
     * text, as times are. */
    if (lua_type(L, -1) == LUA_TNUMBER) v = lua_tointegerx(L, -1, &ok);
    if (!ok || v < min || v > max) {
      if (max == LUA_MAXINTEGER)
        lua_pushfstring(L, "%s: opts.%s must be an integer >= %I, got ", fname, what, (LUAI_UACINT)min);
      else
        lua_pushfstring(L, "%s: opts.%s must be an integer from %I to %I, got ", fname, what, (LUAI_UACINT)min,
                        (LUAI_UACINT)max);
      if (lua_type(L, -2) == LUA_TNUMBER) luaL_tolstring(L, -2, NULL);
      else lua_pushstring(L, luaL_typename(L, -2));
      lua_concat(L, 2);
      lua_error(L);
    }
  }
  lua_pop(L, 1);
  return v;
}

int lstate_opt_flag(lua_State *L, int t, const char *fname, const char *what) {
  int ty = lua_getfield(L, t, what);
  if (ty != LUA_TNIL && ty != LUA_TBOOLEAN) {
    lua_pushfstring(L, "%s: opts.%s must be a boolean, got %s", fname, what, luaL_typename(L, -1));
    lua_error(L);
  }
  int v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

void lstate_check_options(lua_State *L, int idx, const char *fname, const char *const *allowed) {
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -1);
      const char *const *a = allowed;
      while (*a && strcmp(*a, k) != 0) a++;
      if (*a) continue;
      lua_pushfstring(L, "%s: unknown option \"%s\"", fname, k);
    } else {
      lua_pushfstring(L, "%s: unknown option %s (option names are strings)", fname, luaL_tolstring(L, -1, NULL));
    }
    lua_error(L);
  }
}

/* core.check_options(opts, fname, name...): lstate_check_options for the
 * option tables the Lua side reads. */
int lstate_core_check_options(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *fname = luaL_checkstring(L, 2);
  const char *allowed[16];
  int n = lua_gettop(L) - 2;
  if (n > 15) return luaL_error(L, "check_options: too many names");
  for (int i = 0; i < n; i++) allowed[i] = luaL_checkstring(L, i + 3);
  allowed[n] = NULL;
  lstate_check_options(L, 1, fname, allowed);
  return 0;
}

/* core.check_seconds(value, fname, what [, positive]) -> value: the runtime
 * checks its times here, so that isolates raise what the main state does. */
int l_core_check_seconds(lua_State *L) {
  const char *fname = luaL_checkstring(L, 2), *what = luaL_checkstring(L, 3);
  lua_pushnumber(L, lstate_check_seconds(L, 1, fname, what, lua_toboolean(L, 4)));
  return 1;
}
