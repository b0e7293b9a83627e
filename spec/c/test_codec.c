/*
 * test_codec — the codec (src/codec.c) on its own, with two lua_States:
 * values are built and encoded in a sender state A, the bytes are copied,
 * and they are decoded in a receiver state B and compared there with a
 * deep-equal written in Lua (which also checks sharing and cycles).
 *
 * Covers: every plain value kind at its edges, exact wire bytes, tables
 * (nested, mixed, holes, cycles, shared, 100,000 entries), functions
 * (upvalues, _ENV, standard C functions, recursion, sharing, debug info),
 * refs through hooks, refusals with their paths, depth and size limits,
 * buffer and stack consistency after errors, decoder hardening (every
 * prefix of every encoding, random and mutated bytes, hostile lengths,
 * depth bombs, bad ext payloads), the send path's small encoder against the
 * general one, allocation failure and GC stress.
 * Prints a timing for a 10,000-entry table (informational, never fails).
 *
 * Exit status 0 when every check passed; the last line is "N passed, M failed".
 */
#include "codec.h"

#include <lauxlib.h>
#include <lualib.h>

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int passed, failed;

static void ok_if(int ok, const char *name, const char *fmt, ...)
{
  if (ok) {
    passed++;
    return;
  }
  failed++;
  fprintf(stderr, "FAIL %s: ", name);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

#define BYTES(s) (s), (sizeof(s) - 1)

/* ------------------------------------------------------------------------ */
/* A dummy ref type and the hooks that carry it across                       */

#define REF_MT "codec_test.ref"

typedef struct test_ref {
  uint32_t node;
  uint64_t id;
} test_ref;

static void push_ref(lua_State *L, uint32_t node, uint64_t id)
{
  test_ref *r = lua_newuserdatauv(L, sizeof *r, 0);
  r->node = node;
  r->id = id;
  luaL_setmetatable(L, REF_MT);
}

static int l_ref(lua_State *L)
{
  push_ref(L, (uint32_t)luaL_checkinteger(L, 1), (uint64_t)luaL_checkinteger(L, 2));
  return 1;
}

static int l_ref_tostring(lua_State *L)
{
  test_ref *r = luaL_checkudata(L, 1, REF_MT);
  char s[64];
  snprintf(s, sizeof s, "ref(%" PRIu32 ":%" PRIu64 ")", r->node, r->id);
  lua_pushstring(L, s);
  return 1;
}

static int hook_ref_to_wire(lua_State *L, int idx, void *ud, uint32_t *node, uint64_t *id)
{
  (void)ud;
  test_ref *r = luaL_testudata(L, idx, REF_MT);
  if (r == NULL)
    return 0;
  *node = r->node;
  *id = r->id;
  return 1;
}

static void hook_ref_push(lua_State *L, uint32_t node, uint64_t id, void *ud)
{
  (void)ud;
  push_ref(L, node, id);
}

static const codec_hooks test_hooks = { hook_ref_to_wire, hook_ref_push, NULL, NULL };

/* ------------------------------------------------------------------------ */
/* encode / decode as Lua functions                                          */

#define BUF_KEY "codec_test.buf"

static int l_buf_gc(lua_State *L)
{
  codec_buf_free(lua_touserdata(L, 1));
  return 0;
}

/* The encode buffer is owned by a userdata in the registry, as the binding
 * will do it: an error in codec_encode cannot leak it. */
static codec_buf *state_buf(lua_State *L)
{
  if (lua_getfield(L, LUA_REGISTRYINDEX, BUF_KEY) == LUA_TUSERDATA) {
    codec_buf *b = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return b;
  }
  lua_pop(L, 1);
  codec_buf *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, l_buf_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, BUF_KEY);
  return b;
}

static int opt_bool(lua_State *L, int opts, const char *k, int def)
{
  if (!lua_istable(L, opts))
    return def;
  int t = lua_getfield(L, opts, k);
  int v = t == LUA_TNIL ? def : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static lua_Integer opt_int(lua_State *L, int opts, const char *k, lua_Integer def)
{
  if (!lua_istable(L, opts))
    return def;
  lua_getfield(L, opts, k);
  lua_Integer v = luaL_optinteger(L, -1, def);
  lua_pop(L, 1);
  return v;
}

static void read_limits(lua_State *L, int opts, codec_limits *lim)
{
  codec_limits_default(lim);
  lim->max_depth = (int)opt_int(L, opts, "max_depth", lim->max_depth);
  lim->max_bytes = (size_t)opt_int(L, opts, "max_bytes", (lua_Integer)lim->max_bytes);
  lim->allow_functions = opt_bool(L, opts, "allow_functions", 1);
  lim->key_cache = opt_bool(L, opts, "key_cache", 1);
}

/* encode(value [, {root=, max_depth=, max_bytes=, hooks=, append=}]) -> bytes.
 * append = true keeps what the buffer holds (to check it after errors). */
static int l_encode(lua_State *L)
{
  lua_settop(L, 2);
  codec_limits lim;
  read_limits(L, 2, &lim);
  const char *root = "msg";
  if (lua_istable(L, 2) && lua_getfield(L, 2, "root") == LUA_TSTRING)
    root = lua_tostring(L, -1); /* kept alive by the opts table */
  lua_settop(L, 2);
  int hooks = opt_bool(L, 2, "hooks", 1);
  codec_buf *b = state_buf(L);
  if (!opt_bool(L, 2, "append", 0))
    codec_buf_reset(b);
  int top = lua_gettop(L);
  codec_encode(L, 1, root, hooks ? &test_hooks : NULL, &lim, b);
  if (lua_gettop(L) != top)
    return luaL_error(L, "codec_encode changed the stack (%d -> %d)", top, lua_gettop(L));
  lua_pushlstring(L, b->data, b->len);
  return 1;
}

/* encode_small(value) -> bytes | nil: codec_encode_small's answer. */
static int l_encode_small(lua_State *L)
{
  lua_settop(L, 1);
  char out[CODEC_SMALL_MAX];
  size_t len = codec_encode_small(L, 1, out);
  if (lua_gettop(L) != 1)
    return luaL_error(L, "codec_encode_small changed the stack (1 -> %d)", lua_gettop(L));
  if (len == 0)
    return 0;
  lua_pushlstring(L, out, len);
  return 1;
}

static int l_buf_len(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)state_buf(L)->len);
  return 1;
}

/* decode(bytes [, {allow_functions=, max_depth=, max_bytes=, hooks=}]) -> value */
static int l_decode(lua_State *L)
{
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_settop(L, 2);
  codec_limits lim;
  read_limits(L, 2, &lim);
  int hooks = opt_bool(L, 2, "hooks", 1);
  int top = lua_gettop(L);
  codec_decode(L, s, len, hooks ? &test_hooks : NULL, &lim);
  if (lua_gettop(L) != top + 1)
    return luaL_error(L, "codec_decode pushed %d values", lua_gettop(L) - top);
  return 1;
}

static int l_my_c_func(lua_State *L)
{
  lua_pushliteral(L, "not standard");
  return 1;
}

static int l_lightud(lua_State *L)
{
  lua_pushlightuserdata(L, (void *)&passed);
  return 1;
}

static const char *const lua_prelude =
  "function deep_equal(a, b)\n"
  "  local map, rmap = {}, {}\n"
  "  local function eq(x, y, path)\n"
  "    local tx, ty = type(x), type(y)\n"
  "    if tx ~= ty then return false, path .. ': type ' .. tx .. ' vs ' .. ty end\n"
  "    if tx == 'number' then\n"
  "      if math.type(x) ~= math.type(y) then\n"
  "        return false, path .. ': ' .. math.type(x) .. ' vs ' .. math.type(y)\n"
  "      end\n"
  "      if x ~= x then\n"
  "        if y ~= y then return true end\n"
  "        return false, path .. ': NaN vs ' .. tostring(y)\n"
  "      end\n"
  "      if x == 0 and y == 0 and 1 / x ~= 1 / y then return false, path .. ': sign of zero' end\n"
  "      if x ~= y then return false, path .. ': ' .. tostring(x) .. ' vs ' .. tostring(y) end\n"
  "      return true\n"
  "    elseif tx == 'table' then\n"
  "      if map[x] ~= nil or rmap[y] ~= nil then\n"
  "        if rawequal(map[x], y) and rawequal(rmap[y], x) then return true end\n"
  "        return false, path .. ': sharing differs'\n"
  "      end\n"
  "      map[x], rmap[y] = y, x\n"
  "      if getmetatable(x) ~= nil then return false, path .. ': has a metatable' end\n"
  "      local n = 0\n"
  "      for k, v in next, x do\n"
  "        n = n + 1\n"
  "        local ok, why = eq(v, rawget(y, k), path .. '[' .. tostring(k) .. ']')\n"
  "        if not ok then return ok, why end\n"
  "      end\n"
  "      for _ in next, y do n = n - 1 end\n"
  "      if n ~= 0 then return false, path .. ': key counts differ' end\n"
  "      return true\n"
  "    elseif tx == 'function' then\n"
  "      return true -- checked by calling them\n"
  "    elseif tx == 'userdata' then\n"
  "      if tostring(x) == tostring(y) then return true end\n"
  "      return false, path .. ': ' .. tostring(x) .. ' vs ' .. tostring(y)\n"
  "    end\n"
  "    if x == y then return true end\n"
  "    return false, path .. ': ' .. tostring(x) .. ' vs ' .. tostring(y)\n"
  "  end\n"
  "  return eq(a, b, 'value')\n"
  "end\n"
  "function every_byte(n)\n"
  "  local parts = {}\n"
  "  for i = 0, n - 1 do parts[#parts + 1] = string.char(i % 256) end\n"
  "  return table.concat(parts)\n"
  "end\n";

static void open_test_libs(lua_State *L)
{
  luaL_openlibs(L);
  luaL_newmetatable(L, REF_MT);
  lua_pushcfunction(L, l_ref_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  lua_register(L, "ref", l_ref);
  lua_register(L, "encode", l_encode);
  lua_register(L, "decode", l_decode);
  lua_register(L, "buf_len", l_buf_len);
  lua_register(L, "encode_small", l_encode_small);
  lua_register(L, "my_c_func", l_my_c_func);
  lua_register(L, "lightud", l_lightud);
  if (luaL_dostring(L, lua_prelude) != LUA_OK) {
    fprintf(stderr, "prelude: %s\n", lua_tostring(L, -1));
    exit(2);
  }
}

static lua_State *new_state(void)
{
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "luaL_newstate failed\n");
    exit(2);
  }
  open_test_libs(L);
  return L;
}

/* ------------------------------------------------------------------------ */
/* Moving values from A to B                                                 */

static lua_State *A, *B;

/* Runs src (a chunk that returns a value) in L: 1 and the value pushed, or 0
 * and the error message pushed. The chunk is named "sender" / "receiver". */
static int eval(lua_State *L, const char *src)
{
  const char *name = L == A ? "=sender" : "=receiver";
  if (luaL_loadbuffer(L, src, strlen(src), name) != LUA_OK)
    return 0;
  return lua_pcall(L, 0, 1, 0) == LUA_OK;
}

static void push_opts(lua_State *L, const char *opts)
{
  if (opts == NULL) {
    lua_pushnil(L);
    return;
  }
  char src[512];
  snprintf(src, sizeof src, "return %s", opts);
  if (!eval(L, src)) {
    fprintf(stderr, "bad opts %s: %s\n", opts, lua_tostring(L, -1));
    exit(2);
  }
}

/* Encodes the value at the top of L (left there) with encode(value, opts).
 * Returns malloc'ed bytes, or NULL with *err (malloc'ed) set. */
static char *encode_top(lua_State *L, const char *opts, size_t *len, char **err)
{
  int top = lua_gettop(L);
  lua_pushcfunction(L, l_encode);
  lua_pushvalue(L, top);
  push_opts(L, opts);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    *err = strdup(lua_tostring(L, -1));
    lua_settop(L, top);
    return NULL;
  }
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  char *out = malloc(n + 1);
  memcpy(out, s, n);
  *len = n;
  lua_settop(L, top);
  return out;
}

/* decode_raw(pointer, len [, opts]): like decode but reads the bytes in
 * place, so that ASan sees any read past the end of an exact-size block. */
static int l_decode_raw(lua_State *L)
{
  const char *s = lua_touserdata(L, 1);
  size_t len = (size_t)lua_tointeger(L, 2);
  lua_settop(L, 3);
  codec_limits lim;
  read_limits(L, 3, &lim);
  int hooks = opt_bool(L, 3, "hooks", 1);
  int top = lua_gettop(L);
  codec_decode(L, s, len, hooks ? &test_hooks : NULL, &lim);
  if (lua_gettop(L) != top + 1)
    return luaL_error(L, "codec_decode pushed %d values", lua_gettop(L) - top);
  return 1;
}

/* Decodes bytes in L: 1 and the value pushed, or 0 and the error message
 * pushed. The bytes are copied to a block of exactly len bytes first. */
static int decode_push(lua_State *L, const char *bytes, size_t len, const char *opts)
{
  char *copy = malloc(len > 0 ? len : 1);
  memcpy(copy, bytes, len);
  /* An empty input is handed the end of its 1-byte block: the codec must
   * not read there at all. */
  const char *at = len > 0 ? copy : copy + 1;
  lua_pushcfunction(L, l_decode_raw);
  lua_pushlightuserdata(L, (void *)at);
  lua_pushinteger(L, (lua_Integer)len);
  push_opts(L, opts);
  int ok = lua_pcall(L, 3, 1, 0) == LUA_OK;
  free(copy);
  return ok;
}

/* Encodings kept for the truncation tests. */
typedef struct kept {
  char *name;
  char *bytes;
  size_t len;
} kept;
static kept keep_list[128];
static int nkept;
static int keeping = 1;  /* only the first pass over the round trips keeps */
static int stressing = 0; /* GC stress passes skip the largest values */

static void keep(const char *name, const char *bytes, size_t len)
{
  if (!keeping || nkept == (int)(sizeof keep_list / sizeof keep_list[0]))
    return;
  keep_list[nkept].name = strdup(name);
  keep_list[nkept].bytes = malloc(len + 1);
  memcpy(keep_list[nkept].bytes, bytes, len);
  keep_list[nkept].len = len;
  nkept++;
}

/*
 * Evaluates src in A, encodes it, decodes it in B, and checks it there:
 * with check (a chunk that gets the decoded value as ... and returns
 * true, or false and a reason) or, when check is NULL, by deep_equal
 * against src evaluated in B. pre, if set, runs in B before decoding.
 * Returns the encoding's length (0 on failure).
 */
static size_t roundtrip_opts(const char *name, const char *src, const char *pre,
                             const char *check, const char *eopts, const char *dopts)
{
  int atop = lua_gettop(A), btop = lua_gettop(B);
  size_t len = 0;
  char *err = NULL, *bytes = NULL;
  if (!eval(A, src)) {
    ok_if(0, name, "sender: %s", lua_tostring(A, -1));
    goto done;
  }
  bytes = encode_top(A, eopts, &len, &err);
  if (bytes == NULL) {
    ok_if(0, name, "encode: %s", err);
    goto done;
  }
  if (pre != NULL && (luaL_dostring(B, pre) != LUA_OK)) {
    ok_if(0, name, "pre: %s", lua_tostring(B, -1));
    goto done;
  }
  lua_settop(B, btop);
  if (!decode_push(B, bytes, len, dopts)) {
    ok_if(0, name, "decode: %s", lua_tostring(B, -1));
    goto done;
  }
  int decoded = lua_gettop(B);
  if (check != NULL) {
    if (luaL_loadbuffer(B, check, strlen(check), "=check") != LUA_OK) {
      ok_if(0, name, "check: %s", lua_tostring(B, -1));
      goto done;
    }
    lua_pushvalue(B, decoded);
  } else {
    lua_getglobal(B, "deep_equal");
    lua_pushvalue(B, decoded);
    if (!eval(B, src)) {
      ok_if(0, name, "receiver: %s", lua_tostring(B, -1));
      goto done;
    }
  }
  if (lua_pcall(B, check != NULL ? 1 : 2, 2, 0) != LUA_OK) {
    ok_if(0, name, "check raised: %s", lua_tostring(B, -1));
    goto done;
  }
  ok_if(lua_toboolean(B, -2), name, "%s", lua_isstring(B, -1) ? lua_tostring(B, -1) : "false");
  if (lua_toboolean(B, -2))
    keep(name, bytes, len);
done:
  lua_settop(A, atop);
  lua_settop(B, btop);
  free(err);
  free(bytes);
  return len;
}

static size_t roundtrip(const char *name, const char *src, const char *check)
{
  return roundtrip_opts(name, src, NULL, check, NULL, NULL);
}

static void hex(const char *s, size_t n, char *out, size_t cap)
{
  size_t k = 0;
  for (size_t i = 0; i < n && k + 3 < cap; i++)
    k += (size_t)snprintf(out + k, cap - k, "%02x", (unsigned char)s[i]);
  out[k] = '\0';
}

/* Checks the exact bytes src encodes to (hexadecimal, lower case). */
static void exact_bytes(const char *name, const char *src, const char *want_hex)
{
  int atop = lua_gettop(A);
  char *err = NULL;
  size_t len = 0;
  char got[256];
  if (!eval(A, src)) {
    ok_if(0, name, "sender: %s", lua_tostring(A, -1));
  } else {
    char *bytes = encode_top(A, NULL, &len, &err);
    if (bytes == NULL) {
      ok_if(0, name, "encode: %s", err);
    } else {
      hex(bytes, len, got, sizeof got);
      ok_if(strcmp(got, want_hex) == 0, name, "got %s, want %s", got, want_hex);
    }
    free(bytes);
  }
  free(err);
  lua_settop(A, atop);
}

/* Expects encoding src to fail. want is the exact message, or a prefix when
 * it ends with '*'. Also checks that A's stack is as before and A works. */
static void encode_error(const char *name, const char *src, const char *eopts, const char *want)
{
  int atop = lua_gettop(A);
  char *err = NULL;
  size_t len;
  if (!eval(A, src)) {
    ok_if(0, name, "sender: %s", lua_tostring(A, -1));
    lua_settop(A, atop);
    return;
  }
  char *bytes = encode_top(A, eopts, &len, &err);
  if (bytes != NULL) {
    ok_if(0, name, "encoded %zu bytes instead of failing", len);
  } else {
    size_t wl = strlen(want);
    int match = want[wl - 1] == '*' ? strncmp(err, want, wl - 1) == 0 : strcmp(err, want) == 0;
    ok_if(match, name, "got \"%s\", want \"%s\"", err, want);
  }
  lua_settop(A, atop);
  ok_if(lua_gettop(A) == atop && eval(A, "return 1 + 1") && lua_tointeger(A, -1) == 2, name,
        "sender state not usable after the error");
  lua_settop(A, atop);
  free(err);
  free(bytes);
}

/* Expects decoding to fail with "malformed message: " and, if want is not
 * NULL, with want somewhere in the message. */
static void malformed(const char *name, const char *bytes, size_t len, const char *dopts,
                      const char *want)
{
  int btop = lua_gettop(B);
  if (decode_push(B, bytes, len, dopts)) {
    ok_if(0, name, "decoded a %s instead of failing", luaL_typename(B, -1));
  } else {
    const char *msg = lua_tostring(B, -1);
    int match = msg != NULL && strncmp(msg, "malformed message: ", 19) == 0 &&
                (want == NULL || strstr(msg, want) != NULL);
    ok_if(match, name, "got \"%s\", want \"malformed message: ...%s...\"", msg ? msg : "?",
          want ? want : "");
  }
  lua_settop(B, btop);
}

/* Decodes bytes in B and runs check on the value. */
static void decode_check(const char *name, const char *bytes, size_t len, const char *dopts,
                         const char *check)
{
  int btop = lua_gettop(B);
  if (!decode_push(B, bytes, len, dopts)) {
    ok_if(0, name, "decode: %s", lua_tostring(B, -1));
  } else if (luaL_loadbuffer(B, check, strlen(check), "=check") != LUA_OK) {
    ok_if(0, name, "check: %s", lua_tostring(B, -1));
  } else {
    lua_insert(B, -2);
    if (lua_pcall(B, 1, 2, 0) != LUA_OK)
      ok_if(0, name, "check raised: %s", lua_tostring(B, -1));
    else
      ok_if(lua_toboolean(B, -2), name, "%s",
            lua_isstring(B, -1) ? lua_tostring(B, -1) : "false");
  }
  lua_settop(B, btop);
}

/* ------------------------------------------------------------------------ */
/* The tests                                                                 */

static void test_plain_values(void)
{
  roundtrip("nil", "return nil", "local v = ... return v == nil");
  roundtrip("true", "return true", NULL);
  roundtrip("false", "return false", NULL);
  roundtrip("mininteger", "return math.mininteger",
            "local v = ... return math.type(v) == 'integer' and v == math.mininteger");
  roundtrip("maxinteger", "return math.maxinteger",
            "local v = ... return math.type(v) == 'integer' and v == math.maxinteger");
  roundtrip("zero", "return 0", "local v = ... return math.type(v) == 'integer' and v == 0");
  roundtrip("minus one", "return -1", NULL);
  roundtrip("integer edges",
            "return {0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296, -1, -32, "
            "-33, -128, -129, -32768, -32769, -2147483648, -2147483649, math.maxinteger, "
            "math.mininteger, math.maxinteger - 1, math.mininteger + 1}",
            NULL);
  roundtrip("float 1.0 stays float", "return 1.0",
            "local v = ... return math.type(v) == 'float' and v == 1.0, math.type(v)");
  roundtrip("floats", "return {0.5, -2.5, 1e308, 5e-324, 2^53, 2^63, -2^63, 0.1, 3.0}", NULL);
  roundtrip("inf", "return math.huge", "local v = ... return v == math.huge");
  roundtrip("-inf", "return -math.huge", "local v = ... return v == -math.huge");
  roundtrip("NaN", "return 0/0", "local v = ... return v ~= v and math.type(v) == 'float'");
  roundtrip("-0.0", "return -0.0",
            "local v = ... return math.type(v) == 'float' and v == 0 and 1/v == -math.huge");
  roundtrip("+0.0", "return 0.0", "local v = ... return math.type(v) == 'float' and 1/v == math.huge");
  roundtrip("special floats in a table", "return {math.huge, -math.huge, 0/0, -0.0, 0.0}", NULL);
  if (!stressing)
    roundtrip("1 MiB string with every byte", "return every_byte(1048576)",
            "local v = ... return #v == 1048576 and v == every_byte(1048576)");
  roundtrip("empty string", "return ''", "local v = ... return v == ''");
  roundtrip("utf-8 string", "return 'h\\u{e9}llo w\\u{f6}rld \\u{2713} \\u{1d11e}'", NULL);
  roundtrip("string with NULs", "return 'a\\0b\\0'", NULL);
  if (!stressing)
    roundtrip("long strings", "return {string.rep('x', 31), string.rep('x', 32), string.rep('y', 255), "
            "string.rep('y', 256), string.rep('z', 65535), string.rep('z', 65536)}", NULL);
}

static void test_exact_bytes(void)
{
  exact_bytes("bytes nil", "return nil", "c0");
  exact_bytes("bytes true", "return true", "c3");
  exact_bytes("bytes false", "return false", "c2");
  exact_bytes("bytes 0", "return 0", "00");
  exact_bytes("bytes 127", "return 127", "7f");
  exact_bytes("bytes 128", "return 128", "cc80");
  exact_bytes("bytes 256", "return 256", "cd0100");
  exact_bytes("bytes 65536", "return 65536", "ce00010000");
  exact_bytes("bytes 2^32", "return 1 << 32", "cf0000000100000000");
  exact_bytes("bytes maxinteger", "return math.maxinteger", "cf7fffffffffffffff");
  exact_bytes("bytes -1", "return -1", "ff");
  exact_bytes("bytes -32", "return -32", "e0");
  exact_bytes("bytes -33", "return -33", "d0df");
  exact_bytes("bytes -129", "return -129", "d1ff7f");
  exact_bytes("bytes -2^31-1", "return -2147483649", "d3ffffffff7fffffff");
  exact_bytes("bytes mininteger", "return math.mininteger", "d38000000000000000");
  exact_bytes("bytes 1.0", "return 1.0", "cb3ff0000000000000");
  exact_bytes("bytes -0.0", "return -0.0", "cb8000000000000000");
  exact_bytes("bytes 'a'", "return 'a'", "a161");
  exact_bytes("bytes ''", "return ''", "a0");
  exact_bytes("bytes utf-8 is str", "return '\\u{e9}'", "a2c3a9");
  exact_bytes("bytes invalid utf-8 is bin", "return '\\xff'", "c401ff");
  exact_bytes("bytes surrogate is bin", "return '\\xed\\xa0\\x80'", "c403eda080");
  exact_bytes("bytes overlong is bin", "return '\\xc0\\x80'", "c402c080");
  exact_bytes("bytes truncated utf-8 is bin", "return 'abcdefgh\\xe2\\x9c'", "c40a6162636465666768e29c");
  exact_bytes("bytes above U+10FFFF is bin", "return '\\xf4\\x90\\x80\\x80'", "c404f4908080");
  exact_bytes("bytes 4-byte utf-8 is str", "return '\\u{10ffff}'", "a4f48fbfbf");
  exact_bytes("bytes 32-byte str", "return string.rep('a', 32)",
              "d920" "6161616161616161616161616161616161616161616161616161616161616161");
  exact_bytes("bytes empty table", "return {}", "80");
  exact_bytes("bytes array", "return {1, 2}", "920102");
  exact_bytes("bytes map", "return {x = 1}", "81a17801");
  exact_bytes("bytes cycle", "local t = {} t.self = t return t", "81a473656c66d60300000000");
  exact_bytes("bytes ref", "return ref(7, 258)", "c70c01000000070000000000000102");
  exact_bytes("bytes globals", "return _G", "c70005");
  exact_bytes("bytes print", "return print", "c705047072696e74");
  exact_bytes("bytes table.insert", "return table.insert", "c70c047461626c652e696e73657274");
}

static void test_tables(void)
{
  roundtrip("nested tables", "return {a = {b = {c = {1, 2, {d = 'x'}}}}, e = {}}", NULL);
  roundtrip("mixed array and hash", "return {1, 2, 3, x = 1, y = {4, 5}, [10] = 10}", NULL);
  roundtrip("holes", "return {1, nil, 3}", NULL);
  roundtrip("sparse keys", "return {[1] = 1, [3] = 3, [1000000] = 'far'}", NULL);
  roundtrip("only [2]", "return {[2] = 'x'}", NULL);
  roundtrip("odd keys",
            "return {n = 0, [0] = 'zero', [-1] = 'neg', [1.5] = 'float key', [true] = 'yes', "
            "[false] = 'no', [''] = 'empty', ['a b'] = 'space', [math.mininteger] = 'min', "
            "[math.huge] = 'inf'}",
            NULL);
  roundtrip("empty table", "return {}", "local v = ... return type(v) == 'table' and next(v) == nil");
  roundtrip("cycle", "local t = {name = 't'} t.self = t return t",
            "local v = ... return rawequal(v.self, v) and v.name == 't'");
  roundtrip("longer cycle", "local a, b = {}, {} a.b = b b.a = a return {a, b}",
            "local v = ... return rawequal(v[1].b, v[2]) and rawequal(v[2].a, v[1])");
  roundtrip("shared sub-table", "local s = {1, 2} return {x = s, y = s}",
            "local v = ... return rawequal(v.x, v.y) and v.x[2] == 2");
  roundtrip("shared across array and keys", "local s = {} return {s, s, [s] = s}",
            "local v = ... return rawequal(v[1], v[2]) and rawequal(v[v[1]], v[1])");
  roundtrip("table as key", "return {[{1}] = 'one'}",
            "local v = ... local k, x = next(v) return type(k) == 'table' and k[1] == 1 and x == 'one'");
  roundtrip("metatable not copied", "return setmetatable({x = 1}, {__index = function() return 1 end})",
            "local v = ... return getmetatable(v) == nil and v.y == nil and v.x == 1");
  if (!stressing)
    roundtrip("100,000-entry array", "local t = {} for i = 1, 100000 do t[i] = i * 3 end return t",
            "local v = ... if #v ~= 100000 then return false, 'len' end "
            "for i = 1, 100000 do if v[i] ~= i * 3 then return false, i end end return true");
  if (!stressing)
    roundtrip("100,000-entry map",
            "local t = {} for i = 1, 100000 do t['k' .. i] = i + 0.5 end return t", NULL);
  roundtrip("deep nesting at the limit",
            "local t = {'leaf'} for i = 1, 199 do t = {t} end return t",
            "local v = ... for i = 1, 199 do v = v[1] end return v[1] == 'leaf'");
  if (!stressing)
    roundtrip_opts("deep nesting with a larger limit",
                 "local t = {'leaf'} for i = 1, 499 do t = {t} end return t", NULL,
                 "local v = ... for i = 1, 499 do v = v[1] end return v[1] == 'leaf'",
                 "{max_depth = 500}", "{max_depth = 500}");
}

/* The decoder's key cache (src/codec.c): large maps decode exactly whether
 * their keys repeat, change, or change length at a position. In the GC
 * stress passes a key the cache failed to keep alive would be read after it
 * was collected, which ASan reports. */
static void test_key_cache(void)
{
  static const char *const maps[][2] = {
    { "key cache: a first large map",
      "local t = {} for i = 1, 300 do t['k' .. i] = i end return t" },
    { "key cache: the same keys again",
      "local t = {} for i = 1, 300 do t['k' .. i] = -i end return t" },
    { "key cache: other bytes, same lengths",
      "local t = {} for i = 1, 300 do t['j' .. i] = i end return t" },
    { "key cache: keys one byte longer",
      "local t = {} for i = 1, 300 do t['j' .. i .. '\\0'] = i end return t" },
    { "key cache: numbers, long and binary keys among them",
      "local t = {} for i = 1, 300 do local m = i % 4 "
      "if m == 0 then t[i] = i elseif m == 1 then t[('x'):rep(41) .. i] = i "
      "elseif m == 2 then t['\\255' .. i] = i else t['k' .. i] = i end end return t" },
    { "key cache: the first keys once more",
      "local t = {} for i = 1, 300 do t['k' .. i] = i end return t" },
    { "key cache: two large maps in one message",
      "local a, b = {}, {} for i = 1, 100 do a['a' .. i] = i b['b' .. i] = {i} end "
      "return {a = a, b = b, again = a}" },
  };
  for (size_t i = 0; i < sizeof maps / sizeof maps[0]; i++)
    roundtrip(maps[i][0], maps[i][1], NULL);
  roundtrip_opts("key cache: off", maps[0][1], NULL, NULL, NULL, "{key_cache = false}");

  /* A state decoding with the cache off makes none; with it on, one. */
  lua_State *L = new_state();
  int made = eval(L, "local t = {} for i = 1, 100 do t['k' .. i] = i end "
                     "local bytes = encode(t) t = nil collectgarbage() "
                     "local reg = debug.getregistry() "
                     "decode(bytes, {key_cache = false}) "
                     "local before = reg['isolate_cluster.codec.keys'] "
                     "decode(bytes) "
                     "return before == nil and type(reg['isolate_cluster.codec.keys']) == 'userdata'");
  ok_if(made && lua_toboolean(L, -1), "key cache: made only when on", "%s",
        made ? "registry entry wrong" : lua_tostring(L, -1));
  /* Keys that never repeat: after its first two maps the cache rests for
   * KEYCACHE_REST (15) maps, then starts afresh; every map decodes exactly. */
  int rested = eval(L, "local reg = debug.getregistry() reg['isolate_cluster.codec.keys'] = nil "
                       "local kinds = {} "
                       "for m = 1, 20 do "
                       "  local t = {} for i = 1, 100 do t['m' .. m .. '_' .. i] = i end "
                       "  local bytes = encode(t) "
                       "  if not deep_equal(t, decode(bytes)) then return 'map ' .. m end "
                       "  kinds[m] = type(reg['isolate_cluster.codec.keys']) "
                       "end "
                       "if kinds[1] ~= 'userdata' or kinds[2] ~= 'number' or kinds[17] ~= 'number' "
                       "   or kinds[18] ~= 'userdata' then return table.concat(kinds, ' ') end "
                       "local t = {} for i = 1, 100 do t['again' .. i] = i end "
                       "for _ = 1, 20 do if not deep_equal(t, decode(encode(t))) then return 'again' end end "
                       "return reg['isolate_cluster.codec.keys'] ~= nil and type(reg['isolate_cluster.codec.keys']) == 'userdata' and 'ok' or 'no cache'");
  ok_if(rested && lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "ok") == 0,
        "key cache: rests while keys do not repeat", "%s", lua_tostring(L, -1));
  lua_close(L);
}

static void test_functions(void)
{
  roundtrip("function with upvalues",
            "local a, b = 10, {x = 5} return function(y) return a + b.x + y end",
            "local f = ... return f(1) == 16");
  roundtrip_opts("function sees the receiver's globals",
                 "return function() return receiver_only * 2 end", "receiver_only = 21",
                 "local f = ... local r = f() receiver_only = nil return r == 42", NULL, NULL);
  roundtrip_opts("_ENV is always the receiver's globals",
                 "local _ENV = {x = 'sender env'} return function() return x end",
                 "x = 'receiver global'",
                 "local f = ... local r = f() x = nil return r == 'receiver global', r", NULL, NULL);
  roundtrip("upvalue table.insert is the receiver's",
            "local insert = table.insert return function(t, v) insert(t, v) return t end",
            "local f = ... local _, up = debug.getupvalue(f, 1) "
            "if not rawequal(up, table.insert) then return false, 'not table.insert' end "
            "local t = f({1}, 2) return #t == 2 and t[2] == 2");
  roundtrip_opts("a standard function resolves by name in the receiver",
                 "local insert = table.insert return function() return insert end",
                 "saved_insert = table.insert table.insert = string.rep",
                 "local f = ... table.insert = saved_insert "
                 "return rawequal(f(), string.rep), 'resolved to ' .. tostring(f())",
                 NULL, NULL);
  roundtrip("standard C functions",
            "return {print = print, fmt = string.format, floor = math.floor, req = require, "
            "open = io.open, time = os.time, wrap = coroutine.wrap, char = utf8.char, "
            "tb = debug.traceback, search = package.searchpath, pairs = pairs}",
            "local v = ... return rawequal(v.print, print) and rawequal(v.fmt, string.format) "
            "and rawequal(v.floor, math.floor) and rawequal(v.req, require) and "
            "rawequal(v.open, io.open) and rawequal(v.time, os.time) and "
            "rawequal(v.wrap, coroutine.wrap) and rawequal(v.char, utf8.char) and "
            "rawequal(v.tb, debug.traceback) and rawequal(v.search, package.searchpath) and "
            "rawequal(v.pairs, pairs)");
  roundtrip("globals table", "return {g = _G, t = {_G}}",
            "local v = ... return rawequal(v.g, _G) and rawequal(v.t[1], _G)");
  roundtrip("nested functions in tables",
            "return {ops = {add = function(a, b) return a + b end, "
            "mul = function(a, b) return a * b end}, list = {function() return 'one' end}}",
            "local v = ... return v.ops.add(2, 3) == 5 and v.ops.mul(2, 3) == 6 and v.list[1]() == 'one'");
  roundtrip("recursive local function",
            "local function fact(n) if n <= 1 then return 1 end return n * fact(n - 1) end return fact",
            "local f = ... local _, up = debug.getupvalue(f, 1) "
            "return f(10) == 3628800 and rawequal(up, f)");
  roundtrip("shared function", "local f = function() return 7 end return {f, f, g = f}",
            "local v = ... return rawequal(v[1], v[2]) and rawequal(v.g, v[1]) and v[1]() == 7");
  roundtrip("upvalue shares a table with the message",
            "local state = {n = 0} return {state = state, "
            "inc = function() state.n = state.n + 1 return state.n end}",
            "local v = ... return v.inc() == 1 and v.state.n == 1");
  roundtrip("function returning a closure",
            "return function(x) return function(y) return x + y end end",
            "local f = ... return f(2)(3) == 5");
  roundtrip("function keeps its debug info", "return function() error('boom') end",
            "local f = ... local ok, e = pcall(f) "
            "return not ok and e == 'sender:1: boom', e");
  roundtrip("vararg function", "return function(...) return select('#', ...) end",
            "local f = ... return f(1, nil, 3) == 3");
  roundtrip("function without upvalues", "return function() return 1 end",
            "local f = ... return f() == 1");
  roundtrip("function with nil upvalue", "local x return function() return x end",
            "local f = ... return f() == nil");
}

static void test_refs(void)
{
  roundtrip("refs", "return {r = ref(7, 123456789012), list = {ref(1, 2), ref(4294967295, -1)}}",
            NULL);
  roundtrip("ref identity", "return ref(0, 0)",
            "local r = ... return tostring(r) == 'ref(0:0)' and getmetatable(r) ~= nil");
  roundtrip("ref as a key", "return {[ref(3, 4)] = true}",
            "local v = ... local k = next(v) return tostring(k) == 'ref(3:4)'");
}

static void test_refusals(void)
{
  encode_error("userdata", "return {conn = io.stdout}", NULL, "cannot copy a userdata at msg.conn");
  encode_error("thread", "return {1, 2, {co = coroutine.create(function() end)}}", NULL,
               "cannot copy a thread at msg[3].co");
  encode_error("non-standard C function", "return {handler = my_c_func}", NULL,
               "cannot copy a C function at msg.handler (only standard library C functions can be copied)");
  encode_error("C closure", "return {gen = coroutine.wrap(function() end)}", NULL,
               "cannot copy a C function at msg.gen*");
  /* File handle methods are standard functions (SPEC §4): they copy by name. */
  roundtrip("file method", "return {m = io.stdout.write, g = getmetatable(io.stdout).__tostring}",
            "local v = ... return rawequal(v.m, io.stdout.write) and rawequal(v.g, getmetatable(io.stdout).__tostring)");
  exact_bytes("bytes FILE*.write", "return io.stdout.write", "c70b0446494c452a2e7772697465");
  encode_error("light userdata", "return {p = lightud()}", NULL, "cannot copy a light userdata at msg.p");
  encode_error("bad root value", "return coroutine.create(print)", NULL, "cannot copy a thread at msg");
  encode_error("ref without hooks", "return {ref(1, 2)}", "{hooks = false}",
               "cannot copy a userdata at msg[1]");
  encode_error("other root name", "return {x = io.stdout}", "{root = 'properties'}",
               "cannot copy a userdata at properties.x");
  encode_error("quoted keys", "return {['a b'] = {[1.5] = {[true] = io.stdout}}}", NULL,
               "cannot copy a userdata at msg[\"a b\"][1.5][true]");
  encode_error("keyword key", "return {['end'] = io.stdout}", NULL,
               "cannot copy a userdata at msg[\"end\"]");
  encode_error("binary key", "return {['\\0\\255\"'] = io.stdout}", NULL,
               "cannot copy a userdata at msg[\"\\000\\255\\\"\"]");
  encode_error("table key", "return {[{}] = io.stdout}", NULL, "cannot copy a userdata at msg[?]");
  encode_error("bad map key", "return {[io.stdout] = 1}", NULL, "cannot copy a userdata at msg<key>");
  encode_error("upvalue", "local conn = io.stdout return {f = function() return conn end}", NULL,
               "cannot copy a userdata at msg.f<upvalue conn>");
  encode_error("upvalue in nested function",
               "local co = coroutine.create(print) "
               "return {list = {function() return function() return co end end}}",
               NULL, "cannot copy a thread at msg.list[1]<upvalue co>");
  encode_error("100,000 levels deep", "local t = {} for i = 1, 100000 do t = {t} end return t", NULL,
               "cannot copy msg: nested deeper than 200 levels (at msg[1][1][1]*");
  encode_error("one level too deep", "local t = {} for i = 1, 200 do t = {t} end return t", NULL,
               "cannot copy msg: nested deeper than 200 levels (at msg[1]*");
  encode_error("deep through functions",
               "local f = function() end for i = 1, 300 do local g = f f = function() return g end end "
               "return f",
               NULL, "cannot copy msg: nested deeper than 200 levels (at msg<upvalue g><upvalue g>*");
  encode_error("size limit", "return string.rep('x', 1000)", "{max_bytes = 100}",
               "cannot copy msg: encoded message larger than 100 bytes");
  encode_error("size limit in a table", "local t = {} for i = 1, 100 do t[i] = i end return t",
               "{max_bytes = 50}", "cannot copy msg: encoded message larger than 50 bytes");
  encode_error("size limit in bytecode", "return function() return 1, 2, 3 end", "{max_bytes = 20}",
               "cannot copy msg: encoded message larger than 20 bytes");

  /* The depth error's path is cut to a readable length. */
  int atop = lua_gettop(A);
  char *err = NULL;
  size_t len;
  if (eval(A, "local t = {} for i = 1, 100000 do t = {t} end return t")) {
    char *bytes = encode_top(A, NULL, &len, &err);
    ok_if(bytes == NULL && err != NULL && strlen(err) < 220 && strstr(err, "...)") != NULL,
          "depth error path is truncated", "%s", err ? err : "(encoded)");
    free(bytes);
  }
  lua_settop(A, atop);
  free(err);
}

/* After a failed encode the buffer holds what it held before, and the next
 * encode works; neither success nor failure changes the caller's stack. */
static void test_buffer_after_errors(void)
{
  const char *src =
    "local first = encode('hello')\n"
    "if buf_len() ~= 6 then return false, 'len after first ' .. buf_len() end\n"
    "local more = encode('hello', {append = true})\n"
    "if more ~= first .. first then return false, 'append' end\n"
    "local ok, e = pcall(encode, {1, 2, string.rep('x', 1000), coroutine.create(print)},\n"
    "                    {append = true})\n"
    "if ok or not e:find('cannot copy a thread at msg%[4%]') then return false, e end\n"
    "if buf_len() ~= 12 then return false, 'len after error ' .. buf_len() end\n"
    "ok, e = pcall(encode, function() end, {append = true, max_bytes = 5})\n"
    "if ok or not e:find('larger than 5 bytes') then return false, e end\n"
    "if buf_len() ~= 12 then return false, 'len after size error ' .. buf_len() end\n"
    "local again = encode(1, {append = true})\n"
    "if again ~= first .. first .. '\\1' then return false, 'after error' end\n"
    "local nested = {}\n"
    "for i = 1, 1000 do nested = {nested, {}} end\n"
    "ok, e = pcall(encode, nested)\n"
    "if ok then return false, 'deep value encoded' end\n"
    "if buf_len() ~= 0 then return false, 'len after deep error ' .. buf_len() end\n"
    "return encode({1, 2, 3}) == '\\147\\1\\2\\3'\n";
  int atop = lua_gettop(A);
  if (!eval(A, src))
    ok_if(0, "buffer after errors", "%s", lua_tostring(A, -1));
  else
    ok_if(lua_toboolean(A, -1), "buffer after errors", "failed");
  lua_settop(A, atop);

  /* The C-level contract: codec_encode leaves the stack alone on success. */
  codec_buf b = { NULL, 0, 0 };
  lua_pushinteger(A, 42);
  int top = lua_gettop(A);
  codec_encode(A, -1, "msg", NULL, NULL, &b);
  ok_if(lua_gettop(A) == top && b.len == 1 && b.data[0] == 42, "stack balanced on success", "top %d",
        lua_gettop(A));
  lua_settop(A, atop);
  codec_buf_free(&b);
  ok_if(b.data == NULL && b.len == 0 && b.cap == 0, "codec_buf_free empties", "not empty");
}

static void test_decode_forms(void)
{
  decode_check("uint64 max becomes a float", BYTES("\xcf\xff\xff\xff\xff\xff\xff\xff\xff"), NULL,
               "local v = ... return math.type(v) == 'float' and v == 2^64");
  decode_check("2^63 becomes a float", BYTES("\xcf\x80\x00\x00\x00\x00\x00\x00\x00"), NULL,
               "local v = ... return math.type(v) == 'float' and v == 2^63");
  decode_check("uint64 maxinteger stays an integer", BYTES("\xcf\x7f\xff\xff\xff\xff\xff\xff\xff"),
               NULL, "local v = ... return v == math.maxinteger");
  decode_check("float32", BYTES("\xca\x3f\xc0\x00\x00"), NULL,
               "local v = ... return math.type(v) == 'float' and v == 1.5");
  decode_check("float32 -0", BYTES("\xca\x80\x00\x00\x00"), NULL,
               "local v = ... return math.type(v) == 'float' and 1/v == -math.huge");
  decode_check("int8 positive", BYTES("\xd0\x01"), NULL,
               "local v = ... return math.type(v) == 'integer' and v == 1");
  decode_check("uint8", BYTES("\xcc\x05"), NULL, "local v = ... return v == 5");
  decode_check("int16", BYTES("\xd1\x80\x00"), NULL, "local v = ... return v == -32768");
  decode_check("int32", BYTES("\xd2\x80\x00\x00\x00"), NULL, "local v = ... return v == -2147483648");
  decode_check("bin8", BYTES("\xc4\x03" "abc"), NULL, "local v = ... return v == 'abc'");
  decode_check("bin16", BYTES("\xc5\x00\x03" "abc"), NULL, "local v = ... return v == 'abc'");
  decode_check("bin32", BYTES("\xc6\x00\x00\x00\x03" "abc"), NULL, "local v = ... return v == 'abc'");
  decode_check("str16", BYTES("\xda\x00\x03" "abc"), NULL, "local v = ... return v == 'abc'");
  decode_check("str32", BYTES("\xdb\x00\x00\x00\x03" "abc"), NULL, "local v = ... return v == 'abc'");
  decode_check("invalid utf-8 in str", BYTES("\xa2\xff\xfe"), NULL,
               "local v = ... return v == '\\xff\\xfe'");
  decode_check("array16", BYTES("\xdc\x00\x02\x01\x02"), NULL,
               "local v = ... return #v == 2 and v[2] == 2");
  decode_check("array32", BYTES("\xdd\x00\x00\x00\x01\xc3"), NULL, "local v = ... return v[1] == true");
  decode_check("map16", BYTES("\xde\x00\x01\xa1" "a\x01"), NULL, "local v = ... return v.a == 1");
  decode_check("map32", BYTES("\xdf\x00\x00\x00\x01\xa1" "a\x01"), NULL, "local v = ... return v.a == 1");
  decode_check("empty array", BYTES("\x90"), NULL,
               "local v = ... return type(v) == 'table' and next(v) == nil");
  decode_check("nils in an array", BYTES("\x93\xc0\xc0\x03"), NULL,
               "local v = ... return v[1] == nil and v[2] == nil and v[3] == 3");
  decode_check("nil map value", BYTES("\x81\xa1" "a\xc0"), NULL,
               "local v = ... return next(v) == nil");
  decode_check("duplicate keys: last wins", BYTES("\x82\xa1" "a\x01\xa1" "a\x02"), NULL,
               "local v = ... return v.a == 2");
  decode_check("float key 1.0 is key 1", BYTES("\x81\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\xa1x"), NULL,
               "local v = ... return v[1] == 'x'");
  decode_check("backref as ext8", BYTES("\x92\x80\xc7\x04\x03\x00\x00\x00\x01"), NULL,
               "local v = ... return rawequal(v[1], v[2]) and type(v[1]) == 'table' "
               "and not rawequal(v[1], v)");
  decode_check("self-reference in an array", BYTES("\x91\xd6\x03\x00\x00\x00\x00"), NULL,
               "local v = ... return rawequal(v[1], v)");
  decode_check("table under construction as key", BYTES("\x81\xd6\x03\x00\x00\x00\x00\x01"), NULL,
               "local v = ... return v[v] == 1");
  decode_check("table as key", BYTES("\x81\x80\x01"), NULL,
               "local v = ... local k = next(v) return type(k) == 'table' and v[k] == 1");
  decode_check("ref", BYTES("\xc7\x0c\x01\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x01\x02"), NULL,
               "local v = ... return tostring(v) == 'ref(7:258)'");
  decode_check("globals", BYTES("\xc7\x00\x05"), NULL, "local v = ... return rawequal(v, _G)");
  decode_check("cfunc", BYTES("\xc7\x0c\x04table.insert"), NULL,
               "local v = ... return rawequal(v, table.insert)");
  decode_check("cfunc via ext16", BYTES("\xc8\x00\x05\x04print"), NULL,
               "local v = ... return rawequal(v, print)");
}

static void test_malformed(void)
{
  malformed("empty input", "", 0, NULL, "truncated at byte 0");
  malformed("0xc1", BYTES("\xc1"), NULL, "invalid byte 0xc1 at byte 0");
  malformed("0xc1 inside", BYTES("\x92\x01\xc1"), NULL, "invalid byte 0xc1 at byte 2");
  malformed("trailing byte", BYTES("\xc0\xc0"), NULL, "1 trailing bytes at byte 1");
  malformed("trailing bytes after a table", BYTES("\x91\x01\x00\x00"), NULL, "2 trailing bytes");
  malformed("huge str32", BYTES("\xdb\xff\xff\xff\xff" "a"), NULL, "truncated");
  malformed("huge bin32", BYTES("\xc6\xff\xff\xff\xff" "a"), NULL, "truncated");
  malformed("huge str16", BYTES("\xda\xff\xff" "a"), NULL, "truncated");
  malformed("huge array32", BYTES("\xdd\xff\xff\xff\xff\xc0"), NULL, "truncated at byte 6");
  malformed("huge map32", BYTES("\xdf\xff\xff\xff\xff\x01\x02"), NULL, "truncated at byte 7");
  malformed("huge ext32", BYTES("\xc9\xff\xff\xff\xff\x03"), NULL, "truncated");
  malformed("huge ext16", BYTES("\xc8\xff\xff\x03"), NULL, "truncated");
  malformed("bad back-reference", BYTES("\x91\xd6\x03\x00\x00\x00\x05"), NULL, "bad back-reference 5");
  malformed("back-reference before any table", BYTES("\xd6\x03\x00\x00\x00\x00"), NULL,
            "bad back-reference 0 at byte 0");
  malformed("back-reference 2^32-1", BYTES("\x91\xd6\x03\xff\xff\xff\xff"), NULL,
            "bad back-reference 4294967295");
  malformed("back-reference too short", BYTES("\x91\xd5\x03\x00\x00"), NULL, "needs a 4-byte payload");
  malformed("back-reference too long", BYTES("\x91\xd7\x03\x00\x00\x00\x00\x00\x00\x00\x00"), NULL,
            "needs a 4-byte payload");
  malformed("nil map key", BYTES("\x81\xc0\x01"), NULL, "nil map key at byte 1");
  malformed("NaN map key", BYTES("\x81\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\x01"), NULL, "NaN map key");
  malformed("float32 NaN map key", BYTES("\x81\xca\x7f\xc0\x00\x00\x01"), NULL, "NaN map key");
  malformed("map value missing", BYTES("\x81\x01"), NULL, "truncated at byte 2");
  malformed("unknown ext type", BYTES("\xd4\x09\x00"), NULL, "unknown ext type 9");
  malformed("negative ext type (timestamp)", BYTES("\xd6\xff\x00\x00\x00\x00"), NULL,
            "unknown ext type -1");
  malformed("function bytecode alone", BYTES("\xd4\x02\x00"), NULL,
            "function bytecode outside a function array");
  malformed("function bytecode not first", BYTES("\x92\xc0\xd4\x02\x00"), NULL,
            "function bytecode outside a function array");
  malformed("function bytecode as a map value", BYTES("\x81\xa1" "f\xd4\x02\x00"), NULL,
            "function bytecode outside a function array");
  malformed("text chunk as bytecode", BYTES("\x91\xc7\x08\x02return 1"), NULL,
            "bad function bytecode");
  malformed("garbage bytecode", BYTES("\x91\xc7\x08\x02\x1bLua\x54\x00\x19\x93"), NULL,
            "bad function bytecode");
  malformed("empty bytecode", BYTES("\x91\xc7\x00\x02"), NULL, "bad function bytecode");
  malformed("globals with a payload", BYTES("\xd4\x05\x00"), NULL, "needs a 0-byte payload");
  malformed("globals not allowed", BYTES("\xc7\x00\x05"), "{allow_functions = false}",
            "not accepted");
  malformed("cfunc not allowed", BYTES("\xc7\x05\x04print"), "{allow_functions = false}",
            "not accepted");
  malformed("unknown cfunc", BYTES("\xc7\x0e\x04os.nonexistent"), NULL,
            "unknown function \"os.nonexistent\"");
  malformed("cfunc of an unknown library", BYTES("\xc7\x0b\x04nolib.print"), NULL,
            "unknown function");
  malformed("cfunc _G.print", BYTES("\xc7\x08\x04_G.print"), NULL, "unknown function");
  malformed("cfunc that is no base function", BYTES("\xc7\x06\x04string"), NULL, "unknown function");
  malformed("cfunc empty", BYTES("\xc7\x00\x04"), NULL, "unknown function \"\"");
  malformed("cfunc with a NUL", BYTES("\xc7\x06\x04pr\0int"), NULL, "unknown function");
  malformed("cfunc naming a table", BYTES("\xc7\x0e\x04package.loaded"), NULL, "unknown function");
  malformed("cfunc trailing dot", BYTES("\xc7\x07\x04string."), NULL, "unknown function");
  malformed("ref without hooks", BYTES("\xc7\x0c\x01\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x01\x02"),
            "{hooks = false}", "unexpected ref");
  malformed("ref payload too short", BYTES("\xd7\x01\x00\x00\x00\x07\x00\x00\x01\x02"), NULL,
            "needs a 12-byte payload");
  malformed("larger than max_bytes", BYTES("\x93\x01\x02\x03"), "{max_bytes = 3}",
            "larger than 3 bytes");
  malformed("deeper than max_depth", BYTES("\x91\x91\x91\x91\x91\x91\xc0"), "{max_depth = 5}",
            "nested deeper than 5 levels at byte 5");

  /* Depth bombs: a million nested headers, each shape. */
  size_t n = 1000000;
  char *bomb = malloc(3 * n + 1);
  memset(bomb, 0x91, n);
  bomb[n] = (char)0xc0;
  malformed("depth bomb: arrays", bomb, n + 1, NULL, "nested deeper than 200 levels at byte 200");
  memset(bomb, 0x81, n);
  malformed("depth bomb: map keys", bomb, n + 1, NULL, "nested deeper than 200 levels");
  for (size_t i = 0; i < n; i++) {
    bomb[3 * i] = (char)0x81;
    bomb[3 * i + 1] = (char)0xa1;
    bomb[3 * i + 2] = 'a';
  }
  bomb[3 * n] = (char)0xc0;
  malformed("depth bomb: map values", bomb, 3 * n + 1, NULL, "nested deeper than 200 levels");
  for (size_t i = 0; i < n; i++)
    bomb[i] = (char)0xdd;
  malformed("depth bomb: array32 headers", bomb, n, NULL, NULL);
  free(bomb);

  /* A function message with its upvalue count changed. */
  int atop = lua_gettop(A);
  char *err = NULL;
  size_t len;
  if (eval(A, "local x = 1 return function() return x end")) {
    char *bytes = encode_top(A, NULL, &len, &err);
    if (bytes != NULL && (unsigned char)bytes[0] == 0x92) {
      char *more = malloc(len + 1);
      memcpy(more, bytes, len);
      more[0] = (char)0x93;
      more[len] = (char)0xc0;
      malformed("upvalue count mismatch", more, len + 1, NULL, "function has 1 upvalues, message gives 2");
      more[0] = (char)0x91;
      malformed("upvalue count mismatch (fewer)", more, len, NULL, "function has 1 upvalues, message gives 0");
      malformed("function not allowed", bytes, len, "{allow_functions = false}", "not accepted");
      free(more);
    } else {
      ok_if(0, "upvalue count mismatch", "encode: %s", err ? err : "unexpected bytes");
    }
    free(bytes);
  }
  lua_settop(A, atop);
  free(err);
}

/* Every proper prefix of every encoding kept above must be refused as
 * malformed; long encodings are sampled (all of the first 4 KiB, then 256
 * cut points spread over the rest). */
static void test_prefixes(void)
{
  int btop = lua_gettop(B);
  /* Every prefix up to `dense` bytes (where the headers and the first
   * entries are), then `spread` cuts over the rest. Each decode reads the
   * whole prefix: the dense part costs dense^2 / 2 bytes read, the rest
   * about spread * len / 2, most of the test's time for the large values.
   * IC_TEST_QUICK (the valgrind run, ~50x slower) cuts less often. */
  const int quick = getenv("IC_TEST_QUICK") != NULL;
  const size_t dense = quick ? 512 : 4096, spread = quick ? 32 : 256;
  for (int k = 0; k < nkept; k++) {
    const kept *e = &keep_list[k];
    size_t step = e->len > dense ? (e->len - dense) / spread + 1 : 1;
    int bad = 0;
    char why[256] = "";
    for (size_t cut = 0; cut < e->len && !bad; cut += cut < dense ? 1 : step) {
      if (decode_push(B, e->bytes, cut, NULL)) {
        bad = 1;
        snprintf(why, sizeof why, "prefix of %zu bytes decoded", cut);
      } else if (strncmp(lua_tostring(B, -1), "malformed message: ", 19) != 0) {
        bad = 1;
        snprintf(why, sizeof why, "prefix of %zu bytes: %s", cut, lua_tostring(B, -1));
      }
      lua_settop(B, btop);
    }
    char name[160];
    snprintf(name, sizeof name, "every prefix of \"%s\"", e->name);
    ok_if(!bad, name, "%s", why);
  }
}

static uint64_t xorshift(uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* Random bytes and random mutations of the kept encodings: decoding either
 * succeeds or raises "malformed message: ...". Functions are off here,
 * because mutated bytecode is exactly what lua_load must never be given. */
/* The small encoder (the send path's) against the general one: random
 * scalars and small tables of them, of every key form, each encoded by
 * codec_encode_small and, inside {v, {}} (which only the general encoder
 * takes), by the general encoder; the bytes of v must be the same, and
 * they must decode (through the decoder's own fast paths) to an equal
 * value. Tables the small encoder declines must be the ones it should. */
static void test_small_encoder(void)
{
  const int quick = getenv("IC_TEST_QUICK") != NULL;
  lua_pushinteger(A, quick ? 2000 : 40000);
  lua_setglobal(A, "ROUNDS");
  const char *code =
    "local seed = 12345\n"
    "local function rnd(n) seed = (seed * 6364136223846793005 + 1442695040888963407) "
    "  return ((seed >> 33) % n) + 1 end\n"
    "local strs = {'', 'x', 'abc', string.rep('s', 31), string.rep('t', 32), string.rep('u', 100), "
    "  string.rep('v', 123), string.rep('w', 124), '\\xff', '\\u{e9}t\\u{e9}', 'a\\0b'}\n"
    "local nums = {0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, 2^31, 1 << 40, "
    "  math.maxinteger, math.mininteger, 0.5, -0.0, 1.0, 1/0, -1/0, 0/0, 3.25e300}\n"
    "local function scalar(no_nil)\n"
    "  local k = rnd(no_nil and 4 or 5)\n"
    "  if k == 1 then return nums[rnd(#nums)] elseif k == 2 then return strs[rnd(#strs)]\n"
    "  elseif k == 3 then return rnd(2) == 1 elseif k == 4 then return rnd(1000) - 500 end\n"
    "  return nil end\n"
    "local function value()\n"
    "  local k = rnd(7)\n"
    "  if k == 1 then return scalar() end\n"
    "  local t, n = {}, rnd(18) - 1\n"
    "  if k == 2 then for i = 1, n do t[i] = scalar(true) end\n"
    "  elseif k == 3 then for i = n, 1, -1 do t[i] = scalar(true) end\n"
    "  elseif k == 4 then for i = 1, n do t['k' .. rnd(30)] = scalar(true) end\n"
    "  elseif k == 5 then for i = 1, n do local key = scalar(true) if key == key then t[key] = scalar(true) end end\n"
    "  elseif k == 6 then for i = 1, n do t[i] = scalar(true) end t[rnd(20)] = nil\n"
    "  else for i = 1, n do t[i] = scalar(true) end t.x = rnd(3) == 1 and {} or 1 end\n"
    "  return t end\n"
    "local function same(a, b)\n"
    "  if a ~= a then return b ~= b end\n"
    "  if math.type(a) ~= math.type(b) then return false end\n"
    "  if type(a) == 'number' and a == 0 and b == 0 then return 1/a == 1/b end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  if type(b) ~= 'table' then return false end\n"
    "  for k, v in pairs(a) do if not same(v, b[k]) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true end\n"
    "local small = 0\n"
    "for r = 1, ROUNDS do\n"
    "  local v = value()\n"
    "  local s = encode_small(v)\n"
    "  local g = v == nil and '\\xc0' or encode({v, {}}):sub(2, -2)\n"
    "  if s then\n"
    "    small = small + 1\n"
    "    if s ~= g then return false, 'round ' .. r .. ': bytes differ' end\n"
    "    if #s > 128 then return false, 'round ' .. r .. ': too long' end\n"
    "    if encode(v) ~= s then return false, 'round ' .. r .. ': encode differs' end\n"
    "    if not same(v, decode(s)) then return false, 'round ' .. r .. ': decodes differently' end\n"
    "  elseif type(v) ~= 'table' and type(v) ~= 'string' then\n"
    "    return false, 'round ' .. r .. ': a scalar was declined'\n"
    "  elseif type(v) == 'table' then\n"
    "    local n, simple = 0, true\n"
    "    for k, x in pairs(v) do n = n + 1 if type(x) == 'table' then simple = false end end\n"
    "    if simple and n <= 15 and #g <= 100 and next(v) ~= nil then\n"
    "      local ints, others = 0, 0\n"
    "      for k in pairs(v) do if math.type(k) == 'integer' then ints = ints + 1 else others = others + 1 end end\n"
    "      if others > 0 and ints == 0 then return false, 'round ' .. r .. ': a small map was declined' end\n"
    "    end\n"
    "    if not same(v, decode(g)) then return false, 'round ' .. r .. ': general round trip' end\n"
    "  end\n"
    "end\n"
    "if small < ROUNDS // 4 then return false, 'only ' .. small .. ' small' end\n"
    "if encode_small(_G) or encode_small(setmetatable({}, {})) ~= '\\x80' then return false, 'globals or metatable' end\n"
    "if encode_small({ref(1, 2)}) or encode_small({{}}) or encode_small(print) then return false, 'declines' end\n"
    "return true, small\n";
  int top = lua_gettop(A);
  int st = luaL_loadstring(A, code);
  if (st == LUA_OK)
    st = lua_pcall(A, 0, 2, 0);
  if (st != LUA_OK) {
    ok_if(0, "small encoder", "%s", lua_tostring(A, -1));
  } else {
    ok_if(lua_toboolean(A, -2), "small encoder", "%s", lua_tostring(A, -1));
    printf("small encoder: %s of the random values small\n", lua_tostring(A, -1));
  }
  lua_settop(A, top);
  /* _G with only small scalars is still the globals marker. */
  const char *g = "local G, pairs, enc, saved = _G, pairs, encode, {} "
                  "for k, v in pairs(G) do saved[k] = v end "
                  "for k in pairs(saved) do G[k] = nil end G[1] = 1 "
                  "local s = enc(G) "
                  "G[1] = nil for k, v in pairs(saved) do G[k] = v end "
                  "return s == '\\xc7\\x00\\x05'";
  st = luaL_loadstring(A, g);
  if (st == LUA_OK)
    st = lua_pcall(A, 0, 1, 0);
  ok_if(st == LUA_OK && lua_toboolean(A, -1), "small globals table is the marker", "%s",
        st == LUA_OK ? "wrong bytes" : lua_tostring(A, -1));
  lua_settop(A, top);
}

static void test_random(void)
{
  /* IC_TEST_QUICK (set for the valgrind run, ~50x slower) trims the rounds. */
  const int quick = getenv("IC_TEST_QUICK") != NULL;
  const int rounds = quick ? 5000 : 100000, mutations = quick ? 100 : 2000;
  uint64_t seed = 0x9e3779b97f4a7c15u;
  int btop = lua_gettop(B);
  int bad = 0, ok = 0;
  char why[300] = "";
  char buf[96];
  for (int i = 0; i < rounds && !bad; i++) {
    size_t len = xorshift(&seed) % sizeof buf;
    for (size_t k = 0; k < len; k++)
      buf[k] = (char)xorshift(&seed);
    if (decode_push(B, buf, len, "{allow_functions = false}")) {
      ok++;
    } else if (strncmp(lua_tostring(B, -1), "malformed message: ", 19) != 0) {
      bad = 1;
      snprintf(why, sizeof why, "%s", lua_tostring(B, -1));
    }
    lua_settop(B, btop);
  }
  ok_if(!bad, "random bytes", "%s", why);
  printf("random bytes: %d of %d inputs decoded\n", ok, rounds);

  ok = 0;
  int tried = 0;
  for (int k = 0; k < nkept && !bad; k++) {
    const kept *e = &keep_list[k];
    if (e->len > 16384)
      continue;
    char *m = malloc(e->len);
    for (int i = 0; i < mutations && !bad; i++) {
      memcpy(m, e->bytes, e->len);
      int flips = 1 + (int)(xorshift(&seed) % 4);
      for (int f = 0; f < flips; f++)
        m[xorshift(&seed) % e->len] = (char)xorshift(&seed);
      tried++;
      if (decode_push(B, m, e->len, "{allow_functions = false}")) {
        ok++;
      } else if (strncmp(lua_tostring(B, -1), "malformed message: ", 19) != 0) {
        bad = 1;
        snprintf(why, sizeof why, "mutation of %s: %s", e->name, lua_tostring(B, -1));
      }
      lua_settop(B, btop);
    }
    free(m);
  }
  ok_if(!bad, "mutated encodings", "%s", why);
  printf("mutated encodings: %d of %d inputs decoded\n", ok, tried);
}

/* ------------------------------------------------------------------------ */
/* Allocation failure                                                        */

typedef struct alloc_ctl {
  long countdown; /* allocations left before every further one fails; < 0: never fail */
  long failures;
} alloc_ctl;

static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
  alloc_ctl *c = ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  /* Lua assumes shrinking never fails; only new blocks and growth fail. Once
   * the countdown is out, every allocation fails, so Lua's emergency GC and
   * retry cannot hide the failure. */
  if ((ptr == NULL || nsize > osize) && c->countdown >= 0) {
    if (c->countdown == 0) {
      c->failures++;
      return NULL;
    }
    c->countdown--;
  }
  return realloc(ptr, nsize);
}

/* Fails the 1st, 2nd, ... allocation of an encode and of a decode until
 * each succeeds: every step must raise cleanly, none may crash or leak. */
static void test_alloc_failure(void)
{
  alloc_ctl ctl = { -1, 0 };
  lua_State *L = lua_newstate(failing_alloc, &ctl);
  open_test_libs(L);
  const char *src =
    "local shared = {1, 2, 3} "
    "local t = {a = shared, b = shared, s = string.rep('x', 100), n = 1.5, "
    "f = function(x) return shared[x] end, p = print, ins = table.insert, g = _G, "
    "r = ref(1, 2), list = {}} "
    "for i = 1, 50 do t.list[i] = {i, tostring(i)} end "
    "t.big = {} for i = 1, 100 do t.big['k' .. i] = i end "
    "t.self = t return t";
  if (luaL_dostring(L, src) != LUA_OK) {
    ok_if(0, "allocation failure", "setup: %s", lua_tostring(L, -1));
    lua_close(L);
    return;
  }
  int value = lua_gettop(L);
  const char *bytes = NULL;
  size_t len = 0;
  long n, errors = 0;
  for (n = 0; n < 100000; n++) {
    lua_pushcfunction(L, l_encode);
    lua_pushvalue(L, value);
    ctl.countdown = n;
    int status = lua_pcall(L, 1, 1, 0);
    ctl.countdown = -1;
    if (status == LUA_OK) {
      bytes = lua_tolstring(L, -1, &len);
      break;
    }
    errors++;
    lua_pop(L, 1);
  }
  ok_if(bytes != NULL && errors > 0, "encode under allocation failure",
        "no success after %ld steps", n);
  int encoded = lua_gettop(L);
  errors = 0;
  int done = 0;
  for (n = 0; n < 100000 && bytes != NULL; n++) {
    lua_pushcfunction(L, l_decode);
    lua_pushvalue(L, encoded);
    ctl.countdown = n;
    int status = lua_pcall(L, 1, 1, 0);
    ctl.countdown = -1;
    lua_pop(L, 1);
    if (status == LUA_OK) {
      done = 1;
      break;
    }
    errors++;
  }
  ok_if(done && errors > 0, "decode under allocation failure", "no success after %ld steps", n);
  lua_close(L);
}

/* ------------------------------------------------------------------------ */
/* Timing                                                                    */

static double now_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

typedef struct bench {
  codec_buf *b;
  int rounds;
  double us;
} bench;

static int bench_encode(lua_State *L)
{
  bench *bn = lua_touserdata(L, 1);
  double t0 = now_us();
  for (int i = 0; i < bn->rounds; i++) {
    codec_buf_reset(bn->b);
    codec_encode(L, 2, "msg", NULL, NULL, bn->b);
  }
  bn->us = (now_us() - t0) / bn->rounds;
  return 0;
}

static int bench_decode(lua_State *L)
{
  bench *bn = lua_touserdata(L, 1);
  double t0 = now_us();
  for (int i = 0; i < bn->rounds; i++) {
    codec_decode(L, bn->b->data, bn->b->len, NULL, NULL);
    lua_pop(L, 1);
  }
  bn->us = (now_us() - t0) / bn->rounds;
  return 0;
}

static void measure(const char *what, const char *src, int rounds)
{
  if (getenv("IC_TEST_QUICK"))
    rounds = 2;
  codec_buf b = { NULL, 0, 0 };
  bench enc = { &b, rounds, 0 }, dec = { &b, rounds, 0 };
  int atop = lua_gettop(A), btop = lua_gettop(B);
  if (!eval(A, src)) {
    ok_if(0, what, "%s", lua_tostring(A, -1));
    goto done;
  }
  lua_pushcfunction(A, bench_encode);
  lua_pushlightuserdata(A, &enc);
  lua_pushvalue(A, -3);
  if (lua_pcall(A, 2, 0, 0) != LUA_OK) {
    ok_if(0, what, "encode: %s", lua_tostring(A, -1));
    goto done;
  }
  lua_pushcfunction(B, bench_decode);
  lua_pushlightuserdata(B, &dec);
  if (lua_pcall(B, 1, 0, 0) != LUA_OK) {
    ok_if(0, what, "decode: %s", lua_tostring(B, -1));
    goto done;
  }
  printf("perf: %s: encode %.1f us + decode %.1f us = %.1f us (%zu bytes, mean of %d)\n", what,
         enc.us, dec.us, enc.us + dec.us, b.len, rounds);
done:
  lua_settop(A, atop);
  lua_settop(B, btop);
  codec_buf_free(&b);
}

/* ------------------------------------------------------------------------ */

static void run_all(void)
{
  test_plain_values();
  test_exact_bytes();
  test_tables();
  test_key_cache();
  test_functions();
  test_refs();
}

int main(void)
{
  A = new_state();
  B = new_state();

  run_all();
  test_refusals();
  test_buffer_after_errors();
  test_decode_forms();
  test_malformed();
  test_prefixes();
  test_random();
  test_small_encoder();

  /* The same round trips with the garbage collector running all the time
   * in both states, then in generational mode. */
  keeping = 0;
  stressing = 1;
  const char *stress = "collectgarbage('incremental') collectgarbage('setpause', 0) "
                       "collectgarbage('setstepmul', 1000)";
  if (luaL_dostring(A, stress) != LUA_OK || luaL_dostring(B, stress) != LUA_OK)
    ok_if(0, "gc stress setup", "failed");
  run_all();
  lua_gc(A, LUA_GCGEN, 0, 0);
  lua_gc(B, LUA_GCGEN, 0, 0);
  run_all();
  const char *normal = "collectgarbage('incremental') collectgarbage('setpause', 200) "
                       "collectgarbage('setstepmul', 100)";
  if (luaL_dostring(A, normal) != LUA_OK || luaL_dostring(B, normal) != LUA_OK)
    ok_if(0, "gc normal setup", "failed");

  test_alloc_failure();

  measure("10,000-entry string->number table",
          "local t = {} for i = 1, 10000 do t['key' .. i] = i + 0.25 end return t", 300);
  measure("10,000-entry string->integer table",
          "local t = {} for i = 1, 10000 do t['key' .. i] = i end return t", 300);
  measure("100,000-entry integer array",
          "local t = {} for i = 1, 100000 do t[i] = i end return t", 30);

  ok_if(lua_gettop(A) == 0 && lua_gettop(B) == 0, "stacks empty at the end", "A %d, B %d",
        lua_gettop(A), lua_gettop(B));
  lua_close(A);
  lua_close(B);
  for (int k = 0; k < nkept; k++) {
    free(keep_list[k].name);
    free(keep_list[k].bytes);
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
