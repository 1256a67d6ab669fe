//! The Raft consensus core: a pure, deterministic state machine.
//!
//! No I/O, no clock, no threads, no async. Time arrives as [`RaftNode::tick`]
//! calls, the network as [`RaftNode::step`] calls, clients as
//! [`RaftNode::propose`] / [`RaftNode::read_index`]; randomness comes from a
//! seed the caller passes in. What the node wants done comes out as a
//! [`Ready`] (see its docs for the order the runtime must follow).

mod election;
mod log;
mod node;
mod progress;
mod read_only;
mod replication;
mod rng;
mod types;

#[cfg(test)]
mod tests;

pub use node::{Config, InitialState, PeerStatus, ProposeOutcome, RaftError, RaftNode, Status};
pub use types::*;
