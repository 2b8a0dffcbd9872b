// Room names and glob patterns, as the gateway reads them (src/protocol/room.rs, src/auth.rs).

/** 1 to 128 bytes of `A-Z a-z 0-9 _ - . : /` (docs/protocol.md "Limits"). */
export function isValidRoom(room: string): boolean {
  return typeof room === "string" && /^[A-Za-z0-9_\-.:/]{1,128}$/.test(room);
}

/** The gateway's glob: `*` any run of characters (also `/` and `:`), `?` one character. */
export function globMatch(pattern: string, text: string): boolean {
  const source = pattern.replace(/[.+^${}()|[\]\\*?]/g, (c) => (c === "*" ? "[\\s\\S]*" : c === "?" ? "[\\s\\S]" : `\\${c}`));
  return new RegExp(`^${source}$`).test(text);
}
