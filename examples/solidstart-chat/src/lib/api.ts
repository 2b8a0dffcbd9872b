// The page's server functions and queries ("use server": they run on the app's server, the
// browser calls them over HTTP with its session cookie).
import { action, query, redirect } from "@solidjs/router";
import { getRequestEvent } from "solid-js/web";

async function currentSession() {
  "use server";
  const { sessionFromCookie } = await import("./session");
  return sessionFromCookie(getRequestEvent()?.request.headers.get("cookie"));
}

/** Who is signed in, and where the gateway is (null: show the sign-in form). */
export const getMe = query(async () => {
  "use server";
  const session = await currentSession();
  if (!session) return null;
  const { config } = await import("./config");
  const { isStaff } = await import("./rules");
  return { user: session.user, name: session.name, staff: isStaff(session.user), gateways: config.gatewayUrls };
}, "me");

export const signIn = action(async (form: FormData) => {
  "use server";
  const { sessionCookie, userIdOf } = await import("./session");
  const name = String(form.get("name") ?? "").replace(/\s+/g, " ").trim().slice(0, 40);
  const user = userIdOf(name);
  if (!user) return { error: "a name needs a letter or a digit" };
  // back to the page with its query (?ws=… in the e2e test); only a query, never another site
  const search = String(form.get("search") ?? "");
  throw redirect(search.startsWith("?") ? `/${search}` : "/", { headers: { "Set-Cookie": sessionCookie(user, name) } });
}, "sign-in");

export const signOut = action(async () => {
  "use server";
  const { clearedCookie } = await import("./session");
  throw redirect("/", { headers: { "Set-Cookie": clearedCookie() } });
}, "sign-out");

/** A system message in the lobby, published by the app's server through the admin API. */
export async function announce(text: string) {
  "use server";
  const session = await currentSession();
  if (!session) throw new Error("not signed in");
  const { roomcast } = await import("./roomcast");
  const { LOBBY } = await import("./rules");
  const clean = String(text).trim().slice(0, 500);
  if (!clean) throw new Error("nothing to announce");
  const { id } = await roomcast().publish(LOBBY, { system: true, text: clean, by: session.user });
  return id;
}

/**
 * Kick a user (staff only): their sessions issued until now are refused from now on (the
 * connect hook and the page both check), and every connection they have, on every node, is
 * closed with 4403, which @roomcast/solid does not reconnect after.
 */
export async function kick(user: string) {
  "use server";
  const session = await currentSession();
  const { isStaff } = await import("./rules");
  if (!session || !isStaff(session.user)) throw new Error("staff only");
  const { markKicked } = await import("./store");
  const { roomcast } = await import("./roomcast");
  await markKicked(user);
  await roomcast().kick(user, { code: 4403, reason: `kicked by ${session.user}` });
}

/** "Last seen" per user, from the member_left webhooks. */
export const getLastSeen = query(async () => {
  "use server";
  const session = await currentSession();
  if (!session) return {};
  const { lastSeen } = await import("./store");
  return lastSeen();
}, "last-seen");
