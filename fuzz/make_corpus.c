/*
 * make_corpus — writes the seed corpus for fuzz_decode into a directory
 * (normally fuzz/corpus): valid encodings of typical values made with the
 * codec itself, plus a few hand-made byte strings for the forms the encoder
 * never writes (non-canonical ints, float32, bin/str widths, ext widths).
 *
 * Not part of the build. From the repository root:
 *   gcc -std=gnu11 -Isrc -I/usr/include/lua5.4 fuzz/make_corpus.c src/codec.c \
 *       -llua5.4 -lm -o /tmp/make_corpus && /tmp/make_corpus fuzz/corpus
 */
#include "codec.h"

#include <lauxlib.h>
#include <lualib.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REF_MT "make_corpus.ref"

typedef struct seed_ref {
  uint32_t node;
  uint64_t id;
} seed_ref;

static int l_ref(lua_State *L)
{
  seed_ref *r = lua_newuserdatauv(L, sizeof *r, 0);
  r->node = (uint32_t)luaL_checkinteger(L, 1);
  r->id = (uint64_t)luaL_checkinteger(L, 2);
  luaL_setmetatable(L, REF_MT);
  return 1;
}

static int ref_to_wire(lua_State *L, int idx, void *ud, uint32_t *node, uint64_t *id)
{
  (void)ud;
  seed_ref *r = luaL_testudata(L, idx, REF_MT);
  if (r == NULL)
    return 0;
  *node = r->node;
  *id = r->id;
  return 1;
}

static const struct {
  const char *name;
  const char *src;
} values[] = {
  { "nil", "return nil" },
  { "true", "return true" },
  { "false", "return false" },
  { "zero", "return 0" },
  { "ints", "return {1, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296, -1, -32, -33, "
            "-128, -129, -32768, -32769, math.mininteger, math.maxinteger}" },
  { "floats", "return {1.0, -0.0, 0.5, 1e308, 5e-324, math.huge, -math.huge, 0/0}" },
  { "string", "return 'hello'" },
  { "string_utf8", "return 'h\\u{e9}llo \\u{2713} \\u{1d11e}'" },
  { "string_binary", "return '\\0\\1\\2\\255\\254'" },
  { "string_32", "return string.rep('a', 32)" },
  { "string_256", "return string.rep('b', 256)" },
  { "empty_table", "return {}" },
  { "array", "return {1, 2, 3, 'four', 5.5, true, false}" },
  { "map", "return {name = 'x', count = 3, ratio = 0.25, ok = true}" },
  { "nested", "return {a = {b = {c = {1, 2, {d = 'x'}}}}, e = {}}" },
  { "mixed", "return {1, 2, 3, x = 1, y = {4, 5}, [10] = 10}" },
  { "holes", "return {1, nil, 3}" },
  { "odd_keys", "return {[0] = 'zero', [-1] = 'neg', [1.5] = 'f', [true] = 'yes', [''] = 'e'}" },
  { "cycle", "local t = {name = 't'} t.self = t return t" },
  { "cycle_two", "local a, b = {}, {} a.b = b b.a = a return {a, b}" },
  { "shared", "local s = {1, 2} return {x = s, y = s, z = {s}}" },
  { "table_key", "local k = {1} return {[k] = k}" },
  { "refs", "return {r = ref(7, 123456789012), list = {ref(1, 2), ref(4294967295, -1)}}" },
  { "deep_50", "local t = {'leaf'} for i = 1, 50 do t = {t} end return t" },
  { "deep_maps_50", "local t = {leaf = true} for i = 1, 50 do t = {x = t} end return t" },
  { "array_300", "local t = {} for i = 1, 300 do t[i] = i end return t" },
  { "map_100", "local t = {} for i = 1, 100 do t['k' .. i] = i + 0.5 end return t" },
  { "maps_large_mixed", "local a, b = {}, {} for i = 1, 80 do a['a' .. i] = i b[i * 3] = 'v' .. i "
                        "b['s' .. i] = {i} b[('x'):rep(i)] = i end return {a = a, b = b, c = a}" },
  { "message", "return {type = 'request', id = 42, from = ref(1, 9), "
               "body = {path = '/workers/7', args = {1, 'two', {three = 3}}}}" },
  /* For the decode path of a real state (fuzz_decode_state.c): every node
   * here is one the decoding state has never met; the same ref again is a
   * hit in its ref cache, within one message and from one to the next. */
  { "refs_repeated", "local r = ref(5, 1) return {r, ref(5, 1), ref(5, 2), {r = ref(5, 1)}, ref(6, 1), "
                     "[ref(5, 1)] = ref(5, 2)}" },
  { "refs_many_nodes", "local t = {} for i = 1, 40 do t[i] = ref(1000 + i, i) end t.x = ref(1001, 1) "
                       "return t" },
  { "refs_as_keys", "local t = {} for i = 1, 20 do t[ref(9, i)] = ref(9, 21 - i) end return t" },
  /* Large maps go through the key cache: two of them with the same keys,
   * one whose keys change at some positions, values that are refs. */
  { "keycache_twice", "local a, b = {}, {} for i = 1, 70 do a['key' .. i] = i b['key' .. i] = ref(3, i) end "
                      "return {a, b}" },
  { "keycache_changed", "local a, b = {}, {} for i = 1, 80 do a['k' .. i] = i b[i % 3 == 0 and "
                        "('other' .. i) or ('k' .. i)] = -i end return {first = a, second = b}" },
  { "keycache_mixed_keys", "local t = {} for i = 1, 64 do t['s' .. i] = i end t[('long'):rep(20)] = 1 "
                           "t['\\0\\255bin'] = 2 t[''] = 3 t[7] = 4 t[2.5] = 5 t[true] = 6 t[ref(2, 2)] = 7 "
                           "return t" },
};

/* Forms the encoder never writes but other MessagePack writers do, and the
 * ext widths, so the fuzzer starts from every header shape. */
static const struct {
  const char *name;
  const char *bytes;
  size_t len;
} raw[] = {
#define RAW(name, s) { name, s, sizeof(s) - 1 }
  RAW("raw_int8_positive", "\xd0\x01"),
  RAW("raw_uint8", "\xcc\x05"),
  RAW("raw_uint64_max", "\xcf\xff\xff\xff\xff\xff\xff\xff\xff"),
  RAW("raw_float32", "\xca\x3f\xc0\x00\x00"),
  RAW("raw_bin8", "\xc4\x03" "abc"),
  RAW("raw_bin16", "\xc5\x00\x03" "abc"),
  RAW("raw_bin32", "\xc6\x00\x00\x00\x03" "abc"),
  RAW("raw_str16", "\xda\x00\x03" "abc"),
  RAW("raw_str32", "\xdb\x00\x00\x00\x03" "abc"),
  RAW("raw_array16", "\xdc\x00\x02\x01\x02"),
  RAW("raw_array32", "\xdd\x00\x00\x00\x01\xc3"),
  RAW("raw_map16", "\xde\x00\x01\xa1" "a\x01"),
  RAW("raw_map32", "\xdf\x00\x00\x00\x01\xa1" "a\x01"),
  RAW("raw_backref_ext8", "\x92\x80\xc7\x04\x03\x00\x00\x00\x01"),
  RAW("raw_backref_self", "\x91\xd6\x03\x00\x00\x00\x00"),
  RAW("raw_backref_key", "\x81\xd6\x03\x00\x00\x00\x00\x01"),
  RAW("raw_ref_ext16", "\xc8\x00\x0c\x01\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x01\x02"),
  RAW("raw_ext32_unknown", "\xc9\x00\x00\x00\x01\x09\x00"),
  RAW("raw_fixext_all", "\x95\xd4\x09\x00\xd5\x09\x00\x00\xd6\x03\x00\x00\x00\x00"
                        "\xd7\x09\x00\x00\x00\x00\x00\x00\x00\x00"
                        "\xd8\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
  RAW("raw_globals", "\xc7\x00\x05"),
  RAW("raw_cfunc", "\xc7\x0c\x04table.insert"),
  RAW("raw_func_text", "\x91\xc7\x08\x02return 1"),
  RAW("raw_nil_key", "\x81\xc0\x01"),
  RAW("raw_nan_key", "\x81\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\x01"),
  /* { x = <ref of node 12345>, y = 5 }: a ref of a node the state has not
   * met, followed by more of the value. */
  RAW("raw_ref_unknown_node_in_map", "\x82\xa1x\xc7\x0c\x01\x00\x00\x30\x39\x00\x00\x00\x00\x00\x00\x00\x07"
                                     "\xa1y\x05"),
  /* A map16 claiming 100 entries with 2: the key cache is in use when the
   * message turns out short. */
  RAW("raw_keycache_short_map", "\xde\x00\x64\xa1" "a\x01\xa1" "b\xc7\x0c\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01"),
#undef RAW
};

static int write_file(const char *dir, const char *name, const char *bytes, size_t len)
{
  char path[1024];
  snprintf(path, sizeof path, "%s/%s.msgpack", dir, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(bytes, 1, len, f) != len || fclose(f) != 0) {
    perror(path);
    return 1;
  }
  return 0;
}

typedef struct job {
  const char *src;
  codec_buf *b;
} job;

static int encode_job(lua_State *L)
{
  job *j = lua_touserdata(L, 1);
  if (luaL_dostring(L, j->src) != LUA_OK)
    return lua_error(L);
  codec_hooks hooks = { ref_to_wire, NULL, NULL, NULL };
  codec_encode(L, -1, "seed", &hooks, NULL, j->b);
  return 0;
}

int main(int argc, char **argv)
{
  const char *dir = argc > 1 ? argv[1] : "fuzz/corpus";
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_newmetatable(L, REF_MT);
  lua_pop(L, 1);
  lua_register(L, "ref", l_ref);
  codec_buf b = { NULL, 0, 0 };
  int errors = 0, n = 0;
  for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
    job j = { values[i].src, &b };
    codec_buf_reset(&b);
    lua_pushcfunction(L, encode_job);
    lua_pushlightuserdata(L, &j);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      fprintf(stderr, "%s: %s\n", values[i].name, lua_tostring(L, -1));
      lua_pop(L, 1);
      errors++;
      continue;
    }
    errors += write_file(dir, values[i].name, b.data, b.len);
    n++;
  }
  for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
    errors += write_file(dir, raw[i].name, raw[i].bytes, raw[i].len);
    n++;
  }
  codec_buf_free(&b);
  lua_close(L);
  printf("%d seeds written to %s, %d errors\n", n, dir, errors);
  return errors == 0 ? 0 : 1;
}
