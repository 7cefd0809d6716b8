//! The matcher: both ends of each flow, the episode detector, diagnosis
//! and the episode lifecycle.
//!
//! It owns per-connection state keyed by (host, 4-tuple) in ONE table,
//! whose entry holds the end's detector track and its suspect data
//! ([`state`]). A batch's samples step their tracks ([`samples`]); a
//! suspect held long enough gets its peer watched, asked of the host that
//! announced the peer's address through the gateway ([`join`]); the
//! detector ([`detector`], a pure state machine on explicit time) opens
//! and closes episodes, which [`diagnose`] explains from both ends and
//! [`episode`] writes to the store. Every held queue that ended is counted
//! ([`held`]). Who owns which address, as hosts come, go and announce
//! their addresses anew, is [`owners`]. The task and its inputs are
//! [`run`].
//!
//! It hears only plain messages ([`crate::messages::ToMatcher`]) and
//! questions ([`Question`]); it asks the gateway for watches by host
//! ([`crate::messages::ToGateway`]) and never touches a session.

pub mod detector;
pub mod diagnose;
mod episode;
pub mod evidence;
pub mod held;
mod join;
mod nat;
mod owners;
mod run;
mod samples;
mod slab_map;
mod state;
mod tuple;

pub use join::FlowView;
pub use run::{run, Question};
#[cfg(feature = "internals")]
pub use state::ask_peer_after;
pub use state::{Matcher, Stats, SILENT_POLLS};
