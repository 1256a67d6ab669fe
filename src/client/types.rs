//! Request and response shapes of the client API (see the contract).

use serde::{Deserialize, Serialize};

pub use crate::kv::KvItem;

/// The answer to a committed write (`PUT` or `DELETE /kv/{key}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The key written.
    pub key: String,
    /// Raft log index of the write (the key's new mod index for a put).
    pub index: u64,
}

/// One page of a prefix listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    /// Items sorted by key.
    pub items: Vec<KvItem>,
    /// True when more items follow the last one of this page.
    pub more: bool,
}

/// The header of every answer of the JSON API (etcd's `ResponseHeader`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The cluster's id.
    pub cluster_id: u64,
    /// The id of the member that answered.
    pub member_id: u64,
    /// The store revision the answer was served at (reads) or created
    /// (writes that changed something; else the current revision).
    pub revision: i64,
    /// The answering member's Raft term.
    pub raft_term: u64,
}

/// An answer of the JSON API: the data model's response and the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply<T> {
    /// Revision, term and ids of the answer.
    pub header: Header,
    /// The response itself.
    pub body: T,
}

/// The current leader as a node sees it (`GET /cluster/leader`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The leader's node id.
    pub leader_id: String,
    /// The leader's client URL (from its advertise address; empty if the
    /// node did not say).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub leader_url: String,
    /// The leader's term.
    #[serde(default)]
    pub term: u64,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// The fields of `GET /cluster/status` that the client understands. Every
/// field is optional on the wire so that a newer or older node still shows
/// up; the raw JSON is kept next to it where it matters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    /// The node's id.
    pub node_id: String,
    /// "leader", "follower" or "candidate".
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader_id: Option<String>,
    /// That leader's URL.
    pub leader_url: Option<String>,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied to the state machine.
    pub applied_index: u64,
    /// Last index in the node's log.
    pub last_log_index: u64,
    /// Index covered by the latest snapshot.
    pub snapshot_index: u64,
    /// Peers, in whatever shape the node reports them.
    pub peers: Vec<serde_json::Value>,
}

/// The body of `GET /health`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    /// "ok" when the node is alive.
    pub status: String,
    /// The node's id.
    pub node_id: String,
    /// The node's role.
    pub role: String,
}

/// The JSON error body every non-2xx answer carries (all fields optional so
/// that a proxy's or an older node's body still parses).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorBody {
    pub error: Option<String>,
    pub index: Option<u64>,
    pub outcome: Option<String>,
}

/// Which reads are allowed to skip the leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable: confirmed by the leader (ReadIndex) before answering.
    #[default]
    Linearizable,
    /// Served from the contacted node's state machine; may be stale.
    Stale,
}

/// Where requests are sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Routing {
    /// Find the leader (`GET /cluster/leader`) and send everything there,
    /// saving followers the forwarding hop.
    #[default]
    Leader,
    /// Spread requests over all nodes in turn; followers forward to the
    /// leader themselves.
    RoundRobin,
}
