//! The deadlines of one connection, served by its one timer: the idle limit, the server ping,
//! the token's expiry and the `token_expiring` warning before it, and the end of the write
//! coalescing window while frames are held. What is sent when one is due, and the timer
//! itself, are the connection loop's (`connection.rs`).

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Config;
use crate::node::Session;
use crate::outbox::Closer;
use crate::protocol::Disconnect;

/// The deadlines of a connection: idle, server ping, and its token's warning and expiry.
/// The intervals are read from the node's configuration when needed, not copied into every
/// connection.
pub(super) struct Heartbeat<'a> {
    config: &'a Config,
    pub(super) last_read: Instant,
    next_ping: Instant,
    token: Option<TokenClock>,
    /// The end of the write coalescing window of the last flush (`None` until a flush, or
    /// when `server.write_coalesce_ms` is 0).
    pub(super) window_end: Option<Instant>,
    /// Frames are held until `window_end`: the timer includes it.
    pub(super) holding: bool,
}

/// When a connection's token runs out (close 4001) and when it is warned of it.
struct TokenClock {
    /// The `Identity::expires_at` these instants come from: a refresh that changes it re-arms
    /// both, so every token is warned of once.
    expires_at: u64,
    expiry: Instant,
    /// `None` once `token_expiring` is sent.
    warn_at: Option<Instant>,
}

impl TokenClock {
    fn new(expires_at: u64, warning: Duration) -> Self {
        let expiry = token_deadline(expires_at);
        // A token that has less than the warning left is warned of at once.
        let warn_at = expiry.checked_sub(warning).unwrap_or_else(Instant::now);
        TokenClock {
            expires_at,
            expiry,
            warn_at: Some(warn_at),
        }
    }
}

impl<'a> Heartbeat<'a> {
    /// The deadlines of a connection opening now with `session`'s token, if it has one (a
    /// connection lives no longer than its token).
    pub(super) fn new(config: &'a Config, session: Option<&Session>) -> Self {
        let last_read = Instant::now();
        let mut beat = Heartbeat {
            config,
            last_read,
            next_ping: last_read + ping_every(config),
            token: None,
            window_end: None,
            holding: false,
        };
        if let Some(session) = session {
            beat.retoken(session);
        }
        beat
    }

    /// Follow the session's token: true when its expiry changed (the timer must be re-armed).
    pub(super) fn retoken(&mut self, session: &Session) -> bool {
        let Some(identity) = &session.identity else {
            return false;
        };
        if self
            .token
            .as_ref()
            .is_some_and(|t| t.expires_at == identity.expires_at)
        {
            return false;
        }
        // `auth.expiry_warning_ms`: how long before the expiry `token_expiring` goes.
        let warning = Duration::from_millis(self.config.auth.expiry_warning_ms);
        self.token = Some(TokenClock::new(identity.expires_at, warning));
        true
    }

    /// The earliest deadline.
    pub(super) fn deadline(&self) -> Instant {
        let mut due = (self.last_read + idle(self.config)).min(self.next_ping);
        if self.holding
            && let Some(window_end) = self.window_end
        {
            due = due.min(window_end);
        }
        match &self.token {
            None => due,
            Some(token) => {
                let due = due.min(token.expiry);
                token.warn_at.map_or(due, |warn_at| due.min(warn_at))
            }
        }
    }
}

/// What the timer found due.
pub(super) enum Due {
    Nothing,
    /// The connection is idle or its token ran out: it is closing.
    Close,
    Ping,
    /// Send `token_expiring`: the token runs out in `in_ms`.
    Warning {
        in_ms: u64,
    },
}

/// The timer fired: close an idle or expired connection, or say what to send.
pub(super) fn on_timer(beat: &mut Heartbeat<'_>, closer: &Closer) -> Due {
    let now = Instant::now();
    if beat.holding && beat.window_end.is_none_or(|end| now >= end) {
        // The outbox hands the held frames over on the loop's next turn.
        beat.holding = false;
    }
    if now >= beat.last_read + idle(beat.config) {
        closer.close(Disconnect::Idle);
        return Due::Close;
    }
    if let Some(token) = &mut beat.token {
        if now >= token.expiry {
            closer.close(Disconnect::TokenExpired);
            return Due::Close;
        }
        if token.warn_at.is_some_and(|warn_at| now >= warn_at) {
            token.warn_at = None;
            let left = token.expiry.saturating_duration_since(now).as_millis();
            return Due::Warning {
                in_ms: u64::try_from(left).unwrap_or(u64::MAX),
            };
        }
    }
    if now >= beat.next_ping {
        beat.next_ping = now + ping_every(beat.config);
        return Due::Ping;
    }
    Due::Nothing
}

fn idle(config: &Config) -> Duration {
    Duration::from_millis(config.limits.idle_timeout_ms)
}

fn ping_every(config: &Config) -> Duration {
    Duration::from_millis(config.limits.ping_interval_ms)
}

/// The instant a token with `exp` (seconds since the epoch) runs out.
pub(crate) fn token_deadline(exp: u64) -> Instant {
    let left = (exp as f64 - crate::clock::now_secs_f64()).max(0.0);
    Instant::now() + Duration::from_secs_f64(left.min(far_future_secs()))
}

fn far_future_secs() -> f64 {
    // About 30 years: effectively never, and far from Instant overflow.
    86_400.0 * 365.0 * 30.0
}
