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

/* A notice with room for MONITOR_NOTICE_ROOM bytes of reason, or NULL. */
static ic_msg *notice_new(void) { return msg_new(MSG_DOWN, NULL, MONITOR_NOTICE_ROOM + 5); }

/* Writes reason (cut to what fits) into notice and returns it. */
static ic_msg *notice_fill(ic_msg *m, uint64_t id, const char *reason, size_t room) {
  size_t n = strlen(reason);
  if (n > room) n = room;
  if (n > UINT32_MAX) n = UINT32_MAX;
  char *w = mp_encode_str(m->inline_data, reason, (uint32_t)n);
  m->len = (size_t)(w - m->inline_data);
  m->corr = id;
  return m;
}

static void link_release(monitor_link *l) {
  msg_free(l->notice);
  isolate_release(l->watcher);
}

void monitor_set_fini(monitor_set *s) {
  for (size_t i = 0; i < s->n; i++) link_release(&s->v[i]);
  free(s->v);
  s->v = NULL;
  s->n = s->cap = 0;
  plat_mutex_destroy(&s->lock);
}

/* Drops the entries of watchers already down (s->lock held): a target that
 * lives long, watched by many short-lived isolates, keeps a set the size of
 * its live watchers. Returns the holds to let go of once unlocked. */
static size_t prune(monitor_set *s, monitor_link *gone, size_t room) {
  size_t k = 0, ngone = 0;
  for (size_t i = 0; i < s->n; i++) {
    if (ngone < room && !atomic_load(&s->v[i].watcher->alive)) gone[ngone++] = s->v[i];
    else s->v[k++] = s->v[i];
  }
  s->n = k;
  return ngone;
}

int monitor_add(monitor_set *s, ic_isolate *watcher, uint64_t id) {
  monitor_link gone[32];
  size_t ngone = 0;
  int rc = 0;
  ic_msg *notice = notice_new();
  if (!notice) return ENOMEM;
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
      s->v[s->n].notice = notice;
      notice = NULL;
      s->n++;
    }
  }
  plat_mutex_unlock(&s->lock);
  msg_free(notice); /* not used: fired, or no room */
  for (size_t i = 0; i < ngone; i++) link_release(&gone[i]);
  return rc;
}

void monitor_remove(monitor_set *s, ic_isolate *watcher, uint64_t id) {
  monitor_link found = {NULL, 0, NULL};
  plat_mutex_lock(&s->lock);
  for (size_t i = 0; i < s->n; i++) {
    if (s->v[i].watcher == watcher && s->v[i].id == id) {
      found = s->v[i];
      s->v[i] = s->v[--s->n];
      break;
    }
  }
  plat_mutex_unlock(&s->lock);
  if (found.watcher) link_release(&found);
}

int monitor_notify(ic_isolate *watcher, uint64_t id, const char *reason) {
  size_t n = strlen(reason);
  if (n > UINT32_MAX) n = UINT32_MAX;
  ic_msg *m = msg_new(MSG_DOWN, NULL, n + 5);
  if (!m) return ENOMEM;
  isolate_post_sys(watcher, notice_fill(m, id, reason, n), NULL);
  return 0;
}

/* Posts link's notice with reason: in the notice made in advance when the
 * reason fits or no memory is left for a longer one. Takes the notice. */
static void link_notify(monitor_link *l, const char *reason) {
  size_t n = strlen(reason);
  ic_msg *m = n > MONITOR_NOTICE_ROOM ? msg_new(MSG_DOWN, NULL, n + 5) : NULL;
  if (m) {
    msg_free(l->notice);
    notice_fill(m, l->id, reason, n);
  } else {
    m = notice_fill(l->notice, l->id, reason, MONITOR_NOTICE_ROOM);
  }
  l->notice = NULL;
  isolate_post_sys(l->watcher, m, NULL);
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
    link_notify(&v[i], reason);
    link_release(&v[i]);
  }
  free(v);
}
