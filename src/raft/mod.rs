//! The Raft consensus core: a pure, deterministic state machine.
//!
//! No I/O, no clock, no threads, no async. Time arrives as [`RaftNode::tick`]
//! calls, the network as [`RaftNode::step`] calls, clients as
//! [`RaftNode::propose`] / [`RaftNode::read_index`]; randomness comes from a
//! seed the caller passes in. What the node wants done comes out as a
//! [`Ready`] (see its docs for the order the runtime must follow).
//!
//! (Module map and the life of one write: filled in by the core's author.)

mod types;

pub use types::*;

mod node;

pub use node::{Config, InitialState, ProposeOutcome, RaftError, RaftNode, Status, PeerStatus};
