//! The publishing half that `chaos` and `kick` share: waiting for the start signal, sending a
//! publisher's share of the fixed schedule (`echo: false`), matching replies to sends first in,
//! first out, keeping the connection alive with pings, and closing it at the stop.
//!
//! Owns that loop and the per-publisher result; connecting, joining, choosing the rooms and
//! scoring what the publishers report are the scenarios' own.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Ws;
use crate::payload::{self, Incoming, Payload};
use crate::scenario::traffic::now_us;
use crate::schedule::Schedule;

/// `Go`: the start of publishing and the end of the actions, once set.
pub(crate) type Go = watch::Receiver<Option<(Instant, Instant)>>;

/// Wait for the start; `None` when the run stopped first. Frames that arrive meanwhile go to
/// `on_text`; `None` too when the connection ends.
pub(crate) async fn wait_for_go(
    ws: &mut Ws,
    go: &mut Go,
    stop: &mut watch::Receiver<bool>,
    mut on_text: impl FnMut(&str),
) -> Option<(Instant, Instant)> {
    loop {
        tokio::select! {
            changed = go.changed() => {
                changed.ok()?;
                if let Some(start) = *go.borrow_and_update() {
                    return Some(start);
                }
            }
            _ = stop.changed() => return None,
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => on_text(t.as_str()),
                Some(Ok(_)) => {}
                _ => return None,
            },
        }
    }
}

/// What one publisher saw: the sequence numbers the server acknowledged and the error codes it
/// answered with.
#[derive(Default)]
pub(crate) struct PubResult {
    pub acked: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
}

/// The run-wide settings and counters the publishers share: the run id and schedule they
/// publish, the payload size, and how many publishes were sent, acknowledged and refused.
pub(crate) struct Publishing {
    pub run: u64,
    pub schedule: Schedule,
    pub payload_bytes: usize,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub refused: AtomicU64,
}

impl Publishing {
    pub fn new(run: u64, schedule: Schedule, payload_bytes: usize) -> Publishing {
        Publishing {
            run,
            schedule,
            payload_bytes,
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Publisher `j` on its joined connection `ws`: waits for the start, sends its messages of
    /// the schedule to `room_of(seq)` on time, pings every `heartbeat`, and closes at the
    /// stop. Returns early, without a close, when the connection fails.
    pub async fn publisher<'r>(
        &self,
        j: u64,
        mut ws: Ws,
        heartbeat: Duration,
        go: &mut Go,
        stop: &mut watch::Receiver<bool>,
        room_of: impl Fn(u64) -> Cow<'r, str>,
    ) -> PubResult {
        let mut result = PubResult::default();
        let mut pending: VecDeque<u64> = VecDeque::new();
        let Some((t0, _)) = wait_for_go(&mut ws, go, stop, |t| {
            self.on_reply(t, &mut pending, &mut result)
        })
        .await
        else {
            return result;
        };
        let schedule = self.schedule;
        let mut outgoing = schedule.messages_of(j).peekable();
        let due_of = |k: u64| t0 + schedule.offset(k);
        let timer = tokio::time::sleep_until(outgoing.peek().map_or(t0, |&k| due_of(k)));
        tokio::pin!(timer);
        let mut sending = outgoing.peek().is_some();
        let mut heartbeat = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = &mut timer, if sending => {
                    let now = Instant::now();
                    while let Some(&k) = outgoing.peek() {
                        if due_of(k) > now {
                            break;
                        }
                        outgoing.next();
                        let data = payload::encode(
                            Payload { run: self.run, seq: k, t: now_us() },
                            self.payload_bytes,
                        );
                        let cmd = payload::publish_command(&room_of(k), &data);
                        if ws.feed(Message::Text(cmd.into())).await.is_err() {
                            return result;
                        }
                        pending.push_back(k);
                        self.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    if ws.flush().await.is_err() {
                        return result;
                    }
                    match outgoing.peek() {
                        Some(&k) => timer.as_mut().reset(due_of(k)),
                        None => sending = false,
                    }
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        self.on_reply(t.as_str(), &mut pending, &mut result)
                    }
                    Some(Ok(_)) => {}
                    _ => return result,
                },
                _ = heartbeat.tick() => {
                    if ws.send(Message::Text("ping".into())).await.is_err() {
                        return result;
                    }
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        result
    }

    /// A frame on a publisher's connection: an ack or error answers the oldest publish still
    /// pending (replies come in command order); anything else is ignored.
    fn on_reply(&self, text: &str, pending: &mut VecDeque<u64>, result: &mut PubResult) {
        match payload::classify(text) {
            Incoming::Ack => {
                if let Some(k) = pending.pop_front() {
                    result.acked.push(k);
                    self.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Incoming::Error { code, .. } => {
                if pending.pop_front().is_some() {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                }
                *result.errors.entry(code.into_owned()).or_default() += 1;
            }
            _ => {}
        }
    }
}
