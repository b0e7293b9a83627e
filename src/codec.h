/*
 * codec — Lua values <-> MessagePack bytes (the wire format of every message,
 * property set and spawned entry function). See docs/wire-format.md.
 *
 * The codec knows nothing of isolates: refs are recognised and rebuilt through
 * the hooks the caller passes in. Only this file pair and the binding touch
 * MessagePack.
 *
 * Threads: every function works on the lua_State it is given and must be
 * called by the thread that runs that state. Nothing here is shared.
 */
#ifndef IC_CODEC_H
#define IC_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <lua.h>

/* MessagePack ext type numbers used on the wire (documented in docs/). */
enum {
  CODEC_EXT_REF = 1,      /* payload: u32 node (big endian) + u64 isolate id (big endian) */
  CODEC_EXT_FUNC = 2,     /* payload: Lua bytecode; appears as element 1 of an array [func, upvalue1, ...] */
  CODEC_EXT_BACKREF = 3,  /* payload: u32 index of an already-seen table or Lua function
                             (numbered in pre-order of first appearance, 0-based) */
  CODEC_EXT_CFUNC = 4,    /* payload: standard library name, e.g. "table.insert" */
  CODEC_EXT_GLOBALS = 5,  /* payload: empty; the receiving state's globals table (_ENV) */
};

/* A growable byte buffer. It must be owned by something that frees it even
 * when an encode raises (e.g. a userdata with __gc kept in the registry), so a
 * Lua error never leaks it. data is malloc'ed; codec_buf_free releases it. */
typedef struct codec_buf {
  char *data;
  size_t len;
  size_t cap;
} codec_buf;

void codec_buf_reset(codec_buf *b);   /* len = 0, keeps the memory */
void codec_buf_free(codec_buf *b);    /* frees data, leaves an empty buffer */

/* How refs cross the codec. Both hooks run on the thread that owns L. */
typedef struct codec_hooks {
  /* Encode side: if the value at index idx is a ref, store its wire identity
   * and return 1; return 0 for any other userdata (which is then refused). */
  int (*ref_to_wire)(lua_State *L, int idx, void *ud, uint32_t *node, uint64_t *id);
  /* Decode side: push a ref for (node, id) onto L. May raise. */
  void (*ref_push)(lua_State *L, uint32_t node, uint64_t id, void *ud);
  void *ud;
  /* Encode side, or NULL: the chunk name (source) of a runtime that puts
   * Lua functions in place of standard library ones (an isolate's
   * coroutine.wrap). A Lua function from that chunk found at a standard
   * name is written as that standard function, by name, and so resolves to
   * the receiver's function of that name; a replacement the user makes
   * stays a Lua function, copied as such. */
  const char *replaces_source;
} codec_hooks;

/* Hard cap on max_depth: encode and decode recurse on the C stack, which
 * may be small on worker threads. Larger settings are clamped to it. */
#define CODEC_MAX_DEPTH_CAP 1000

typedef struct codec_limits {
  int max_depth;            /* nested tables/functions; encode and decode; clamped to
                               [1, CODEC_MAX_DEPTH_CAP] */
  size_t max_bytes;         /* largest encoded message */
  int allow_functions;      /* decode: accept CODEC_EXT_FUNC, and also CODEC_EXT_CFUNC and
                               CODEC_EXT_GLOBALS, which hand the receiver's own functions and
                               globals to the message. Bytecode is trusted only from this
                               process or authenticated cluster nodes: lua_load does not
                               verify bytecode, and hostile bytecode can crash the process
                               even before it runs. Set 0 for any other peer. */
  int key_cache;            /* decode: remember the keys of large maps from one message to
                               the next (see "The key cache" in src/codec.c); it keeps up
                               to about 1 MiB of the state's memory while the state lives */
} codec_limits;

/* Writes the MessagePack string s[0..len) to out, which has room for at
 * least len + 5 bytes; returns the number of bytes written. For messages C
 * composes itself (an error reply, say). */
size_t codec_put_str(char *out, const char *s, uint32_t len);

/* Encodes a small value at idx into out, exactly as codec_encode would,
 * and returns the length; returns 0 for anything else (the caller then
 * takes codec_encode, which also reports what cannot be copied). Small: nil,
 * a boolean, a number, a string that fits, or a table of at most 15 such
 * entries (keys exactly 1..n in traversal order, or a first key that is
 * not an integer; nested tables, refs and functions are not small). Runs no Lua code, allocates
 * nothing, cannot raise; needs 2 free stack slots. For the hot send paths
 * ({i, "x"} is 3 to 13 bytes). */
#define CODEC_SMALL_MAX 128
size_t codec_encode_small(lua_State *L, int idx, char out[CODEC_SMALL_MAX]);

/* Defaults: depth 200, 256 MiB, functions allowed, key cache on. lim may be NULL in
 * codec_encode / codec_decode to mean these defaults. */
void codec_limits_default(codec_limits *lim);

/*
 * Appends the MessagePack encoding of the value at index idx of L to b.
 * Raises a Lua error (after leaving b consistent) when the value cannot be
 * copied; the message names the path inside the value, rooted at `root`
 * (e.g. root "msg" gives "cannot copy a userdata at msg.conn",
 * "cannot copy a thread at msg[3].co"). Pushes nothing; uses a few stack
 * slots temporarily. hooks may be NULL (then refs are refused like other userdata).
 * On error b->len is back to its value on entry (the memory is kept); the
 * error is also raised for "not enough memory" and for a message larger than
 * lim->max_bytes. Only `b` is allocated (malloc/realloc), never freed here.
 */
void codec_encode(lua_State *L, int idx, const char *root, const codec_hooks *hooks,
                  const codec_limits *lim, codec_buf *b);

/*
 * Decodes exactly one value from data[0..len) and pushes it onto L.
 * Never trusts its input: every length is checked against the end, depth and
 * size are limited, trailing bytes are an error. On malformed input raises a
 * Lua error "malformed message: <what> at byte <offset>". Must run in
 * protected mode. Pushes exactly one value on success; on error the stack
 * is unwound by the error as usual. data must stay valid during the call
 * (it is not kept afterwards). A uint64 above math.maxinteger decodes to
 * the nearest float; float32 decodes to a float; str and bin both decode to
 * strings.
 */
void codec_decode(lua_State *L, const char *data, size_t len, const codec_hooks *hooks,
                  const codec_limits *lim);

/* Pushes the scalar at *p (before end) if it is one codec_decode would
 * push as such (a fixint of either sign, a uint8/16/32, a float64, a
 * boolean, a fixstr) and returns 1, moving *p past it; returns 0, pushing
 * nothing, for anything else or a truncated one. */
static inline int codec_small_scalar(lua_State *L, const char **pp, const char *end)
{
  const unsigned char *p = (const unsigned char *)*pp;
  unsigned c = *p++;
  size_t left = (size_t)((const unsigned char *)end - p);
  if (c <= 0x7f || c >= 0xe0) {
    lua_pushinteger(L, (lua_Integer)(int8_t)c);
  } else if ((c & 0xe0) == 0xa0) {
    size_t n = c & 0x1f;
    if (n > left)
      return 0;
    lua_pushlstring(L, (const char *)p, n);
    p += n;
  } else if (c == 0xc2 || c == 0xc3) {
    lua_pushboolean(L, c == 0xc3);
  } else if (c == 0xcc && left >= 1) {
    lua_pushinteger(L, (lua_Integer)p[0]);
    p += 1;
  } else if (c == 0xcd && left >= 2) {
    lua_pushinteger(L, (lua_Integer)((uint32_t)p[0] << 8 | p[1]));
    p += 2;
  } else if (c == 0xce && left >= 4) {
    lua_pushinteger(L, (lua_Integer)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]));
    p += 4;
  } else if (c == 0xcb && left >= 8) {
    uint64_t u = 0;
    for (int i = 0; i < 8; i++)
      u = u << 8 | p[i];
    double d;
    memcpy(&d, &u, sizeof d);
    lua_pushnumber(L, (lua_Number)d);
    p += 8;
  } else {
    return 0;
  }
  *pp = (const char *)p;
  return 1;
}

/* The commonest small messages, pushed as codec_decode pushes them but
 * without its set-up: a scalar codec_small_scalar takes, or a fixarray of
 * such scalars and nothing else ({i, "x"}). Returns 1 having pushed the
 * value, or 0 with the stack as it was for anything else (codec_decode
 * then takes it, and reports what is wrong with it). Needs 2 free stack
 * slots; a memory error raises. Checks no limits: for messages of at most
 * CODEC_SMALL_MAX bytes within the caller's max_bytes. */
static inline int codec_decode_small(lua_State *L, const char *data, size_t len)
{
  if (len == 0)
    return 0;
  const char *p = data, *end = data + len;
  unsigned c = (unsigned char)data[0];
  if ((c & 0xf0) != 0x90) {
    if (!codec_small_scalar(L, &p, end))
      return 0;
    if (p == end)
      return 1;
    lua_pop(L, 1); /* trailing bytes: the general decoder says so */
    return 0;
  }
  int n = (int)(c & 0x0f);
  p++;
  if (n == 0)
    return 0;
  lua_createtable(L, n, 0);
  for (int i = 1; i <= n; i++) {
    if (p >= end || !codec_small_scalar(L, &p, end)) {
      lua_pop(L, 1);
      return 0;
    }
    lua_rawseti(L, -2, i);
  }
  if (p != end) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

/* Drops the state's cached names of standard library C functions. Optional:
 * an encode that meets a C function it has no name for rebuilds them once
 * before refusing it, so a library opened later is always seen. */
void codec_forget_names(lua_State *L);


#endif
