/*
 * codec — Lua values <-> MessagePack bytes. The wire format is described in
 * docs/wire-format.md; this file is its only implementation.
 *
 * Encoding walks the value recursively and appends to a codec_buf that the
 * caller owns. It runs inside a lua_pcall, so any error raised half-way (a
 * refusal, or a memory error from a Lua API call) first cuts the buffer back
 * to where it was and is then passed on; every other temporary is a Lua value
 * on the stack, so nothing leaks. Decoding reads a byte range it never
 * trusts: every length is checked against the end before anything is read
 * or allocated.
 *
 * msgpuck supplies the MessagePack primitives. Its mp_decode_* functions do
 * not check bounds, so each is called only after a bounds check (mp_check_*
 * or our own); its mp_check() is not used because it can overflow on hostile
 * lengths. msgpuck 1.0.3 has no ext API, so ext headers are written and read
 * here with its mp_store_* / mp_load_* helpers.
 *
 * There is no static mutable state. The per-state caches (the reverse map
 * from standard C functions to their names, and the decoder's key cache)
 * live in that state's registry.
 */
#define MP_SOURCE 1 /* compile msgpuck's implementation into this file only */
#include <msgpuck.h>

#include "codec.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Registry key of package.loaded (LUA_LOADED_TABLE in lauxlib.h, which only
 * the binding includes). */
#define CODEC_LOADED_KEY "_LOADED"

/* Registry key of the per-state map { [C function] = "lib.name" }. */
#define CODEC_CFUNC_NAMES_KEY "isolate_cluster.codec.cfunc_names"

/* Registry key of the decoder's key cache (see keycache below). */
#define CODEC_KEYS_KEY "isolate_cluster.codec.keys"

/* Paths in error messages are cut to about this many characters. */
#define CODEC_PATH_MAX 120

/* Lua stack slots one level of recursion may use (table/function, key,
 * value, scratch). Checked at each level so deep values cannot overflow. */
#define CODEC_STACK_PER_LEVEL 6

/* The largest ext header: 0xc9, u32 length, type byte. */
#define EXT_HEADER_MAX 6
/* The largest map header: 0xdf, u32 count. */
#define MAP_HEADER_MAX 5

void codec_limits_default(codec_limits *lim)
{
  lim->max_depth = 200;
  lim->max_bytes = (size_t)256 << 20;
  lim->allow_functions = 1;
  lim->key_cache = 1;
}

size_t codec_put_str(char *out, const char *s, uint32_t len)
{
  return (size_t)(mp_encode_str(out, s, len) - out);
}

void codec_buf_reset(codec_buf *b)
{
  b->len = 0;
}

void codec_buf_free(codec_buf *b)
{
  free(b->data);
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

static int clamp_depth(int depth)
{
  if (depth < 1)
    return 1;
  if (depth > CODEC_MAX_DEPTH_CAP)
    return CODEC_MAX_DEPTH_CAP;
  return depth;
}

/* The C functions of these libraries (package.loaded[lib][name]) cross the
 * wire by name. _G is the base library: only its standard names count, so a C
 * function a program registers as a global is not mistaken for a standard one. */
static const char *const standard_libs[] = {
  "_G", "string", "table", "math", "io", "os", "coroutine", "utf8", "debug", "package", NULL,
};

static const char *const base_functions[] = {
  "assert", "collectgarbage", "dofile", "error", "getmetatable", "ipairs", "load",
  "loadfile", "next", "pairs", "pcall", "print", "rawequal", "rawget", "rawlen", "rawset",
  "require", "select", "setmetatable", "tonumber", "tostring", "type", "warn", "xpcall", NULL,
};

/* The registry name of the metatable of io's file handles (LUA_FILEHANDLE,
 * which lives in lauxlib.h). */
#define FILE_HANDLE_MT "FILE*"

static int in_list(const char *const *list, const char *s, size_t len)
{
  for (; *list != NULL; list++) {
    if (strlen(*list) == len && memcmp(*list, s, len) == 0)
      return 1;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* UTF-8                                                                     */

/* Returns 1 when s[0..n) is well-formed UTF-8 as RFC 3629 defines it (no
 * overlong forms, no surrogates, nothing above U+10FFFF): exactly what strict
 * decoders such as Python's accept. ASCII runs are skipped 8 bytes at a time. */
static int is_utf8(const unsigned char *s, size_t n)
{
  size_t i = 0;
  for (;;) {
    while (n - i >= 8) {
      uint64_t w;
      memcpy(&w, s + i, 8);
      if (w & UINT64_C(0x8080808080808080))
        break;
      i += 8;
    }
    if (n - i >= 4) {
      uint32_t w;
      memcpy(&w, s + i, 4);
      if (!(w & UINT32_C(0x80808080)))
        i += 4;
    }
    while (i < n && s[i] < 0x80)
      i++;
    if (i >= n)
      return 1;
    unsigned c = s[i];
    if (c < 0xc2 || c > 0xf4)
      return 0; /* stray continuation byte, overlong 2-byte lead, or > U+10FFFF */
    size_t extra = c < 0xe0 ? 1 : c < 0xf0 ? 2 : 3;
    if (n - i <= extra)
      return 0;
    unsigned c1 = s[i + 1];
    unsigned lo = 0x80, hi = 0xbf;
    if (c == 0xe0)
      lo = 0xa0; /* overlong 3-byte */
    else if (c == 0xed)
      hi = 0x9f; /* surrogates */
    else if (c == 0xf0)
      lo = 0x90; /* overlong 4-byte */
    else if (c == 0xf4)
      hi = 0x8f; /* above U+10FFFF */
    if (c1 < lo || c1 > hi)
      return 0;
    for (size_t k = 2; k <= extra; k++) {
      if ((s[i + k] & 0xc0) != 0x80)
        return 0;
    }
    i += extra + 1;
  }
}

/* ------------------------------------------------------------------------ */
/* Ext headers (msgpuck 1.0.3 has none)                                      */

static size_t ext_header_size(uint32_t len)
{
  switch (len) {
  case 1: case 2: case 4: case 8: case 16:
    return 2; /* fixext: marker, type */
  default:
    return len <= UINT8_MAX ? 3 : len <= UINT16_MAX ? 4 : 6;
  }
}

/* Writes the smallest ext header for a payload of len bytes. */
static char *write_ext_header(char *w, int8_t type, uint32_t len)
{
  switch (len) {
  case 1: w = mp_store_u8(w, 0xd4); break;
  case 2: w = mp_store_u8(w, 0xd5); break;
  case 4: w = mp_store_u8(w, 0xd6); break;
  case 8: w = mp_store_u8(w, 0xd7); break;
  case 16: w = mp_store_u8(w, 0xd8); break;
  default:
    if (len <= UINT8_MAX) {
      w = mp_store_u8(w, 0xc7);
      w = mp_store_u8(w, (uint8_t)len);
    } else if (len <= UINT16_MAX) {
      w = mp_store_u8(w, 0xc8);
      w = mp_store_u16(w, (uint16_t)len);
    } else {
      w = mp_store_u8(w, 0xc9);
      w = mp_store_u32(w, len);
    }
    break;
  }
  return mp_store_u8(w, (uint8_t)type);
}

/* ======================================================================== */
/* Encoder                                                                   */

/* Where a value sits inside the message, for error messages only. Frames
 * live on the C stack, one per level of recursion, and are turned into a
 * path string only when an error is raised. */
typedef enum { AT_ROOT, AT_INDEX, AT_KEY, AT_MAPKEY, AT_UPVALUE } at_kind;

typedef struct enc_frame {
  const struct enc_frame *parent;
  at_kind kind;
  lua_Integer index; /* AT_INDEX: position; AT_UPVALUE: upvalue number */
  int key;           /* AT_KEY: stack index of the key */
  const char *name;  /* AT_UPVALUE: upvalue name (may be NULL or empty) */
} enc_frame;

typedef struct enc {
  lua_State *L;
  codec_buf *b;
  size_t start; /* b->len when codec_encode began; restored on error */
  size_t max_bytes;
  size_t limit;  /* b->len may not pass this: start + max_bytes */
  size_t room;   /* min(b->cap, limit): below it, writing needs no check */
  const codec_hooks *hooks;
  const char *root;
  int max_depth;
  int depth;
  int globals; /* stack index: the sender's globals table */
  int seen;    /* stack index: { [table or function] = index }, nil until needed */
  int cfuncs;  /* stack index: { [C function] = "lib.name" }, nil until needed */
  int names_rebuilt; /* the names map was rebuilt during this encode (see enc_cfunction) */
  lua_Integer nseen;
} enc;

/* A path being built for an error message, cut at CODEC_PATH_MAX chars. */
typedef struct pathbuf {
  char s[CODEC_PATH_MAX + 8];
  size_t n;
  int cut;
} pathbuf;

static void path_add(pathbuf *p, const char *s, size_t len)
{
  if (p->cut)
    return;
  if (len > CODEC_PATH_MAX - p->n) {
    len = CODEC_PATH_MAX - p->n;
    p->cut = 1;
  }
  memcpy(p->s + p->n, s, len);
  p->n += len;
  if (p->cut) {
    memcpy(p->s + p->n, "...", 3);
    p->n += 3;
  }
  p->s[p->n] = '\0';
}

static void path_adds(pathbuf *p, const char *s)
{
  path_add(p, s, strlen(s));
}

static int is_identifier(const char *s, size_t len)
{
  static const char *const keywords[] = {
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
    "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
    NULL,
  };
  if (len == 0 || (s[0] >= '0' && s[0] <= '9'))
    return 0;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
      return 0;
  }
  return !in_list(keywords, s, len);
}

/* Appends ["..."] with the key escaped the way Lua's %q would, cut at 40 bytes. */
static void path_add_quoted(pathbuf *p, const char *s, size_t len)
{
  char tmp[8];
  size_t shown = len > 40 ? 40 : len;
  path_adds(p, "[\"");
  for (size_t i = 0; i < shown; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      tmp[0] = '\\';
      tmp[1] = (char)c;
      path_add(p, tmp, 2);
    } else if (c >= 0x20 && c < 0x7f) {
      tmp[0] = (char)c;
      path_add(p, tmp, 1);
    } else {
      tmp[0] = '\\';
      tmp[1] = (char)('0' + c / 100);
      tmp[2] = (char)('0' + c / 10 % 10);
      tmp[3] = (char)('0' + c % 10);
      path_add(p, tmp, 4);
    }
  }
  if (shown < len)
    path_adds(p, "...");
  path_adds(p, "\"]");
}

/* Key syntax: .name, [3], ["a b"], [1.5], [true], and [?] for keys that
 * have no literal (tables, functions, userdata). */
static void path_add_key(lua_State *L, pathbuf *p, int key)
{
  char tmp[64];
  switch (lua_type(L, key)) {
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, key, &len);
    if (is_identifier(s, len)) {
      path_adds(p, ".");
      path_add(p, s, len);
    } else {
      path_add_quoted(p, s, len);
    }
    break;
  }
  case LUA_TNUMBER:
    if (lua_isinteger(L, key))
      snprintf(tmp, sizeof tmp, "[" LUA_INTEGER_FMT "]", (LUAI_UACINT)lua_tointeger(L, key));
    else
      snprintf(tmp, sizeof tmp, "[" LUA_NUMBER_FMT "]", (LUAI_UACNUMBER)lua_tonumber(L, key));
    path_adds(p, tmp);
    break;
  case LUA_TBOOLEAN:
    path_adds(p, lua_toboolean(L, key) ? "[true]" : "[false]");
    break;
  default:
    path_adds(p, "[?]");
    break;
  }
}

/* Upvalues read <upvalue name>, or <upvalue 2> when the name was stripped. */
static void path_add_frame(lua_State *L, pathbuf *p, const enc_frame *f)
{
  char tmp[64];
  if (f->parent != NULL)
    path_add_frame(L, p, f->parent);
  switch (f->kind) {
  case AT_ROOT:
    break;
  case AT_INDEX:
    snprintf(tmp, sizeof tmp, "[" LUA_INTEGER_FMT "]", (LUAI_UACINT)f->index);
    path_adds(p, tmp);
    break;
  case AT_KEY:
    path_add_key(L, p, f->key);
    break;
  case AT_MAPKEY:
    path_adds(p, "<key>");
    break;
  case AT_UPVALUE:
    if (f->name != NULL && f->name[0] != '\0' && f->name[0] != '(') {
      path_adds(p, "<upvalue ");
      path_adds(p, f->name);
      path_adds(p, ">");
    } else {
      snprintf(tmp, sizeof tmp, "<upvalue " LUA_INTEGER_FMT ">", (LUAI_UACINT)f->index);
      path_adds(p, tmp);
    }
    break;
  }
}

static void enc_path(enc *e, const enc_frame *at, pathbuf *p)
{
  p->n = 0;
  p->cut = 0;
  p->s[0] = '\0';
  path_adds(p, e->root);
  path_add_frame(e->L, p, at);
}

/* lua_error never returns (it longjmps), but lua.h does not say so; telling
 * the compiler lets it see that nothing runs after a refusal. */
#define CODEC_NORETURN __attribute__((noreturn))

static CODEC_NORETURN void raise_error(lua_State *L)
{
  lua_error(L);
  __builtin_unreachable();
}

/* Encode errors are raised inside the protected call that codec_encode
 * makes, which cuts the buffer back before passing the error on. */
static CODEC_NORETURN void enc_raise(enc *e)
{
  raise_error(e->L);
}

/* "cannot copy a <what> at <path><note>" */
static CODEC_NORETURN void enc_refuse_note(enc *e, const enc_frame *at, const char *what,
                                           const char *note)
{
  pathbuf p;
  enc_path(e, at, &p);
  lua_pushfstring(e->L, "cannot copy a %s at %s%s", what, p.s, note);
  enc_raise(e);
}

static CODEC_NORETURN void enc_refuse(enc *e, const enc_frame *at, const char *what)
{
  enc_refuse_note(e, at, what, "");
}

static CODEC_NORETURN void enc_too_deep(enc *e, const enc_frame *at)
{
  pathbuf p;
  enc_path(e, at, &p);
  lua_pushfstring(e->L, "cannot copy %s: nested deeper than %d levels (at %s)", e->root,
                  e->max_depth, p.s);
  enc_raise(e);
}

static CODEC_NORETURN void enc_too_big(enc *e)
{
  lua_pushfstring(e->L, "cannot copy %s: encoded message larger than %I bytes", e->root,
                  (lua_Integer)e->max_bytes);
  enc_raise(e);
}

static CODEC_NORETURN void enc_no_memory(enc *e)
{
  lua_pushfstring(e->L, "not enough memory to copy %s", e->root);
  enc_raise(e);
}

/* Grows the buffer geometrically so that n more bytes fit, within the
 * message size limit. Returns 0 when the limit is hit, -1 when out of memory:
 * the lua_dump writer cannot raise, so the raising is left to callers. */
static int enc_grow(enc *e, size_t n)
{
  codec_buf *b = e->b;
  if (n > e->limit - b->len)
    return 0;
  if (n > b->cap - b->len) {
    size_t need = b->len + n;
    size_t cap = b->cap < 256 ? 256 : b->cap;
    while (cap < need) {
      if (cap > SIZE_MAX / 2)
        return -1;
      cap *= 2;
    }
    char *data = realloc(b->data, cap);
    if (data == NULL)
      return -1;
    b->data = data;
    b->cap = cap;
  }
  e->room = b->cap < e->limit ? b->cap : e->limit;
  return 1;
}

/* Makes room for exactly n more bytes and returns where they go. The common
 * case is one comparison. */
static char *enc_reserve(enc *e, size_t n)
{
  if (n > e->room - e->b->len) {
    int r = enc_grow(e, n);
    if (r == 0)
      enc_too_big(e);
    else if (r < 0)
      enc_no_memory(e);
  }
  return e->b->data + e->b->len;
}

static void enc_commit(enc *e, const char *w)
{
  e->b->len = (size_t)(w - e->b->data);
}

static void put_byte(enc *e, uint8_t c)
{
  char *w = enc_reserve(e, 1);
  enc_commit(e, mp_store_u8(w, c));
}

static void put_integer(enc *e, lua_Integer v)
{
  /* Non-negative values as uint, negative as int, both in their smallest form. */
  if (v >= 0) {
    char *w = enc_reserve(e, mp_sizeof_uint((uint64_t)v));
    enc_commit(e, mp_encode_uint(w, (uint64_t)v));
  } else {
    char *w = enc_reserve(e, mp_sizeof_int(v));
    enc_commit(e, mp_encode_int(w, v));
  }
}

static void put_float(enc *e, lua_Number v)
{
  /* Always float64: bit-exact, and math.type stays "float" even for 1.0. */
  char *w = enc_reserve(e, mp_sizeof_double(v));
  enc_commit(e, mp_encode_double(w, v));
}

static void put_number(enc *e, int idx)
{
  if (lua_isinteger(e->L, idx))
    put_integer(e, lua_tointeger(e->L, idx));
  else
    put_float(e, lua_tonumber(e->L, idx));
}

static void put_string(enc *e, const char *s, size_t len, const enc_frame *at)
{
  if (len > UINT32_MAX)
    enc_refuse(e, at, "string longer than 4294967295 bytes");
  uint32_t n = (uint32_t)len;
  /* str only for valid UTF-8, so peers that decode str as text never choke. */
  if (is_utf8((const unsigned char *)s, len)) {
    char *w = enc_reserve(e, mp_sizeof_str(n));
    enc_commit(e, mp_encode_str(w, s, n));
  } else {
    char *w = enc_reserve(e, mp_sizeof_bin(n));
    enc_commit(e, mp_encode_bin(w, s, n));
  }
}

static void put_ext(enc *e, int8_t type, const char *payload, uint32_t len)
{
  char *w = enc_reserve(e, ext_header_size(len) + len);
  w = write_ext_header(w, type, len);
  if (len > 0) /* payload may be NULL then, and memcpy must not see NULL */
    memcpy(w, payload, len);
  enc_commit(e, w + len);
}

static void put_array_header(enc *e, uint32_t n)
{
  char *w = enc_reserve(e, mp_sizeof_array(n));
  enc_commit(e, mp_encode_array(w, n));
}

/* Before writing a header whose size depends on what follows, room for the
 * largest form is reserved; the body is then moved back to close the gap.
 * This costs a memmove of the body but saves counting entries twice. */
static size_t put_placeholder(enc *e, size_t n)
{
  size_t at = e->b->len;
  enc_reserve(e, n);
  e->b->len += n;
  return at;
}

static void close_gap(enc *e, size_t at, size_t reserved, size_t used)
{
  char *base = e->b->data + at;
  size_t body = e->b->len - at - reserved;
  if (used < reserved)
    memmove(base + used, base + reserved, body);
  e->b->len = at + used + body;
}

static void enc_value(enc *e, int idx, const enc_frame *at);

/* Returns the wire index of obj (a table or Lua function) if it was written
 * before, or registers it under the next index and returns -1. The seen table
 * is created only when the first table or function is met. */
static lua_Integer enc_seen(enc *e, int obj, const enc_frame *at)
{
  lua_State *L = e->L;
  if (lua_isnil(L, e->seen)) {
    /* The root (at stack index 2, see enc_run), when it is a table or a
     * function, is always the first one met, index 0: it is compared by
     * identity, and the seen table is made only for a second one. A
     * message of one flat table never makes it. */
    if (e->nseen == 0 && obj == 2) {
      e->nseen = 1;
      return -1;
    }
    if (e->nseen == 1 && lua_rawequal(L, obj, 2))
      return 0;
    lua_createtable(L, 0, 4);
    lua_replace(L, e->seen);
    if (e->nseen == 1) {
      lua_pushvalue(L, 2);
      lua_pushinteger(L, 0);
      lua_rawset(L, e->seen);
    }
  } else {
    lua_pushvalue(L, obj);
    if (lua_rawget(L, e->seen) == LUA_TNUMBER) {
      lua_Integer i = lua_tointeger(L, -1);
      lua_pop(L, 1);
      return i;
    }
    lua_pop(L, 1);
  }
  if (e->nseen > (lua_Integer)UINT32_MAX)
    enc_refuse(e, at, "value with more than 4294967296 tables and functions");
  lua_pushvalue(L, obj);
  lua_pushinteger(L, e->nseen++);
  lua_rawset(L, e->seen);
  return -1;
}

static void put_backref(enc *e, lua_Integer i)
{
  char payload[4];
  mp_store_u32(payload, (uint32_t)i);
  put_ext(e, CODEC_EXT_BACKREF, payload, 4);
}

static void enc_enter(enc *e, const enc_frame *at)
{
  if (++e->depth > e->max_depth)
    enc_too_deep(e, at);
  if (!lua_checkstack(e->L, CODEC_STACK_PER_LEVEL))
    enc_no_memory(e);
}

/* A table is an array when its keys are exactly 1..n (n = #t > 0): then
 * every key is an integer in [1, n] and there are n of them. One lua_next
 * pass that stops at the first other key. */
static int is_sequence(lua_State *L, int t, lua_Unsigned n)
{
  lua_Unsigned count = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1)) {
      lua_pop(L, 1);
      return 0;
    }
    lua_Integer k = lua_tointeger(L, -1);
    if (k < 1 || (lua_Unsigned)k > n || ++count > n) {
      lua_pop(L, 1);
      return 0;
    }
  }
  return count == n;
}

static void enc_table(enc *e, int t, const enc_frame *at)
{
  lua_State *L = e->L;
  enc_enter(e, at);
  lua_Unsigned n = lua_rawlen(L, t);
  if (n > 0 && n <= UINT32_MAX && is_sequence(L, t, n)) {
    put_array_header(e, (uint32_t)n);
    enc_frame f = { at, AT_INDEX, 0, 0, NULL };
    for (lua_Unsigned i = 1; i <= n; i++) {
      f.index = (lua_Integer)i;
      lua_rawgeti(L, t, (lua_Integer)i);
      enc_value(e, lua_gettop(L), &f);
      lua_pop(L, 1);
    }
  } else {
    size_t hdr = put_placeholder(e, MAP_HEADER_MAX);
    uint64_t count = 0;
    enc_frame kf = { at, AT_MAPKEY, 0, 0, NULL };
    enc_frame vf = { at, AT_KEY, 0, 0, NULL };
    lua_pushnil(L);
    int k = lua_gettop(L);
    vf.key = k;
    while (lua_next(L, t)) {
      /* String keys and number values, the common entries, inline. */
      if (lua_type(L, k) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, k, &len);
        put_string(e, s, len, &kf);
      } else {
        enc_value(e, k, &kf);
      }
      if (lua_type(L, k + 1) == LUA_TNUMBER)
        put_number(e, k + 1);
      else
        enc_value(e, k + 1, &vf);
      lua_settop(L, k);
      count++;
    }
    if (count > UINT32_MAX)
      enc_refuse(e, at, "table with more than 4294967295 entries");
    char tmp[MAP_HEADER_MAX];
    size_t used = (size_t)(mp_encode_map(tmp, (uint32_t)count) - tmp);
    memcpy(e->b->data + hdr, tmp, used);
    close_gap(e, hdr, MAP_HEADER_MAX, used);
  }
  e->depth--;
}

/* lua_dump writer: appends to the buffer. It must not raise (it runs inside
 * lua_dump), so it reports failure by status and the caller raises. */
typedef struct dump_state {
  enc *e;
  int status; /* 1 ok, 0 size limit, -1 no memory */
} dump_state;

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud)
{
  dump_state *ds = ud;
  (void)L;
  ds->status = enc_grow(ds->e, sz);
  if (ds->status <= 0)
    return 1;
  memcpy(ds->e->b->data + ds->e->b->len, p, sz);
  ds->e->b->len += sz;
  return 0;
}

/* A Lua function is the array [FUNC(bytecode), upvalue1, ..., upvalueN].
 * The bytecode keeps its debug information so tracebacks keep their names. */
static void enc_function(enc *e, int fn, const enc_frame *at)
{
  lua_State *L = e->L;
  lua_Debug ar;
  enc_enter(e, at);
  lua_pushvalue(L, fn);
  lua_getinfo(L, ">u", &ar); /* pops the copy */
  put_array_header(e, 1u + ar.nups);

  size_t hdr = put_placeholder(e, EXT_HEADER_MAX);
  size_t body = e->b->len;
  dump_state ds = { e, 1 };
  lua_pushvalue(L, fn);
  int r = lua_dump(L, dump_writer, &ds, 0);
  lua_pop(L, 1);
  if (ds.status == 0)
    enc_too_big(e);
  if (r != 0 || ds.status < 0)
    enc_no_memory(e);
  size_t len = e->b->len - body;
  if (len > UINT32_MAX)
    enc_too_big(e);
  char tmp[EXT_HEADER_MAX];
  size_t used = (size_t)(write_ext_header(tmp, CODEC_EXT_FUNC, (uint32_t)len) - tmp);
  memcpy(e->b->data + hdr, tmp, used);
  close_gap(e, hdr, EXT_HEADER_MAX, used);

  enc_frame f = { at, AT_UPVALUE, 0, 0, NULL };
  for (int i = 1; i <= ar.nups; i++) {
    f.index = i;
    f.name = lua_getupvalue(L, fn, i);
    /* SPEC §2: a copied function's _ENV is the receiver's globals, whatever
     * table it held here (busted, for one, runs spec files in an _ENV of
     * their own). */
    if (f.name && strcmp(f.name, "_ENV") == 0 && lua_type(L, -1) == LUA_TTABLE)
      put_ext(e, CODEC_EXT_GLOBALS, NULL, 0);
    else
      enc_value(e, lua_gettop(L), &f);
    lua_pop(L, 1);
  }
  e->depth--;
}

/* names[f] = "lib.name" for each C function f at a string key of the table
 * at t that has no name yet. Leaves the stack as it was. */
static void name_functions(lua_State *L, int names, int t, const char *lib)
{
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
      lua_pushvalue(L, -1);
      if (lua_rawget(L, names) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushfstring(L, "%s.%s", lib, lua_tostring(L, -2));
        lua_rawset(L, names); /* names[function] = "lib.name"; leaves the key */
        continue;
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
}

/* Builds { [C function] = "lib.name" } ("name" for the base library) from
 * package.loaded, once per state, and caches it in the registry. When a
 * function has several names the first library in standard_libs wins. */
static void push_cfunc_names(lua_State *L)
{
  if (lua_getfield(L, LUA_REGISTRYINDEX, CODEC_CFUNC_NAMES_KEY) == LUA_TTABLE)
    return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 256);
  int names = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, CODEC_LOADED_KEY);
  int loaded = lua_gettop(L);
  for (const char *const *lib = standard_libs; *lib != NULL; lib++) {
    if (lua_type(L, loaded) != LUA_TTABLE)
      break;
    if (lua_getfield(L, loaded, *lib) != LUA_TTABLE) {
      lua_settop(L, loaded);
      continue;
    }
    int t = lua_gettop(L);
    if (strcmp(*lib, "_G") == 0) {
      for (const char *const *fn = base_functions; *fn != NULL; fn++) {
        /* Raw: a state that opens libraries on first use (an isolate)
         * would open one through _G's __index here otherwise. */
        lua_pushstring(L, *fn);
        lua_rawget(L, t);
        if (lua_iscfunction(L, -1)) {
          lua_pushvalue(L, -1);
          if (lua_rawget(L, names) == LUA_TNIL) {
            lua_pop(L, 1);
            lua_pushstring(L, *fn);
            lua_rawset(L, names); /* names[function] = "name" */
          }
        }
        lua_settop(L, t);
      }
    } else {
      name_functions(L, names, t, *lib);
    }
    lua_settop(L, loaded);
  }
  /* The methods of io's file handles (io.stdout.write, f:lines) are
   * standard functions too, reachable only through the handles' metatable
   * (registry "FILE*", there once io is open): "FILE*.write". */
  if (lua_getfield(L, LUA_REGISTRYINDEX, FILE_HANDLE_MT) == LUA_TTABLE) {
    int mt = lua_gettop(L);
    if (lua_getfield(L, mt, "__index") == LUA_TTABLE)
      name_functions(L, names, mt + 1, FILE_HANDLE_MT);
    lua_settop(L, mt);
    name_functions(L, names, mt, FILE_HANDLE_MT); /* __gc, __close, __tostring */
  }
  lua_settop(L, names);
  lua_pushvalue(L, names);
  lua_setfield(L, LUA_REGISTRYINDEX, CODEC_CFUNC_NAMES_KEY);
}

/* Lua stack slots building the names map or finding a replacement's name
 * takes beyond those of its level (CODEC_STACK_PER_LEVEL). */
#define CODEC_NAMES_STACK 8

static void enc_cfunction(enc *e, int fn, const enc_frame *at)
{
  lua_State *L = e->L;
  if (!lua_checkstack(L, CODEC_NAMES_STACK))
    enc_no_memory(e);
  if (lua_isnil(L, e->cfuncs)) {
    push_cfunc_names(L);
    lua_replace(L, e->cfuncs);
  }
  lua_pushvalue(L, fn);
  if (lua_rawget(L, e->cfuncs) != LUA_TSTRING) {
    lua_pop(L, 1);
    /* The map may predate a standard library opened since (by require, by
     * a host, on first use): rebuilt once before the function is refused,
     * so no way of opening one has to remember to drop it. */
    if (e->names_rebuilt)
      enc_refuse_note(e, at, "C function", " (only standard library C functions can be copied)");
    e->names_rebuilt = 1;
    codec_forget_names(L);
    push_cfunc_names(L);
    lua_replace(L, e->cfuncs);
    enc_cfunction(e, fn, at);
    return;
  }
  size_t len;
  const char *name = lua_tolstring(L, -1, &len);
  put_ext(e, CODEC_EXT_CFUNC, name, (uint32_t)len);
  lua_pop(L, 1);
}

/* A Lua function of the runtime (its chunk's source is
 * hooks->replaces_source) that sits at a standard library name stands for
 * that standard function: it is written by that name, as the C function it
 * replaced would be. Returns 1 when written. Looked up here, when such a
 * function is met (rarely), so that states keep no map for it. */
static int enc_replacement(enc *e, int fn)
{
  lua_State *L = e->L;
  if (e->hooks == NULL || e->hooks->replaces_source == NULL)
    return 0;
  lua_Debug ar;
  lua_pushvalue(L, fn);
  lua_getinfo(L, ">S", &ar);
  if (strcmp(ar.source, e->hooks->replaces_source) != 0)
    return 0;
  if (!lua_checkstack(L, CODEC_NAMES_STACK))
    enc_no_memory(e);
  lua_getfield(L, LUA_REGISTRYINDEX, CODEC_LOADED_KEY);
  int loaded = lua_gettop(L);
  for (const char *const *lib = standard_libs; *lib != NULL && lua_istable(L, loaded); lib++) {
    if (lua_getfield(L, loaded, *lib) != LUA_TTABLE) {
      lua_settop(L, loaded);
      continue;
    }
    int base = strcmp(*lib, "_G") == 0;
    lua_pushnil(L);
    while (lua_next(L, loaded + 1)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_rawequal(L, -1, fn)) {
        size_t klen;
        const char *k = lua_tolstring(L, -2, &klen);
        if (!base || in_list(base_functions, k, klen)) {
          const char *name = base ? k : lua_pushfstring(L, "%s.%s", *lib, k);
          put_ext(e, CODEC_EXT_CFUNC, name, (uint32_t)strlen(name));
          lua_settop(L, loaded - 1);
          return 1;
        }
      }
      lua_pop(L, 1);
    }
    lua_settop(L, loaded);
  }
  lua_settop(L, loaded - 1);
  return 0;
}

static void enc_userdata(enc *e, int idx, const enc_frame *at)
{
  uint32_t node;
  uint64_t id;
  if (e->hooks == NULL || e->hooks->ref_to_wire == NULL ||
      !e->hooks->ref_to_wire(e->L, idx, e->hooks->ud, &node, &id))
    enc_refuse(e, at, "userdata");
  char payload[12];
  mp_store_u64(mp_store_u32(payload, node), id);
  put_ext(e, CODEC_EXT_REF, payload, sizeof payload);
}

/* Encodes the value at absolute index idx; at says where it sits. */
static void enc_value(enc *e, int idx, const enc_frame *at)
{
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    put_byte(e, 0xc0);
    break;
  case LUA_TBOOLEAN:
    put_byte(e, lua_toboolean(L, idx) ? 0xc3 : 0xc2);
    break;
  case LUA_TNUMBER:
    put_number(e, idx);
    break;
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    put_string(e, s, len, at);
    break;
  }
  case LUA_TTABLE: {
    if (lua_rawequal(L, idx, e->globals)) {
      put_ext(e, CODEC_EXT_GLOBALS, NULL, 0);
      break;
    }
    lua_Integer i = enc_seen(e, idx, at);
    if (i >= 0)
      put_backref(e, i);
    else
      enc_table(e, idx, at);
    break;
  }
  case LUA_TFUNCTION: {
    if (lua_iscfunction(L, idx)) {
      enc_cfunction(e, idx, at);
      break;
    }
    if (enc_replacement(e, idx))
      break;
    lua_Integer i = enc_seen(e, idx, at);
    if (i >= 0)
      put_backref(e, i);
    else
      enc_function(e, idx, at);
    break;
  }
  case LUA_TUSERDATA:
    enc_userdata(e, idx, at);
    break;
  case LUA_TLIGHTUSERDATA:
    enc_refuse(e, at, "light userdata");
    break;
  case LUA_TTHREAD:
    enc_refuse(e, at, "thread");
    break;
  default:
    enc_refuse(e, at, lua_typename(L, lua_type(L, idx)));
    break;
  }
}

/* The protected body of codec_encode: [1] = enc, [2] = the value. */
static int enc_run(lua_State *L)
{
  enc *e = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e->globals = 3;
  lua_pushnil(L);
  e->seen = 4;
  lua_pushnil(L);
  e->cfuncs = 5;
  enc_frame root_frame = { NULL, AT_ROOT, 0, 0, NULL };
  enc_value(e, 2, &root_frame);
  return 0;
}

/* Writes the nil, boolean, number or string at idx (of type t) at w, as
 * enc_value writes it, if it fits before end: returns the end of what it
 * wrote, or NULL having written nothing that counts. Raw reads only. */
static inline char *small_scalar(lua_State *L, int idx, int t, char *w, const char *end)
{
  size_t room = (size_t)(end - w);
  switch (t) {
  case LUA_TNUMBER:
    if (room < 9)
      return NULL;
    if (lua_isinteger(L, idx)) {
      lua_Integer v = lua_tointegerx(L, idx, NULL);
      return v >= 0 ? mp_encode_uint(w, (uint64_t)v) : mp_encode_int(w, v);
    }
    return mp_encode_double(w, (double)lua_tonumberx(L, idx, NULL));
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len); /* a string: no allocation */
    if (room < 5 || len > room - 5)
      return NULL;
    if (is_utf8((const unsigned char *)s, len))
      return mp_encode_str(w, s, (uint32_t)len);
    return mp_encode_bin(w, s, (uint32_t)len);
  }
  case LUA_TBOOLEAN:
    if (room < 1)
      return NULL;
    *w = lua_toboolean(L, idx) ? (char)0xc3 : (char)0xc2;
    return w + 1;
  case LUA_TNIL:
    if (room < 1)
      return NULL;
    *w = (char)0xc0;
    return w + 1;
  default:
    return NULL;
  }
}

/* The small table at idx: keys exactly 1..n met in that order (an array),
 * or a first key that is not an integer (a map: not a sequence, so
 * enc_table writes a map too, in the same lua_next order), at most 15
 * entries, every key and value a scalar small_scalar writes. The bytes are
 * enc_table's for it (a table of scalars holds no back-reference). Returns
 * the end or NULL. */
static char *small_table(lua_State *L, int idx, char *w, const char *end)
{
  char *hdr = w++;
  int mode = 0; /* 0 = not yet known, 1 = array, 2 = map */
  lua_Integer count = 0;
  if (hdr >= end)
    return NULL;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (++count > 15)
      goto fail;
    if (mode != 2 && lua_isinteger(L, -2)) {
      if (lua_tointegerx(L, -2, NULL) != count)
        goto fail;
      mode = 1;
    } else {
      if (mode == 1)
        goto fail;
      mode = 2;
      int kt = lua_type(L, -2);
      if (kt == LUA_TTABLE || (w = small_scalar(L, -2, kt, w, end)) == NULL)
        goto fail;
    }
    if ((w = small_scalar(L, -1, lua_type(L, -1), w, end)) == NULL)
      goto fail;
    lua_settop(L, -2);
  }
  *hdr = (char)((mode == 1 ? 0x90 : 0x80) | (int)count);
  /* The globals table is written as a marker, whatever it holds. */
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  const void *g = lua_topointer(L, -1);
  lua_settop(L, -2);
  return g == lua_topointer(L, idx) ? NULL : w;
fail:
  lua_settop(L, -3);
  return NULL;
}

size_t codec_encode_small(lua_State *L, int idx, char out[CODEC_SMALL_MAX])
{
  int t = lua_type(L, idx);
  char *w = t == LUA_TTABLE ? small_table(L, lua_absindex(L, idx), out, out + CODEC_SMALL_MAX)
                            : small_scalar(L, idx, t, out, out + CODEC_SMALL_MAX);
  return w ? (size_t)(w - out) : 0;
}

void codec_encode(lua_State *L, int idx, const char *root, const codec_hooks *hooks,
                  const codec_limits *lim, codec_buf *b)
{
  codec_limits def;
  if (lim == NULL) {
    codec_limits_default(&def);
    lim = &def;
  }
  enc e;
  e.L = L;
  e.b = b;
  e.start = b->len;
  e.max_bytes = lim->max_bytes;
  e.limit = b->len + lim->max_bytes < b->len ? SIZE_MAX : b->len + lim->max_bytes;
  e.room = b->cap < e.limit ? b->cap : e.limit;
  e.hooks = hooks;
  e.root = root != NULL ? root : "value";
  e.max_depth = clamp_depth(lim->max_depth);
  e.depth = 0;
  e.nseen = 0;
  e.names_rebuilt = 0;
  idx = lua_absindex(L, idx);
  /* A number, boolean, nil or string (most small messages) cannot fail
   * once its bytes fit: written directly, without the protected call. */
  int t = lua_type(L, idx);
  size_t room = e.room - b->len;
  if ((t == LUA_TNUMBER || t == LUA_TBOOLEAN || t == LUA_TNIL) && room >= 9) {
    enc_value(&e, idx, NULL);
    return;
  }
  if (t == LUA_TSTRING) {
    size_t len;
    const char *str = lua_tolstring(L, idx, &len); /* a string: no allocation */
    if (len <= UINT32_MAX && room >= 5 && room - 5 >= len) {
      put_string(&e, str, len, NULL);
      return;
    }
  }
  if (!lua_checkstack(L, 3)) {
    lua_pushfstring(L, "not enough memory to copy %s", e.root);
    raise_error(L);
  }
  if (t == LUA_TTABLE) {
    char tmp[CODEC_SMALL_MAX];
    size_t len = codec_encode_small(L, idx, tmp);
    if (len && enc_grow(&e, len) > 0) {
      memcpy(b->data + b->len, tmp, len);
      b->len += len;
      return;
    }
  }
  /* Any error inside, including a memory error from a Lua API call, comes
   * back here, so the buffer is cut back on every path. A light C function
   * and a light userdata cost no allocation. */
  lua_pushcfunction(L, enc_run);
  lua_pushlightuserdata(L, &e);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    b->len = e.start;
    raise_error(L);
  }
}

/* ======================================================================== */
/* Decoder                                                                   */

typedef struct dec {
  lua_State *L;
  const char *start, *p, *end;
  const codec_hooks *hooks;
  int allow_functions;
  int max_depth;
  int depth;
  int objs; /* stack index: { [index + 1] = table or function }, nil until needed */
  lua_Integer nobjs;
  int keycache_used; /* a map of this message has had the key cache (or it is off) */
  size_t presize_budget; /* table slots left to pre-size, see presize() */
} dec;

typedef struct ext_view {
  int8_t type;
  const char *data;
  uint32_t len;
} ext_view;

/* Raises "malformed message: <what> at byte <offset of the bad item>". */
static CODEC_NORETURN void dec_fail(dec *d, const char *at, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  const char *what = lua_pushvfstring(d->L, fmt, ap);
  va_end(ap);
  lua_pushfstring(d->L, "malformed message: %s at byte %I", what, (lua_Integer)(at - d->start));
  raise_error(d->L);
}

/* Checks that n bytes are left at p. */
static void dec_need(dec *d, const char *p, size_t n)
{
  if ((size_t)(d->end - p) < n)
    dec_fail(d, p, "truncated");
}

static void dec_value(dec *d);

static void dec_enter(dec *d, const char *at)
{
  if (++d->depth > d->max_depth)
    dec_fail(d, at, "nested deeper than %d levels", d->max_depth);
  if (!lua_checkstack(d->L, CODEC_STACK_PER_LEVEL))
    dec_fail(d, at, "out of Lua stack");
}

/* Registers a new table or function (at the top of the stack) under the next
 * back-reference index, before it is filled, so that back-references from
 * inside it (cycles) resolve. */
static void dec_register(dec *d)
{
  lua_State *L = d->L;
  if (lua_isnil(L, d->objs)) {
    /* The root, when it is a table or a function, is the first one
     * registered and stays just above the list's slot: back-reference 0
     * finds it there, and the list is made only for a second one. A
     * message of one flat table never makes it. */
    if (d->nobjs == 0 && lua_gettop(L) == d->objs + 1) {
      d->nobjs = 1;
      return;
    }
    lua_createtable(L, 8, 0);
    lua_replace(L, d->objs);
    if (d->nobjs == 1) {
      lua_pushvalue(L, d->objs + 1);
      lua_rawseti(L, d->objs, 1);
    }
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->objs, ++d->nobjs);
}

/* Reads the ext header at p (mp_typeof(*p) == MP_EXT) and skips the payload. */
static void dec_ext_header(dec *d, ext_view *x)
{
  const char *p = d->p;
  size_t hdr;
  uint32_t len;
  switch ((uint8_t)*p) {
  case 0xd4: len = 1; hdr = 1; break;
  case 0xd5: len = 2; hdr = 1; break;
  case 0xd6: len = 4; hdr = 1; break;
  case 0xd7: len = 8; hdr = 1; break;
  case 0xd8: len = 16; hdr = 1; break;
  case 0xc7: {
    dec_need(d, p, 2);
    const char *q = p + 1;
    len = mp_load_u8(&q);
    hdr = 2;
    break;
  }
  case 0xc8: {
    dec_need(d, p, 3);
    const char *q = p + 1;
    len = mp_load_u16(&q);
    hdr = 3;
    break;
  }
  case 0xc9: {
    dec_need(d, p, 5);
    const char *q = p + 1;
    len = mp_load_u32(&q);
    hdr = 5;
    break;
  }
  default: /* 0xc1, the one byte MessagePack never uses */
    dec_fail(d, p, "invalid byte 0xc1");
  }
  dec_need(d, p, hdr + 1 + (size_t)len);
  x->type = (int8_t)p[hdr];
  x->data = p + hdr + 1;
  x->len = len;
  d->p = x->data + len;
}

static void dec_ext_len(dec *d, const char *at, const ext_view *x, uint32_t want)
{
  if (x->len != want)
    dec_fail(d, at, "ext type %d needs a %d-byte payload, not %I", (int)x->type, (int)want,
             (lua_Integer)x->len);
}

static void dec_trusted(dec *d, const char *at)
{
  if (!d->allow_functions)
    dec_fail(d, at, "functions and globals are not accepted from this sender");
}

/* Resolves "FILE*.name", a method (or metamethod) of io's file handles, in
 * the receiving state; its metatable is made when io is opened, which in an
 * isolate happens when the global is first read. */
static void dec_file_method(dec *d, const char *at, const char *name, uint32_t len, const char *fname, size_t flen)
{
  lua_State *L = d->L;
  if (lua_getfield(L, LUA_REGISTRYINDEX, FILE_HANDLE_MT) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_getglobal(L, "io");
    lua_pop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, FILE_HANDLE_MT);
  }
  if (lua_type(L, -1) == LUA_TTABLE) {
    if (lua_getfield(L, -1, "__index") == LUA_TTABLE) {
      lua_pushlstring(L, fname, flen);
      if (lua_rawget(L, -2) == LUA_TFUNCTION) {
        lua_replace(L, -3);
        lua_pop(L, 1);
        return;
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_pushlstring(L, fname, flen);
    if (lua_rawget(L, -2) == LUA_TFUNCTION && fname[0] == '_') { /* a metamethod */
      lua_replace(L, -2);
      return;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_pushlstring(L, name, len > 64 ? 64 : len);
  dec_fail(d, at, "unknown function \"%s\"", lua_tostring(L, -1));
}

/* Resolves "lib.name" (or a base library "name") in the receiving state. */
static void dec_cfunc(dec *d, const char *at, const char *name, uint32_t len)
{
  lua_State *L = d->L;
  const char *dot = memchr(name, '.', len);
  const char *lib = "_G", *fname = name;
  size_t liblen = 2, flen = len;
  if (dot != NULL) {
    lib = name;
    liblen = (size_t)(dot - name);
    fname = dot + 1;
    flen = len - liblen - 1;
  }
  /* Only the names the encoder writes: "name" for the base library and
   * "lib.name" for the others ("_G.print" is not one of them). */
  if (liblen == strlen(FILE_HANDLE_MT) && memcmp(lib, FILE_HANDLE_MT, liblen) == 0) {
    dec_file_method(d, at, name, len, fname, flen);
    return;
  }
  int known = dot == NULL ? in_list(base_functions, fname, flen)
                          : in_list(standard_libs, lib, liblen) && !(liblen == 2 && lib[0] == '_');
  if (known) {
    lua_getfield(L, LUA_REGISTRYINDEX, CODEC_LOADED_KEY);
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_pushlstring(L, lib, liblen);
      if (lua_rawget(L, -2) != LUA_TTABLE) {
        /* Not opened yet: isolates open some standard libraries on first
         * use (src/lboot.c), and reading the global opens it. */
        lua_pop(L, 1);
        lua_pushglobaltable(L);
        lua_pushlstring(L, lib, liblen);
        lua_gettable(L, -2);
        lua_remove(L, -2);
      }
      if (lua_type(L, -1) == LUA_TTABLE) {
        lua_pushlstring(L, fname, flen);
        /* A base function another library installs (require, from
         * package) may not be there yet in a state that opens libraries
         * on first use: for _G a plain lookup lets its __index open it. */
        if (dot == NULL)
          lua_gettable(L, -2);
        else
          lua_rawget(L, -2);
        /* The receiver's own function of that name, even if it replaced
         * the C one (isolates wrap coroutine.resume, wrap and yield). */
        if (lua_isfunction(L, -1)) {
          lua_replace(L, -3);
          lua_pop(L, 1);
          return;
        }
      }
    }
  }
  lua_pushlstring(L, name, len > 64 ? 64 : len);
  dec_fail(d, at, "unknown function \"%s\"", lua_tostring(L, -1));
}

static void dec_ext(dec *d)
{
  lua_State *L = d->L;
  const char *at = d->p;
  ext_view x;
  dec_ext_header(d, &x);
  switch (x.type) {
  case CODEC_EXT_REF: {
    dec_ext_len(d, at, &x, 12);
    if (d->hooks == NULL || d->hooks->ref_push == NULL)
      dec_fail(d, at, "unexpected ref");
    const char *q = x.data;
    uint32_t node = mp_load_u32(&q);
    uint64_t id = mp_load_u64(&q);
    d->hooks->ref_push(L, node, id, d->hooks->ud);
    break;
  }
  case CODEC_EXT_BACKREF: {
    dec_ext_len(d, at, &x, 4);
    const char *q = x.data;
    uint32_t i = mp_load_u32(&q);
    if ((lua_Integer)i >= d->nobjs)
      dec_fail(d, at, "bad back-reference %I", (lua_Integer)i);
    if (lua_isnil(L, d->objs))
      lua_pushvalue(L, d->objs + 1); /* the root, see dec_register */
    else
      lua_rawgeti(L, d->objs, (lua_Integer)i + 1);
    break;
  }
  case CODEC_EXT_CFUNC:
    dec_trusted(d, at);
    dec_cfunc(d, at, x.data, x.len);
    break;
  case CODEC_EXT_GLOBALS:
    dec_ext_len(d, at, &x, 0);
    dec_trusted(d, at);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    break;
  case CODEC_EXT_FUNC:
    dec_fail(d, at, "function bytecode outside a function array");
    break;
  default:
    dec_fail(d, at, "unknown ext type %d", (int)x.type);
    break;
  }
}

/* lua_load reader handing over the whole bytecode at once. */
typedef struct load_state {
  const char *data;
  size_t len;
} load_state;

static const char *load_reader(lua_State *L, void *ud, size_t *size)
{
  load_state *ls = ud;
  (void)L;
  *size = ls->len;
  ls->len = 0;
  return *size > 0 ? ls->data : NULL;
}

/* Decodes [FUNC(bytecode), upvalue1, ...] of n elements; d->p is at FUNC. */
static void dec_function(dec *d, uint32_t n)
{
  lua_State *L = d->L;
  const char *at = d->p;
  ext_view x;
  dec_ext_header(d, &x);
  dec_trusted(d, at);
  load_state ls = { x.data, x.len };
  int status = lua_load(L, load_reader, &ls, "=(message)", "b");
  if (status == LUA_ERRMEM)
    lua_error(L);
  if (status != LUA_OK)
    dec_fail(d, at, "bad function bytecode (%s)", lua_tostring(L, -1));
  lua_Debug ar;
  lua_pushvalue(L, -1);
  lua_getinfo(L, ">u", &ar);
  if ((uint32_t)ar.nups != n - 1)
    dec_fail(d, at, "function has %d upvalues, message gives %I", (int)ar.nups,
             (lua_Integer)n - 1);
  dec_register(d);
  for (int i = 1; i <= ar.nups; i++) {
    dec_value(d);
    lua_setupvalue(L, -2, i); /* pops the value */
  }
}

/* How many slots to pre-size a table with for a claimed n items of at least
 * bytes_per_item bytes each. Never more than the remaining bytes could hold,
 * and never more in total than the message has bytes (d->presize_budget):
 * a valid message needs no more, and so a hostile one cannot make nested
 * headers each claim the rest of the message and multiply the memory. */
static int presize(dec *d, uint32_t n, size_t bytes_per_item)
{
  size_t most = (size_t)(d->end - d->p) / bytes_per_item;
  if (most > d->presize_budget)
    most = d->presize_budget;
  if (most > (size_t)INT_MAX)
    most = INT_MAX;
  size_t k = (size_t)n < most ? (size_t)n : most;
  d->presize_budget -= k;
  return (int)k;
}

static int at_func_ext(dec *d)
{
  const char *p = d->p;
  if (p >= d->end)
    return 0;
  size_t hdr;
  switch ((uint8_t)*p) {
  case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: hdr = 1; break;
  case 0xc7: hdr = 2; break;
  case 0xc8: hdr = 3; break;
  case 0xc9: hdr = 5; break;
  default: return 0;
  }
  return (size_t)(d->end - p) > hdr && p[hdr] == CODEC_EXT_FUNC;
}

static void dec_array(dec *d, const char *at, uint32_t n)
{
  lua_State *L = d->L;
  dec_enter(d, at);
  if (n > 0 && at_func_ext(d)) {
    dec_function(d, n);
  } else {
    lua_createtable(L, presize(d, n, 1), 0);
    dec_register(d);
    for (uint32_t i = 1; i <= n; i++) {
      dec_value(d);
      lua_rawseti(L, -2, (lua_Integer)i);
    }
  }
  d->depth--;
}

/*
 * The key cache. A receiver that gets the same large map again and again
 * (a dictionary, a snapshot of state) would otherwise build every key string
 * afresh for each message, and collect it again afterwards: for a map of
 * short keys that costs as much as the rest of the decode together. The cache
 * remembers, in order, the keys of the first large map of a message (at least
 * KEYCACHE_MIN entries), and keeps those strings alive from a table. When the
 * next such map has the same key at the same position, that string is pushed
 * as is, with neither allocation nor interning. A different key just takes
 * the position. Only keys of at most KEYCACHE_KEYLEN bytes (Lua's short,
 * interned strings) are kept, and at most KEYCACHE_MAX of them, so what the
 * cache holds stays below about 1 MiB; states that never see a large map
 * never create it. The userdata is anchored in the registry and on the stack
 * while a map uses it.
 */
#define KEYCACHE_MIN 64
#define KEYCACHE_MAX 16384
#define KEYCACHE_KEYLEN 40

typedef struct keyslot {
  const char *s; /* bytes of the string at anchor[i + 1], or NULL */
  size_t len;
} keyslot;

typedef struct keycache {
  uint32_t cap;
  int fresh; /* not used yet: its first map finds nothing, and proves nothing */
  keyslot slot[];
} keycache;

/* A map whose keys were mostly new (fewer than half found) drops the cache,
 * and the next KEYCACHE_REST large maps go without one: keys that never
 * repeat would only cost its upkeep, and the strings it kept alive would
 * crowd the string table. The registry then holds the count of maps left. */
#define KEYCACHE_REST 15

/* Pushes the cache userdata and its anchor table, and returns the cache,
 * with room for min(n, KEYCACHE_MAX) keys (n already bounded by what the
 * message's bytes can hold). Returns NULL, pushing nothing, while the cache
 * rests (see KEYCACHE_REST). */
static keycache *keycache_push(lua_State *L, uint32_t n)
{
  uint32_t want = n < KEYCACHE_MAX ? n : KEYCACHE_MAX;
  int type = lua_getfield(L, LUA_REGISTRYINDEX, CODEC_KEYS_KEY);
  if (type == LUA_TUSERDATA) {
    keycache *kc = lua_touserdata(L, -1);
    if (kc->cap >= want) {
      lua_getiuservalue(L, -1, 1);
      return kc;
    }
  } else if (type == LUA_TNUMBER) {
    lua_Integer rest = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (rest > 0) {
      lua_pushinteger(L, rest - 1);
      lua_setfield(L, LUA_REGISTRYINDEX, CODEC_KEYS_KEY);
      return NULL;
    }
    lua_pushnil(L); /* for the pop below */
  }
  lua_pop(L, 1);
  uint32_t cap = KEYCACHE_MIN;
  while (cap < want)
    cap *= 2;
  if (cap > KEYCACHE_MAX)
    cap = KEYCACHE_MAX;
  keycache *kc = lua_newuserdatauv(L, sizeof(keycache) + (size_t)cap * sizeof(keyslot), 1);
  kc->cap = cap;
  kc->fresh = 1;
  memset(kc->slot, 0, (size_t)cap * sizeof(keyslot));
  /* Pre-sized, so that storing into it never allocates (nor raises). */
  lua_createtable(L, (int)cap, 0);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, -3, 1);
  lua_pushvalue(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, CODEC_KEYS_KEY);
  return kc;
}

/* If d->p is a string of at most KEYCACHE_KEYLEN bytes, returns its length
 * and sets *bytes (bounds checked); otherwise returns -1. */
static int short_string_at(dec *d, const char **bytes)
{
  const char *p = d->p;
  if (p >= d->end)
    return -1;
  uint8_t c = (uint8_t)*p;
  size_t hdr, len;
  if (c >= 0xa0 && c <= 0xbf) {
    hdr = 1;
    len = c & 0x1f;
  } else if ((c == 0xd9 || c == 0xc4) && d->end - p >= 2) {
    hdr = 2;
    len = (uint8_t)p[1];
  } else {
    return -1;
  }
  if (len > KEYCACHE_KEYLEN || (size_t)(d->end - p) - hdr < len)
    return -1;
  *bytes = p + hdr;
  return (int)len;
}

/* dec_value, with the commonest map values (a float64, a small
 * non-negative integer) decoded inline. */
static inline void dec_map_value(dec *d)
{
  const char *p = d->p;
  if (p < d->end) {
    uint8_t c = (uint8_t)*p;
    if (c <= 0x7f) {
      d->p = p + 1;
      lua_pushinteger(d->L, (lua_Integer)c);
      return;
    }
    if (c == 0xcb && d->end - p >= 9) {
      d->p = p + 1;
      lua_pushnumber(d->L, (lua_Number)mp_load_double(&d->p));
      return;
    }
  }
  dec_value(d);
}

/* Decodes a map key. Lua tables cannot hold a nil or NaN key; only the nil
 * marker and the two float markers can produce one, so other keys skip the
 * checks. */
static void dec_key(dec *d)
{
  const char *at = d->p;
  uint8_t c = at < d->end ? (uint8_t)*at : 0;
  if (c == 0xc0)
    dec_fail(d, at, "nil map key");
  dec_value(d);
  if (c == 0xca || c == 0xcb) {
    lua_Number k = lua_tonumber(d->L, -1);
    if (k != k)
      dec_fail(d, at, "NaN map key");
  }
}

/* Decodes the n entries of a map into the table at the top of the stack. */
static void dec_entries(dec *d, uint32_t n)
{
  for (uint32_t i = 0; i < n; i++) {
    dec_key(d);
    dec_map_value(d);
    lua_rawset(d->L, -3);
  }
}

/* As dec_entries, for a map of at least KEYCACHE_MIN entries, with the key
 * cache. The table is at the top of the stack. */
static void dec_entries_cached(dec *d, uint32_t n)
{
  lua_State *L = d->L;
  /* An entry takes at least 2 bytes: a hostile count cannot size the cache. */
  size_t most = (size_t)(d->end - d->p) / 2;
  keycache *kc = keycache_push(L, (size_t)n < most ? n : (uint32_t)most);
  if (kc == NULL) {
    dec_entries(d, n);
    return;
  }
  int anchor = lua_gettop(L);
  int t = anchor - 2;
  uint32_t cached = n < kc->cap ? n : kc->cap, hits = 0;
  for (uint32_t i = 0; i < cached; i++) {
    const char *bytes;
    int len = short_string_at(d, &bytes);
    if (len < 0) {
      dec_key(d);
    } else {
      keyslot *ks = &kc->slot[i];
      if (ks->s != NULL && ks->len == (size_t)len && memcmp(ks->s, bytes, (size_t)len) == 0) {
        lua_rawgeti(L, anchor, (lua_Integer)i + 1);
        hits++;
      } else {
        lua_pushlstring(L, bytes, (size_t)len);
        lua_pushvalue(L, -1);
        lua_rawseti(L, anchor, (lua_Integer)i + 1); /* pre-sized: cannot raise */
        ks->s = lua_tostring(L, -1);
        ks->len = (size_t)len;
      }
      d->p = bytes + len;
    }
    dec_map_value(d);
    lua_rawset(L, t);
  }
  int fresh = kc->fresh;
  kc->fresh = 0;
  lua_pop(L, 2);
  if (!fresh && hits < cached / 2) {
    lua_pushinteger(L, KEYCACHE_REST);
    lua_setfield(L, LUA_REGISTRYINDEX, CODEC_KEYS_KEY);
  }
  dec_entries(d, n - cached);
}

static void dec_map(dec *d, const char *at, uint32_t n)
{
  lua_State *L = d->L;
  dec_enter(d, at);
  lua_createtable(L, 0, presize(d, n, 2));
  dec_register(d);
  if (n >= KEYCACHE_MIN && !d->keycache_used) {
    d->keycache_used = 1;
    dec_entries_cached(d, n);
  } else {
    dec_entries(d, n);
  }
  d->depth--;
}

static void dec_value(dec *d)
{
  lua_State *L = d->L;
  const char *p = d->p;
  if (p >= d->end)
    dec_fail(d, p, "truncated");
  uint8_t c = (uint8_t)*p;
  switch (mp_typeof((char)c)) {
  case MP_NIL:
    d->p++;
    lua_pushnil(L);
    break;
  case MP_BOOL:
    d->p++;
    lua_pushboolean(L, c == 0xc3);
    break;
  case MP_UINT: {
    if (mp_check_uint(p, d->end) > 0)
      dec_fail(d, p, "truncated");
    uint64_t v = mp_decode_uint(&d->p);
    /* Above math.maxinteger a uint64 becomes the nearest float (documented). */
    if (v > (uint64_t)LUA_MAXINTEGER)
      lua_pushnumber(L, (lua_Number)v);
    else
      lua_pushinteger(L, (lua_Integer)v);
    break;
  }
  case MP_INT:
    if (mp_check_int(p, d->end) > 0)
      dec_fail(d, p, "truncated");
    lua_pushinteger(L, (lua_Integer)mp_decode_int(&d->p));
    break;
  case MP_FLOAT:
    if (mp_check_float(p, d->end) > 0)
      dec_fail(d, p, "truncated");
    lua_pushnumber(L, (lua_Number)mp_decode_float(&d->p));
    break;
  case MP_DOUBLE:
    if (mp_check_double(p, d->end) > 0)
      dec_fail(d, p, "truncated");
    lua_pushnumber(L, (lua_Number)mp_decode_double(&d->p));
    break;
  case MP_STR:
  case MP_BIN: {
    uint32_t len;
    if (c >= 0xc4 && c <= 0xc6) {
      /* Not mp_check_binl: it asserts on a lone marker byte instead of
       * reporting it short (msgpuck 1.0.3). bin8/16/32 have 1/2/4 length bytes. */
      dec_need(d, p, 1 + ((size_t)1 << (c - 0xc4)));
      len = mp_decode_binl(&d->p);
    } else {
      if (mp_check_strl(p, d->end) > 0)
        dec_fail(d, p, "truncated");
      len = mp_decode_strl(&d->p);
    }
    dec_need(d, d->p, len);
    lua_pushlstring(L, d->p, len);
    d->p += len;
    break;
  }
  case MP_ARRAY: {
    if (mp_check_array(p, d->end) > 0)
      dec_fail(d, p, "truncated");
    uint32_t n = mp_decode_array(&d->p);
    dec_array(d, p, n);
    break;
  }
  case MP_MAP: {
    if (mp_check_map(p, d->end) > 0)
      dec_fail(d, p, "truncated");
    uint32_t n = mp_decode_map(&d->p);
    dec_map(d, p, n);
    break;
  }
  case MP_EXT:
    dec_ext(d);
    break;
  }
}

void codec_decode(lua_State *L, const char *data, size_t len, const codec_hooks *hooks,
                  const codec_limits *lim)
{
  codec_limits def;
  if (lim == NULL) {
    codec_limits_default(&def);
    lim = &def;
  }
  if (len > lim->max_bytes) {
    lua_pushfstring(L, "malformed message: larger than %I bytes", (lua_Integer)lim->max_bytes);
    lua_error(L);
  }
  if (!lua_checkstack(L, 2 + CODEC_STACK_PER_LEVEL)) {
    lua_pushliteral(L, "not enough memory to decode a message");
    lua_error(L);
  }
  /* The commonest small messages, a scalar or a short string alone or a
   * small array of them, are pushed without the decoder's set-up (an
   * allocation failure raises like any other). */
  if (codec_decode_small(L, data, len))
    return;
  dec d;
  d.L = L;
  d.start = data;
  d.p = data;
  d.end = data + len;
  d.hooks = hooks;
  d.allow_functions = lim->allow_functions;
  d.max_depth = clamp_depth(lim->max_depth);
  d.depth = 0;
  d.nobjs = 0;
  d.keycache_used = !lim->key_cache;
  d.presize_budget = len;
  lua_pushnil(L);
  d.objs = lua_gettop(L);
  dec_value(&d);
  if (d.p != d.end)
    dec_fail(&d, d.p, "%I trailing bytes", (lua_Integer)(d.end - d.p));
  lua_replace(L, d.objs); /* the value takes the back-reference list's slot */
}

void codec_forget_names(lua_State *L)
{
  lua_pushnil(L);
  lua_setfield(L, LUA_REGISTRYINDEX, CODEC_CFUNC_NAMES_KEY);
}
