/*
 * fuzz_decode — libFuzzer harness for codec_decode (src/codec.c).
 *
 * Each input is decoded into a fresh lua_State in protected mode with
 * functions off (allow_functions = 0): that is how messages from peers that
 * are not trusted are decoded. Bytecode (CODEC_EXT_FUNC) is not fuzzed on
 * purpose: lua_load does not verify binary chunks, and a hostile chunk can
 * crash the process while loading, before anything runs (e.g. ~1.4 MB of
 * nested function prototypes overflows the C stack in lundump.c's recursive
 * loader). Functions are accepted only from trusted senders, see
 * docs/wire-format.md.
 *
 * Properties checked (a violation aborts, which libFuzzer reports):
 *   - decoding either succeeds or raises "malformed message: ...";
 *   - whatever decoded can be encoded again (or, rarely, is refused as
 *     nested too deep: a shared table may be reached first through a longer
 *     path when re-encoded), that encoding decodes, and encoding the result
 *     once more gives the same number of bytes.
 *
 * Build: see docs/wire-format.md, section Fuzzing. spec/c/test_codec_corpus.c
 * includes this file and replays fuzz/corpus and fuzz/regressions through
 * LLVMFuzzerTestOneInput, so a crash found here becomes a ctest.
 */
#include "codec.h"

#include <lauxlib.h>
#include <lualib.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_REF_MT "fuzz_decode.ref"

typedef struct fuzz_ref {
  uint32_t node;
  uint64_t id;
} fuzz_ref;

static void fuzz_ref_push(lua_State *L, uint32_t node, uint64_t id, void *ud)
{
  (void)ud;
  fuzz_ref *r = lua_newuserdatauv(L, sizeof *r, 0);
  r->node = node;
  r->id = id;
  luaL_setmetatable(L, FUZZ_REF_MT);
}

static int fuzz_ref_to_wire(lua_State *L, int idx, void *ud, uint32_t *node, uint64_t *id)
{
  (void)ud;
  fuzz_ref *r = luaL_testudata(L, idx, FUZZ_REF_MT);
  if (r == NULL)
    return 0;
  *node = r->node;
  *id = r->id;
  return 1;
}

typedef struct fuzz_run {
  const char *data;
  size_t size;
  codec_buf first, second; /* freed by the caller, so errors cannot leak them */
  int stage;               /* how far the run got, for the report */
} fuzz_run;

/* Runs in protected mode: [1] = fuzz_run. */
static int fuzz_body(lua_State *L)
{
  fuzz_run *run = lua_touserdata(L, 1);
  codec_hooks hooks = { fuzz_ref_to_wire, fuzz_ref_push, NULL, NULL };
  codec_limits lim;
  codec_limits_default(&lim);
  lim.allow_functions = 0;

  run->stage = 0;
  codec_decode(L, run->data, run->size, &hooks, &lim);

  /* Re-encoding may go deeper than the input did (see above), so the
   * round trip uses the largest depth the codec allows. */
  lim.max_depth = CODEC_MAX_DEPTH_CAP;
  run->stage = 1;
  codec_encode(L, -1, "msg", &hooks, &lim, &run->first);
  run->stage = 2;
  codec_decode(L, run->first.data, run->first.len, &hooks, &lim);
  run->stage = 3;
  codec_encode(L, -1, "msg", &hooks, &lim, &run->second);
  run->stage = 4;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  lua_State *L = luaL_newstate();
  if (L == NULL)
    return 0;
  luaL_newmetatable(L, FUZZ_REF_MT);
  lua_pop(L, 1);

  fuzz_run run;
  memset(&run, 0, sizeof run);
  run.data = (const char *)data;
  run.size = size;
  lua_pushcfunction(L, fuzz_body);
  lua_pushlightuserdata(L, &run);
  int status = lua_pcall(L, 1, 0, 0);
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL)
      msg = "(not a string)";
    int ok = (run.stage == 0 && strncmp(msg, "malformed message: ", 19) == 0) ||
             (run.stage == 1 && strstr(msg, "nested deeper than") != NULL);
    if (!ok) {
      fprintf(stderr, "fuzz_decode: stage %d failed: %s\n", run.stage, msg);
      abort();
    }
  } else if (run.first.len != run.second.len) {
    fprintf(stderr, "fuzz_decode: re-encoding changed size: %zu -> %zu bytes\n", run.first.len,
            run.second.len);
    abort();
  }
  codec_buf_free(&run.first);
  codec_buf_free(&run.second);
  lua_close(L);
  return 0;
}
