// The one error type of the package: what the gateway (or Redis) answered when a call failed.

/** A call the gateway or Redis refused. `code` is the admin API's error code (`bad_request`,
 * `invalid_room`, `unauthorized`, `too_large`, `unavailable`, `not_found`, …), or `redis` /
 * `network` / `timeout` for failures before an answer. `status` is the HTTP status (0 when
 * there was none). */
export class RoomcastError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "RoomcastError";
    this.status = status;
    this.code = code;
  }
}
