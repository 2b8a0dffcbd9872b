// The gateway's admin API, through @roomcast/server.
import { RoomcastAdmin } from "@roomcast/server";
import { config } from "./config";

let admin: RoomcastAdmin | undefined;
export function roomcast(): RoomcastAdmin {
  return (admin ??= new RoomcastAdmin({ url: config.adminUrl, apiKey: config.apiKey }));
}
