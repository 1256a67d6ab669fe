//! RaftKV: a strongly consistent distributed key-value store built on Raft.
//!
//! One binary runs a node daemon, a CLI client and a load tool. The crate is
//! layered so that the consensus logic can be tested without any I/O:
//!
//! | module | role |
//! |---|---|
//! | [`raft`] | the pure consensus core: ticks, messages and proposals in, a [`raft::Ready`] of work out |
//! | [`kv`] | the key-value commands and the single function that decides what each does |
//! | [`storage`] | durable log, hard state and KV state machine on sled (checksummed), plus an in-memory twin |
//! | [`sim`] | deterministic, seeded simulation of whole clusters running the real Raft loop and core |
//! | [`node`] | the runtime: the Raft loop that drives the core with storage, peers and a clock (generic over all three), and the handle the server uses |
//! | [`transport`] | the peer transport over HTTP: sending, receiving, envelope checks, snapshot streaming |
//! | [`server`] | axum routes: the client API of the contract (the process mounts the transport's `/raft/*` next to them) |
//! | [`daemon`] | one node process: storage + node + transport + server, and its clean shutdown |
//! | [`etcd`] | etcd v3's gRPC API: generated types, conversions to [`kv`], etcd's errors, the services over an [`etcd::EtcdBackend`] (not wired into the node yet) |
//! | [`client`] | HTTP client with leader discovery and retry, used by the CLI and bench |
//! | [`http_client`] | kept-alive HTTP/1.1 client that sends paths byte for byte (client, forwarding) |
//! | [`cli`] | the `raftkv` command line |
//! | [`bench`] | `raftkv bench`: load generator for RaftKV and etcd |
//!
//! Dependencies point down the table's layers (raft ← kv ← storage ← node ←
//! server ← transport ← daemon ← cli; sim sits on node); a unit test
//! (`layers.rs`) checks the direction and that there is no cycle.
//!
//! See `ARCHITECTURE.md` for the rules that keep data safe and the life of a write.

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod etcd;
pub mod http_client;
pub mod kv;
pub mod node;
pub mod raft;
pub mod server;
pub mod sim;
pub mod storage;
pub mod transport;

#[cfg(test)]
mod layers;
