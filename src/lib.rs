//! RaftKV: a strongly consistent distributed key-value store built on Raft.
//!
//! (Module map: filled in as the modules land.)

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod client;
pub mod kv;
pub mod node;
pub mod raft;
pub mod server;
pub mod sim;
pub mod storage;
