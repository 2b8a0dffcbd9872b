#!/usr/bin/env python3
"""Bytes and node CPU per delivery with and without permessage-deflate (issue 21).

For each run it starts ONE roomcast node itself (memory broker, per-address and message rate
limits lifted, a temp TOML config; stopped by its PID at the end, also on failure), connects M
members to one room with the client's compression offered (`compression="deflate"` of the
`websockets` package) or not, and one publisher (no compression, `echo: false`) that sends N
messages at R per second: chat-like JSON (`benchnode.payload`: objects with repeated keys,
English words, a few numbers; a different value per message) of about SIZE bytes. Every member
counts its `message` frames; a run with a loss says so. Between the first publish and the last
delivery it reads the node's CPU from /proc (utime+stime of /proc/PID/stat, and the sum of its
threads' schedstat run time, in ns) and, from `ss -ti` on the node's sockets, the TCP payload
bytes sent (`bytes_sent`: the WebSocket bytes on the wire without TCP/IP headers; the node sends
with sendto(2), which /proc/PID/io `wchar` does not count) and the data segments
(`data_segs_out`), each divided by the deliveries (M x N). The publisher's acks are in the
bytes too (~40 B per message, / M per delivery).

Cells: `SERVER/CLIENT` with SERVER `off`, `on` (server.compression = true,
compression_min_bytes 256) or `onK` (compression_min_bytes = K) and CLIENT `none` or
`deflate`. Each cell runs --runs times, the cells alternating within each round.

Usage (from the repository root, after `cargo build --release`, with a venv holding
`websockets`):
    .venv/bin/python loadtest/compression.py [--binary target/release/roomcast]
        [--members 200] [--messages 400] [--rate 25] [--sizes 100,1000,10000] [--runs 2]
        [--cells off/none,off/deflate,on/none,on/deflate] [--json out.jsonl]
"""
import argparse
import asyncio
import json
import os
import sys
import time

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchnode  # noqa: E402

ROOM = "bench"


async def member(url, deflate, state, done, expected):
    ws = await websockets.connect(
        url, compression="deflate" if deflate else None, max_size=None, ping_interval=None,
        open_timeout=30,
    )
    ext = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
    state["negotiated"] += "permessage-deflate" in ext
    await ws.recv()  # welcome
    await ws.send(json.dumps({"type": "join", "room": ROOM, "id": "j"}))
    while '"joined"' not in await ws.recv():
        pass

    async def count():
        got = 0
        try:
            async for msg in ws:
                if msg.startswith('{"type":"message"'):
                    got += 1
                    if got == expected:
                        done.append(time.time())
        except websockets.ConnectionClosed:
            pass
        state["counts"].append(got)

    return ws, asyncio.ensure_future(count())


async def run_once(args, size, server, client):
    server_extra = {}
    if server.startswith("on"):
        server_extra["compression"] = True
        if server != "on":
            server_extra["compression_min_bytes"] = int(server[2:])
    node = benchnode.Node(args.binary, server_extra)
    conns = []
    try:
        url = f"ws://127.0.0.1:{node.port}/ws"
        state = {"negotiated": 0, "counts": []}
        done = []
        sem = asyncio.Semaphore(50)

        async def one():
            async with sem:
                return await member(url, client == "deflate", state, done, args.messages)

        conns = await asyncio.gather(*(one() for _ in range(args.members)))
        pub = await websockets.connect(url, compression=None, max_size=None, ping_interval=None)
        await pub.recv()
        await pub.send(json.dumps({"type": "join", "room": ROOM, "id": "j"}))
        while '"joined"' not in await pub.recv():
            pass
        acks = {"ack": 0, "other": []}

        async def read_acks():
            try:
                async for msg in pub:
                    if msg.startswith('{"type":"ack"'):
                        acks["ack"] += 1
                    else:
                        acks["other"].append(msg[:200])
            except websockets.ConnectionClosed:
                pass

        ack_task = asyncio.ensure_future(read_acks())
        frames = [
            json.dumps({"type": "publish", "room": ROOM, "echo": False,
                        "data": benchnode.payload(size, i)}, separators=(",", ":"))
            for i in range(args.messages)
        ]
        data_bytes = sum(len(benchnode.compact(benchnode.payload(size, i))) for i in range(3))
        await asyncio.sleep(0.5)
        m0 = node.metrics()
        s0 = benchnode.sample(node.pid, node.port)
        t0 = time.time()
        for i, frame in enumerate(frames):
            delay = t0 + i / args.rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await pub.send(frame)
        sent_s = time.time() - t0
        deadline = time.time() + 10
        while len(done) < args.members and time.time() < deadline:
            await asyncio.sleep(0.01)
        s1 = benchnode.sample(node.pid, node.port)
        m1 = node.metrics()
        d = benchnode.delta(s0, s1)
        for ws, _ in conns:
            await ws.close()
        await pub.close()
        await asyncio.gather(*(t for _, t in conns))
        ack_task.cancel()
        delivered = sum(state["counts"])
        expected = args.members * args.messages
        per = max(delivered, 1)

        def metric(name):
            return m1.get(name, 0) - m0.get(name, 0)

        return {
            "size": size, "data_bytes": round(data_bytes / 3), "server": server, "client": client,
            "members": args.members, "messages": args.messages, "rate": args.rate,
            "negotiated": state["negotiated"], "delivered": delivered, "lost": expected - delivered,
            "acks": acks["ack"], "errors": acks["other"][:3],
            "send_s": round(sent_s, 2), "window_s": round(d["wall_s"], 2),
            "bytes_per_delivery": d["sent"] / per,
            "wchar_per_delivery": d["wchar"] / per,
            "cpu_us_per_delivery": d["cpu_us"] / per,
            "sched_us_per_delivery": d["sched_us"] / per,
            "segs_per_delivery": d["segs"] / per,
            "compressions": metric("roomcast_frames_compressed_total"),
            "compressed_deliveries": metric("roomcast_compressed_deliveries_total"),
        }
    finally:
        for ws, t in conns:
            t.cancel()
        node.stop()


def line(r):
    return (
        f"{r['size']:>6} ({r['data_bytes']:>5} B) {r['server']:>6}/{r['client']:<7} "
        f"negotiated {r['negotiated']:>4}/{r['members']}  lost {r['lost']:>3}  "
        f"{r['bytes_per_delivery']:>9,.1f} B  cpu {r['cpu_us_per_delivery']:>6.2f} us "
        f"(sched {r['sched_us_per_delivery']:>6.2f})  segs {r['segs_per_delivery']:.3f}  "
        f"compressions {r['compressions']:.0f} compressed deliveries {r['compressed_deliveries']:.0f}"
        f"  window {r['window_s']} s"
    )


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default="target/release/roomcast")
    p.add_argument("--members", type=int, default=200)
    p.add_argument("--messages", type=int, default=400)
    p.add_argument("--rate", type=float, default=25.0)
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--cells", default="off/none,off/deflate,on/none,on/deflate")
    p.add_argument("--json", help="append each run's result as one JSON line to this file")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cells = [c.split("/") for c in args.cells.split(",")]
    results = []
    for rnd in range(args.runs):
        for size in sizes:
            for server, client in cells:
                r = await run_once(args, size, server, client)
                r["round"] = rnd + 1
                results.append(r)
                print(line(r), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
    bad = [r for r in results if r["lost"]]
    if bad:
        print(f"{len(bad)} runs lost deliveries", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
