// roomcast chat shape with k6: ROOMS rooms of MEMBERS members; every member joins its room,
// and after LEAD_S seconds publishes RATE_PER_MEMBER messages/s for DURATION_S seconds with
// "echo": false; every member receives the others' messages. A message from another room
// counts as misrouted.
//
//   k6 run --no-usage-report -e URL=ws://127.0.0.1:8080/ws -e ROOMS=50 -e MEMBERS=5 loadtest/k6/chat.js
//
// Thresholds: every member joined; delivery ratio ≥ MIN_RATIO (0.999) on average and ≥ 0.99
// for the worst member; latency p(99) < P99_MS (250); nothing misrouted; no error frames.
import { setTimeout, setInterval, clearInterval } from 'k6/timers';
import { Counter, Rate, Trend } from 'k6/metrics';
import exec from 'k6/execution';
import { WebSocket, env, num, nodeUrls, payload, publish, join, parse } from './lib.js';

const ROOMS = num('ROOMS', 20);
const MEMBERS = num('MEMBERS', 5);
const RATE_PER_MEMBER = num('RATE_PER_MEMBER', 1);
const DURATION_S = num('DURATION_S', 10);
const LEAD_S = num('LEAD_S', 3);
const DRAIN_S = num('DRAIN_S', 3);
const PAYLOAD = num('PAYLOAD_BYTES', 100);
const PREFIX = env('ROOM_PREFIX', 'k6-chat');
const PER_MEMBER = Math.max(1, Math.round(RATE_PER_MEMBER * DURATION_S));
const URLS = nodeUrls();

const latency = new Trend('roomcast_delivery_latency', true);
const ratio = new Trend('roomcast_delivery_ratio');
const misrouted = new Counter('roomcast_misrouted');
const joined = new Rate('roomcast_joined');
const serverErrors = new Counter('roomcast_error_frames');

export const options = {
  scenarios: {
    members: {
      executor: 'per-vu-iterations',
      vus: ROOMS * MEMBERS,
      iterations: 1,
      maxDuration: `${LEAD_S + DURATION_S + DRAIN_S + 30}s`,
    },
  },
  thresholds: {
    roomcast_joined: ['rate==1'],
    roomcast_delivery_ratio: [`avg>=${num('MIN_RATIO', 0.999)}`, 'min>=0.99'],
    roomcast_delivery_latency: [`p(99)<${num('P99_MS', 250)}`],
    roomcast_misrouted: ['count==0'],
    roomcast_error_frames: ['count==0'],
  },
};

export function setup() {
  return { run: Date.now() };
}

export default function (data) {
  const me = exec.vu.idInTest - 1; // 0-based
  const room = Math.floor(me / MEMBERS) % ROOMS;
  const roomName = `${PREFIX}-${room}`;
  // seq = member * PER_MEMBER + i: the sender (and so its room) is in the number.
  const roomOf = (seq) => Math.floor(Math.floor(seq / PER_MEMBER) / MEMBERS);
  const seen = new Set();
  let isJoined = false;
  const ws = new WebSocket(URLS[me % URLS.length]);
  ws.onopen = () => ws.send(join(roomName, 'j'));
  ws.onmessage = (e) => {
    const f = parse(e.data);
    if (!f) return;
    if (f.type === 'joined') {
      isJoined = true;
    } else if (f.type === 'message' && f.data && f.data.run === data.run) {
      if (roomOf(f.data.seq) !== room) {
        misrouted.add(1);
      } else if (!seen.has(f.data.seq)) {
        seen.add(f.data.seq);
        latency.add(Date.now() - f.data.t);
      }
    } else if (f.type === 'error') {
      serverErrors.add(1, { code: String(f.code) });
    }
  };
  let sent = 0;
  setTimeout(() => {
    const timer = setInterval(() => {
      if (sent >= PER_MEMBER) {
        clearInterval(timer);
        return;
      }
      ws.send(publish(roomName, payload(data.run, me * PER_MEMBER + sent, PAYLOAD)));
      sent += 1;
    }, 1000 / RATE_PER_MEMBER);
  }, LEAD_S * 1000);
  setTimeout(() => {
    joined.add(isJoined);
    ratio.add(seen.size / ((MEMBERS - 1) * PER_MEMBER));
    ws.close();
  }, (LEAD_S + DURATION_S + DRAIN_S) * 1000);
}
