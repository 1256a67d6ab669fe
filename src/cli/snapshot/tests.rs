//! `restore` against the real export path: a sled store with history is
//! exported through [`crate::node::NodeHandle::export_snapshot`], written
//! to a file, restored into a new data dir, and the restored store must
//! read exactly like the source (records, revisions, history, hash).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::kv::{
    Command, CompactionRequest, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest,
};
use crate::node::handle::testing::{fake_node, Mode};
use crate::node::StoreExporter;
use crate::raft::{Entry, EntryPayload};
use crate::storage::snapshot_file::decode_file;

fn put(k: &str, v: &str) -> Command {
    Command::Put(PutRequest {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        ..Default::default()
    })
}

/// A source store: overwrites, a delete, a compaction, and history after
/// it.
fn source(dir: &Path) -> SledStore {
    let mut store = SledStore::open(dir, "node-1", "old-cluster").unwrap();
    let cmds = [
        put("a", "1"),
        put("b", "1"),
        put("a", "2"),
        put("c", "1"),
        Command::DeleteRange(DeleteRangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        }),
        Command::Compact(CompactionRequest {
            revision: 4,
            physical: true,
        }),
        put("a", "3"),
        put("d", "1"),
    ];
    let entries: Vec<Entry> = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| Entry {
            index: i as u64 + 1,
            term: 3,
            payload: EntryPayload::Command(c.encode()),
        })
        .collect();
    store.apply(&entries).unwrap();
    store
}

fn all(store: &SledStore, revision: i64) -> Vec<KeyValue> {
    store
        .range(&RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..Default::default()
        })
        .unwrap()
        .body
        .kvs
}

/// The file `NodeHandle::export_snapshot` produces for `store`.
async fn export(store: &SledStore) -> (Vec<u8>, String) {
    let membership = Membership::resolve(&NodeConfig::new("node-1")).unwrap();
    let fake = fake_node::<()>(membership, Mode::Leader, Duration::from_secs(5));
    let exporter = Arc::new(StoreExporter(store.clone()));
    assert!(fake.handle.shared.exporter.set(exporter).is_ok());
    let export = fake.handle.export_snapshot().await.unwrap();
    assert_eq!(export.meta(), store.applied());
    let cluster = export.cluster_id().to_string();
    let pieces: Vec<_> = export.collect().await;
    let mut bytes = Vec::new();
    for p in pieces {
        bytes.extend_from_slice(&p.unwrap());
    }
    (bytes, cluster)
}

fn restore_args(file: &Path, dir: &Path, name: &str, cluster: Option<&str>) -> RestoreArgs {
    RestoreArgs {
        file: file.to_path_buf(),
        data_dir: dir.to_path_buf(),
        name: name.into(),
        initial_cluster: parse_peer_list("n1=127.0.0.1:9101,n2=127.0.0.1:9102,n3=127.0.0.1:9103")
            .unwrap(),
        cluster_id: cluster.map(str::to_string),
    }
}

#[tokio::test]
async fn export_then_restore_reproduces_the_state_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(&tmp.path().join("src"));
    let (bytes, cluster) = export(&src).await;
    let (summary, _) = decode_file(&bytes).unwrap();
    assert_eq!(summary.cluster_id, cluster);
    let file = tmp.path().join("backup.snap");
    std::fs::write(&file, &bytes).unwrap();

    let seen = inspect(&file).unwrap();
    assert_eq!(seen.mvcc.revision, src.revision().unwrap());
    assert_eq!(seen.mvcc.compact_revision, 4);
    assert_eq!(seen.mvcc.keys, 3, "a, c and d are live");
    assert_eq!(seen.file.meta, src.applied());

    let dir = tmp.path().join("restored-n2");
    let args = restore_args(&file, &dir, "n2", None);
    let restored = tokio::task::spawn_blocking(move || restore(&args))
        .await
        .unwrap()
        .unwrap();
    // The default id is the one `raftkv start` derives for these members.
    let expect = Membership::resolve(&{
        let mut c = NodeConfig::new("n2");
        c.port = 9102;
        c.peers = parse_peer_list("n1=127.0.0.1:9101,n3=127.0.0.1:9103")
            .unwrap()
            .0;
        c
    })
    .unwrap();
    assert_eq!(restored.cluster_id, expect.cluster_id);
    let cmd = &restored.start_command;
    assert!(cmd.contains("--node-id n2 --port 9102 "), "{cmd}");
    assert!(
        cmd.contains(&format!("--cluster-id {}", expect.cluster_id)),
        "{cmd}"
    );
    assert!(
        cmd.contains("n1=127.0.0.1:9101") && cmd.contains("n3=127.0.0.1:9103"),
        "{cmd}"
    );
    assert!(
        !cmd.contains("n2=") && !cmd.contains("--advertise"),
        "{cmd}"
    );

    let mut new = SledStore::open(&dir, "n2", &restored.cluster_id).unwrap();
    assert_eq!(new.revision().unwrap(), src.revision().unwrap());
    assert_eq!(new.compact_revision().unwrap(), 4);
    assert_eq!(all(&new, 0), all(&src, 0));
    for rev in 4..=src.revision().unwrap() {
        assert_eq!(all(&new, rev), all(&src, rev), "at revision {rev}");
    }
    let rev = src.revision().unwrap();
    assert_eq!(new.hash_kv(rev).unwrap(), src.hash_kv(rev).unwrap());
    let log = new.load().unwrap();
    assert_eq!(log.snapshot, src.applied());
    assert!(log.entries.is_empty());
    assert_eq!(log.hard_state.term, src.applied().term);
    assert_eq!(log.hard_state.vote, NO_NODE);
    assert_eq!(new.applied_index(), src.applied().index);

    // The restored machine goes on at revision + 1.
    let next = Entry {
        index: src.applied().index + 1,
        term: 4,
        payload: EntryPayload::Command(put("e", "1").encode()),
    };
    new.apply(&[next]).unwrap();
    assert_eq!(new.revision().unwrap(), rev + 1);
    drop(new);

    // Another identity cannot open it: it is the new cluster's.
    assert!(SledStore::open(&dir, "n2", "old-cluster").is_err());
}

#[tokio::test]
async fn restore_refuses_bad_targets_and_files_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(&tmp.path().join("src"));
    let (bytes, cluster) = export(&src).await;
    let file = tmp.path().join("backup.snap");
    std::fs::write(&file, &bytes).unwrap();

    // A non-empty data dir is left alone.
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"x").unwrap();
    let err = restore(&restore_args(&file, &busy, "n1", Some("new"))).unwrap_err();
    assert!(matches!(err, SnapshotCmdError::Refused(_)), "{err}");
    assert_eq!(std::fs::read(busy.join("keep")).unwrap(), b"x");

    // The source cluster's id is refused.
    let dir = tmp.path().join("same");
    let err = restore(&restore_args(&file, &dir, "n1", Some(&cluster))).unwrap_err();
    assert!(matches!(err, SnapshotCmdError::Refused(_)), "{err}");
    assert!(!dir.exists());

    // A member that is not in the list is refused.
    let err = restore(&restore_args(&file, &dir, "n9", Some("new"))).unwrap_err();
    assert!(matches!(err, SnapshotCmdError::Refused(_)), "{err}");

    // A damaged file is refused before anything is written; an empty dir
    // stays empty.
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    let bad_file = tmp.path().join("bad.snap");
    std::fs::write(&bad_file, &bad).unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = restore(&restore_args(&bad_file, &empty, "n1", Some("new"))).unwrap_err();
    assert!(matches!(err, SnapshotCmdError::File { .. }), "{err}");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);

    let short = tmp.path().join("short.snap");
    std::fs::write(&short, &bytes[..bytes.len() - 1]).unwrap();
    let err = inspect(&short).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotCmdError::File {
                source: SnapshotFileError::Truncated { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn part_path_and_endpoints() {
    assert_eq!(
        part_path(Path::new("/x/backup.snap")),
        PathBuf::from("/x/backup.snap.part")
    );
    assert_eq!(
        endpoint_url("127.0.0.1:8001/").unwrap(),
        "http://127.0.0.1:8001"
    );
    assert_eq!(endpoint_url("http://h:1").unwrap(), "http://h:1");
    assert!(endpoint_url(" ").is_err());
}
