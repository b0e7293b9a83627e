/*
 * lboot — an isolate's lua_State from birth to close: its allocator, the
 * standard libraries (most opened on first use), l_boot (the pump's state
 * and the context, the entry), resuming the pump (src/lpump.c) with every
 * dispatch, and lstate_close.
 *
 * Threads: the isolate's worker, which owns its lua_State; iso->hook_lock
 * is taken only when the state closes (and by set_running when an arming
 * is under way, src/lhook.c).
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

#include "pool.h"
#include "runtime.h"

/* ---- boot, dispatch, close ---------------------------------------------------- */

/* Where a block of Lua's of `size` bytes lives: small ones in the
 * isolate's pool (src/pool.h), the others with malloc. A block moves when a
 * resize crosses POOL_MAX, so that rule always holds and a free needs no
 * lookup. Under ASan the pool poisons what it has not handed out, so the
 * sanitizer builds check this allocator as it ships. */
#define IN_POOL(size) ((size) <= POOL_MAX)

static void *isolate_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  ic_isolate *iso = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    /* While the state closes, its small blocks stay where they are:
     * pool_release gives back their chunks right after (lstate_close). */
    if (ptr && IN_POOL(osize)) {
      if (!iso->closing) pool_free(&iso->pool, ptr, osize);
    } else
      free(ptr);
    iso->mem_used -= old;
    return NULL;
  }
  if (iso->mem_limit && nsize > old && iso->mem_used + (nsize - old) > iso->mem_limit) return NULL;
  void *p;
  if (!ptr) {
    p = IN_POOL(nsize) ? pool_alloc(&iso->pool, nsize) : malloc(nsize);
  } else if (IN_POOL(osize) && IN_POOL(nsize) && pool_same_class(osize, nsize)) {
    pool_resize(ptr, osize, nsize);
    p = ptr;
  } else if (!IN_POOL(osize) && !IN_POOL(nsize)) {
    p = realloc(ptr, nsize);
  } else {
    /* Into or out of the pool, or to another class: copy. A failure leaves
     * the old block as it was, which Lua expects. */
    p = IN_POOL(nsize) ? pool_alloc(&iso->pool, nsize) : malloc(nsize);
    if (!p) return NULL;
    memcpy(p, ptr, osize < nsize ? osize : nsize);
    if (IN_POOL(osize)) pool_free(&iso->pool, ptr, osize);
    else free(ptr);
  }
  if (!p) return NULL;
  iso->mem_used = iso->mem_used - old + nsize;
  return p;
}

/*
 * Standard libraries. Every isolate gets all of them, but only the base
 * library is opened at once (in a lean isolate not even that); the others
 * are opened the first time a global of that name is read (an __index on
 * _G; `require` opens package), they are required (package.preload, filled
 * when package opens) or, for string, a string's method is first looked up
 * (a stand-in metatable for strings). They are about half of what a fresh
 * Lua state costs, and most isolates never touch most of them. The
 * difference shows only to code that inspects _G's metatable, the strings'
 * metatable or uses rawget.
 */
static int open_lazy_string(lua_State *L);

static const luaL_Reg lazy_libs[] = {
    {LUA_STRLIBNAME, open_lazy_string}, {LUA_LOADLIBNAME, luaopen_package},
    {LUA_COLIBNAME, lboot_open_coroutine}, {LUA_TABLIBNAME, luaopen_table},
    {LUA_IOLIBNAME, luaopen_io},        {LUA_OSLIBNAME, luaopen_os},
    {LUA_MATHLIBNAME, luaopen_math},    {LUA_UTF8LIBNAME, luaopen_utf8},
    {LUA_DBLIBNAME, luaopen_debug},     {NULL, NULL}};

/* package.path and cpath as the isolate was given them (see spawn). The
 * package library is on the top of the stack. */
static void set_paths(lua_State *L, const ic_isolate *iso) {
  if (iso->lua_path) {
    lua_pushstring(L, iso->lua_path);
    lua_setfield(L, -2, "path");
  }
  if (iso->lua_cpath) {
    lua_pushstring(L, iso->lua_cpath);
    lua_setfield(L, -2, "cpath");
  }
}

/* A lean isolate (opts.lean) opens the base library on first use too: the
 * first read of a global that _G does not hold (a name of the base library
 * or not), or the first write of one, opens it, before anything else is
 * looked up or set, so that the isolate's code sees what it would have
 * seen with the library open from the start (every other library and
 * require find it open; a global the code sets, even to nil, is not
 * undone by the library opening later). Globals that C code set raw before
 * (a state hook) keep their values: luaopen_base would overwrite a `print`
 * or `tostring` of the application's, so what _G holds then is put back.
 * _G's __newindex, there for this alone, goes as the library opens. */
static void open_base(lua_State *L) {
  ic_isolate *iso = self_of(L);
  lua_pushglobaltable(L);
  int g = lua_gettop(L);
  /* First: luaopen_base's own writes would come back here. */
  if (lua_getmetatable(L, g)) {
    lua_pushnil(L);
    lua_setfield(L, -2, "__newindex");
    lua_pop(L, 1);
  }
  lua_pushnil(L);
  int saved = 0;
  if (lua_next(L, g)) {
    lua_pop(L, 2);
    lua_newtable(L);
    saved = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, g)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, saved);
    }
  }
  luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
  lua_pop(L, 1);
  if (saved) {
    lua_pushnil(L);
    while (lua_next(L, saved)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, g);
    }
  }
  lua_settop(L, g - 1);
  iso->base_pending = 0; /* once it is all there: a failure (memory) tries again */
  codec_forget_names(L); /* new standard functions to name */
}

/* string is opened on first use: on a read of the global `string`, on
 * require("string"), on the first string method call or the first
 * arithmetic on a string ("10" + 1: Lua 5.4 coerces through the string
 * library's metamethods). Until then the strings' metatable is a stand-in
 * whose __index is the library's table to be, S (empty, with a metatable
 * whose __index opens the library into it), and whose arithmetic events
 * open it and do what the library's would. So code sees what it would
 * have seen with the library open from the start: getmetatable("").__index
 * is `string`; what it adds to S or to the metatable stays; a global
 * `string` or package.loaded.string of its own is not overwritten. The
 * library's functions go into S (where the code put nothing of the same
 * name), the stand-in stays the strings' metatable (luaopen_string makes
 * one of its own: it is put back), its events become the library's. */
static void open_string(lua_State *L);
static int lazy_string_fill(lua_State *L);

/* The opener require, package.preload and a read of the global `string`
 * use: S, filled. */
static int open_lazy_string(lua_State *L) {
  open_string(L);
  lua_pushliteral(L, "");
  if (lua_getmetatable(L, -1) && lua_getfield(L, -1, "__index") == LUA_TTABLE) return 1;
  /* Another __index put there by the code: the library in a table of its
   * own (a library opened again, as require would after
   * package.loaded.string = nil). */
  lua_settop(L, 0);
  return luaopen_string(L);
}

/* S's __index until the library is in it: [1] = S, [2] = the key. */
static int lazy_string_fill(lua_State *L) {
  open_string(L);
  lua_settop(L, 2);
  lua_rawget(L, 1);
  return 1;
}

/* What the string library's arithmetic metamethods do (lstrlib.c: arith,
 * tonum, trymt), the library opened first: the same result, or the same
 * error from the same level (the caller's line). [1], [2]: the operands
 * (the operand twice for __unm). */
static int str_tonum(lua_State *L, int arg) {
  if (lua_type(L, arg) == LUA_TNUMBER) {
    lua_pushvalue(L, arg);
    return 1;
  }
  size_t len;
  const char *s = lua_tolstring(L, arg, &len);
  return s != NULL && lua_stringtonumber(L, s) == len + 1;
}

static int lazy_string_arith(lua_State *L, int op, const char *event) {
  open_string(L);
  lua_settop(L, 2);
  if (str_tonum(L, 1) && str_tonum(L, 2)) {
    lua_arith(L, op);
    return 1;
  }
  lua_settop(L, 2);
  if (lua_type(L, 2) == LUA_TSTRING || !luaL_getmetafield(L, 2, event))
    return luaL_error(L, "attempt to %s a '%s' with a '%s'", event + 2, luaL_typename(L, -2),
                      luaL_typename(L, -1));
  lua_insert(L, -3);
  lua_call(L, 2, 1);
  return 1;
}

#define LAZY_ARITH(name, op) \
  static int lazy_string_##name(lua_State *L) { return lazy_string_arith(L, op, "__" #name); }
LAZY_ARITH(add, LUA_OPADD)
LAZY_ARITH(sub, LUA_OPSUB)
LAZY_ARITH(mul, LUA_OPMUL)
LAZY_ARITH(mod, LUA_OPMOD)
LAZY_ARITH(pow, LUA_OPPOW)
LAZY_ARITH(div, LUA_OPDIV)
LAZY_ARITH(idiv, LUA_OPIDIV)
LAZY_ARITH(unm, LUA_OPUNM)

static const luaL_Reg lazy_string_mt[] = {
    {"__add", lazy_string_add},   {"__sub", lazy_string_sub},   {"__mul", lazy_string_mul},
    {"__mod", lazy_string_mod},   {"__pow", lazy_string_pow},   {"__div", lazy_string_div},
    {"__idiv", lazy_string_idiv}, {"__unm", lazy_string_unm},   {NULL, NULL}};

/* S, found as the __index of the strings' metatable m (a stack index)
 * while it still has the metatable that opens it, or a new table when the
 * code has put another there (the library then goes into a table of its
 * own, as the first one it would have had). */
static void push_lazy_table(lua_State *L, int m) {
  if (lua_istable(L, m) && lua_getfield(L, m, "__index") == LUA_TTABLE && lua_getmetatable(L, -1)) {
    int fill = lua_getfield(L, -1, "__index") == LUA_TFUNCTION && lua_tocfunction(L, -1) == lazy_string_fill;
    lua_pop(L, 2);
    if (fill) return;
  }
  lua_pop(L, lua_istable(L, m) ? 1 : 0);
  lua_newtable(L);
}

static void open_string(lua_State *L) {
  ic_isolate *iso = self_of(L);
  if (!iso->string_pending) return;
  int top = lua_gettop(L);
  luaL_checkstack(L, 8, NULL);
  lua_pushnil(L); /* S, found below */
  int s = top + 1;
  lua_pushliteral(L, "");
  int str = top + 2;
  if (!lua_getmetatable(L, str)) lua_pushnil(L); /* (debug.setmetatable may have taken it) */
  int m = top + 3;
  push_lazy_table(L, m);
  lua_replace(L, s);
  lua_pushcfunction(L, luaopen_string);
  lua_call(L, 0, 1);
  int t = top + 4;
  lua_getmetatable(L, str); /* the library's own */
  int n = top + 5;
  lua_pushvalue(L, m);
  lua_setmetatable(L, str); /* the stand-in back, as the code left it */
  if (lua_istable(L, m)) {
    for (const luaL_Reg *ev = lazy_string_mt; ev->name; ev++) {
      if (lua_getfield(L, m, ev->name) == LUA_TFUNCTION && lua_tocfunction(L, -1) == ev->func &&
          lua_getfield(L, n, ev->name) != LUA_TNIL)
        lua_setfield(L, m, ev->name);
      lua_settop(L, n);
    }
  }
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pushvalue(L, -2);
    if (lua_rawget(L, s) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, s);
    } else {
      lua_pop(L, 2);
    }
  }
  lua_pushnil(L);
  lua_setmetatable(L, s);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_STRLIBNAME) == LUA_TNIL) {
    lua_pushvalue(L, s);
    lua_setfield(L, -3, LUA_STRLIBNAME);
  }
  lua_pushglobaltable(L);
  lua_pushliteral(L, LUA_STRLIBNAME);
  if (lua_rawget(L, -2) == LUA_TNIL) {
    lua_pushliteral(L, LUA_STRLIBNAME);
    lua_pushvalue(L, s);
    lua_rawset(L, -4);
  }
  lua_settop(L, top);
  iso->string_pending = 0; /* once it is all there: a failure (memory) tries again */
  codec_forget_names(L);   /* new standard functions to name */
}

/* package.preload gets the libraries opened on first use when package
 * itself opens: only require reads it, and until then the table and its
 * names would cost every isolate. */
static void set_preloads(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (const luaL_Reg *lib = lazy_libs; lib->func; lib++) {
    lua_pushcfunction(L, lib->func);
    lua_setfield(L, -2, lib->name);
  }
  lua_pop(L, 1);
}

/* _G's __index: [1] = _G, [2] = the key. */
static int lazy_global(lua_State *L) {
  if (self_of(L)->base_pending) {
    open_base(L);
    lua_settop(L, 2);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, 1) != LUA_TNIL) return 1;
    lua_pop(L, 1);
  }
  const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
  if (k) {
    /* require is the package library's only global function. */
    int req = strcmp(k, "require") == 0;
    for (const luaL_Reg *lib = lazy_libs; lib->func; lib++) {
      if (strcmp(k, lib->name) == 0 || (req && lib->func == luaopen_package)) {
        luaL_requiref(L, lib->name, lib->func, 1);
        if (lib->func == luaopen_package) {
          set_preloads(L);
          set_paths(L, self_of(L));
        }
        codec_forget_names(L); /* new standard functions to name */
        if (req) {
          lua_pop(L, 1);
          lua_pushvalue(L, 2);
          lua_rawget(L, 1);
        }
        return 1;
      }
    }
  }
  return 0;
}

/* _G's __newindex while a lean isolate's base library is not open:
 * [1] = _G, [2] = the key, [3] = the value. */
static int lazy_global_set(lua_State *L) {
  if (self_of(L)->base_pending) open_base(L);
  lua_settop(L, 3);
  lua_rawset(L, 1);
  return 0;
}

static void open_libs(lua_State *L, int lean) {
  if (!lean) {
    /* A global table sized for the base library: the fresh state's empty
     * one would be rehashed five times as luaopen_base fills it. Nothing
     * has been loaded yet, so no function holds the old one as its _ENV.
     * (A lean isolate keeps the empty one: it may never need more.) */
    lua_createtable(L, 0, 32);
    lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    lua_pop(L, 1);
  } else {
    self_of(L)->base_pending = 1;
    /* package.loaded, which the decoder reads to resolve a standard
     * function (a function named there opens its library). */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pop(L, 1);
  }
  lua_pushliteral(L, "");
  lua_createtable(L, 0, (int)(sizeof lazy_string_mt / sizeof *lazy_string_mt));
  luaL_setfuncs(L, lazy_string_mt, 0);
  lua_newtable(L); /* S */
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, lazy_string_fill);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
  self_of(L)->string_pending = 1;
  lua_pushglobaltable(L);
  lua_createtable(L, 0, lean ? 2 : 1);
  lua_pushcfunction(L, lazy_global);
  lua_setfield(L, -2, "__index");
  if (lean) {
    lua_pushcfunction(L, lazy_global_set);
    lua_setfield(L, -2, "__newindex");
  }
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
}

/* The collector on again after l_boot's stop. A restart alone would leave
 * it owing nothing, so the next allocation would begin a cycle at once and
 * walk the whole new heap (most of a spawn's collector work, for a heap
 * that is all alive). It is credited instead with the heap's size, as the
 * end of a cycle would (Lua's default pause of 200%): no cycle until the
 * isolate has made as much again. A negative LUA_GCSTEP adds to what the
 * collector is owed (Lua 5.4's lua_gc adds its KB to the debt). */
static void restart_gc(lua_State *L) {
  lua_gc(L, LUA_GCRESTART);
  lua_gc(L, LUA_GCSTEP, -(lua_gc(L, LUA_GCCOUNT) + 1));
}

static int l_boot(lua_State *L) {
  ic_isolate *iso = lua_touserdata(L, 1);
  ic_cluster *c = iso->cluster;
  /* No collection while the runtime builds the state: nearly all it makes
   * stays (libraries, runtime, core), and the collector would walk the
   * growing heap a few times for the little that does not (about a tenth
   * of a spawn's instructions). Running out of memory still collects (Lua's
   * emergency collection ignores the stop). The application's code (the
   * state hook, the entry's module or chunk, the entry) runs with the
   * collector on: it may make garbage for as long as it likes. */
  lua_gc(L, LUA_GCSTOP);
  open_libs(L, iso->lean); /* package, opened on first use, takes iso's paths then */
  /* The application's own C functions, before anything of the isolate's
   * runs (a raise in it fails the boot like a bad entry). */
  if (c->state_hook) {
    restart_gc(L);
    if (c->state_hook(L, c->state_hook_ud) != 0) return luaL_error(L, "the application's state hook failed");
    lua_gc(L, LUA_GCSTOP);
  }
  lstate_ctx *ctx = lstate_open(L);
  ctx->self = iso;
  iso->lctx = ctx;
  /* Under a memory limit the key cache would hold memory the isolate's own
   * values may need. */
  if (iso->mem_limit) ctx->lim.key_cache = 0;

  /* The pump and the context: C, no runtime code (src/lpump.c). */
  lpump_open(L);
  lpump_push_new(L);

  restart_gc(L);
  /* The entry: a function, or a module name whose module returns one. */
  codec_hooks h = lstate_hooks(c);
  codec_decode(L, iso->boot->data, iso->boot->len, &h, &ctx->lim);
  if (lua_type(L, -1) == LUA_TSTRING) {
    const char *name = lua_tostring(L, -1);
    lua_getglobal(L, "require");
    lua_pushvalue(L, -2);
    lua_call(L, 1, 1);
    if (lua_type(L, -1) != LUA_TFUNCTION)
      return luaL_error(L, "module '%s' must return the entry function (it returned a %s)", name,
                        luaL_typename(L, -1));
    lua_remove(L, -2);
  } else if (lua_type(L, -1) == LUA_TTABLE) {
    /* { source = chunk, name = chunkname }: from ic_spawn_lua. */
    size_t len;
    lua_getfield(L, -1, "source");
    lua_getfield(L, -2, "name");
    const char *src = lua_tolstring(L, -2, &len);
    const char *name = lua_tostring(L, -1);
    if (!src) return luaL_error(L, "the entry chunk is missing");
    if (luaL_loadbufferx(L, src, len, name ? name : "=entry", "t") != LUA_OK) return lua_error(L);
    lua_call(L, 0, 1);
    if (lua_type(L, -1) != LUA_TFUNCTION)
      return luaL_error(L, "the entry chunk must return the entry function (it returned a %s)",
                        luaL_typename(L, -1));
    lua_replace(L, -4);
    lua_pop(L, 2);
  }
  if (lua_type(L, -1) != LUA_TFUNCTION) return luaL_error(L, "the entry is not a function");
  blob_release(iso->boot);
  iso->boot = NULL;
  return 2; /* the pump, the entry */
}

static void fail_from_status(ic_isolate *iso, lua_State *L) {
  const char *why = interrupt_reason(iso);
  if (why) {
    isolate_set_ending(iso, why);
    return;
  }
  const char *msg = lua_tostring(L, -1);
  size_t n = strlen(msg ? msg : "") + 8;
  char *r = malloc(n);
  if (r) snprintf(r, n, "error: %s", msg ? msg : "(error object is not a string)");
  isolate_set_ending(iso, r ? r : "error: not enough memory");
  free(r);
}

/* Pops a new pump coroutine from L's top and makes it the isolate's pump. */
static void set_pump(ic_isolate *iso, lua_State *L) {
  lua_State *P = lua_tothread(L, -1);
  if (iso->pump_ref) luaL_unref(L, LUA_REGISTRYINDEX, iso->pump_ref);
  iso->pump_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  iso->pump = P;
  iso->lctx->pump->nargs = lua_gettop(P) - 1; /* what is above its body */
}

/* Resumes the pump for what its struct says to dispatch. A new pump gets
 * what is on its stack above its body as arguments (its userdata, and at
 * boot the entry function: p->nargs, set_pump); a suspended one gets
 * nothing.
 *
 * running_L stays on the pump once it has settled: the next Lua code of
 * the isolate to run is the pump's, at its next dispatch, and a hook armed
 * between turns meets it there (set_running is then two loads). */
static void pump_after(ic_isolate *iso, int st, int nres);

static inline void pump_resume(ic_isolate *iso) {
  lua_State *L = iso->L, *P = iso->pump;
  lpump *p = iso->lctx->pump;
  int nres = 0, nargs = p->nargs;
  p->nargs = 0;
  set_running(iso, P);
  int st = lua_resume(P, L, nargs, &nres);
  if (st == LUA_YIELD && p->settled) {
    /* the pump's own yield, after a dispatch: its wait mode */
    p->settled = 0;
    iso->wait = p->mode;
    return;
  }
  pump_after(iso, st, nres);
}

/* The pump did not settle: a handler in it waits or was preempted, or it
 * failed. */
static void pump_after(ic_isolate *iso, int st, int nres) {
  lua_State *L = iso->L, *P = iso->pump;
  set_running(iso, L);
  if (st == LUA_YIELD) {
    /* A handler running in the pump waits (it yielded a marker) or was
     * preempted (the hook yielded nothing): the pump becomes a job and a
     * new pump takes its place. */
    lua_pop(P, nres);
    lua_pushcfunction(L, lpump_adopt);
    lua_pushboolean(L, nres == 0);
    if (lua_pcall(L, 1, 2, 0) != LUA_OK) {
      fail_from_status(iso, L);
      lua_settop(L, 0);
      return;
    }
    iso->wait = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    set_pump(iso, L);
    return;
  }
  if (st == LUA_OK) {
    lua_settop(P, 0);
    isolate_set_ending(iso, "error: the isolate's pump ended");
    return;
  }
  fail_from_status(iso, P);
}

void lstate_boot(ic_isolate *iso) {
  lua_State *L = lua_newstate(isolate_alloc, iso);
  if (!L) {
    isolate_set_ending(iso, "error: not enough memory to create the isolate's Lua state");
    return;
  }

  iso->L = L;
  *(ic_isolate **)lua_getextraspace(L) = iso;
#ifdef IC_SYNC_HOOK
  lua_sethook(L, interrupt_hook, LUA_MASKCOUNT, HOOK_COUNT);
#endif
  set_running(iso, L);
  lua_pushcfunction(L, l_boot);
  lua_pushlightuserdata(L, iso);
  if (lua_pcall(L, 1, 2, 0) != LUA_OK) {
    fail_from_status(iso, L);
    lua_settop(L, 0);
    return;
  }
  /* [pump, entry] */
  lua_xmove(L, lua_tothread(L, 1), 1);
  set_pump(iso, L);
  iso->lctx->pump->kind = LSTATE_START;
  pump_resume(iso);
}

void lstate_dispatch(ic_isolate *iso, int kind, ic_msg *m) {
  if (m && isolate_take_up(iso, m)) return;
  if (!iso->pump) {
    isolate_set_ending(iso, "error: isolate state unavailable");
    return;
  }
  lpump *p = iso->lctx->pump;
  p->kind = kind;
  p->m = m;
  pump_resume(iso);
  p->m = NULL; /* freed by the caller */
}

void lstate_close(ic_isolate *iso) {
  lua_State *L = iso->L;
  plat_mutex_lock(&iso->hook_lock);
  atomic_store(&iso->running_L, NULL);
  atomic_store(&iso->armed_L, NULL);
  plat_mutex_unlock(&iso->hook_lock);
  iso->L = NULL;
  iso->pump = NULL;
  iso->lctx = NULL;
  iso->closing = 1;
  if (L) lua_close(L);
  pool_release(&iso->pool); /* after lua_close: its last frees go to the pool */
}
