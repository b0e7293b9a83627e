/*
 * Embedding the cluster in a C program and driving a Lua isolate with
 * MessagePack requests: the README's `counter` module (examples/counter.lua),
 * spawned from its source with the property start = 10.
 *
 *   cc embed_counter.c $(pkg-config --cflags --libs isolate_cluster)
 *   ./a.out path/to/counter.lua
 */
/* msgpuck (Debian libmsgpuck-dev) writes and reads the MessagePack; it is
 * header-only: MP_SOURCE compiles its implementation into this one file. */
#define MP_SOURCE 1
#include <msgpuck.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <isolate_cluster.h>

static char *read_file(const char *name, size_t *len) {
  FILE *f = fopen(name, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  size_t cap = 0, n = 0, got;
  do {
    if (n == cap) {
      char *b = realloc(buf, cap = cap ? 2 * cap : 4096);
      if (!b) { free(buf); fclose(f); return NULL; }
      buf = b;
    }
    got = fread(buf + n, 1, cap - n, f);
    n += got;
  } while (got > 0);
  fclose(f);
  *len = n;
  return buf;
}

/* { op = op, n = n } */
static size_t op_msg(char *buf, const char *op, unsigned n) {
  char *w = mp_encode_map(buf, 2);
  w = mp_encode_str(w, "op", 2);
  w = mp_encode_str(w, op, (uint32_t)strlen(op));
  w = mp_encode_str(w, "n", 1);
  w = mp_encode_uint(w, n);
  return (size_t)(w - buf);
}

/* Requests op and prints the counter it answers; returns it, or -1. */
static long ask(ic_cluster *c, ic_ref counter, const char *op, unsigned n) {
  char msg[64], *reply = NULL;
  size_t len = 0;
  int rc = ic_request(c, counter, msg, op_msg(msg, op, n), 5.0, &reply, &len);
  if (rc == IC_EREMOTE || (rc == IC_EDOWN && reply)) {
    printf("%s: the counter refused: %s\n", op, reply);
    ic_free(reply);
    return -1;
  }
  if (rc != IC_OK) {
    printf("%s: %s\n", op, ic_strerror(rc));
    return -1;
  }
  const char *p = reply;
  long value = mp_typeof(*p) == MP_UINT ? (long)mp_decode_uint(&p) : -1;
  ic_free(reply);
  printf("%s %u -> %ld\n", op, n, value);
  return value;
}

int main(int argc, char **argv) {
  const char *file = argc > 1 ? argv[1] : "examples/counter.lua";
  size_t srclen;
  char *src = read_file(file, &srclen);
  if (!src) {
    fprintf(stderr, "cannot read %s\n", file);
    return 1;
  }
  ic_cluster *c;
  int rc = ic_cluster_create(NULL, &c);
  if (rc) {
    fprintf(stderr, "ic_cluster_create: %s\n", ic_strerror(rc));
    return 1;
  }
  char props[32];
  char *w = mp_encode_map(props, 1);
  w = mp_encode_str(w, "start", 5);
  w = mp_encode_uint(w, 10);
  ic_spawn_options so = {"/counter", 0, 0, 0, NULL};
  ic_ref counter;
  rc = ic_spawn_lua(c, src, srclen, "@counter.lua", props, (size_t)(w - props), &so, &counter);
  free(src);
  if (rc) {
    fprintf(stderr, "ic_spawn_lua: %s\n", ic_strerror(rc));
    ic_cluster_destroy(c);
    return 1;
  }
  int ok = ask(c, counter, "add", 5) == 15 && ask(c, counter, "add_later", 2) == 17 &&
           ask(c, counter, "get", 0) == 17 && ask(c, counter, "reset", 0) == -1;
  /* and found by its path, as any isolate would find it */
  ic_ref found;
  ok = ok && ic_lookup(c, "/counter", 1.0, &found) == IC_OK && found.id == counter.id;
  int in_time = ic_cluster_shutdown(c, 5.0);
  ic_cluster_destroy(c);
  printf("%s\n", ok && in_time == 1 ? "ok" : "FAILED");
  return ok && in_time == 1 ? 0 : 1;
}
