//! Who is in the cluster: node names and addresses mapped onto the core's
//! numeric [`NodeId`]s, and the cluster id every RPC carries.
//!
//! Every node computes the same ids and the same cluster id from its own
//! command line, without talking to anyone, so the mapping must be a pure
//! function of what all members are told:
//!
//! * Named form (`node-2=127.0.0.1:8002,...`): a node's id is the FNV-1a hash
//!   of its name. Addresses may change between restarts; names may not.
//! * Bare form (`localhost:8002,...`, the seed project's): there are no
//!   names, so every member — this node included — is identified by the hash
//!   of its normalised advertise address (`localhost` → `127.0.0.1`). Display
//!   names are learned later from the RPC envelopes peers send.
//!
//! The cluster id, unless configured, is a hash of the sorted member set, so
//! two differently configured clusters never accept each other's RPCs.

use std::collections::BTreeSet;

use crate::raft::{NodeId, NO_NODE};

use super::{NodeConfig, NodeError};

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The id the consensus core uses.
    pub id: NodeId,
    /// The configured name, when known from the command line.
    pub name: Option<String>,
    /// Normalised `host:port` where the member listens.
    pub addr: String,
}

impl Member {
    /// Base URL of the member's HTTP API, e.g. `http://127.0.0.1:8002`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The resolved, static membership of the cluster.
#[derive(Clone, Debug)]
pub struct Membership {
    /// This node's id.
    pub self_id: NodeId,
    /// This node's name (`--node-id`).
    pub self_name: String,
    /// Every member, this node included, sorted by id.
    pub members: Vec<Member>,
    /// The cluster id carried by every RPC.
    pub cluster_id: String,
    /// True when ids come from addresses (the bare `--peers` form).
    pub by_address: bool,
}

impl Membership {
    /// The cluster id as a 64-bit number ([`id_of`] of
    /// [`Membership::cluster_id`]): what etcd-style response headers carry.
    pub fn cluster_id_u64(&self) -> u64 {
        id_of(&self.cluster_id)
    }

    /// Resolves the membership from a node's configuration.
    pub fn resolve(config: &NodeConfig) -> Result<Membership, NodeError> {
        let self_name = config.node_id.trim().to_string();
        if self_name.is_empty() {
            return Err(NodeError::Config("--node-id must not be empty".into()));
        }
        let self_addr = match &config.advertise {
            Some(a) if !a.trim().is_empty() => normalise_addr(a)?,
            _ => normalise_addr(&format!("{}:{}", bracket_v6(&config.host), config.port))?,
        };
        // A single unnamed peer switches the whole cluster to address
        // identities: mixing would let two nodes disagree about an id.
        let by_address = config.peers.iter().any(|p| p.name.is_none());

        let mut members: Vec<Member> = Vec::new();
        let self_member = Member {
            id: if by_address {
                id_of(&self_addr)
            } else {
                id_of(&self_name)
            },
            name: Some(self_name.clone()),
            addr: self_addr.clone(),
        };
        members.push(self_member.clone());

        for peer in &config.peers {
            let addr = normalise_addr(&peer.addr)?;
            let name = match &peer.name {
                Some(n) if !by_address => {
                    let n = n.trim().to_string();
                    if n.is_empty() {
                        return Err(NodeError::Config(format!(
                            "peer `{}` has an empty name",
                            peer.addr
                        )));
                    }
                    Some(n)
                }
                Some(n) => Some(n.trim().to_string()),
                None => None,
            };
            let id = if by_address {
                id_of(&addr)
            } else {
                id_of(name.as_deref().unwrap_or_default())
            };
            // Listing yourself among the peers (as etcd's --initial-cluster
            // does) is allowed; it must agree with what this node advertises.
            if id == self_member.id {
                if by_address || addr == self_addr {
                    continue;
                }
                return Err(NodeError::Config(format!(
                    "--peers lists this node ({self_name}) at {addr}, but it advertises {self_addr}"
                )));
            }
            if let Some(other) = members.iter().find(|m| m.id == id) {
                let same = other.addr == addr && other.name == name;
                if same {
                    continue;
                }
                return Err(NodeError::Config(format!(
                    "peers `{}` and `{}` map to the same node id; \
                     every member needs a distinct name and address",
                    describe(other.name.as_deref(), &other.addr),
                    describe(name.as_deref(), &addr)
                )));
            }
            if let Some(other) = members.iter().find(|m| m.addr == addr) {
                return Err(NodeError::Config(format!(
                    "two members share the address {addr}: `{}` and `{}`",
                    describe(other.name.as_deref(), &other.addr),
                    describe(name.as_deref(), &addr)
                )));
            }
            members.push(Member { id, name, addr });
        }
        members.sort_by_key(|m| m.id);

        let cluster_id = match &config.cluster_id {
            Some(c) if !c.trim().is_empty() => c.trim().to_string(),
            _ => derive_cluster_id(&members, by_address),
        };
        Ok(Membership {
            self_id: self_member.id,
            self_name,
            members,
            cluster_id,
            by_address,
        })
    }

    /// Ids of every voting member.
    pub fn voters(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// The member with `id`, if any.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Every member except this node.
    pub fn peers(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.id != self.self_id)
    }

    /// This node's advertised `host:port`.
    pub fn self_addr(&self) -> &str {
        self.member(self.self_id)
            .map(|m| m.addr.as_str())
            .unwrap_or_default()
    }
}

fn describe(name: Option<&str>, addr: &str) -> String {
    match name {
        Some(n) => format!("{n}={addr}"),
        None => addr.to_string(),
    }
}

fn bracket_v6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// FNV-1a (64 bit) of `s`, never [`NO_NODE`]: a stable id every node
/// computes the same way, whatever its platform or build.
pub fn id_of(s: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    if h == NO_NODE {
        1
    } else {
        h
    }
}

/// Normalises `host:port`: trims, drops an `http://` prefix and a trailing
/// `/`, lower-cases the host and maps `localhost` to `127.0.0.1`, so that
/// `localhost:8002` and `127.0.0.1:8002` name the same member.
pub fn normalise_addr(raw: &str) -> Result<String, NodeError> {
    let s = raw.trim();
    let s = s.strip_prefix("http://").unwrap_or(s);
    let s = s.trim_end_matches('/');
    let bad = |why: &str| NodeError::Config(format!("bad address `{raw}`: {why}"));
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port must be a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("the port must be a number from 1 to 65535"));
    }
    let host = host.to_ascii_lowercase();
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(bad("missing or malformed host"));
    }
    let host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    Ok(format!("{host}:{port}"))
}

fn derive_cluster_id(members: &[Member], by_address: bool) -> String {
    // Sorted, so every member derives the same id whatever its own position.
    let keys: BTreeSet<String> = members
        .iter()
        .map(|m| {
            if by_address {
                m.addr.clone()
            } else {
                m.name.clone().unwrap_or_default()
            }
        })
        .collect();
    let joined = keys.into_iter().collect::<Vec<_>>().join(",");
    format!("raftkv-{:016x}", id_of(&joined))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::PeerSpec;

    fn cfg(id: &str, port: u16, peers: &[(&str, &str)]) -> NodeConfig {
        let mut c = NodeConfig::new(id);
        c.port = port;
        c.peers = peers
            .iter()
            .map(|(n, a)| PeerSpec {
                name: if n.is_empty() {
                    None
                } else {
                    Some(n.to_string())
                },
                addr: a.to_string(),
            })
            .collect();
        c
    }

    #[test]
    fn named_members_agree_on_ids_and_cluster() {
        let a = Membership::resolve(&cfg(
            "node-1",
            8001,
            &[("node-2", "127.0.0.1:8002"), ("node-3", "127.0.0.1:8003")],
        ))
        .unwrap();
        let b = Membership::resolve(&cfg(
            "node-2",
            8002,
            &[("node-3", "localhost:8003"), ("node-1", "127.0.0.1:8001")],
        ))
        .unwrap();
        assert_eq!(a.members, b.members);
        assert_eq!(a.cluster_id, b.cluster_id);
        assert_eq!(a.self_id, id_of("node-1"));
        assert_eq!(b.self_id, id_of("node-2"));
        assert!(!a.by_address);
        assert_eq!(a.members.len(), 3);
    }

    #[test]
    fn bare_form_uses_addresses_for_everyone() {
        let a = Membership::resolve(&cfg(
            "node-1",
            8001,
            &[("", "localhost:8002"), ("", "localhost:8003")],
        ))
        .unwrap();
        let c = Membership::resolve(&cfg(
            "whatever",
            8003,
            &[("", "127.0.0.1:8001"), ("", "LOCALHOST:8002")],
        ))
        .unwrap();
        assert!(a.by_address);
        let ids = |m: &Membership| {
            m.members
                .iter()
                .map(|x| (x.id, x.addr.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&a), ids(&c));
        assert_eq!(a.cluster_id, c.cluster_id);
        assert_eq!(a.self_id, id_of("127.0.0.1:8001"));
        assert_eq!(c.self_id, id_of("127.0.0.1:8003"));
    }

    #[test]
    fn different_member_sets_get_different_cluster_ids() {
        let a = Membership::resolve(&cfg("n1", 8001, &[("n2", "127.0.0.1:8002")])).unwrap();
        let b = Membership::resolve(&cfg("n1", 8001, &[("n3", "127.0.0.1:8002")])).unwrap();
        assert_ne!(a.cluster_id, b.cluster_id);
        let mut explicit = cfg("n1", 8001, &[("n2", "127.0.0.1:8002")]);
        explicit.cluster_id = Some("prod".into());
        assert_eq!(Membership::resolve(&explicit).unwrap().cluster_id, "prod");
    }

    #[test]
    fn listing_yourself_is_tolerated_but_must_match() {
        let m = Membership::resolve(&cfg(
            "n1",
            8001,
            &[("n1", "127.0.0.1:8001"), ("n2", "127.0.0.1:8002")],
        ))
        .unwrap();
        assert_eq!(m.members.len(), 2);
        let err = Membership::resolve(&cfg("n1", 8001, &[("n1", "127.0.0.1:9999")]));
        assert!(matches!(err, Err(NodeError::Config(_))));
    }

    #[test]
    fn duplicate_addresses_and_bad_addresses_are_rejected() {
        assert!(Membership::resolve(&cfg(
            "n1",
            8001,
            &[("n2", "127.0.0.1:8002"), ("n3", "localhost:8002")]
        ))
        .is_err());
        for bad in ["nohost", "h:notaport", "h:0", ":80", "h:70000"] {
            assert!(normalise_addr(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            normalise_addr(" http://LocalHost:80/ ").unwrap(),
            "127.0.0.1:80"
        );
    }

    #[test]
    fn single_node_cluster() {
        let m = Membership::resolve(&cfg("solo", 8001, &[])).unwrap();
        assert_eq!(m.voters(), vec![id_of("solo")]);
        assert_eq!(m.peers().count(), 0);
        assert_eq!(m.self_addr(), "127.0.0.1:8001");
    }

    #[test]
    fn fnv_is_the_reference_function() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(id_of(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(id_of("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
