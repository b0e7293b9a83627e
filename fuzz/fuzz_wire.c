/*
 * fuzz_wire — libFuzzer harness for the checks a frame from another node
 * meets before the net thread sees it: wirecheck_plain (src/net/wirecheck.c)
 * and chunk reassembly (src/net/reasm.c). The first byte picks which.
 *
 * wirecheck: a payload it calls WIRECHECK_OK must decode in a fresh state
 * with the hardened decoder's defaults and functions off (what the data
 * callback delivers without the net thread's check must never fail in the
 * receiving isolate).
 *
 * reasm: the rest of the input is a series of chunks (peer, kind, ids,
 * declared total, offset, length: every field a lie if the fuzzer likes)
 * fed to a table with small bounds. After every chunk: the bytes held equal
 * the sum of the partial buffers and stay within the bound for all; a part
 * holds no more than its total; and a whole message is exactly the bytes
 * sent for it, in order, of its declared total. Time is the input
 * position: some chunks also expire the parts idle for a while.
 */
#include "codec.h"
#include "net/reasm.h"
#include "net/wirecheck.h"

#include <lauxlib.h>
#include <lualib.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void wire_ref_push(lua_State *L, uint32_t node, uint64_t id, void *ud) {
  (void)node;
  (void)id;
  (void)ud;
  lua_newuserdatauv(L, 1, 0);
}

static int wire_decode(lua_State *L) {
  const char *p = lua_touserdata(L, 1);
  size_t len = (size_t)lua_tointeger(L, 2);
  codec_hooks hooks = {NULL, wire_ref_push, NULL, NULL};
  codec_limits lim;
  codec_limits_default(&lim);
  lim.allow_functions = 0;
  codec_decode(L, p, len, &hooks, &lim);
  return 0;
}

static void fuzz_wirecheck(const uint8_t *data, size_t size) {
  /* An empty payload is delivered as nil without a decode. */
  if (size == 0 || wirecheck_plain((const char *)data, size) != WIRECHECK_OK) return;
  lua_State *L = luaL_newstate();
  if (!L) return;
  lua_pushcfunction(L, wire_decode);
  lua_pushlightuserdata(L, (void *)data);
  lua_pushinteger(L, (lua_Integer)size);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_wire: wirecheck passed a payload the decoder refuses: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_close(L);
}

#define PEERS 4
#define PER_MESSAGE 64
#define ALL 160

/* What the harness has sent of each peer's message in progress. */
typedef struct sent {
  unsigned char bytes[PER_MESSAGE];
  size_t len;
} sent;

static void check_table(const reasm *r) {
  size_t sum = 0;
  for (size_t i = 0; i < r->n; i++) {
    const reasm_part *p = &r->v[i];
    if (p->have > p->cap || p->cap > p->key.total || p->key.total > r->per_message) abort();
    sum += p->cap;
  }
  if (sum != r->bytes || r->bytes > r->all) abort();
}

static void fuzz_reasm(const uint8_t *data, size_t size) {
  reasm r;
  sent s[PEERS];
  memset(s, 0, sizeof s);
  reasm_init(&r, PER_MESSAGE, ALL);
  size_t pos = 0;
  /* A chunk: peer, kind, corr, total, offset, length (one byte each), then
   * its bytes (as many as are left, up to length). */
  while (size - pos >= 6) {
    reasm_key k;
    memset(&k, 0, sizeof k);
    k.inc = data[pos] % PEERS + 1;
    k.kind = data[pos + 1] & 3;
    k.corr = data[pos + 2] & 3;
    k.total = data[pos + 3];
    size_t off = data[pos + 4], len = data[pos + 5];
    pos += 6;
    if (len > size - pos) len = size - pos;
    const char *bytes = (const char *)data + pos;
    pos += len;
    char *out = NULL;
    size_t out_len = 0;
    reasm_key dropped;
    const char *why = NULL;
    sent *mine = &s[k.inc - 1];
    int rc = reasm_add(&r, &k, off, bytes, len, &out, &out_len, &dropped, &why, pos);
    if (rc == REASM_MORE || rc == REASM_WHOLE) {
      if (off == 0) mine->len = 0;
      if (mine->len + len > PER_MESSAGE) abort();
      memcpy(mine->bytes + mine->len, bytes, len);
      mine->len += len;
    }
    if (rc == REASM_WHOLE) {
      if (out_len != k.total || out_len != mine->len || memcmp(out, mine->bytes, out_len) != 0) abort();
      free(out);
      mine->len = 0;
    } else if (rc == REASM_REFUSED) {
      if (!why) abort();
      if (dropped.inc == k.inc) mine->len = 0;
    } else if (rc != REASM_MORE && rc != REASM_IGNORED) {
      abort();
    }
    check_table(&r);
    if (off == 254) {
      reasm_key gone;
      while (reasm_expire(&r, pos, 64, &gone)) s[gone.inc - 1].len = 0;
      check_table(&r);
    }
    if (off == 255) {
      reasm_key gone;
      reasm_forget(&r, k.inc, &gone);
      mine->len = 0;
      check_table(&r);
    }
  }
  reasm_fini(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  if (data[0] & 1) fuzz_reasm(data + 1, size - 1);
  else fuzz_wirecheck(data + 1, size - 1);
  return 0;
}
