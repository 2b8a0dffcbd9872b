//! The connect phase that `chaos` and `kick` share: gathering each member's connect outcome
//! until all have answered or the phase's deadline passes.
//!
//! Owns that wait and its counts; spawning the members and deciding whether enough joined are
//! the scenarios' own.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::stats;

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
