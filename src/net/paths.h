/*
 * paths — this node's replica of the other nodes' isolates: for each live
 * remote isolate (node incarnation, id) its path (or none) and its
 * properties, so that lookup_isolate(s), ref.path and ref:property answer
 * locally without a round trip (as Erlang's `global` keeps its table on
 * every node).
 *
 * How it stays right (docs/multinode.md, "Replicated isolates and paths"):
 * every node sends its own isolates' up and down over the reliable link to
 * every peer (so nothing is lost, reordered or duplicated: the link's
 * sequence numbers repair what NATS drops), and a snapshot of all of them to
 * a peer that joins. Entries of a node that goes down go with it.
 *
 * Threads: any thread; the table's own lock guards it, and is taken last
 * (after c->lock or net->lock, never before them).
 */
#ifndef IC_NET_PATHS_H
#define IC_NET_PATHS_H

#include <stddef.h>
#include <stdint.h>

#include "mailbox.h"
#include "platform.h"

typedef struct path_entry {
  uint32_t node;
  uint64_t id;
  char *path;      /* NULL: no path */
  ic_blob *props;  /* MessagePack map, or NULL */
  int down;        /* gone: kept (bounded) so its refs still print their path
                      and read their properties, as a local isolate's do */
  int pending;     /* spawned from this node, not yet up there */
} path_entry;

/* Entries in the order they came up (lookup_isolates lists them so), with
 * two hash indexes (open addressing; a slot holds an entry's index + 1, 0
 * is empty, PATHS_TOMB a removed path): by (node, id), every entry; by
 * path, the live ones with a path. Lookups and updates cost O(1) on
 * average, so a replica of 100,000 remote isolates stays cheap; listing a
 * prefix and a node's going down walk the array. Down entries are dropped
 * in batches (a compaction, which rebuilds both indexes). */
typedef struct paths {
  plat_mutex lock;
  path_entry *v;
  size_t n, cap;
  size_t ndown;    /* entries down */
  size_t *by_id, id_cap;
  size_t *by_path, path_cap, path_used; /* path_used counts tombstones too */
} paths;

/* Down entries kept at least (so that refs print their path and read their
 * properties); past twice as many the oldest go. */
#define PATHS_DOWN_KEEP 4096

typedef struct remote_id {
  uint32_t node;
  uint64_t id;
} remote_id;

void paths_init(paths *p);
void paths_fini(paths *p);

/* Adds (node, id) as up: 1 added (or a pending one is now up), 0 already
 * there, -1 out of memory. Copies. */
int paths_add(paths *p, uint32_t node, uint64_t id, const char *path, size_t path_len, const char *props,
              size_t props_len);
/* Adds (node, id) as pending: spawned from this node on node `node`, so
 * that its path and properties are known at once. 1, or -1 out of memory. */
int paths_add_pending(paths *p, uint32_t node, uint64_t id, const char *path, const char *props,
                      size_t props_len);
/* 1 up or pending, -1 down, 0 unknown. */
int paths_state(paths *p, uint32_t node, uint64_t id);
/* Marks (node, id) down: 1 if it was up, 0 if unknown, -1 if already down.
 * Lookups no longer find it. */
int paths_remove(paths *p, uint32_t node, uint64_t id);
/* Marks every live entry of node down; returns them (malloc'ed, *n set) or NULL. */
remote_id *paths_remove_node(paths *p, uint32_t node, size_t *n);

/* The live entry holding path: 1 and *out set, else 0. */
int paths_find(paths *p, const char *path, remote_id *out);
/* malloc'ed copy of (node, id)'s path (also once down), or NULL. */
char *paths_path_of(paths *p, uint32_t node, uint64_t id);
/* Retained properties of (node, id), or NULL. */
ic_blob *paths_props_of(paths *p, uint32_t node, uint64_t id);
/* Every live entry whose path starts with prefix (prefix NULL: every entry
 * that is up, with a path or not), in the order they came up (malloc'ed; *n
 * set; NULL when out of memory). */
remote_id *paths_prefix(paths *p, const char *prefix, size_t *n);

#endif
