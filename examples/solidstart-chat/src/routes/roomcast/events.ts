// The gateway's webhooks (webhooks.url): signed batches of presence events. member_left (a
// user's last connection left the room, on every node) is "last seen". A batch we answer 204 is
// done; anything else is delivered again, so events are deduplicated by id.
import type { APIEvent } from "@solidjs/start/server";
import { webhookHandler } from "@roomcast/server";
import { config } from "~/lib/config";
import { recordLeft } from "~/lib/store";

export async function POST(event: APIEvent) {
  const endpoint = webhookHandler(config.webhookSecret, async (events) => {
    for (const e of events) if (e.type === "member_left" && e.user) await recordLeft(e.id, e.user, e.ts);
  });
  return endpoint(event.request);
}
