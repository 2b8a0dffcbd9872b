#!/usr/bin/env python3
# Segments per delivery beside a peers-harness sitting (issue 20): every second, the data segments
# (`ss -tinp`, data_segs_out) each gateway node has sent on its client sockets, as a series.
#   python3 scripts/peers-segments.py watch SERIES.jsonl 'REGEX of the node command line' &
#   ... run.sh runs, each with its log saved as OUT/NAME.log ...
#   python3 scripts/peers-segments.py report SERIES.jsonl OUT
# report: per run and ramp step, data segments the two nodes sent / deliveries the loadgen
# received (the step's window is from its "ramp step" log line to the next log line). The
# segments of the connects (101 + welcome) and joins are counted too: at 1k/s they dominate.
import datetime, glob, json, os, re, subprocess, sys, time

def watch(out, pattern):
    pat = re.compile(pattern)
    socks = {}
    while True:
        ps = {}
        for pid in os.listdir('/proc'):
            if not pid.isdigit():
                continue
            try:
                cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\0', b' ').decode()
            except OSError:
                continue
            if pat.search(cmd) and not cmd.startswith(('bash', 'env', 'timeout', 'python')):
                ps[pid] = cmd
        if ps:
            listen = {}
            for line in subprocess.run(['ss', '-tlnpH'], capture_output=True, text=True).stdout.splitlines():
                for pid in re.findall(r'pid=(\d+)', line):
                    if pid in ps:
                        listen.setdefault(pid, set()).add(line.split()[3].rsplit(':', 1)[1])
            txt = subprocess.run(['ss', '-tinpH', 'state', 'established'], capture_output=True, text=True).stdout
            cur = None
            for line in txt.splitlines():
                if not line.startswith(('\t', ' ')):
                    f = line.split()
                    m = re.search(r'pid=(\d+)', line)
                    cur = None
                    if m and m.group(1) in ps and len(f) >= 4 and f[2].rsplit(':', 1)[1] in listen.get(m.group(1), ()):
                        cur = (m.group(1), f[2], f[3])
                elif cur:
                    m = re.search(r'data_segs_out:(\d+)', line)
                    if m:
                        socks[cur] = int(m.group(1))
                    cur = None
            agg = {}
            for (pid, _, _), segs in socks.items():
                agg[pid] = agg.get(pid, 0) + segs
            with open(out, 'a') as series:
                series.write(json.dumps({'t': time.time(), 'agg': {p: [agg.get(p, 0)] for p in ps}}) + '\n')
        time.sleep(1)

def report(series_path, out):
    series = [json.loads(l) for l in open(series_path)]
    def total_at(t, pids):
        best = {}
        for s in series:
            if s['t'] > t:
                break
            for p in pids:
                best[p] = max(best.get(p, 0), s['agg'].get(p, [0])[0])
        return sum(best.values())
    day = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')
    for log in sorted(glob.glob(out + '/*.log'), key=lambda p: open(p).readline()):
        name = os.path.basename(log)[:-4]
        lines = open(log).read().splitlines()
        pids = {m.group(1) for l in lines for m in [re.search(r'node_[ab] pid (\d+)', l)] if m}
        events = []
        for l in lines:
            m = re.match(r'\[run.sh (\d\d:\d\d:\d\d)\] (.*)', l)
            if m:
                t = datetime.datetime.strptime(f'{day} {m.group(1)}', '%Y-%m-%d %H:%M:%S')
                events.append((t.replace(tzinfo=datetime.timezone.utc).timestamp(), m.group(2)))
        got = {}
        for res in glob.glob(f'{out}/{name}-*.json'):
            for s in json.load(open(res))['ramp']['steps']:
                got[s['deliveries_per_s']] = s['result'].get('received_deliveries', 0)
        row = []
        for i, (t, msg) in enumerate(events):
            m = re.match(r'ramp step (\d+) ', msg)
            if not m:
                continue
            step = int(m.group(1))
            end = next((t2 for t2, m2 in events[i + 1:] if not m2.startswith('machine')), t + 25)
            segs = total_at(end + 1, pids) - total_at(t, pids)
            row.append(f'{step}: {segs / got[step]:.2f}' if got.get(step) else f'{step}: -')
        if row:
            print(name, '|', ', '.join(row))

if __name__ == '__main__':
    if sys.argv[1] == 'watch':
        watch(sys.argv[2], sys.argv[3])
    else:
        report(sys.argv[2], sys.argv[3])
