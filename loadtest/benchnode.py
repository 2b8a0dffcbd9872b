"""Helpers shared by loadtest/compression.py and loadtest/sse_cpu.py (not a script).

Starts one roomcast node (memory broker, per-address limits lifted, a temp TOML config) and
stops it by its PID; reads the node's CPU from /proc, its sockets' data segments and
payload bytes sent from `ss -ti`; makes realistic JSON payloads of a given size.
"""
import json
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Node:
    """One roomcast node started by this process; `stop()` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, binary, server_extra=None, limits_extra=None):
        self.port = free_port()
        self.admin_port = free_port()
        server = {
            "listen": f"127.0.0.1:{self.port}",
            "connect_rate_per_ip": 1000000,
            "max_connections_per_ip": 1000000,
            "shutdown_grace_ms": 1000,
        }
        server.update(server_extra or {})
        limits = {
            "rate_per_sec": 100000,
            "rate_burst": 100000,
            "idle_timeout_ms": 600000,
            "ping_interval_ms": 300000,
        }
        limits.update(limits_extra or {})
        lines = ["[server]"] + [f"{k} = {toml(v)}" for k, v in server.items()]
        lines += ["[admin]", f'listen = "127.0.0.1:{self.admin_port}"', "[broker]", 'kind = "memory"']
        lines += ["[limits]"] + [f"{k} = {toml(v)}" for k, v in limits.items()]
        fd, self.config = tempfile.mkstemp(prefix="roomcast-bench-", suffix=".toml")
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log = tempfile.NamedTemporaryFile(prefix="roomcast-bench-", suffix=".log", delete=False)
        env = dict(os.environ, RUST_LOG="warn")
        self.proc = subprocess.Popen(
            [binary, "--config", self.config], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        self.pid = self.proc.pid
        deadline = time.time() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited {self.proc.returncode}: {self.read_log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError("node not ready in 15 s")
                time.sleep(0.05)

    def read_log(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()[-2000:]

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as r:
            out = {}
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    try:
                        out[name] = float(value)
                    except ValueError:
                        pass
            return out

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        for path in (self.config, self.log.name):
            try:
                os.unlink(path)
            except OSError:
                pass


def toml(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


def sample(pid, port=None):
    """The node's CPU (stat ticks and schedstat ns of all threads), wchar, and (with `port`)
    the data segments and bytes its sockets on `port` sent, plus the machine's TCP OutSegs."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    ns = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
        except OSError:
            pass
    wchar = 0
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                wchar = int(line.split()[1])
    s = {"t": time.time(), "ticks": ticks, "sched_ns": ns, "wchar": wchar, "outsegs": outsegs()}
    if port is not None:
        s["segs"], s["sent"] = node_sockets(port)
    return s


def delta(a, b):
    return {
        "wall_s": b["t"] - a["t"],
        "cpu_us": (b["ticks"] - a["ticks"]) * 1e6 / CLK_TCK,
        "sched_us": (b["sched_ns"] - a["sched_ns"]) / 1e3,
        "wchar": b["wchar"] - a["wchar"],
        "outsegs": b["outsegs"] - a["outsegs"],
        "segs": (b["segs"] - a["segs"]) if "segs" in a else None,
        "sent": (b["sent"] - a["sent"]) if "sent" in a else None,
    }


def outsegs():
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutSegs")])


def node_sockets(port):
    """Sums of `data_segs_out` and `bytes_sent` (TCP payload bytes, headers not counted) over
    the established sockets whose local port is `port`: the node's side of each client
    connection. (The node writes with sendto(2), which /proc/PID/io `wchar` does not count.)"""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout
    segs = sum(int(m) for m in re.findall(r"data_segs_out:(\d+)", out))
    sent = sum(int(m) for m in re.findall(r"bytes_sent:(\d+)", out))
    return segs, sent


WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which she "
    "do how their if will up other about out many then them these so some her would make like "
    "him into time has look two more write go see number no way could people my than first water "
    "been call who oil its now find long down day did get come made may part order price market "
    "update status player score team game room channel message online offline typing reply"
).split()
USERS = [f"user_{i:03d}" for i in range(40)]
TAGS = ["news", "sports", "tech", "chat", "alert", "music", "games", "finance"]


def payload(size, seq, rng=None):
    """A JSON value (a chat-like event: repeated keys, English words, a few numbers) whose
    compact JSON text is about `size` bytes; different for each `seq`."""
    rng = rng or random.Random(seq)

    def item(i):
        return {
            "user": rng.choice(USERS),
            "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))),
            "likes": rng.randint(0, 500),
            "tags": rng.sample(TAGS, 2),
            "ts": 1764900000000 + seq * 1000 + i,
        }

    def text(v):
        return json.dumps(v, separators=(",", ":"))

    value = {"seq": seq, "items": []}
    if size < 160:
        value = {"seq": seq, "user": rng.choice(USERS), "text": ""}
    else:
        while True:
            value["items"].append(item(len(value["items"])))
            if len(text(value)) > size:
                value["items"].pop()
                break
        value["more"] = ""
    key = "text" if "text" in value else "more"
    while len(text(value)) < size:
        value[key] = (value[key] + " " + rng.choice(WORDS)).strip()
    while len(text(value)) > size and value[key]:
        value[key] = value[key][:-1]
    return value


def compact(v):
    return json.dumps(v, separators=(",", ":"))
