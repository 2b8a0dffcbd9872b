// A fetch-style endpoint (the hook and webhook helpers) served by node:http or Express: the
// incoming message becomes a `Request` (body read whole, at most `maxBodyBytes`), the
// `Response` is written back.

import type { IncomingMessage, ServerResponse } from "node:http";

export interface NodeHandlerOptions {
  /** Refuse a larger body with 413 (default 1 MiB). */
  maxBodyBytes?: number;
}

/**
 * `(req, res) => void` for `http.createServer` or an Express route.
 *
 * ```ts
 * app.post("/roomcast/events", nodeHandler(webhookHandler(secret, onEvents)));   // Express
 * ```
 * (With Express, mount it before a body parser, or the body is already consumed.)
 */
export function nodeHandler(endpoint: (request: Request) => Promise<Response>, options: NodeHandlerOptions = {}): (req: IncomingMessage, res: ServerResponse) => void {
  const limit = options.maxBodyBytes ?? 1 << 20;
  return (req, res) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit && !refused) {
        refused = true;
        res.writeHead(413, { "content-type": "text/plain" }).end(`bodies are limited to ${limit} bytes`);
        req.resume();
      } else if (!refused) chunks.push(chunk);
    });
    req.on("end", async () => {
      if (refused) return;
      try {
        const headers = new Headers();
        for (const [name, value] of Object.entries(req.headers)) {
          if (Array.isArray(value)) for (const v of value) headers.append(name, v);
          else if (value !== undefined) headers.set(name, value);
        }
        const method = req.method ?? "GET";
        const url = new URL(req.url ?? "/", `http://${req.headers.host ?? "localhost"}`);
        const body = method === "GET" || method === "HEAD" ? undefined : Buffer.concat(chunks);
        const response = await endpoint(new Request(url, { method, headers, body }));
        res.writeHead(response.status, Object.fromEntries(response.headers));
        res.end(Buffer.from(await response.arrayBuffer()));
      } catch (err) {
        console.error("roomcast endpoint failed:", err);
        if (!res.headersSent) res.writeHead(500);
        res.end();
      }
    });
    req.on("error", () => res.destroy());
  };
}
