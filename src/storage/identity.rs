//! Who a data dir belongs to: node id, cluster id and on-disk format.
//!
//! Recorded once when a data dir is created and checked on every open, so a
//! node started with the wrong `--data-dir` (another node's, another
//! cluster's, or one written by an incompatible version) refuses to start
//! instead of serving — or worse, voting — with someone else's state.

use serde::{Deserialize, Serialize};

use super::StorageError;

/// Version of the on-disk layout (trees, keys, record format). Bump it on
/// any incompatible change.
///
/// * 1: one `raft_log` record per entry.
/// * 2: one `raft_log` record per saved batch of entries (keyed by its
///   first index). A version-1 dir is refused, not migrated.
/// * 3: the key-value tree is etcd v3's MVCC store (current records,
///   history, revision; `crate::storage::mvcc_tree`) and log commands are
///   `crate::kv::Command`s. A version-2 dir is refused, not migrated.
pub const FORMAT_VERSION: u32 = 3;

/// The identity record of a data dir.
///
/// Format: a checksummed record (see [`super::record`]) under key
/// `identity` in tree `identity`, whose payload is `node_id` and
/// `cluster_id` (varint length and UTF-8 bytes each) then `format_version`
/// as a varint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Node id, e.g. `node-1`.
    pub node_id: String,
    /// Cluster id.
    pub cluster_id: String,
    /// [`FORMAT_VERSION`] of the software that created the dir.
    pub format_version: u32,
}

impl Identity {
    /// The identity a node running this software expects.
    pub fn current(node_id: &str, cluster_id: &str) -> Self {
        Identity {
            node_id: node_id.to_string(),
            cluster_id: cluster_id.to_string(),
            format_version: FORMAT_VERSION,
        }
    }

    /// Checks that `stored` (found in the data dir `path`) matches `self`.
    pub fn check(&self, stored: &Identity, path: &str) -> Result<(), StorageError> {
        let mismatch = |reason: String| StorageError::IdentityMismatch {
            path: path.to_string(),
            reason,
        };
        if stored.format_version != self.format_version {
            return Err(mismatch(format!(
                "has on-disk format version {}, this build reads version {} \
                 (start from an empty data dir; to keep the data, read it out with the \
                 older build first)",
                stored.format_version, self.format_version
            )));
        }
        if stored.node_id != self.node_id {
            return Err(mismatch(format!(
                "belongs to node id `{}`, not `{}` (wrong --data-dir or --node-id?)",
                stored.node_id, self.node_id
            )));
        }
        if stored.cluster_id != self.cluster_id {
            return Err(mismatch(format!(
                "belongs to cluster `{}`, not `{}`",
                stored.cluster_id, self.cluster_id
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_identity_passes() {
        let id = Identity::current("node-1", "c");
        assert!(id.check(&id.clone(), "/d").is_ok());
    }

    #[test]
    fn mismatches_name_path_and_both_values() {
        let want = Identity::current("node-1", "alpha");
        let other_node = Identity::current("node-2", "alpha");
        let msg = want.check(&other_node, "/data/x").unwrap_err().to_string();
        assert!(
            msg.contains("/data/x") && msg.contains("node-1") && msg.contains("node-2"),
            "{msg}"
        );

        let other_cluster = Identity::current("node-1", "beta");
        let msg = want
            .check(&other_cluster, "/data/x")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("alpha") && msg.contains("beta"), "{msg}");

        let mut old = want.clone();
        old.format_version = 0;
        let msg = want.check(&old, "/data/x").unwrap_err().to_string();
        assert!(msg.contains("format version 0"), "{msg}");
    }
}
