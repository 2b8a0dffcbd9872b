// The gateway's join hook (hooks.join_url, for rooms matching hooks.join_rooms): the app's own
// rule decides who enters.
import type { APIEvent } from "@solidjs/start/server";
import { allow, deny, joinHook } from "@roomcast/server";
import { mayJoin } from "~/lib/rules";

const endpoint = joinHook(({ user, room }) => {
  const refusal = mayJoin(String(user), room);
  return refusal === null ? allow() : deny(refusal);
});

export const POST = (event: APIEvent) => endpoint(event.request);
