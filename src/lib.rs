//! RaftKV: a strongly consistent distributed key-value store built on Raft.
//!
//! (Module map: filled in as the modules land.)

#![warn(missing_docs)]

pub mod kv;
pub mod raft;
pub mod storage;
pub mod node;
