#!/usr/bin/python3
"""A node of an isolate_cluster cluster written from docs/multinode.md alone,
for the hostile specs: it speaks the envelope (heartbeats with their
counter, the hello/welcome handshake, data frames with their sequence
numbers, acks; FNV-1a digests, so only for clusters without a secret) on a plain NATS connection (nats_peer.Conn), joins as a node, and
then sends frames no honest node would.

    fake_node.py URL CLUSTER NAME TARGET SCENARIO [PATH]

Joins cluster CLUSTER as node NAME, waits until node TARGET knows it (its
ack on NAME's data subject) and has announced the isolate at PATH (default
/sink), then plays SCENARIO, prints "done", and leaves with a bye once the
target has acked every frame. Prints one line per notable thing it gets:
"joined TARGET INC", "isolate PATH ID", "reply_error CORR TEXT",
"reply CORR JSON", "acked SEQ".

Scenarios:
    chunks   a chunked message the rules allow ("before", 3 chunks), then
             one that lies about its total (32 MiB announced, 10 bytes
             sent) and is cut off by a good one ("middle", 2 chunks), one
             with a chunk out of place (and the rest after it), one whose
             total is over the bound, a chunk without its header inside a
             message, a chunked request broken half way (corr 77: the
             target answers with an error), a whole that is not MessagePack,
             and a last good one ("after", 4 chunks). Good messages are
             MessagePack strings "<name>:" followed by padding.
    silent   stays a live node for 20 s (heartbeats, acks) and answers
             nothing: a path claim waits for it (its answer never comes).
"""

import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msgpack  # noqa: E402
from nats_peer import Conn  # noqa: E402

VERSION = 2
HEARTBEAT, BYE, DATA, ACK, FENCED, HELLO, WELCOME = 1, 2, 3, 4, 5, 6, 7
MSG_USER, MSG_REQUEST, MSG_REPLY, MSG_REPLY_ERROR = 1, 2, 3, 4
NET_ISO_UP, NET_CHUNK = 20, 25
CHUNKED_MAX = 32 << 20


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def frame(ftype, from_inc, to_inc, body):
    head = b"ic" + bytes([VERSION, ftype]) + struct.pack(">II", from_inc, to_inc) + body
    return head + struct.pack(">Q", fnv1a64(head))


def parse(data):
    """(type, from_inc, to_inc, body) of a frame with a good digest, else None."""
    if len(data) < 20 or data[:3] != b"ic" + bytes([VERSION]):
        return None
    if struct.unpack(">Q", data[-8:])[0] != fnv1a64(data[:-8]):
        return None
    ftype = data[3]
    from_inc, to_inc = struct.unpack(">II", data[4:12])
    return ftype, from_inc, to_inc, data[12:-8]


def frames_of(payload):
    """The frames of a data subject message: a batch ('I' 'B') or one."""
    if payload[:2] != b"IB":
        return [payload]
    res, pos = [], 2
    while len(payload) - pos >= 4:
        n = struct.unpack(">I", payload[pos:pos + 4])[0]
        pos += 4
        if n > len(payload) - pos:
            break
        res.append(payload[pos:pos + n])
        pos += n
    return res


class Fake:
    def __init__(self, url, cluster, name, target, path):
        self.c = Conn(url)
        self.cluster, self.name, self.target, self.path = cluster, name, target, path
        self.inc = struct.unpack(">I", os.urandom(4))[0] | 1
        self.hb = "ic.%s.hb" % cluster
        self.mine = "ic.%s.node.%s" % (cluster, name)
        self.theirs = "ic.%s.node.%s" % (cluster, target)
        self.c.sub(self.hb)
        self.c.sub(self.mine)
        self.c.ping()
        self.target_inc = None
        self.joined = False
        self.iso = None
        self.seq = 0          # our last data frame
        self.acked = 0        # their cumulative ack of ours
        self.expect = 1       # their next data frame to us
        self.last_hb = 0.0
        self.counter = 0      # of our heartbeats and bye

    def named(self, ftype):
        n = self.name.encode()
        self.counter += 1
        self.c.pub(self.hb, frame(ftype, self.inc, 0, struct.pack(">QB", self.counter, len(n)) + n))

    def pump(self, seconds):
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if now - self.last_hb > 0.3:
                self.last_hb = now
                self.named(HEARTBEAT)
            op = self.c.read_op(max(0.0, min(0.1, deadline - now)))
            if op and op[0] == "MSG":
                self.handle(op[1], op[5])
            if time.monotonic() >= deadline:
                return

    def until(self, cond, seconds):
        deadline = time.monotonic() + seconds
        while not cond():
            if time.monotonic() >= deadline:
                return False
            self.pump(0.05)
        return True

    def handle(self, subject, payload):
        if subject == self.hb:
            f = parse(payload)
            if f and f[0] == HEARTBEAT and f[3][9:].decode("latin-1") == self.target and self.target_inc is None:
                self.target_inc = f[1]
            return
        for raw in frames_of(payload):
            f = parse(raw)
            if f and f[0] == HELLO and f[2] == self.inc and f[3][9:].decode("latin-1") == self.target:
                # the target's challenge: echo its nonce (then it takes us for a node)
                self.target_inc = f[1]
                echo = f[3][:8] + struct.pack(">Q", self.counter)
                self.c.pub(self.theirs, frame(WELCOME, self.inc, self.target_inc, echo))
                continue
            if not f or f[1] != self.target_inc or f[2] != self.inc:
                continue
            ftype, body = f[0], f[3]
            if ftype == ACK:
                self.acked = max(self.acked, struct.unpack(">Q", body)[0])
                if not self.joined:
                    self.joined = True
                    out("joined %s %08x" % (self.target, self.target_inc))
            elif ftype == DATA and len(body) >= 33:
                seq, kind, to_id, from_id, corr = struct.unpack(">QBQQQ", body[:33])
                data = body[33:]
                if seq == self.expect:
                    self.expect += 1
                    self.data(kind, to_id, from_id, corr, data)
                # cumulative ack of what we have, as a node does
                self.c.pub(self.theirs, frame(ACK, self.inc, self.target_inc, struct.pack(">Q", self.expect - 1)))

    def data(self, kind, to_id, from_id, corr, data):
        if kind == NET_ISO_UP:
            try:
                path = msgpack.unpackb(data, raw=False)[0]
            except Exception:
                return
            if path == self.path and self.iso is None:
                self.iso = from_id
                out("isolate %s %d" % (path, from_id))
        elif kind == MSG_REPLY_ERROR:
            out("reply_error %d %s" % (corr, msgpack.unpackb(data, raw=False)))
        elif kind == MSG_REPLY:
            out("reply %d %r" % (corr, msgpack.unpackb(data, raw=False)))

    def send_data(self, kind, payload, corr=0, to_id=None, from_id=1):
        self.seq += 1
        body = struct.pack(">QBQQQ", self.seq, kind, self.iso if to_id is None else to_id, from_id, corr) + payload
        self.c.pub(self.theirs, frame(DATA, self.inc, self.target_inc, body))

    def chunk(self, kind, total, off, data, corr=0, from_id=1):
        self.send_data(NET_CHUNK, bytes([kind]) + struct.pack(">II", total, off) + data, corr=corr, from_id=from_id)

    def chunked(self, kind, payload, parts, corr=0):
        """payload in `parts` chunks, as an honest node cuts it."""
        per = -(-len(payload) // parts)
        for off in range(0, len(payload), per):
            self.chunk(kind, len(payload), off, payload[off:off + per], corr=corr)


def good(name):
    return msgpack.packb(name + ":" + "p" * 300)


def scenario_chunks(f):
    f.chunked(MSG_USER, good("before"), 3)
    # lies about its total, then is cut off by a good message
    f.chunk(MSG_USER, CHUNKED_MAX, 0, b"0123456789")
    f.chunked(MSG_USER, good("middle"), 2)
    # a chunk out of place, and the rest of that message after it
    f.chunk(MSG_USER, 100, 0, b"a" * 10)
    f.chunk(MSG_USER, 100, 50, b"b" * 10)
    f.chunk(MSG_USER, 100, 10, b"c" * 90)
    # a total over the bound
    f.chunk(MSG_USER, CHUNKED_MAX + 1, 0, b"d" * 10)
    # a chunk without its header inside a message
    f.chunk(MSG_USER, 100, 0, b"e" * 10)
    f.send_data(NET_CHUNK, b"\x01\x00")
    # a request broken half way: the requester (us) gets an error reply
    f.chunk(MSG_REQUEST, 100, 0, b"f" * 10, corr=77, from_id=5)
    f.chunk(MSG_REQUEST, 100, 20, b"g" * 10, corr=77, from_id=5)
    # whole, but not MessagePack
    f.chunk(MSG_USER, 2, 0, b"\xc1")
    f.chunk(MSG_USER, 2, 1, b"\xc1")
    f.chunked(MSG_USER, good("after"), 4)


def scenario_silent(f):
    out("silent")
    f.pump(20)


def main():
    url, cluster, name, target, scenario = sys.argv[1:6]
    path = sys.argv[6] if len(sys.argv) > 6 else "/sink"
    f = Fake(url, cluster, name, target, path)
    if not f.until(lambda: f.target_inc is not None and f.joined and f.iso is not None, 15):
        out("not joined (target %r, joined %r, isolate %r)" % (f.target_inc, f.joined, f.iso))
        return 1
    {"chunks": scenario_chunks, "silent": scenario_silent}[scenario](f)
    ok = f.until(lambda: f.acked >= f.seq, 15)
    out("done" if ok else "not acked: %d of %d" % (f.acked, f.seq))
    f.pump(0.5)  # what comes back (an error reply)
    f.named(BYE)
    f.c.ping()
    f.c.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
