#!/usr/bin/env python3
"""Node CPU per connect and per delivery of SSE beside the WebSocket (issue 21).

For each run it starts ONE roomcast node itself (memory broker, per-address and message rate
limits lifted, a temp TOML config; stopped by its PID at the end, also on failure), then:

1. Connect phase: M members of one transport connect and join room `bench` (WebSocket: the
   upgrade, the welcome, a `join` command and its `joined`; SSE: `GET /sse?room=bench`, its
   welcome and joined events), at most --concurrency at a time. Node CPU of the phase / M.
2. Delivery phase: one WebSocket publisher (`echo: false`) sends N messages of ~SIZE B of
   chat-like JSON at R per second; every member counts its `message` frames (WebSocket) or
   `event: message` events (SSE), a loss is reported. Node CPU, and the TCP payload bytes
   (`bytes_sent`, headers not counted) and data segments (`data_segs_out`) of the node's
   sockets (`ss -ti`), between the first publish and the last delivery, each
   divided by the deliveries (M x N). OutSegs of /proc/net/snmp is printed too, but on loopback
   it counts the whole machine (the clients' ACKs included).

The clients are raw asyncio protocols (no library, little CPU per event) so that the Python
process keeps up; each run prints how long the deliveries trailed the last publish.

Usage (from the repository root, after `cargo build --release`; plain python3):
    python3 loadtest/sse_cpu.py [--binary target/release/roomcast] [--members 1000]
        [--rate 20] [--messages 600] [--size 100] [--runs 2] [--transports ws,sse]
        [--concurrency 64] [--json out.jsonl]
Deliveries per second = members x rate.
"""
import argparse
import asyncio
import base64
import json
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchnode  # noqa: E402

ROOM = "bench"
MSG_WS = b'{"type":"message"'
MSG_SSE = b"event: message\n"


def ws_frame(text, opcode=1):
    """A masked client frame."""
    payload = text.encode() if isinstance(text, str) else text
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + masked


class WsFrames:
    """Splits the server's (unmasked, uncompressed) frames out of a byte stream."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            hl = 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n = struct.unpack_from("!H", buf, pos + 2)[0]
                hl = 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                hl = 10
            if len(buf) - pos < hl + n:
                break
            out.append((b0 & 0x0F, bytes(buf[pos + hl:pos + hl + min(n, 32)])))
            pos += hl + n
        del buf[:pos]
        return out


class Member(asyncio.Protocol):
    def __init__(self, kind, host, joined, done, expected):
        self.kind, self.host = kind, host
        self.joined, self.done, self.expected = joined, done, expected
        self.head = b""
        self.in_body = False
        self.frames = WsFrames()
        self.tail = b""
        self.count = 0
        self.is_joined = False

    def connection_made(self, transport):
        self.transport = transport
        if self.kind == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            req = (f"GET /ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n")
        else:
            req = f"GET /sse?room={ROOM} HTTP/1.1\r\nHost: {self.host}\r\n\r\n"
        transport.write(req.encode())

    def data_received(self, data):
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.head.split(b"\r\n", 1)[0]
            if b" 101 " not in status and b" 200 " not in status:
                raise RuntimeError(f"handshake refused: {status!r}")
            data = self.head[end + 4:]
            self.in_body = True
            self.head = b""
            if self.kind == "ws":
                self.transport.write(ws_frame(json.dumps({"type": "join", "room": ROOM, "id": "j"})))
        if self.kind == "ws":
            for opcode, start in self.frames.feed(data):
                if opcode == 1:
                    if start.startswith(MSG_WS):
                        self.got()
                    elif not self.is_joined and start.startswith(b'{"type":"joined"'):
                        self.mark_joined()
                elif opcode == 9:
                    self.transport.write(ws_frame(b"", 10))
        else:
            buf = self.tail + data
            n = buf.count(MSG_SSE)
            if not self.is_joined and b"event: joined\n" in buf:
                self.mark_joined()
            for _ in range(n):
                self.got()
            self.tail = buf[-(len(MSG_SSE) - 1):]

    def mark_joined(self):
        self.is_joined = True
        self.joined.append(time.time())

    def got(self):
        self.count += 1
        if self.count == self.expected:
            self.done.append(time.time())

    def connection_lost(self, exc):
        pass


class Publisher(Member):
    def __init__(self, host, joined):
        super().__init__("ws", host, joined, [], -1)
        self.acks = 0
        self.other = []

    def data_received(self, data):
        if not self.in_body:
            return super().data_received(data)
        for opcode, start in self.frames.feed(data):
            if opcode == 1 and start.startswith(b'{"type":"ack"'):
                self.acks += 1
            elif opcode == 1 and start.startswith(b'{"type":"joined"'):
                self.mark_joined()
            elif opcode == 1:
                self.other.append(start)
            elif opcode == 9:
                self.transport.write(ws_frame(b"", 10))


async def wait_for(pred, timeout):
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def run_once(args, kind):
    loop = asyncio.get_running_loop()
    node = benchnode.Node(args.binary)
    transports = []
    try:
        host = f"127.0.0.1:{node.port}"
        joined, done = [], []
        members = []
        sem = asyncio.Semaphore(args.concurrency)
        c0 = benchnode.sample(node.pid)
        t_connect = time.time()

        async def one():
            async with sem:
                n = len(joined)
                tr, proto = await loop.create_connection(
                    lambda: Member(kind, host, joined, done, args.messages), "127.0.0.1", node.port)
                transports.append(tr)
                members.append(proto)
                await wait_for(lambda: proto.is_joined, 30)

        await asyncio.gather(*(one() for _ in range(args.members)))
        ok = await wait_for(lambda: len(joined) == args.members, 30)
        connect_s = time.time() - t_connect
        c1 = benchnode.sample(node.pid)
        if not ok:
            raise RuntimeError(f"only {len(joined)} of {args.members} joined")
        dc = benchnode.delta(c0, c1)

        pj = []
        tr, pub = await loop.create_connection(lambda: Publisher(host, pj), "127.0.0.1", node.port)
        transports.append(tr)
        await wait_for(lambda: pj, 10)
        frames = [
            ws_frame(json.dumps({"type": "publish", "room": ROOM, "echo": False,
                                 "data": benchnode.payload(args.size, i)}, separators=(",", ":")))
            for i in range(args.messages)
        ]
        await asyncio.sleep(1.0)
        cpu0 = time.process_time()
        s0 = benchnode.sample(node.pid, node.port)
        t0 = time.time()
        for i, frame in enumerate(frames):
            delay = t0 + i / args.rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            pub.transport.write(frame)
        sent_at = time.time()
        await wait_for(lambda: len(done) == args.members, 15)
        last = time.time()
        s1 = benchnode.sample(node.pid, node.port)
        client_cpu = time.process_time() - cpu0
        d = benchnode.delta(s0, s1)
        delivered = sum(m.count for m in members)
        expected = args.members * args.messages
        per = max(delivered, 1)
        return {
            "transport": kind, "members": args.members, "rate": args.rate,
            "messages": args.messages, "size": args.size,
            "deliveries_per_s": args.members * args.rate,
            "connect_s": round(connect_s, 2),
            "connect_cpu_us": dc["cpu_us"] / args.members,
            "connect_sched_us": dc["sched_us"] / args.members,
            "delivered": delivered, "lost": expected - delivered, "acks": pub.acks,
            "errors": [e.decode(errors="replace") for e in pub.other[:3]],
            "trail_s": round(last - sent_at, 3), "window_s": round(d["wall_s"], 2),
            "client_cpu_share": round(client_cpu / d["wall_s"], 2),
            "cpu_us_per_delivery": d["cpu_us"] / per,
            "sched_us_per_delivery": d["sched_us"] / per,
            "bytes_per_delivery": d["sent"] / per,
            "wchar_per_delivery": d["wchar"] / per,
            "segs_per_delivery": d["segs"] / per,
            "machine_outsegs_per_delivery": d["outsegs"] / per,
        }
    finally:
        for tr in transports:
            tr.abort()
        node.stop()


def line(r):
    return (
        f"{r['transport']:>3} {r['members']}x{r['rate']:g}/s={r['deliveries_per_s']:,.0f}/s  "
        f"connect {r['connect_cpu_us']:6.1f} us (sched {r['connect_sched_us']:6.1f}) in {r['connect_s']} s  "
        f"lost {r['lost']}  cpu {r['cpu_us_per_delivery']:6.2f} us (sched {r['sched_us_per_delivery']:6.2f})  "
        f"{r['bytes_per_delivery']:7.1f} B  segs {r['segs_per_delivery']:.3f} "
        f"(machine {r['machine_outsegs_per_delivery']:.3f})  trail {r['trail_s']} s  "
        f"client cpu {r['client_cpu_share']}"
    )


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default="target/release/roomcast")
    p.add_argument("--members", type=int, default=1000)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--messages", type=int, default=600)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--transports", default="ws,sse")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--json", help="append each run's result as one JSON line to this file")
    args = p.parse_args()
    lost = 0
    for _ in range(args.runs):
        for kind in args.transports.split(","):
            r = await run_once(args, kind)
            lost += r["lost"]
            print(line(r), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    if lost:
        print("some runs lost deliveries", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
