// The app's rules about rooms: who may enter which, asked by the gateway's join hook.

import { config } from "./config";

export const LOBBY = "chat:lobby";
export const STAFF_ROOM = "chat:staff";

export function isStaff(user: string): boolean {
  return config.staff.includes(user);
}

/** null: allowed; else the reason the user sees. */
export function mayJoin(user: string, room: string): string | null {
  if (room === STAFF_ROOM) return isStaff(user) ? null : "staff only";
  if (room.startsWith("chat:")) return null;
  return "no such room";
}
