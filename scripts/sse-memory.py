#!/usr/bin/env python3
"""Memory per held connection of a running roomcast node, WebSocket beside SSE.

Opens N idle connections of one kind from this process (raw sockets: the WebSocket upgrade with
a fixed key, the same offering permessage-deflate (ws-deflate: the node needs
server.compression = true), or GET /sse without rooms), waits for each one's welcome, and reports the node's
VmRSS growth per connection. Usage:
    scripts/sse-memory.py PID HOST:PORT ws|ws-deflate|sse N
The node should have the per-address limits lifted (server.connect_rate_per_ip,
server.max_connections_per_ip) and limits.idle_timeout_ms longer than the run.
"""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def request(kind, host):
    if kind in ("ws", "ws-deflate"):
        offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if kind == "ws-deflate" else ""
        return (
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"{offer}\r\n"
        ).encode()
    return f"GET /sse HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def main():
    pid, addr, kind, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    host, port = addr.rsplit(":", 1)
    before = rss_kib(pid)
    socks = []
    start = time.time()
    for i in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(request(kind, addr))
        got = b""
        # the welcome before the next connection (neither kind joins a room)
        want = b"welcome"
        while want not in got:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"connection {i} closed: {got!r}")
            got += chunk
        if kind == "ws-deflate" and b"permessage-deflate" not in got:
            raise SystemExit("compression was not negotiated (server.compression = true?)")
        socks.append(s)
    time.sleep(2)
    after = rss_kib(pid)
    per = (after - before) * 1024 / n
    print(f"{kind}: {n} held in {time.time() - start:.1f}s, VmRSS {before} -> {after} KiB, "
          f"{per:,.0f} B per connection")
    for s in socks:
        s.close()


main()
