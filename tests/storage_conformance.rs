//! The storage conformance suite (`raftkv::storage::conformance`) run
//! against both implementations of the storage traits: the in-memory
//! stores the simulation uses and the sled store a node uses. A case that
//! passes for one and fails for the other means the simulation does not
//! test what production runs.

use std::path::PathBuf;

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

mod mem {
    raftkv::storage_conformance_tests!(raftkv::storage::conformance::MemFactory);
}

mod sled {
    raftkv::storage_conformance_tests!(super::SledFactory::new());
}
