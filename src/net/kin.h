/*
 * kin — links between an isolate of this node and one of another node
 * incarnation: each entry is (inc, remote id, local id). The net keeps two
 * (src/net/node.h): the children this node's isolates spawned on other
 * nodes (inc and remote: the child; local: its creator, told when the child
 * goes down), and the children other nodes' isolates spawned here (inc and
 * remote: the creator; local: the child, shut down when its creator or the
 * creator's node goes down).
 *
 * Pure data structure: no NATS, no threads; the net serialises calls (under
 * net->lock). An empty table costs nothing to ask.
 */
#ifndef IC_NET_KIN_H
#define IC_NET_KIN_H

#include <stddef.h>
#include <stdint.h>

typedef struct kin_entry {
  uint32_t inc;
  uint64_t remote, local;
} kin_entry;

typedef struct kin {
  kin_entry *v;
  size_t n, cap;
} kin;

void kin_init(kin *k);
void kin_fini(kin *k);
/* 0, or -1 when out of memory. */
int kin_add(kin *k, uint32_t inc, uint64_t remote, uint64_t local);
/* Removes the entries of (inc, remote) — every entry of inc when all is set,
 * every entry at all when inc is 0 — and returns their local ids (malloc'ed,
 * *n set; NULL with *n 0 when none, or when out of memory, in which case
 * the entries stay). */
uint64_t *kin_take(kin *k, uint32_t inc, uint64_t remote, int all, size_t *n);
/* Removes the entries whose local id is local. */
void kin_remove_local(kin *k, uint64_t local);

#endif
