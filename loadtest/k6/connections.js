// roomcast idle connections with k6: CONNS connections open (each waits for `welcome`), hold
// HOLD_S seconds sending the text `ping` heartbeat every HEARTBEAT_S seconds, then close.
//
//   k6 run --no-usage-report -e URL=ws://127.0.0.1:8080/ws -e CONNS=1000 -e HOLD_S=30 loadtest/k6/connections.js
//
// Thresholds: every connection opened and got `welcome`, every one stayed up for the whole
// hold, every heartbeat was answered, time to `welcome` p(99) < CONNECT_P99_MS (1000).
// All connections come from 127.0.0.1: a node with default limits refuses more than
// server.max_connections_per_ip of them and more than server.connect_rate_per_ip per second.
import { setTimeout, setInterval, clearInterval } from 'k6/timers';
import { Counter, Rate, Trend } from 'k6/metrics';
import exec from 'k6/execution';
import { WebSocket, num, nodeUrls, parse } from './lib.js';

const CONNS = num('CONNS', 500);
const HOLD_S = num('HOLD_S', 10);
const HEARTBEAT_S = num('HEARTBEAT_S', 5);
const URLS = nodeUrls();

const connectTime = new Trend('roomcast_time_to_welcome', true);
const welcomed = new Rate('roomcast_welcomed');
const held = new Rate('roomcast_held');
const answered = new Rate('roomcast_heartbeat_answered');
const pings = new Counter('roomcast_pings');

export const options = {
  scenarios: {
    hold: {
      executor: 'per-vu-iterations',
      vus: CONNS,
      iterations: 1,
      maxDuration: `${HOLD_S + 60}s`,
    },
  },
  thresholds: {
    roomcast_welcomed: ['rate==1'],
    roomcast_held: ['rate==1'],
    roomcast_heartbeat_answered: ['rate>=0.99'],
    roomcast_time_to_welcome: [`p(99)<${num('CONNECT_P99_MS', 1000)}`],
  },
};

export default function () {
  const started = Date.now();
  const ws = new WebSocket(URLS[exec.vu.idInTest % URLS.length]);
  let gotWelcome = false;
  let closedEarly = false;
  let outstanding = 0;
  let heartbeat = null;
  ws.onmessage = (e) => {
    if (e.data === 'pong') {
      outstanding = Math.max(0, outstanding - 1);
      answered.add(true);
      return;
    }
    const f = parse(e.data);
    if (f && f.type === 'welcome' && !gotWelcome) {
      gotWelcome = true;
      connectTime.add(Date.now() - started);
      // Spread the heartbeats over the interval.
      setTimeout(() => {
        heartbeat = setInterval(() => {
          outstanding += 1;
          pings.add(1);
          ws.send('ping');
        }, HEARTBEAT_S * 1000);
      }, Math.random() * HEARTBEAT_S * 1000);
    }
  };
  ws.onclose = () => {
    closedEarly = true;
  };
  ws.onerror = () => {
    closedEarly = true;
  };
  setTimeout(() => {
    if (heartbeat !== null) clearInterval(heartbeat);
    welcomed.add(gotWelcome);
    held.add(gotWelcome && !closedEarly);
    for (let i = 0; i < outstanding; i++) answered.add(false);
    ws.onclose = null;
    ws.close();
  }, HOLD_S * 1000);
}
