#!/usr/bin/env python3
"""End-to-end checks of a roomcast cluster behind its load balancer (docs/protocol.md).

Used by deploy/test-cluster.sh (docker compose) and deploy/test-local-cluster.sh (local
processes); both describe the cluster with the same flags:

  --ws URL             the balancer's WebSocket URL (ws://127.0.0.1:8080/ws)
  --nodes A,B,C        node ids the cluster runs (`node` in `welcome`)
  --admin URL,...      admin URLs of the nodes (POST /api/publish with --api-key)
  --redis-cli CMD      a redis-cli command line reaching the cluster's Redis
  --prometheus URL     Prometheus; its roomcast targets must all be up
  --stop-cmd CMD       a command that stops node --stop-node (SIGTERM); its clients must be
                       closed with 1001 and reconnect to the other nodes through the balancer

Stages, each timed: connect clients through the balancer until every node has some; join one
room; every client publishes and every client (on every node) receives every message; a Redis
PUBLISH reaches every client; an admin API publish through each node reaches every client (and
is refused without the key); Prometheus lists every node up; stopping one node moves its clients
to the others, and delivery across the remaining nodes still works.
Exit status 0 when every check passed.
"""

import argparse
import asyncio
import json
import secrets
import shlex
import sys
import time
import urllib.error
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

REPLY_TYPES = {"joined", "left", "ack", "pong", "error"}
TIMEOUT = 10.0


class CheckFailed(Exception):
    pass


def check(cond, message):
    if not cond:
        raise CheckFailed(message)


class Client:
    """One WebSocket client: replies to its commands in order, room traffic in an inbox."""

    def __init__(self, name):
        self.name = name
        self.ws = None
        self.node = None
        self.conn_id = None
        self.inbox = []
        self.arrived = asyncio.Event()
        self.replies = asyncio.Queue()
        self.closed = asyncio.Event()
        self.close_code = None
        self.reader = None
        self.next_id = 0

    async def open(self, url):
        self.ws = await connect(url, open_timeout=TIMEOUT, close_timeout=2, max_size=2**20)
        first = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        check(first.get("type") == "welcome", f"{self.name}: first frame is not welcome: {first}")
        self.node, self.conn_id = first.get("node"), first.get("conn_id")
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self):
        try:
            async for frame in self.ws:
                if frame == "pong":
                    continue
                msg = json.loads(frame)
                if msg.get("type") in REPLY_TYPES:
                    await self.replies.put(msg)
                else:
                    self.inbox.append(msg)
                    self.arrived.set()
        except ConnectionClosed:
            pass
        finally:
            code = self.ws.close_code
            self.close_code = code if code is not None else 1006
            self.closed.set()

    async def request(self, cmd):
        self.next_id += 1
        cmd = dict(cmd, id=f"{self.name}-{self.next_id}")
        await self.ws.send(json.dumps(cmd))
        reply = await asyncio.wait_for(self.replies.get(), TIMEOUT)
        check(reply.get("id") == cmd["id"], f"{self.name}: reply {reply} does not answer {cmd}")
        return reply

    async def wait_for_messages(self, predicate, count, deadline):
        while True:
            got = [m for m in self.inbox if predicate(m)]
            if len(got) >= count:
                return got
            left = deadline - time.monotonic()
            if left <= 0 or self.closed.is_set():
                return got
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def close(self):
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


class Checks:
    def __init__(self, args):
        self.args = args
        self.nodes = args.nodes.split(",")
        self.admins = [u for u in (args.admin or "").split(",") if u]
        self.clients = []
        self.room = f"check:{secrets.token_hex(4)}"
        self.timings = []

    def say(self, text):
        print(f"cluster_check: {text}", flush=True)

    def spread(self, clients=None):
        count = {}
        for c in clients if clients is not None else self.clients:
            count[c.node] = count.get(c.node, 0) + 1
        return dict(sorted(count.items()))

    async def stage(self, name, coro):
        t0 = time.monotonic()
        self.say(f"== {name}")
        try:
            await coro
        finally:
            secs = time.monotonic() - t0
            self.timings.append((name, secs))
            self.say(f"   {name}: {secs:.1f}s")

    # -- stages ---------------------------------------------------------------------------
    async def connect_all(self):
        want = set(self.nodes)
        n = self.args.clients
        limit = n * 4
        while len(self.clients) < n or not want <= set(self.spread()):
            check(len(self.clients) < limit,
                  f"{limit} clients through the balancer reached only {self.spread()}, want {sorted(want)}")
            # One at a time, so least_conn sees the previous ones.
            self.clients.append(await Client(f"c{len(self.clients)}").open(self.args.ws))
        unknown = set(self.spread()) - want
        check(not unknown, f"clients landed on unexpected nodes {unknown}")
        self.say(f"   {len(self.clients)} clients, per node: {self.spread()}")

    async def join_all(self, clients):
        replies = await asyncio.gather(*(c.request({"type": "join", "room": self.room}) for c in clients))
        for c, r in zip(clients, replies):
            check(r.get("type") == "joined", f"{c.name} on {c.node}: join answered {r}")

    async def everyone_publishes(self, label):
        token = secrets.token_hex(4)
        clients = self.clients
        replies = await asyncio.gather(*(
            c.request({"type": "publish", "room": self.room, "data": {"check": token, "from": c.name}})
            for c in clients))
        for c, r in zip(clients, replies):
            check(r.get("type") == "ack", f"{c.name} on {c.node}: publish answered {r}")
        await self.expect_everyone_gets(
            lambda m: m.get("type") == "message" and isinstance(m.get("data"), dict)
            and m["data"].get("check") == token, len(clients), label)

    async def expect_everyone_gets(self, predicate, count, label):
        deadline = time.monotonic() + TIMEOUT
        got = await asyncio.gather(*(c.wait_for_messages(predicate, count, deadline) for c in self.clients))
        missing = {f"{c.name}@{c.node}": count - len(g) for c, g in zip(self.clients, got) if len(g) < count}
        check(not missing, f"{label}: clients missing messages (client@node: how many): {missing}")
        self.say(f"   {label}: all {len(self.clients)} clients on {len(self.spread())} nodes got {count} message(s) each")

    async def redis_publish(self):
        token = secrets.token_hex(4)
        payload = json.dumps({"data": {"check": token, "via": "redis"}})
        cmd = shlex.split(self.args.redis_cli) + ["PUBLISH", f"roomcast:room:{self.room}", payload]
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        check(proc.returncode == 0, f"{cmd[:-2]} failed: {err.decode().strip()}")
        receivers = out.decode().strip()
        self.say(f"   redis-cli PUBLISH: {receivers} subscriber(s) received it")
        check(receivers.isdigit() and int(receivers) >= 1, f"PUBLISH answered {receivers!r}")
        await self.expect_everyone_gets(
            lambda m: m.get("type") == "message" and m.get("from") == "server"
            and isinstance(m.get("data"), dict) and m["data"].get("check") == token, 1,
            "redis-cli PUBLISH")

    def http(self, method, url, body=None, key=None):
        req = urllib.request.Request(url, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    async def admin_publish(self):
        token = secrets.token_hex(4)
        for url in self.admins:
            status, body = await asyncio.to_thread(
                self.http, "POST", f"{url}/api/publish",
                {"room": self.room, "data": {"check": token, "via": url}}, self.args.api_key)
            check(status == 202, f"POST {url}/api/publish with the key: {status} {body}")
        status, body = await asyncio.to_thread(
            self.http, "POST", f"{self.admins[0]}/api/publish", {"room": self.room, "data": "nope"})
        check(status == 401, f"POST {self.admins[0]}/api/publish without the key: {status} (want 401)")
        await self.expect_everyone_gets(
            lambda m: m.get("type") == "message" and isinstance(m.get("data"), dict)
            and m["data"].get("check") == token, len(self.admins),
            f"admin API publish through {len(self.admins)} node(s)")

    async def prometheus_targets(self):
        url = f"{self.args.prometheus}/api/v1/targets?state=active"
        deadline = time.monotonic() + 60
        while True:
            status, body = await asyncio.to_thread(self.http, "GET", url)
            targets = []
            if status == 200:
                targets = [t for t in json.loads(body)["data"]["activeTargets"]
                           if t["labels"].get("job") == "roomcast"]
            health = {t["labels"].get("instance"): t["health"] for t in targets}
            if len(targets) == len(self.nodes) and all(h == "up" for h in health.values()):
                self.say(f"   prometheus targets: {health}")
                return
            check(time.monotonic() < deadline,
                  f"prometheus targets not all up after 60s: {status} {health or body[:300]}")
            await asyncio.sleep(1)

    async def failover(self):
        victim = self.args.stop_node
        check(victim in self.nodes, f"--stop-node {victim} is not one of {self.nodes}")
        on_victim = [c for c in self.clients if c.node == victim]
        others = [c for c in self.clients if c.node != victim]
        check(on_victim, f"no client on {victim}")
        self.say(f"   stopping {victim} ({len(on_victim)} clients on it): {self.args.stop_cmd}")
        proc = await asyncio.create_subprocess_shell(self.args.stop_cmd)
        try:
            await asyncio.wait_for(asyncio.gather(*(c.closed.wait() for c in on_victim)), 30)
        except asyncio.TimeoutError:
            raise CheckFailed(f"clients on {victim} still open 30s after stopping it")
        codes = sorted({c.close_code for c in on_victim})
        self.say(f"   clients on {victim} closed with {codes}")
        check(codes == [1001], f"clients of a stopping node must be closed with 1001, got {codes}")
        rc = await asyncio.wait_for(proc.wait(), 60)
        check(rc == 0, f"stop command exited {rc}")
        # The others stay connected and served.
        replies = await asyncio.gather(*(c.request({"type": "ping"}) for c in others))
        check(all(r.get("type") == "pong" for r in replies), f"clients on other nodes: {replies}")
        check(not any(c.closed.is_set() for c in others), "clients on other nodes were closed")
        # Reconnect the victim's clients through the balancer, as clients would.
        moved = []
        for c in on_victim:
            await c.close()
            deadline = time.monotonic() + 30
            while True:
                try:
                    moved.append(await Client(c.name + "r").open(self.args.ws))
                    break
                except (OSError, ConnectionClosed, asyncio.TimeoutError, CheckFailed) as e:
                    check(time.monotonic() < deadline, f"reconnecting {c.name}: {e!r}")
                    await asyncio.sleep(0.5)
        landed = self.spread(moved)
        self.say(f"   {len(moved)} reconnected clients landed on {landed}")
        check(victim not in landed, f"the balancer sent reconnecting clients to stopped {victim}")
        await self.join_all(moved)
        self.clients = others + moved
        self.say(f"   clients per node now: {self.spread()}")
        await self.everyone_publishes(f"publish across the nodes left after stopping {victim}")

    async def run(self):
        t0 = time.monotonic()
        try:
            await self.stage("connect through the balancer", self.connect_all())
            await self.stage("join a room", self.join_all(self.clients))
            await self.stage("cross-node delivery", self.everyone_publishes("every client publishes"))
            if self.args.redis_cli:
                await self.stage("redis-cli PUBLISH reaches clients", self.redis_publish())
            if self.admins:
                await self.stage("admin API publish", self.admin_publish())
            if self.args.prometheus:
                await self.stage("prometheus targets up", self.prometheus_targets())
            if self.args.stop_cmd:
                await self.stage(f"stop {self.args.stop_node}, clients move", self.failover())
        finally:
            await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
            self.say(f"stage timings (total {time.monotonic() - t0:.1f}s):")
            for name, secs in self.timings:
                self.say(f"   {name:<44} {secs:6.1f}s")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ws", required=True)
    p.add_argument("--nodes", default="gateway-1,gateway-2,gateway-3")
    p.add_argument("--clients", type=int, default=12)
    p.add_argument("--admin", default="")
    p.add_argument("--api-key", default="")
    p.add_argument("--redis-cli", default="")
    p.add_argument("--prometheus", default="")
    p.add_argument("--stop-cmd", default="")
    p.add_argument("--stop-node", default="gateway-2")
    args = p.parse_args()
    try:
        asyncio.run(Checks(args).run())
    except CheckFailed as e:
        print(f"cluster_check: FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("cluster_check: all checks passed", flush=True)


if __name__ == "__main__":
    main()
