//! The connect phase that `chaos` and `kick` share: what each member task is handed (the
//! connect permits, the outcome channel, the start and stop signals), and gathering each
//! member's connect outcome until all have answered or the phase's deadline passes.
//!
//! Owns those channels, that wait and its counts; spawning the members and deciding whether
//! enough joined are the scenarios' own.

use std::collections::BTreeMap;
use std::sync::Arc;

use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::Common;
use crate::scenario::publish::Go;
use crate::stats;

/// What every member task is given besides its number: the run's settings and shared state
/// `S`, the connect permits, where to report its connect outcome (as `K`), and the start and
/// stop signals.
pub(crate) struct Member<S, K> {
    pub common: Common,
    pub shared: Arc<S>,
    pub sem: Arc<Semaphore>,
    /// Taken by [`Member::report`]: each member answers once.
    pub outcome: Option<mpsc::Sender<(K, Result<u64, String>)>>,
    pub go: Go,
    pub stop: watch::Receiver<bool>,
}

impl<S, K> Member<S, K> {
    /// Report this member's first connection (`opened`: the socket and its handshake time in
    /// µs, or why not) to the connect phase as `who`, and let go of the sender. The socket
    /// when it opened and the connect phase still listens.
    pub async fn report<W>(&mut self, who: K, opened: Result<(W, u64), String>) -> Option<W> {
        let outcome = self.outcome.take()?;
        match opened {
            Ok((ws, us)) => {
                outcome.send((who, Ok(us))).await.ok()?;
                Some(ws)
            }
            Err(e) => {
                let _ = outcome.send((who, Err(e))).await;
                None
            }
        }
    }
}

impl<S, K> Clone for Member<S, K> {
    fn clone(&self) -> Self {
        Member {
            common: self.common.clone(),
            shared: self.shared.clone(),
            sem: self.sem.clone(),
            outcome: self.outcome.clone(),
            go: self.go.clone(),
            stop: self.stop.clone(),
        }
    }
}

/// The run's ends of its members' channels.
pub(crate) struct Signals<K> {
    pub outcome_rx: mpsc::Receiver<(K, Result<u64, String>)>,
    pub go_tx: watch::Sender<Option<(tokio::time::Instant, tokio::time::Instant)>>,
    pub stop_tx: watch::Sender<bool>,
}

/// The template every member task clones (`common.connect_concurrency` handshakes at once,
/// room in the outcome channel for `members`) and the run's ends of the channels. Drop the
/// template once the tasks are spawned, so that [`gather`] ends when they all answered.
pub(crate) fn members<S, K>(
    common: &Common,
    shared: &Arc<S>,
    members: u64,
) -> (Member<S, K>, Signals<K>) {
    let (go_tx, go) = watch::channel(None);
    let (stop_tx, stop) = watch::channel(false);
    let (outcome, outcome_rx) = mpsc::channel(members.max(1) as usize);
    let member = Member {
        common: common.clone(),
        shared: shared.clone(),
        sem: Arc::new(Semaphore::new(common.connect_concurrency.max(1))),
        outcome: Some(outcome),
        go,
        stop,
    };
    let signals = Signals {
        outcome_rx,
        go_tx,
        stop_tx,
    };
    (member, signals)
}

/// What the connect phase gathered: the handshake times of the members that joined and the
/// count of each error the others met.
pub(crate) struct Connects {
    pub connect_h: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
}

/// Receive `members` outcomes `(who, handshake µs or error)` from `outcome_rx`, calling
/// `on_joined(who)` for each success. At `deadline` the members still connecting are turned
/// away (their send fails, so they give up) and counted as "connect phase timed out".
pub(crate) async fn gather<K>(
    mut outcome_rx: mpsc::Receiver<(K, Result<u64, String>)>,
    members: u64,
    deadline: tokio::time::Instant,
    mut on_joined: impl FnMut(K),
) -> Connects {
    let mut connect_h = stats::histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut settled = 0u64;
    while settled < members {
        match tokio::time::timeout_at(deadline, outcome_rx.recv()).await {
            Ok(Some((who, Ok(us)))) => {
                stats::record(&mut connect_h, us);
                on_joined(who);
            }
            Ok(Some((_, Err(e)))) => *errors.entry(e).or_default() += 1,
            Ok(None) => break,
            Err(_) => {
                outcome_rx.close();
                *errors.entry("connect phase timed out".into()).or_default() += members - settled;
                break;
            }
        }
        settled += 1;
    }
    Connects { connect_h, errors }
}
