#include "monitor.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <msgpuck.h>

#include "isolate.h"

int monitor_set_init(monitor_set *s) {
  s->v = NULL;
  s->n = s->cap = 0;
  s->fired = 0;
  return plat_mutex_init(&s->lock);
}

void monitor_set_fini(monitor_set *s) {
  for (size_t i = 0; i < s->n; i++) isolate_release(s->v[i].watcher);
  free(s->v);
  s->v = NULL;
  s->n = s->cap = 0;
  plat_mutex_destroy(&s->lock);
}

/* Drops the entries of watchers already down (s->lock held): a target that
 * lives long, watched by many short-lived isolates, keeps a set the size of
 * its live watchers. Returns the holds to let go of once unlocked. */
static size_t prune(monitor_set *s, struct ic_isolate **gone, size_t room) {
  size_t k = 0, ngone = 0;
  for (size_t i = 0; i < s->n; i++) {
    if (ngone < room && !atomic_load(&s->v[i].watcher->alive)) gone[ngone++] = s->v[i].watcher;
    else s->v[k++] = s->v[i];
  }
  s->n = k;
  return ngone;
}

int monitor_add(monitor_set *s, ic_isolate *watcher, uint64_t id) {
  ic_isolate *gone[32];
  size_t ngone = 0;
  int rc = 0;
  plat_mutex_lock(&s->lock);
  if (s->fired) {
    rc = ESRCH;
  } else {
    if (s->n == s->cap) ngone = prune(s, gone, sizeof gone / sizeof *gone);
    if (s->n == s->cap) {
      size_t cap = s->cap ? s->cap * 2 : 4;
      monitor_link *v = realloc(s->v, cap * sizeof *v);
      if (v) {
        s->v = v;
        s->cap = cap;
      } else {
        rc = ENOMEM;
      }
    }
    if (!rc) {
      isolate_retain(watcher);
      s->v[s->n].watcher = watcher;
      s->v[s->n].id = id;
      s->n++;
    }
  }
  plat_mutex_unlock(&s->lock);
  for (size_t i = 0; i < ngone; i++) isolate_release(gone[i]);
  return rc;
}

void monitor_remove(monitor_set *s, ic_isolate *watcher, uint64_t id) {
  ic_isolate *found = NULL;
  plat_mutex_lock(&s->lock);
  for (size_t i = 0; i < s->n; i++) {
    if (s->v[i].watcher == watcher && s->v[i].id == id) {
      found = watcher;
      s->v[i] = s->v[--s->n];
      break;
    }
  }
  plat_mutex_unlock(&s->lock);
  if (found) isolate_release(found);
}

void monitor_notify(ic_isolate *watcher, uint64_t id, const char *reason) {
  size_t n = strlen(reason);
  if (n > UINT32_MAX) n = UINT32_MAX;
  ic_msg *m = msg_new(MSG_DOWN, NULL, n + 5);
  if (!m) return; /* out of memory: the watcher misses this notice, like a lost event */
  char *w = mp_encode_str(m->inline_data, reason, (uint32_t)n);
  m->len = (size_t)(w - m->inline_data);
  m->corr = id;
  isolate_post_sys(watcher, m, NULL);
}

void monitor_fire(monitor_set *s, const char *reason) {
  plat_mutex_lock(&s->lock);
  monitor_link *v = s->v;
  size_t n = s->n;
  s->v = NULL;
  s->n = s->cap = 0;
  s->fired = 1;
  plat_mutex_unlock(&s->lock);
  for (size_t i = 0; i < n; i++) {
    monitor_notify(v[i].watcher, v[i].id, reason);
    isolate_release(v[i].watcher);
  }
  free(v);
}
