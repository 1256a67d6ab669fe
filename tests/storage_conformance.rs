//! The storage conformance suite (`raftkv::storage::conformance`) run
//! against both implementations of the storage traits: the in-memory
//! stores the simulation uses and the sled store a node uses. A case that
//! passes for one and fails for the other means the simulation does not
//! test what production runs.

use std::path::PathBuf;

use raftkv::storage::conformance::node_store::NodeStoreFactory;
use raftkv::storage::conformance::{StoreFactory, Stores};
use raftkv::storage::SledStore;

/// Sled stores, each in its own directory under one temporary directory
/// (removed when the factory drops). The log store and the state machine
/// are two handles of the same database, as in the node.
struct SledFactory {
    root: tempfile::TempDir,
    made: u32,
}

const NODE: &str = "node-1";
const CLUSTER: &str = "conformance";

impl SledFactory {
    fn new() -> Self {
        SledFactory {
            root: tempfile::tempdir().expect("temporary directory"),
            made: 0,
        }
    }

    fn open(path: &std::path::Path) -> Stores<SledStore, SledStore> {
        let store = SledStore::open(path, NODE, CLUSTER).expect("open sled store");
        Stores {
            log: store.clone(),
            sm: store,
        }
    }
}

impl StoreFactory for SledFactory {
    type Log = SledStore;
    type Sm = SledStore;

    fn new_store(&mut self) -> Stores<SledStore, SledStore> {
        self.made += 1;
        let dir: PathBuf = self.root.path().join(format!("store-{}", self.made));
        Self::open(&dir)
    }

    /// Flushes, drops both handles (closing the database) and opens the
    /// directory again, verifying every record.
    fn reopen(&mut self, stores: Stores<SledStore, SledStore>) -> Stores<SledStore, SledStore> {
        let dir = stores.log.path().to_path_buf();
        stores.log.flush().expect("flush before closing");
        drop(stores);
        Self::open(&dir)
    }
}

impl NodeStoreFactory for SledFactory {
    type Store = SledStore;

    fn new_node_store(&mut self) -> SledStore {
        self.new_store().log
    }

    fn reopen_node_store(&mut self, store: SledStore) -> SledStore {
        self.reopen(Stores {
            log: store.clone(),
            sm: store,
        })
        .log
    }
}

mod mem {
    raftkv::storage_conformance_tests!(raftkv::storage::conformance::MemFactory);
}

mod sled {
    raftkv::storage_conformance_tests!(super::SledFactory::new());
}

mod mem_node_store {
    raftkv::node_store_conformance_tests!(raftkv::storage::conformance::MemFactory);
}

mod sled_node_store {
    raftkv::node_store_conformance_tests!(super::SledFactory::new());
}

/// The simulation's store and the node's stream images of the same state:
/// each store's image, installed into a fresh store of its kind, answers
/// every read, past revisions and history included, exactly like the other
/// (the items are each store's own records, so the bytes differ).
#[test]
fn both_stores_images_carry_the_same_state() {
    use raftkv::kv;
    use raftkv::raft::{Entry, EntryPayload, HardState};
    use raftkv::storage::mem::MemStore;
    use raftkv::storage::{LogStore, SnapshotSource, SnapshotStore, StateMachine};
    let entries: Vec<Entry> = (1..=40)
        .map(|i| Entry {
            index: i,
            term: 1 + i / 20,
            payload: EntryPayload::Command(
                if i % 7 == 0 {
                    kv::Command::DeleteRange(kv::DeleteRangeRequest {
                        key: format!("k{:02}", i - 3).into_bytes(),
                        range_end: Vec::new(),
                        prev_kv: false,
                    })
                } else {
                    kv::Command::Put(kv::PutRequest {
                        key: format!("k{:02}", i % 25).into_bytes(),
                        value: format!("value {i}").into_bytes(),
                        ..Default::default()
                    })
                }
                .encode(),
            ),
        })
        .collect();
    let hs = HardState {
        term: 3,
        vote: 1,
        commit: 40,
    };
    let mut mem = MemStore::new();
    let mut sled = SledFactory::new().new_node_store();
    for s in [&mut mem as &mut dyn LogStore, &mut sled] {
        s.save(Some(&hs), &entries).unwrap();
    }
    mem.apply(&entries).unwrap();
    sled.apply(&entries).unwrap();
    let image = |chunks: Vec<raftkv::storage::ImageChunk>| -> Vec<u8> {
        chunks.into_iter().flat_map(|c| c.data).collect()
    };
    let meta = mem.applied();
    let a = image(
        mem.begin_snapshot()
            .unwrap()
            .chunks(128)
            .collect::<Result<_, _>>()
            .unwrap(),
    );
    let b = image(
        SnapshotStore::begin_snapshot(&sled)
            .unwrap()
            .chunks(128)
            .collect::<Result<_, _>>()
            .unwrap(),
    );
    assert!(!a.is_empty() && !b.is_empty());
    let mut mem2 = MemStore::new();
    mem2.restore(meta, &a).unwrap();
    let mut sled2 = SledFactory::new().new_node_store();
    sled2.restore(meta, &b).unwrap();
    let revision = mem2.revision().unwrap();
    assert_eq!(revision, sled2.revision().unwrap());
    assert!(revision > 30);
    for rev in 1..=revision {
        let req = kv::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: rev,
            ..Default::default()
        };
        assert_eq!(
            mem2.range(&req).unwrap(),
            sled2.range(&req).unwrap(),
            "range at revision {rev}"
        );
    }
    let every = kv::KeyRange::new(&[0], &[0]);
    assert_eq!(
        mem2.events(1, every, usize::MAX).unwrap(),
        sled2.events(1, every, usize::MAX).unwrap()
    );
}
