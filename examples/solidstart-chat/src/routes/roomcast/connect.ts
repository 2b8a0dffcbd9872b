// The gateway's connect hook (hooks.connect_url): asked at every WebSocket handshake. The
// browser sent our session cookie with the handshake (same host, any port); the gateway forwards
// it (hooks.forward_headers = ["cookie"]) and we answer who the connection is, or 401.
import type { APIEvent } from "@solidjs/start/server";
import { connectHook, refuse } from "@roomcast/server";
import { isStaff } from "~/lib/rules";
import { sessionFromCookie } from "~/lib/session";

const endpoint = connectHook(async ({ headers }) => {
  const session = await sessionFromCookie(headers?.cookie);
  if (!session) return refuse(401, "not signed in");
  return {
    user: session.user, // `user` in welcome, `from` of what they publish, the presence member
    rooms: ["chat:*"], // may ask to join these (chat:staff is then asked of the join hook)
    publish: ["chat:*"],
    // what presence shows of the user (members' info, member_joined): the name as typed
    info: { name: session.name, staff: isStaff(session.user) },
  };
});

export const POST = (event: APIEvent) => endpoint(event.request);
