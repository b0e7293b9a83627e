#!/usr/bin/python3
"""A NATS client written without isolate_cluster or any NATS library: the
client protocol on a plain socket (INFO, CONNECT, PUB, SUB, MSG/HMSG, PING,
PONG) and python3-msgpack for the payloads. The multi-node specs use it to
show that any NATS client can talk to isolates by their path subject, and to
throw hostile bytes at a cluster's subjects. Run it with Debian's
/usr/bin/python3 (it has python3-msgpack).

    nats_peer.py [--user U --password P | --token T]
                 [--tls-ca CA [--tls-cert CERT --tls-key KEY]] URL COMMAND ...

With --tls-ca the connection is upgraded to TLS after the server's INFO (as
NATS does), the server's certificate checked against CA, and CERT/KEY given
as the client certificate.

Commands (one line of output per event, flushed; exit status 0 on success,
1 when the expected thing did not happen, 2 when the server refused us):

    info                      prints "info <server INFO as JSON>", then "ok"
    pub SUBJECT JSON [--count N] [--seq KEY] [--reply SUBJECT]
                              publishes the JSON value as MessagePack N times
                              (with --reply, with that reply subject); with
                              --seq, JSON must be an object and KEY is set to
                              1..N in the copies; prints "published N"
    sub SUBJECT [--count N] [--timeout S]
                              prints "subscribed", then "msg SUBJECT REPLY JSON"
                              for each message (REPLY "-" when none), and
                              "done N" after N messages or S seconds
    request SUBJECT JSON [--timeout S]
                              publishes with a reply subject and prints
                              "reply JSON", "timeout" or "no responders"
    hostile CLUSTER [--count N] [--seconds S] [--listen S] [--seed X]
                              subscribes to ic.CLUSTER.> for --listen seconds to
                              learn the subjects in use and capture real
                              messages, then publishes up to N random, mutated
                              and replayed payloads (within S seconds) to those
                              subjects and to made-up ones under ic.CLUSTER;
                              prints "hostile: published N to M subjects
                              (K captured)"

    blackhole                 not a client: listens on URL's host and port (port 0:
                              a free one), prints "listening PORT", accepts every
                              connection and never writes a byte (a server that
                              takes TCP but never speaks NATS); runs until killed

Values printed as JSON: MessagePack strings as JSON strings, binary as
{"$bin": hex}, extension types as {"$ext": type, "hex": hex}, map keys that
are not strings as their JSON text.
"""

import argparse
import json
import os
import random
import select
import socket
import sys
import time
import urllib.parse

import msgpack


class ServerError(Exception):
    pass


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def to_json(v):
    if isinstance(v, dict):
        return {k if isinstance(k, str) else json.dumps(to_json(k)): to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, bytes):
        return {"$bin": v.hex()}
    if isinstance(v, msgpack.ExtType):
        return {"$ext": v.code, "hex": v.data.hex()}
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return repr(v)
    return v


def decode(payload):
    try:
        return to_json(msgpack.unpackb(payload, raw=False, strict_map_key=False))
    except Exception as e:  # what came back is not MessagePack: show the bytes
        return {"$undecodable": payload.hex(), "why": str(e)}


class Conn:
    """One NATS connection. Not thread-safe; one reader."""

    def __init__(self, url, user=None, password=None, token=None, timeout=10, tls=None):
        u = urllib.parse.urlparse(url)
        host, port = u.hostname or "127.0.0.1", u.port or 4222
        user = user or (urllib.parse.unquote(u.username) if u.username else None)
        password = password or (urllib.parse.unquote(u.password) if u.password else None)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.next_sid = 1
        op = self.read_op(timeout)
        if not op or op[0] != "INFO":
            raise ServerError("expected INFO, got %r" % (op,))
        self.info = op[1]
        if tls is not None:
            import ssl
            ctx = ssl.create_default_context(cafile=tls["ca"])
            ctx.check_hostname = False  # the certificate names 127.0.0.1; the CA is what is checked
            if tls.get("cert"):
                ctx.load_cert_chain(tls["cert"], tls.get("key"))
            if self.buf:
                raise ServerError("bytes after INFO before the TLS upgrade")
            self.sock = ctx.wrap_socket(self.sock, server_hostname=host)
        connect = {"verbose": False, "pedantic": False, "lang": "python-raw", "version": "0",
                   "name": "nats_peer", "protocol": 1, "headers": True, "no_responders": True}
        if user is not None:
            connect["user"] = user
            connect["pass"] = password or ""
        if token is not None:
            connect["auth_token"] = token
        self.send(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        self.flush_pong(timeout)

    def send(self, data):
        self.sock.sendall(data)

    def flush_pong(self, timeout=10):
        """Waits for the PONG that answers a PING already sent: the server
        has then processed everything before it. Raises on -ERR."""
        deadline = time.monotonic() + timeout
        while True:
            op = self.read_op(max(0.0, deadline - time.monotonic()))
            if op is None:
                raise ServerError("no PONG from the server")
            if op[0] == "PONG":
                return
            if op[0] == "-ERR":
                raise ServerError(op[1])

    def ping(self, timeout=10):
        self.send(b"PING\r\n")
        self.flush_pong(timeout)

    def sub(self, subject):
        sid = self.next_sid
        self.next_sid += 1
        self.send(("SUB %s %d\r\n" % (subject, sid)).encode())
        return sid

    def pub(self, subject, payload, reply=None):
        head = "PUB %s %s%d\r\n" % (subject, (reply + " ") if reply else "", len(payload))
        self.send(head.encode() + payload + b"\r\n")

    def _fill(self, timeout):
        pending = getattr(self.sock, "pending", None)  # bytes TLS already decrypted
        if not (pending and pending() > 0):
            r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
            if not r:
                return False
        data = self.sock.recv(65536)
        if not data:
            raise ServerError("the server closed the connection")
        self.buf += data
        return True

    def _line(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            if not self._fill(deadline - time.monotonic()):
                return None
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def _bytes(self, n, timeout):
        deadline = time.monotonic() + timeout
        while len(self.buf) < n + 2:
            if not self._fill(deadline - time.monotonic()):
                raise ServerError("a message body did not arrive")
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read_op(self, timeout):
        """Next protocol operation, or None when nothing came in `timeout`.
        Answers the server's PINGs itself. Messages come back as
        ("MSG", subject, sid, reply, headers, payload)."""
        while True:
            line = self._line(timeout)
            if line is None:
                return None
            word, _, rest = line.partition(" ")
            word = word.upper()
            if word == "PING":
                self.send(b"PONG\r\n")
                continue
            if word == "INFO":
                return ("INFO", json.loads(rest))
            if word in ("PONG", "+OK"):
                return (word,)
            if word == "-ERR":
                return ("-ERR", rest.strip().strip("'"))
            if word == "MSG":
                parts = rest.split()
                subject, sid = parts[0], int(parts[1])
                reply = parts[2] if len(parts) == 4 else None
                payload = self._bytes(int(parts[-1]), max(timeout, 5))
                return ("MSG", subject, sid, reply, b"", payload)
            if word == "HMSG":
                parts = rest.split()
                subject, sid = parts[0], int(parts[1])
                reply = parts[2] if len(parts) == 5 else None
                hlen, total = int(parts[-2]), int(parts[-1])
                data = self._bytes(total, max(timeout, 5))
                return ("MSG", subject, sid, reply, data[:hlen], data[hlen:])
            raise ServerError("unexpected protocol line %r" % line)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def cmd_info(c, a):
    out("info " + json.dumps(c.info))
    out("ok")
    return 0


def cmd_pub(c, a):
    value = json.loads(a.json)
    for i in range(1, a.count + 1):
        if a.seq:
            value[a.seq] = i
        c.pub(a.subject, msgpack.packb(value, use_bin_type=True), a.reply)
    c.ping()
    out("published %d" % a.count)
    return 0


def cmd_sub(c, a):
    sid = c.sub(a.subject)
    c.ping()
    out("subscribed")
    n = 0
    deadline = time.monotonic() + a.timeout
    while n < a.count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        op = c.read_op(left)
        if op and op[0] == "MSG" and op[2] == sid:
            n += 1
            out("msg %s %s %s" % (op[1], op[3] or "-", json.dumps(decode(op[5]))))
    out("done %d" % n)
    return 0 if n >= a.count else 1


def cmd_request(c, a):
    inbox = "_INBOX.peer%d.%d" % (os.getpid(), random.randrange(1 << 30))
    sid = c.sub(inbox)
    c.pub(a.subject, msgpack.packb(json.loads(a.json), use_bin_type=True), reply=inbox)
    deadline = time.monotonic() + a.timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            out("timeout")
            return 1
        op = c.read_op(left)
        if op and op[0] == "MSG" and op[2] == sid:
            if op[4].startswith(b"NATS/1.0 503"):
                out("no responders")
                return 1
            out("reply " + json.dumps(decode(op[5])))
            return 0


def hostile_payloads(rng, captured):
    """Yields an endless stream of nasty payloads: random bytes, mutated and
    replayed captured messages, and MessagePack that lies about lengths or
    nests too deeply."""
    lies = [
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 G elements
        b"\xdf\x7f\xff\xff\xff",  # map32 claiming 2 G pairs
        b"\xc6\xff\xff\xff\xf0abc",  # bin32 longer than the message
        b"\x91" * 5000,  # arrays nested 5000 deep
        b"\x81\xa1k" * 3000 + b"\xc0",  # maps nested 3000 deep
        b"\xc1",  # the never-used byte
        b"\xd4\x7f\x00",  # fixext1 with an unknown type
        b"\xc7\x05\x01\x00\x00\x00\x00\x00",  # ext8 with a too-short body
        b"\xd8\x02" + b"\xff" * 16,  # fixext16
        b"\xc9\xff\xff\xff\xff\x05",  # ext32 claiming 4 GiB
        b"",
    ]
    # Every ext type code a codec might use, with garbage bodies.
    for code in list(range(0, 16)) + [127, 126, 255 - 128]:
        for n in (0, 1, 4, 8, 17):
            lies.append(b"\xc7" + bytes([n, code & 0xFF]) + bytes(rng.randrange(256) for _ in range(n)))
    while True:
        kind = rng.randrange(10)
        if kind == 0 or not captured:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
        elif kind == 1:
            yield rng.choice(lies)
        elif kind == 2:
            yield rng.choice(captured)[2]  # an exact replay
        else:
            p = bytearray(rng.choice(captured)[2])
            how = rng.randrange(5)
            if how == 0 and p:  # flip some bits
                for _ in range(rng.randrange(1, 8)):
                    i = rng.randrange(len(p))
                    p[i] ^= 1 << rng.randrange(8)
            elif how == 1 and p:  # truncate
                del p[rng.randrange(len(p)):]
            elif how == 2:  # append garbage
                p += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            elif how == 3 and p:  # overwrite a byte with a MessagePack type byte
                p[rng.randrange(len(p))] = rng.choice([0xc1, 0xdc, 0xdd, 0xde, 0xdf, 0xc7, 0xc9, 0xd9, 0xdb, 0xff])
            else:  # splice two captured messages
                q = rng.choice(captured)[2]
                cut = rng.randrange(len(p) + 1)
                p = p[:cut] + q[rng.randrange(len(q) + 1):]
            yield bytes(p)


def cmd_hostile(c, a):
    rng = random.Random(a.seed)
    prefix = "ic.%s." % a.cluster
    sid = c.sub(prefix + ">")
    c.ping()
    captured = []  # (subject, reply, payload)
    subjects = set()

    def take(op):
        if op and op[0] == "MSG" and op[2] == sid:
            subjects.add(op[1])
            if len(captured) < 500:
                captured.append((op[1], op[3], op[5]))

    deadline = time.monotonic() + a.listen
    while time.monotonic() < deadline:
        take(c.read_op(max(0.0, deadline - time.monotonic())))
    made_up = [prefix + s for s in ("path", "path.echo", "path.echo.x", "path", "x", "x.y.z",
                                    "path.counter", "path.ctl", "node", "node.nope")]
    targets = sorted(subjects) + made_up
    out("hostile: learned %d subjects: %s" % (len(subjects), " ".join(sorted(subjects))))
    sent = 0
    stop_at = time.monotonic() + a.seconds
    payloads = hostile_payloads(rng, captured)
    while sent < a.count and time.monotonic() < stop_at:
        subject = rng.choice(targets)
        payload = next(payloads)
        reply = None
        r = rng.randrange(8)
        if r == 0:
            reply = "_INBOX.hostile.%d" % rng.randrange(1000)
        elif r == 1 and captured:
            reply = rng.choice(captured)[0]  # replies into the cluster's own subjects
        c.pub(subject, payload, reply)
        sent += 1
        # Keep reading, so the server never counts us as a slow consumer.
        while True:
            op = c.read_op(0)
            if op is None:
                break
            take(op)
        if sent % 200 == 0:
            c.ping()
    c.ping()
    out("hostile: published %d to %d subjects (%d captured)" % (sent, len(targets), len(captured)))
    return 0


def blackhole(url):
    u = urllib.parse.urlparse(url)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((u.hostname or "127.0.0.1", u.port or 0))
    srv.listen(64)
    out("listening %d" % srv.getsockname()[1])
    held = []  # keep every accepted socket open, silent
    while True:
        conn, _ = srv.accept()
        held.append(conn)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--token")
    ap.add_argument("--tls-ca")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("url")
    cmds = ap.add_subparsers(dest="command", required=True)
    cmds.add_parser("info")
    p = cmds.add_parser("pub")
    p.add_argument("subject")
    p.add_argument("json")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--seq")
    p.add_argument("--reply")
    p = cmds.add_parser("sub")
    p.add_argument("subject")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=10)
    p = cmds.add_parser("request")
    p.add_argument("subject")
    p.add_argument("json")
    p.add_argument("--timeout", type=float, default=5)
    p = cmds.add_parser("hostile")
    p.add_argument("cluster")
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--listen", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=1)
    cmds.add_parser("blackhole")
    a = ap.parse_args()
    if a.command == "blackhole":
        blackhole(a.url)
        return 0
    try:
        tls = {"ca": a.tls_ca, "cert": a.tls_cert, "key": a.tls_key} if a.tls_ca else None
        c = Conn(a.url, a.user, a.password, a.token, tls=tls)
    except (ServerError, OSError) as e:
        out("error: %s" % e)
        return 2
    try:
        return {"info": cmd_info, "pub": cmd_pub, "sub": cmd_sub,
                "request": cmd_request, "hostile": cmd_hostile}[a.command](c, a)
    except ServerError as e:
        out("error: %s" % e)
        return 2
    finally:
        c.close()


if __name__ == "__main__":
    sys.exit(main())
