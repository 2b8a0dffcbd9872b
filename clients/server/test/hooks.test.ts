import { describe, expect, it, vi } from "vitest";
import { allow, connectHook, deny, joinHook, publishHook, refuse } from "../src/index.js";

const post = (body: unknown, init: RequestInit = {}) =>
  new Request("http://app/roomcast/hook", { method: "POST", body: typeof body === "string" ? body : JSON.stringify(body), headers: { "content-type": "application/json" }, ...init });
const answer = async (r: Response) => ({ status: r.status, body: await r.json() });

describe("connectHook", () => {
  const endpoint = connectHook(async ({ headers, addr }) => {
    if (headers?.cookie === "session=alice") return { user: "alice", rooms: ["chat:*"], publish: ["chat:lobby"], subs: ["team:1"], exp: 1_900_000_000, info: { name: "Alice" } };
    if (headers?.cookie === "session=banned") throw refuse(403, "banned");
    if (addr === "10.0.0.66") return { user: "x", rooms: undefined, extra: "dropped" } as never;
    return refuse(401);
  });

  it("answers 200 with exactly the contract's fields", async () => {
    expect(await answer(await endpoint(post({ addr: "127.0.0.1", headers: { cookie: "session=alice" }, query: {} })))).toEqual({
      status: 200,
      body: { user: "alice", rooms: ["chat:*"], publish: ["chat:lobby"], subs: ["team:1"], exp: 1_900_000_000, info: { name: "Alice" } },
    });
    // unset fields are left out, unknown ones are not passed on
    expect(await answer(await endpoint(post({ addr: "10.0.0.66" })))).toEqual({ status: 200, body: { user: "x" } });
  });

  it("refuses with 401 (returned) or 403 (thrown), which the gateway gives the handshake", async () => {
    expect((await endpoint(post({ headers: {} }))).status).toBe(401);
    const banned = await answer(await endpoint(post({ headers: { cookie: "session=banned" } })));
    expect(banned).toEqual({ status: 403, body: { error: "banned" } });
  });

  it("400 for a body that is not a JSON object, 405 for a GET, 500 when the handler fails or names no user", async () => {
    const quiet = vi.spyOn(console, "error").mockImplementation(() => {});
    expect((await endpoint(post("{nope"))).status).toBe(400);
    expect((await endpoint(post("[1]"))).status).toBe(400);
    expect((await endpoint(new Request("http://app/x"))).status).toBe(405);
    expect((await connectHook(() => Promise.reject(new Error("db down")))(post({}))).status).toBe(500);
    expect((await connectHook(() => ({ user: "" }))(post({}))).status).toBe(500);
    quiet.mockRestore();
  });

  it("gives the handler the parsed body and the Request", async () => {
    const handler = vi.fn((_body: unknown, request: Request) => ({ user: request.headers.get("x-test") ?? "?" }));
    const r = await answer(await connectHook(handler)(post({ query: { room: "a" } }, { headers: { "x-test": "bob" } })));
    expect(handler.mock.calls[0][0]).toEqual({ query: { room: "a" } });
    expect(r.body).toEqual({ user: "bob" });
  });
});

describe("joinHook", () => {
  const endpoint = joinHook(({ user, room }) => (room === `private:${user}` ? { ...allow(), info: { role: "owner" } } : deny("not your room")));

  it("allows with info, refuses with the reason", async () => {
    expect(await answer(await endpoint(post({ user: "42", room: "private:42" })))).toEqual({ status: 200, body: { allow: true, info: { role: "owner" } } });
    expect(await answer(await endpoint(post({ user: "42", room: "private:7" })))).toEqual({ status: 200, body: { allow: false, reason: "not your room" } });
  });

  it("500 when the handler throws or answers no allow", async () => {
    const quiet = vi.spyOn(console, "error").mockImplementation(() => {});
    expect((await joinHook(() => ({}) as never)(post({ user: "u", room: "r" }))).status).toBe(500);
    expect((await joinHook(() => Promise.reject(new Error("x")))(post({ user: "u", room: "r" }))).status).toBe(500);
    quiet.mockRestore();
  });
});

describe("publishHook", () => {
  const endpoint = publishHook<{ text?: unknown }>(({ data }) => (typeof data?.text === "string" ? allow({ text: data.text.toUpperCase() }) : deny("text is missing")));

  it("replaces the data, or refuses with the reason", async () => {
    expect(await answer(await endpoint(post({ user: "u", room: "chat:1", data: { text: "hi" } })))).toEqual({ status: 200, body: { allow: true, data: { text: "HI" } } });
    expect(await answer(await endpoint(post({ user: "u", room: "chat:1", data: 7 })))).toEqual({ status: 200, body: { allow: false, reason: "text is missing" } });
  });

  it("allow() without data sends no data field (the client's data is kept)", async () => {
    expect(await answer(await publishHook(() => allow())(post({ user: "u", room: "r", data: 1 })))).toEqual({ status: 200, body: { allow: true } });
    // but an explicit null replaces with null
    expect(await answer(await publishHook(() => allow(null))(post({ user: "u", room: "r", data: 1 })))).toEqual({ status: 200, body: { allow: true, data: null } });
  });
});
