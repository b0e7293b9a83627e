/*
 * api — the public C interface (include/isolate_cluster.h) over the cluster
 * core. No Lua here: entries are handed to the new isolate as MessagePack
 * and compiled there.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <msgpuck.h>

#include "cluster.h"
#include "isolate_cluster.h"

static int to_ic_error(int e) {
  switch (e) {
  case 0: return IC_OK;
  case EINVAL: return IC_EINVAL;
  case ENOMEM: return IC_ENOMEM;
  case EEXIST: return IC_EEXIST;
  case ECANCELED: return IC_ESHUTDOWN;
  case ETIMEDOUT: return IC_ETIMEDOUT;
  default: return IC_ESYSTEM;
  }
}

const char *ic_strerror(int err) {
  switch (err) {
  case IC_OK: return "ok";
  case IC_EINVAL: return "invalid argument";
  case IC_ENOMEM: return "out of memory";
  case IC_EDOWN: return "isolate down";
  case IC_EFULL: return "mailbox full";
  case IC_EEXIST: return "path already in use";
  case IC_ETIMEDOUT: return "timeout";
  case IC_ESHUTDOWN: return "cluster shut down";
  case IC_ESYSTEM: return "system error";
  default: return "unknown error";
  }
}

int ic_cluster_create(const ic_cluster_options *opts, ic_cluster **out) {
  if (!out) return IC_EINVAL;
  cluster_opts o = {0, 0, 0};
  if (opts) {
    if (opts->workers < 0 || opts->time_slice < 0) return IC_EINVAL;
    o.workers = opts->workers;
    o.mailbox = opts->mailbox;
    o.slice_seconds = opts->time_slice;
  }
  const char *err = NULL;
  *out = cluster_new(&o, &err);
  return *out ? IC_OK : IC_ENOMEM;
}

int ic_cluster_shutdown(ic_cluster *c, double timeout_s) {
  if (!c || !(timeout_s >= 0)) return IC_EINVAL; /* also NaN */
  int in_time = cluster_shutdown(c, timeout_s);
  cluster_join_stopper(c);
  return in_time;
}

void ic_cluster_destroy(ic_cluster *c) {
  if (!c) return;
  cluster_shutdown(c, 5.0);
  if (!cluster_join_stopper(c)) cluster_detach_stopper(c); /* still stopping: it holds the cluster */
  cluster_close(c);
  cluster_release(c);
}

ic_ref ic_cluster_main(ic_cluster *c) {
  ic_ref r = {c->node_id, c->main->id};
  return r;
}

/* Big-endian reads of n bytes at p (the caller checked they are there). */
static uint64_t load_be(const char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = (v << 8) | (unsigned char)p[i];
  return v;
}

/* Checks one value at p, every length against end, without msgpuck's
 * checkers (which assert on some truncated inputs); returns the byte after
 * it, or NULL. Refuses 0xc1 (never used) and nesting deeper than the
 * decoder takes. */
static const char *check_value(const char *p, const char *end, int depth) {
  if (depth > 512 || p >= end) return NULL;
  unsigned char c = (unsigned char)*p++;
  size_t left = (size_t)(end - p);
  uint64_t n = 0, skip = 0, children = 0;
  if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) return p;
  if ((c & 0xe0) == 0xa0) skip = c & 0x1f;                 /* fixstr */
  else if ((c & 0xf0) == 0x90) children = c & 0x0f;        /* fixarray */
  else if ((c & 0xf0) == 0x80) children = 2u * (c & 0x0f); /* fixmap */
  else {
    static const signed char lenbytes[] = {
        /* c4 bin8 */ 1, 2, 4, /* c7 ext8 */ 1, 2, 4, /* ca float */ -4, -8,
        /* cc uint8 */ -1, -2, -4, -8, /* d0 int8 */ -1, -2, -4, -8,
        /* d4 fixext */ -2, -3, -5, -9, -17, /* d9 str8 */ 1, 2, 4,
        /* dc array16 */ 2, 4, /* de map16 */ 2, 4};
    if (c < 0xc4 || c > 0xdf) return NULL; /* 0xc1 */
    int lb = lenbytes[c - 0xc4];
    if (lb < 0) { /* fixed size */
      if (left < (size_t)-lb) return NULL;
      return p + -lb;
    }
    if (left < (size_t)lb) return NULL;
    n = load_be(p, lb);
    p += lb;
    left -= (size_t)lb;
    if (c >= 0xdc) children = c >= 0xde ? 2 * n : n;
    else if (c >= 0xc7 && c <= 0xc9) skip = n + 1; /* ext: type byte + data */
    else skip = n;
  }
  if (skip) {
    if (skip > left) return NULL;
    return p + skip;
  }
  if (children > left) return NULL; /* every child takes at least one byte */
  for (uint64_t i = 0; i < children && p; i++) p = check_value(p, end, depth + 1);
  return p;
}

/* Exactly one well-formed MessagePack value of the given type (or any type
 * when type is -1). */
static int one_value(const char *data, size_t len, int type) {
  if (!data || len == 0) return 0;
  const char *end = data + len;
  if (check_value(data, end, 0) != end) return 0;
  return type < 0 || mp_typeof(*data) == (enum mp_type)type;
}

static int spawn_boot(ic_cluster *c, const char *boot, size_t boot_len, const char *props, size_t props_len,
                      const ic_spawn_options *opts, ic_ref *out) {
  if (props && !one_value(props, props_len, MP_MAP)) return IC_EINVAL;
  spawn_args a = {ISO_POOL, 0, 0, props, props_len, boot, boot_len, NULL, NULL, NULL, 0, NULL, 1, 0};
  if (opts) {
    a.kind = opts->dedicated ? ISO_DEDICATED : ISO_POOL;
    a.mailbox = opts->mailbox;
    a.memory_limit = opts->memory_limit;
    a.path = opts->path;
  }
  ic_isolate *iso;
  char err[256];
  int rc = cluster_spawn(c, &a, &iso, err, sizeof err);
  if (rc) return to_ic_error(rc);
  if (out) {
    out->node = c->node_id;
    out->id = iso->id;
  }
  isolate_release(iso);
  return IC_OK;
}

int ic_spawn_lua(ic_cluster *c, const char *source, size_t len, const char *chunkname, const char *props,
                 size_t props_len, const ic_spawn_options *opts, ic_ref *out) {
  if (!c || !source || len > UINT32_MAX) return IC_EINVAL;
  const char *name = chunkname ? chunkname : "=entry";
  size_t nlen = strlen(name);
  /* { source = <chunk>, name = <chunkname> }, as lstate_boot expects */
  size_t cap = 64 + len + nlen;
  char *boot = malloc(cap);
  if (!boot) return IC_ENOMEM;
  char *w = mp_encode_map(boot, 2);
  w = mp_encode_str(w, "source", 6);
  w = mp_encode_str(w, source, (uint32_t)len);
  w = mp_encode_str(w, "name", 4);
  w = mp_encode_str(w, name, (uint32_t)nlen);
  int rc = spawn_boot(c, boot, (size_t)(w - boot), props, props_len, opts, out);
  free(boot);
  return rc;
}

int ic_spawn_module(ic_cluster *c, const char *module, const char *props, size_t props_len,
                    const ic_spawn_options *opts, ic_ref *out) {
  if (!c || !module || !*module) return IC_EINVAL;
  size_t n = strlen(module);
  char *boot = malloc(n + 8);
  if (!boot) return IC_ENOMEM;
  char *w = mp_encode_str(boot, module, (uint32_t)n);
  int rc = spawn_boot(c, boot, (size_t)(w - boot), props, props_len, opts, out);
  free(boot);
  return rc;
}

int ic_send(ic_cluster *c, ic_ref to, const void *msgpack, size_t len) {
  if (!c || !one_value(msgpack, len, -1)) return IC_EINVAL;
  if (to.node != c->node_id) return IC_EDOWN;
  ic_isolate *iso = cluster_find_id(c, to.id);
  if (!iso) return IC_EDOWN;
  ic_msg *m = msg_new(MSG_USER, msgpack, len);
  if (!m) {
    isolate_release(iso);
    return IC_ENOMEM;
  }
  isolate_retain(c->main);
  m->sender = c->main;
  const char *why = isolate_post(iso, m, NULL);
  isolate_release(iso);
  if (!why) return IC_OK;
  return strcmp(why, "mailbox full") == 0 ? IC_EFULL : IC_EDOWN;
}

int ic_receive(ic_cluster *c, double timeout_s, char **data, size_t *len, ic_ref *sender) {
  if (!c || !data || !len || timeout_s != timeout_s) return IC_EINVAL;
  uint64_t deadline = timeout_s < 0 ? UINT64_MAX : plat_now_ns() + plat_seconds_to_ns(timeout_s);
  ic_isolate *main = c->main;
  for (;;) {
    ic_msg *m;
    while ((m = mailbox_pop(&main->sysq)) != NULL) msg_free(m); /* replies: not used here */
    m = mailbox_pop(&main->mbox);
    if (m) {
      char *copy = malloc(m->len ? m->len : 1);
      if (!copy) {
        msg_free(m); /* cannot hand it out: lost, like a message to a full mailbox */
        return IC_ENOMEM;
      }
      memcpy(copy, m->data, m->len);
      *data = copy;
      *len = m->len;
      if (sender) {
        sender->node = c->node_id;
        sender->id = m->sender ? m->sender->id : 0;
      }
      msg_free(m);
      return IC_OK;
    }
    if (mailbox_count(&main->mbox) > 0) continue;
    if (atomic_load(&c->state) != CLUSTER_RUNNING) return IC_ESHUTDOWN;
    if (!cluster_main_wait(c, &main->mbox, deadline) && mailbox_count(&main->mbox) == 0) return IC_ETIMEDOUT;
  }
}

int ic_lookup(ic_cluster *c, const char *path, double wait_s, ic_ref *out) {
  if (!c || !path || !out || !(wait_s >= 0)) return IC_EINVAL;
  if (atomic_load(&c->state) != CLUSTER_RUNNING) return IC_ESHUTDOWN;
  ic_isolate *iso = wait_s > 0 ? cluster_wait_path(c, path, plat_now_ns() + plat_seconds_to_ns(wait_s))
                               : cluster_find_path(c, path);
  if (!iso) return IC_ETIMEDOUT;
  out->node = c->node_id;
  out->id = iso->id;
  isolate_release(iso);
  return IC_OK;
}

int ic_lookup_prefix(ic_cluster *c, const char *prefix, ic_ref **refs, size_t *n) {
  if (!c || !prefix || !refs || !n) return IC_EINVAL;
  if (atomic_load(&c->state) != CLUSTER_RUNNING) return IC_ESHUTDOWN;
  size_t count = 0;
  ic_isolate **all = cluster_find_prefix(c, prefix, &count);
  if (!all) return IC_ENOMEM;
  ic_ref *out = NULL;
  if (count) {
    out = malloc(count * sizeof *out);
    if (!out) {
      for (size_t i = 0; i < count; i++) isolate_release(all[i]);
      free(all);
      return IC_ENOMEM;
    }
  }
  for (size_t i = 0; i < count; i++) {
    out[i].node = c->node_id;
    out[i].id = all[i]->id;
    isolate_release(all[i]);
  }
  free(all);
  *refs = out;
  *n = count;
  return IC_OK;
}

int ic_kill(ic_cluster *c, ic_ref r) {
  if (!c) return IC_EINVAL;
  if (r.node == c->node_id && r.id == c->main->id) return IC_EINVAL;
  if (r.node != c->node_id) return IC_EDOWN;
  ic_isolate *iso = cluster_find_id(c, r.id);
  if (!iso) return IC_EDOWN;
  int rc = isolate_kill(iso) == 0 ? IC_OK : IC_EDOWN;
  isolate_release(iso);
  return rc;
}

int ic_cluster_stats(ic_cluster *c, ic_stats *out) {
  if (!c || !out) return IC_EINVAL;
  plat_mutex_lock(&c->lock);
  out->isolates = c->live;
  plat_mutex_unlock(&c->lock);
  out->spawned = atomic_load(&c->spawned);
  out->dead_letters = atomic_load(&c->dead_letters);
  out->workers = c->nworkers;
  return IC_OK;
}

size_t ic_ref_encode(char *buf, ic_ref r) {
  /* ext 8 (0xc7), 12 bytes, type 1: the node and the id, big endian (the
   * wire format of docs/wire-format.md; msgpuck's mp_encode_ext is not in
   * every packaged version). */
  char *w = mp_store_u8(buf, 0xc7);
  w = mp_store_u8(w, 12);
  w = mp_store_u8(w, 1);
  w = mp_store_u32(w, r.node);
  w = mp_store_u64(w, r.id);
  return (size_t)(w - buf);
}

size_t ic_ref_decode(const char *data, size_t len, ic_ref *out) {
  if (!data || !out || len < 1) return 0;
  size_t hdr; /* bytes before the type byte */
  switch ((unsigned char)data[0]) {
  case 0xc7: hdr = 2; break; /* ext 8 */
  case 0xc8: hdr = 3; break; /* ext 16 */
  case 0xc9: hdr = 5; break; /* ext 32 */
  default: return 0;         /* fixext has no 12-byte size */
  }
  if (len < hdr + 1 + 12 || load_be(data + 1, (int)hdr - 1) != 12 || data[hdr] != 1) return 0;
  out->node = (uint32_t)load_be(data + hdr + 1, 4);
  out->id = load_be(data + hdr + 5, 8);
  return hdr + 1 + 12;
}

void ic_free(void *p) { free(p); }
