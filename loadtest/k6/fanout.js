// roomcast fan-out with k6: SUBS subscribers join one room; PUBS publishers (started LEAD_S
// seconds later, once everyone has joined) publish RATE messages/s in all for DURATION_S
// seconds on a fixed schedule (message k at k / RATE), with "echo": false. Every subscriber
// reports the share of the planned messages it received and each delivery's latency
// (Date.now() at receive − at send, one machine, millisecond clock).
//
//   k6 run --no-usage-report -e URL=ws://127.0.0.1:8080/ws -e SUBS=200 -e RATE=50 loadtest/k6/fanout.js
//
// Thresholds (env to change): every subscriber joined; delivery ratio ≥ MIN_RATIO (0.999) on
// average and ≥ 0.99 for the worst subscriber; latency p(99) < P99_MS (250); no error frames.
import { setTimeout, setInterval, clearInterval } from 'k6/timers';
import { Counter, Rate, Trend } from 'k6/metrics';
import exec from 'k6/execution';
import { WebSocket, env, num, nodeUrls, payload, publish, join, parse } from './lib.js';

const SUBS = num('SUBS', 100);
const RATE = num('RATE', 20);
const DURATION_S = num('DURATION_S', 10);
const LEAD_S = num('LEAD_S', 3);
const DRAIN_S = num('DRAIN_S', 3);
const PAYLOAD = num('PAYLOAD_BYTES', 100);
const ROOM = env('ROOM', 'k6-bench');
const MAX_RATE_PER_PUB = num('MAX_RATE_PER_PUB', 20);
const PUBS = Math.max(1, Math.ceil(RATE / MAX_RATE_PER_PUB));
const PLANNED = Math.max(1, Math.round(RATE * DURATION_S));
const URLS = nodeUrls();

const latency = new Trend('roomcast_delivery_latency', true);
const ratio = new Trend('roomcast_delivery_ratio');
const deliveries = new Counter('roomcast_deliveries');
const duplicates = new Counter('roomcast_duplicates');
const published = new Counter('roomcast_published');
const joined = new Rate('roomcast_joined');
const serverErrors = new Counter('roomcast_error_frames');

export const options = {
  scenarios: {
    subscribers: {
      executor: 'per-vu-iterations',
      exec: 'subscriber',
      vus: SUBS,
      iterations: 1,
      maxDuration: `${LEAD_S + DURATION_S + DRAIN_S + 30}s`,
    },
    publishers: {
      executor: 'per-vu-iterations',
      exec: 'publisher',
      vus: PUBS,
      iterations: 1,
      startTime: `${LEAD_S}s`,
      maxDuration: `${DURATION_S + DRAIN_S + 30}s`,
    },
  },
  thresholds: {
    roomcast_joined: ['rate==1'],
    roomcast_delivery_ratio: [`avg>=${num('MIN_RATIO', 0.999)}`, 'min>=0.99'],
    roomcast_delivery_latency: [`p(99)<${num('P99_MS', 250)}`],
    roomcast_error_frames: ['count==0'],
  },
};

// One run id for all VUs, so messages of another run are never counted.
export function setup() {
  return { run: Date.now() };
}

export function subscriber(data) {
  const url = URLS[exec.vu.idInTest % URLS.length];
  const seen = new Set();
  let isJoined = false;
  const ws = new WebSocket(url);
  ws.onopen = () => ws.send(join(ROOM, 'j'));
  ws.onmessage = (e) => {
    const f = parse(e.data);
    if (!f) return;
    if (f.type === 'joined') {
      isJoined = true;
    } else if (f.type === 'message' && f.data && f.data.run === data.run) {
      if (seen.has(f.data.seq)) {
        duplicates.add(1);
      } else {
        seen.add(f.data.seq);
        deliveries.add(1);
        latency.add(Date.now() - f.data.t);
      }
    } else if (f.type === 'error') {
      serverErrors.add(1, { code: String(f.code) });
    }
  };
  const heartbeat = setInterval(() => ws.send('ping'), 20000);
  setTimeout(() => {
    clearInterval(heartbeat);
    joined.add(isJoined);
    ratio.add(seen.size / PLANNED);
    ws.close();
  }, (LEAD_S + DURATION_S + DRAIN_S) * 1000);
}

export function publisher(data) {
  const j = exec.scenario.iterationInTest; // 0 .. PUBS-1
  const ws = new WebSocket(URLS[0]);
  ws.onopen = () => ws.send(join(ROOM, 'p'));
  ws.onmessage = (e) => {
    const f = parse(e.data);
    if (f && f.type === 'error') serverErrors.add(1, { code: String(f.code) });
    if (f && f.type === 'joined') {
      const t0 = Date.now();
      let k = j;
      const tick = () => {
        // Send every message that is due, then sleep until the next one.
        while (k < PLANNED && t0 + (k * 1000) / RATE <= Date.now()) {
          ws.send(publish(ROOM, payload(data.run, k, PAYLOAD)));
          published.add(1);
          k += PUBS;
        }
        if (k < PLANNED) {
          setTimeout(tick, Math.max(0, t0 + (k * 1000) / RATE - Date.now()));
        } else {
          setTimeout(() => ws.close(), DRAIN_S * 1000);
        }
      };
      tick();
    }
  };
}
