import { createHmac } from "node:crypto";
import { describe, expect, it } from "vitest";
import { mintToken, tokenClaims } from "../src/index.js";

function decode(token: string): { header: Record<string, unknown>; claims: Record<string, unknown>; signed: string; signature: string } {
  const [h, p, s] = token.split(".");
  return {
    header: JSON.parse(Buffer.from(h, "base64url").toString()),
    claims: JSON.parse(Buffer.from(p, "base64url").toString()),
    signed: `${h}.${p}`,
    signature: s,
  };
}

describe("mintToken", () => {
  it("signs an HS256 JWT whose signature checks with the secret and not with another", () => {
    const token = mintToken("s3cret", { sub: "42", now: 1_700_000_000 });
    const { header, signed, signature } = decode(token);
    expect(header).toEqual({ alg: "HS256", typ: "JWT" });
    expect(signature).toBe(createHmac("sha256", "s3cret").update(signed).digest("base64url"));
    expect(signature).not.toBe(createHmac("sha256", "other").update(signed).digest("base64url"));
    expect(token).not.toMatch(/[=+/]/); // base64url without padding
  });

  it("carries sub, iat, exp (ttl from now), a fresh jti, and the room claims", () => {
    const a = decode(mintToken("k", { sub: "42", now: 1_700_000_000, ttlS: 600, rooms: ["chat:*"], publish: ["chat:lobby"], subs: ["team:7"] })).claims;
    expect(a).toMatchObject({ sub: "42", iat: 1_700_000_000, exp: 1_700_000_600, rooms: ["chat:*"], publish: ["chat:lobby"], subs: ["team:7"] });
    expect(a.jti).toMatch(/^[0-9a-f-]{36}$/);
    const b = decode(mintToken("k", { sub: "42", now: 1_700_000_000 })).claims;
    expect(b.jti).not.toBe(a.jti);
    expect(b.exp).toBe(1_700_003_600); // default one hour
    expect(b).not.toHaveProperty("rooms"); // absent means any room: never an empty list by default
    expect(b).not.toHaveProperty("publish");
    expect(b).not.toHaveProperty("subs");
  });

  it("takes exp, jti, nbf, iss, aud as given", () => {
    const c = tokenClaims({ sub: "u", now: 100, exp: 500, jti: "t-1", nbf: 90, iss: "app", aud: "roomcast" });
    expect(c).toEqual({ sub: "u", iat: 100, exp: 500, jti: "t-1", nbf: 90, iss: "app", aud: "roomcast" });
  });

  it("refuses what the gateway would refuse: no sub, exp not after now, a subs entry that is no room name", () => {
    expect(() => mintToken("k", { sub: "" })).toThrow(/sub/);
    expect(() => mintToken("k", { sub: "u", now: 100, exp: 100 })).toThrow(/exp/);
    expect(() => mintToken("k", { sub: "u", subs: ["no spaces"] })).toThrow(/subs/);
    expect(() => mintToken("", { sub: "u" })).toThrow(/secret/);
  });

  it("does not let extra claims override the ones it sets", () => {
    const c = tokenClaims({ sub: "u", now: 100, extra: { sub: "admin", role: "mod" } });
    expect(c.sub).toBe("u");
    expect(c.role).toBe("mod");
  });
});
