#!/usr/bin/env python3
"""Checks the Grafana dashboard and provisioning against a live gateway's /metrics.

  check_dashboard.py --metrics-url http://127.0.0.1:9090/metrics [--rules-out FILE]
  check_dashboard.py --prometheus http://127.0.0.1:9091

With --metrics-url:

- every `roomcast_*` name in the dashboard's queries (panels, template variables) is a metric
  the gateway exports (histograms as NAME_bucket/_sum/_count), read from a live /metrics;
- the dashboard shows what issue 6 asks for (open connections, messages in and delivered,
  delivery latency, rate-limited and invalid messages, slow-consumer closes, broker up and
  reconnects) and issue 17 adds (broker resubscribes, history catch-up and unkept messages,
  presence writes); other exported metrics it lacks are listed, not failed;
- every panel and query uses the provisioned Prometheus datasource (by uid), and the
  dashboards provider points where docker-compose.yml mounts the dashboards;
- with --rules-out, writes the queries as a Prometheus rules file, so that
  `promtool check rules FILE` checks their PromQL syntax.
With --prometheus (a Prometheus scraping a running cluster): every query of the dashboard runs
there and returns at least one series (retried for up to 60 s, while scrapes accumulate).
Exit status 0 when all holds.
"""

import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent
DASHBOARD = DEPLOY / "grafana/dashboards/roomcast.json"
DATASOURCES = DEPLOY / "grafana/provisioning/datasources/prometheus.yml"
PROVIDERS = DEPLOY / "grafana/provisioning/dashboards/roomcast.yml"
COMPOSE = DEPLOY.parent / "docker-compose.yml"

REQUIRED = [
    "roomcast_connections_open",
    "roomcast_messages_received_total",
    "roomcast_messages_delivered_total",
    "roomcast_delivery_latency_seconds",
    "roomcast_rate_limited_total",
    "roomcast_invalid_messages_total",
    "roomcast_slow_consumer_closes_total",
    "roomcast_broker_up",
    "roomcast_broker_reconnects_total",
    # issue 17
    "roomcast_broker_resubscribes_total",
    "roomcast_history_caught_up_total",
    "roomcast_history_unkept_total",
    "roomcast_presence_writes_total",
    "roomcast_presence_room_writes_total",
]
NAME = re.compile(r"\broomcast_[a-zA-Z0-9_]+")


def exported(metrics_text):
    """Names a query may use: every sample name, and each histogram's base name."""
    names, histograms = set(), set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            names.add(name)
            if kind.strip() == "histogram":
                histograms.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    for h in histograms:
        names.update({h + "_bucket", h + "_sum", h + "_count"})
    return names, histograms


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def queries(dash):
    for p in walk_panels(dash.get("panels", [])):
        for t in p.get("targets") or []:
            yield f"{p.get('title')!r} {t.get('legendFormat', '')}", t.get("expr", "")


def check_live(prometheus, dash):
    """Every dashboard query returns series on a live Prometheus; 0 when so."""
    deadline = time.monotonic() + 60
    while True:
        empty = []
        for where, expr in queries(dash):
            expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$instance", ".*")
            url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
            if body.get("status") != "success":
                print(f"check_dashboard: FAIL: {where}: {body}", file=sys.stderr)
                return 1
            if not body["data"]["result"]:
                empty.append(where)
        if not empty:
            print(f"check_dashboard: all {len(list(queries(dash)))} dashboard queries return series on {prometheus}")
            return 0
        if time.monotonic() > deadline:
            for where in empty:
                print(f"check_dashboard: FAIL: no series for {where}", file=sys.stderr)
            return 1
        time.sleep(2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metrics-url")
    ap.add_argument("--prometheus")
    ap.add_argument("--rules-out")
    ap.add_argument("--dashboard", default=str(DASHBOARD))
    args = ap.parse_args()
    if args.prometheus:
        sys.exit(check_live(args.prometheus, json.loads(Path(args.dashboard).read_text())))
    if not args.metrics_url:
        ap.error("--metrics-url or --prometheus")
    problems = []

    with urllib.request.urlopen(args.metrics_url, timeout=10) as resp:
        names, histograms = exported(resp.read().decode())
    roomcast_names = {n for n in names if n.startswith("roomcast_")}
    if not roomcast_names:
        sys.exit(f"no roomcast_ metrics at {args.metrics_url}")

    dash = json.loads(Path(args.dashboard).read_text())
    ds_uids = set(re.findall(r"^\s*uid:\s*(\S+)", DATASOURCES.read_text(), re.M))
    exprs = []  # (where, expr)
    for p in walk_panels(dash.get("panels", [])):
        if p.get("type") == "row":
            continue
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if (p.get("datasource") or {}).get("uid") not in ds_uids:
            problems.append(f"{where}: datasource {p.get('datasource')} is not a provisioned one {sorted(ds_uids)}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no queries")
        for t in targets:
            if (t.get("datasource") or {}).get("uid") not in ds_uids:
                problems.append(f"{where}: query {t.get('refId')} datasource is not a provisioned one")
            exprs.append((where, t.get("expr", "")))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        exprs.append((f"variable {v.get('name')}", q.get("query", "") if isinstance(q, dict) else str(q or "")))

    used = set()
    for where, expr in exprs:
        for name in NAME.findall(expr):
            used.add(name)
            if name not in names:
                problems.append(f"{where}: {name} is not exported by the gateway")
    used_bases = {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in histograms else n
                  for n in used}
    for name in REQUIRED:
        if name not in used_bases:
            problems.append(f"the dashboard does not show {name}")

    try:
        import yaml  # PyYAML, which kubernetes-validate brings into the venv
    except ImportError:
        yaml = None
    if yaml is not None:
        compose = yaml.safe_load(COMPOSE.read_text())
        for ds in yaml.safe_load(DATASOURCES.read_text()).get("datasources", []):
            host_port = re.match(r"https?://([^:/]+):(\d+)", ds.get("url", ""))
            if ds.get("type") != "prometheus" or not host_port:
                problems.append(f"datasource {ds.get('name')}: not a prometheus URL: {ds.get('url')}")
            elif host_port.group(1) not in compose["services"]:
                problems.append(f"datasource {ds.get('name')}: {host_port.group(1)} is not a compose service")
        providers = yaml.safe_load(PROVIDERS.read_text()).get("providers", [])
        if not providers:
            problems.append("no dashboard provider")
    provider_paths = re.findall(r"^\s*path:\s*(\S+)", PROVIDERS.read_text(), re.M)
    for path in provider_paths:
        if f":{path}:" not in COMPOSE.read_text() and f":{path}\n" not in COMPOSE.read_text():
            problems.append(f"dashboards provider path {path} is not mounted in docker-compose.yml")

    if args.rules_out:
        rules = [{"record": f"roomcast_dashboard_check:{i}",
                  "expr": expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
                  .replace("$instance", ".*")}
                 for i, (_, expr) in enumerate(exprs) if not expr.startswith("label_values(")]
        Path(args.rules_out).write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))

    unused = sorted(n for n in roomcast_names
                    if n not in used and re.sub(r"_(bucket|sum|count)$", "", n) not in used_bases)
    print(f"check_dashboard: {len(exprs)} queries, {len(used)} metric names, all exported by the gateway"
          if not any("not exported" in p for p in problems) else "check_dashboard: unknown metric names")
    if unused:
        print(f"check_dashboard: exported but not on the dashboard: {', '.join(unused)}")
    for p in problems:
        print(f"check_dashboard: FAIL: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
