//! The scenarios. `fanout` and `rooms` describe a [`traffic::TrafficPlan`] and let the
//! `traffic` engine run it; `ramp` repeats `fanout` at rising rates; `connections` opens and
//! holds idle connections; `chaos` cuts history-room subscribers; `kick` kicks and revokes
//! victims through the admin API and checks every other member lost nothing. Each returns a report struct; printing is `report`'s business.

pub mod chaos;
pub(crate) mod connect_phase;
pub mod connections;
pub mod fanout;
pub(crate) mod footer;
pub mod kick;
pub(crate) mod publish;
pub mod ramp;
pub mod rooms;
pub mod traffic;
