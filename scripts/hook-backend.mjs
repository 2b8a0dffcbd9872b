// A minimal backend for the hooks (docs/backend.md), for benchmarks and trying them out:
// every join and publish is allowed, a connect is `{"user": "u-<n>"}`.
//   node scripts/hook-backend.mjs [PORT]   (default 8600, loopback only)
import http from "node:http";

const port = Number(process.argv[2] ?? 8600);
let users = 0;
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = req.url.endsWith("/connect")
      ? { user: `u-${++users}` }
      : { allow: true };
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  });
});
server.keepAliveTimeout = 120_000;
server.listen(port, "127.0.0.1", () => console.log(`hook backend on 127.0.0.1:${port}`));
