#!/usr/bin/env node
// A small WebSocket load for the browser tests: N plain clients join ROOM and, together,
// publish RATE messages per second to it, until the process is stopped (by PID, by the test).
//
//   node [--experimental-websocket] e2e/ws-load.mjs WS_URL ROOM N RATE
//
// Prints "joined N" once every client has joined. Node >= 22 has WebSocket built in; Node 20
// needs --experimental-websocket (the browser test passes it when needed).

const [url, room, n = "20", rate = "20"] = process.argv.slice(2);
if (!url || !room) {
  console.error("usage: ws-load.mjs WS_URL ROOM N RATE");
  process.exit(2);
}
const clients = [];
let joined = 0;
for (let i = 0; i < Number(n); i++) {
  const ws = new WebSocket(url);
  ws.onopen = () => ws.send(JSON.stringify({ type: "join", room, id: `j${i}` }));
  ws.onmessage = (e) => {
    const frame = JSON.parse(e.data);
    if (frame.type === "joined" && ++joined === Number(n)) console.log(`joined ${joined}`);
  };
  ws.onerror = () => console.error(`client ${i}: error`);
  clients.push(ws);
}
let k = 0;
setInterval(() => {
  const ws = clients[k++ % clients.length];
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "publish", room, data: { load: k } }));
}, 1000 / Math.max(1, Number(rate)));
process.on("SIGTERM", () => {
  for (const ws of clients) ws.close();
  setTimeout(() => process.exit(0), 200);
});
