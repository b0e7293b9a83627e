/*
 * fuzz_decode_state — libFuzzer harness for the decode path messages really
 * take (fuzz_decode.c covers the codec alone, with a ref hook of its own).
 *
 * Each input is decoded into a fresh lua_State set up by lstate_open
 * (src/lstate.c), with that state's hooks and limits, as ic.decode and every
 * isolate decode: refs go through the state's ref cache (also refs of nodes
 * the state has never met, which make no isolate and must still give a ref),
 * and large maps through the decoder's key cache. Functions are off, as for
 * untrusted peers (see fuzz_decode.c for why bytecode is not fuzzed).
 *
 * The same bytes are decoded several times in the one state, so that the
 * caches are cold, then warm (the refs still alive, the keys remembered),
 * then emptied by a full collection with the ref cache's weak entries gone.
 *
 * Properties checked (a violation aborts, which libFuzzer reports):
 *   - each decode pushes exactly one value (the stack is balanced on every
 *     cache hit and miss) or raises "malformed message: ...", and a decode
 *     that succeeded once succeeds every time: the caches never change the
 *     outcome;
 *   - the value re-encodes through the state's own encode path (refs by
 *     their wire identity), or is refused only as nested too deep (see
 *     fuzz_decode.c); every decoded copy re-encodes to the same number of
 *     bytes, and that encoding decodes.
 *
 * spec/c/test_codec_corpus.c includes this file too and replays fuzz/corpus
 * and fuzz/regressions through it.
 */
#include "lstate.h"

#include <lauxlib.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The corpus replay includes both harnesses in one program: it renames this
 * entry point. */
#ifndef FUZZ_STATE_ENTRY
#define FUZZ_STATE_ENTRY LLVMFuzzerTestOneInput
#endif

int FUZZ_STATE_ENTRY(const uint8_t *data, size_t size);

typedef struct fs_run {
  const char *data;
  size_t size;
  int stage;         /* how far the run got, for the report */
  size_t len;        /* bytes of the first re-encoding */
} fs_run;

static void fs_fail(const char *what, const fs_run *run)
{
  fprintf(stderr, "fuzz_decode_state: stage %d: %s\n", run->stage, what);
  abort();
}

/* Decodes data[0..len) as ic.decode does and checks that exactly one value
 * was pushed. */
static void fs_decode(lua_State *L, const fs_run *run, const char *data, size_t len)
{
  lstate_ctx *ctx = lstate_ctx_of(L);
  codec_limits lim = ctx->lim;
  lim.allow_functions = 0;
  codec_hooks hooks = lstate_hooks(NULL);
  int top = lua_gettop(L);
  codec_decode(L, data, len, &hooks, &lim);
  if (lua_gettop(L) != top + 1)
    fs_fail("the decode left the stack unbalanced", run);
}

/* Replaces the value on top with its encoding by the state's encode path
 * and returns the encoding's length. */
static size_t fs_encode(lua_State *L, const fs_run *run)
{
  int top = lua_gettop(L);
  lstate_encode_push(L, -1, "msg");
  if (lua_gettop(L) != top + 1)
    fs_fail("the encode left the stack unbalanced", run);
  lua_replace(L, -2);
  return lua_rawlen(L, -1);
}

/* Runs in protected mode: [1] = fs_run. */
static int fs_body(lua_State *L)
{
  fs_run *run = lua_touserdata(L, 1);
  lstate_ctx *ctx = lstate_open(L);

  run->stage = 0; /* cold caches */
  fs_decode(L, run, run->data, run->size);
  run->stage = 1; /* warm: the first value (its refs) still alive */
  fs_decode(L, run, run->data, run->size);
  run->stage = 2; /* after a full collection: weak cache entries gone */
  lua_settop(L, 1);
  lua_gc(L, LUA_GCCOLLECT);
  fs_decode(L, run, run->data, run->size);
  int value = lua_gettop(L);
  fs_decode(L, run, run->data, run->size);
  int again = lua_gettop(L);

  /* Re-encoding may go deeper than the input did (see fuzz_decode.c). */
  ctx->lim.max_depth = CODEC_MAX_DEPTH_CAP;
  run->stage = 3;
  lua_pushvalue(L, value);
  run->len = fs_encode(L, run);
  lua_pushvalue(L, again);
  if (fs_encode(L, run) != run->len)
    fs_fail("two decodes of the same bytes re-encode to different sizes", run);
  run->stage = 4;
  size_t len;
  const char *bytes = lua_tolstring(L, -1, &len);
  fs_decode(L, run, bytes, len);
  run->stage = 5;
  if (fs_encode(L, run) != run->len)
    fs_fail("re-encoding changed size", run);
  run->stage = 6;
  return 0;
}

int FUZZ_STATE_ENTRY(const uint8_t *data, size_t size)
{
  lua_State *L = luaL_newstate();
  if (L == NULL)
    return 0;
  fs_run run;
  memset(&run, 0, sizeof run);
  run.data = (const char *)data;
  run.size = size;
  lua_pushcfunction(L, fs_body);
  lua_pushlightuserdata(L, &run);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL)
      msg = "(not a string)";
    int ok = (run.stage == 0 && strncmp(msg, "malformed message: ", 19) == 0) ||
             (run.stage == 3 && strstr(msg, "nested deeper than") != NULL);
    if (!ok) {
      fprintf(stderr, "fuzz_decode_state: stage %d failed: %s\n", run.stage, msg);
      abort();
    }
  }
  lua_close(L);
  return 0;
}
