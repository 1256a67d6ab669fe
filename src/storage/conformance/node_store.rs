//! Conformance cases for the whole store the Raft loop runs on
//! ([`NodeStore`]): the snapshot operations of [`SnapshotStore`] (a
//! consistent view streamed while applies go on, staging that leaves the
//! live state alone, an atomic and durable install) together with the log
//! and state machine they act on. Run against [`MemStore`] (the
//! simulation's) and the sled store by `tests/storage_conformance.rs`
//! through [`node_store_conformance_tests`](crate::node_store_conformance_tests).
//!
//! Adding a case works as in the parent module: a `pub fn case<F:
//! NodeStoreFactory>(f: &mut F)` below, listed in the macro (a unit test
//! checks the list).

use super::{all_items, hs, meta, ok, puts, value_of, Item, Model};
use crate::raft::{Entry, SnapshotMeta};
use crate::storage::image::{ImageChunk, ImageTrailer};
use crate::storage::mem::MemStore;
use crate::storage::{
    LogStore, NodeStore, SnapshotSource, SnapshotStore, SnapshotWriter, StagedSnapshot,
    StateMachine, StorageError,
};

/// Makes the node stores under test.
pub trait NodeStoreFactory {
    /// The store.
    type Store: NodeStore;

    /// A fresh, empty store, independent of every other one.
    fn new_node_store(&mut self) -> Self::Store;

    /// Closes `store` cleanly and opens it again from what it made
    /// durable.
    fn reopen_node_store(&mut self, store: Self::Store) -> Self::Store;
}

impl NodeStoreFactory for super::MemFactory {
    type Store = MemStore;

    fn new_node_store(&mut self) -> MemStore {
        MemStore::new()
    }

    fn reopen_node_store(&mut self, mut store: MemStore) -> MemStore {
        // A clean shutdown flushes; the restart keeps only durable state.
        ok(store.flush(), "flush");
        store.flush_state_machine();
        store.crash();
        store
    }
}

/// Expands to one `#[test]` per node-store conformance case.
#[macro_export]
macro_rules! node_store_conformance_tests {
    ($factory:expr) => {
        $crate::node_store_conformance_tests!(@cases $factory;
            applied_names_index_and_term,
            a_source_shows_the_state_when_it_began,
            an_image_travels_through_staging_and_installs,
            staging_leaves_the_live_state_alone,
            staging_refuses_damaged_or_incomplete_images,
            an_install_replaces_a_longer_log,
            an_install_survives_reopen,
            compaction_makes_the_applied_state_durable,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let mut factory = $factory;
                $crate::storage::conformance::node_store::$case(&mut factory);
            }
        )*
    };
}

// ------------------------------------------------------------ helpers --

/// Small chunks, so that every image travels in several.
const CHUNK: usize = 96;

/// A store whose log holds `entries` and that has applied all of them.
fn node_store_with<F: NodeStoreFactory>(f: &mut F, entries: &[Entry]) -> F::Store {
    let mut s = f.new_node_store();
    let term = entries.last().map_or(0, |e| e.term);
    let commit = entries.last().map_or(0, |e| e.index);
    ok(s.save(Some(&hs(term, 1, commit)), entries), "save");
    ok(s.apply(entries), "apply");
    s
}

fn everything<S: StateMachine>(s: &S) -> Vec<Item> {
    all_items(s)
}

/// The source's image, as the transport sends it.
fn chunks_of<Src: SnapshotSource>(source: Src) -> Vec<ImageChunk> {
    let chunks: Vec<ImageChunk> = source
        .chunks(CHUNK)
        .collect::<Result<_, StorageError>>()
        .unwrap_or_else(|e| panic!("reading the image failed: {e}"));
    assert!(
        chunks.last().is_some_and(|c| c.trailer.is_some()),
        "the last chunk carries the trailer"
    );
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c.trailer.is_none()),
        "only the last chunk carries the trailer"
    );
    chunks
}

fn whole(chunks: &[ImageChunk]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
}

/// Stages `chunks` into `store` as the receiving transport does.
fn stage<S: SnapshotStore>(store: &S, chunks: &[ImageChunk]) -> Result<S::Staged, StorageError> {
    let mut w = store.stage_snapshot()?;
    for c in chunks {
        w.write(&c.data)?;
        if let Some(t) = &c.trailer {
            return w.finish(t);
        }
    }
    Err(StorageError::Inconsistent("no trailer".into()))
}

// -------------------------------------------------------------- cases --

/// `applied` names the applied index and the term of the entry there.
pub fn applied_names_index_and_term<F: NodeStoreFactory>(f: &mut F) {
    let s = f.new_node_store();
    assert_eq!(s.applied(), SnapshotMeta::default(), "a new store");
    let mut entries = puts(1, 3, 1);
    entries.extend(puts(4, 5, 2));
    let s = node_store_with(f, &entries);
    assert_eq!(s.applied(), meta(5, 2));
    assert_eq!(s.applied().index, s.applied_index());
}

/// A source opened at applied index N streams the state at N, however the
/// state machine changes meanwhile (overwrites, deletes, new keys).
pub fn a_source_shows_the_state_when_it_began<F: NodeStoreFactory>(f: &mut F) {
    let entries = puts(1, 20, 1);
    let mut s = node_store_with(f, &entries);
    let mut model = Model::default();
    entries.iter().for_each(|e| {
        model.apply(e);
    });
    let source = ok(s.begin_snapshot(), "begin_snapshot");
    assert_eq!(source.meta(), meta(20, 1), "the source's meta");
    // Change the state under the source.
    let later = vec![
        super::put(21, 1, "k3", "changed"),
        super::del(22, 1, "k7", None),
        super::put(23, 1, "zz-new", "new"),
        super::del(24, 1, "k1", None),
    ];
    ok(s.save(None, &later), "save more");
    ok(s.apply(&later), "apply more");
    let chunks = chunks_of(source);
    let mut fresh = f.new_node_store();
    ok(
        fresh.restore(meta(20, 1), &whole(&chunks)),
        "restore the image",
    );
    assert_eq!(
        everything(&fresh),
        model.items(),
        "the image shows the state at 20"
    );
    assert_eq!(
        ok(fresh.revision(), "revision"),
        model.data.revision(),
        "and its revision"
    );
    assert_eq!(
        value_of(&s, "k3"),
        Some(("changed".to_string(), 22)),
        "the live state moved on"
    );
}

/// An image streamed from one store, staged by another and installed
/// there gives the same state, the image's meta as snapshot and as
/// applied index, and an empty log.
pub fn an_image_travels_through_staging_and_installs<F: NodeStoreFactory>(f: &mut F) {
    let mut entries = puts(1, 30, 1);
    entries.push(super::del(31, 2, "k5", None));
    let src = node_store_with(f, &entries);
    let chunks = chunks_of(ok(src.begin_snapshot(), "begin_snapshot"));
    assert!(chunks.len() > 2, "the image travels in several chunks");
    let mut dst = node_store_with(f, &puts(1, 4, 1));
    let staged = ok(stage(&dst, &chunks), "staging");
    assert_eq!(staged.meta(), meta(31, 2));
    // Items are the store's own records: at least one per live key.
    assert!(staged.items() >= 29, "{} items", staged.items());
    assert_eq!(staged.bytes(), whole(&chunks).len() as u64);
    ok(dst.install_staged(staged), "install");
    assert_eq!(everything(&dst), everything(&src), "the state");
    assert_eq!(dst.applied(), meta(31, 2));
    let rec = ok(dst.load(), "load");
    assert_eq!(rec.snapshot, meta(31, 2));
    assert!(rec.entries.is_empty(), "the log is empty after an install");
}

/// Staging, and dropping what was staged, changes nothing a reader or a
/// restart sees.
pub fn staging_leaves_the_live_state_alone<F: NodeStoreFactory>(f: &mut F) {
    let src = node_store_with(f, &puts(1, 12, 3));
    let chunks = chunks_of(ok(src.begin_snapshot(), "begin_snapshot"));
    let own = puts(1, 5, 1);
    let dst = node_store_with(f, &own);
    let before = (
        everything(&dst),
        dst.applied(),
        ok(dst.load(), "load").entries,
    );
    {
        let mut w = ok(dst.stage_snapshot(), "stage_snapshot");
        ok(w.write(&chunks[0].data), "first piece");
        let now = (
            everything(&dst),
            dst.applied(),
            ok(dst.load(), "load").entries,
        );
        assert_eq!(now, before, "while staging");
    }
    let staged = ok(stage(&dst, &chunks), "staging again after a dropped writer");
    let now = (
        everything(&dst),
        dst.applied(),
        ok(dst.load(), "load").entries,
    );
    assert_eq!(now, before, "with a staged image not installed");
    drop(staged);
    let dst = f.reopen_node_store(dst);
    assert_eq!(everything(&dst), before.0, "after reopen");
    assert_eq!(dst.applied(), before.1, "applied after reopen");
    assert_eq!(ok(dst.load(), "load").entries, own, "log after reopen");
}

/// A flipped bit, a wrong trailer or a missing end are refused; the store
/// is unchanged and takes the intact image afterwards.
pub fn staging_refuses_damaged_or_incomplete_images<F: NodeStoreFactory>(f: &mut F) {
    let src = node_store_with(f, &puts(1, 16, 1));
    let chunks = chunks_of(ok(src.begin_snapshot(), "begin_snapshot"));
    let mut dst = node_store_with(f, &puts(1, 3, 1));
    let before = everything(&dst);

    let mut flipped = chunks.clone();
    flipped[1].data[5] ^= 0x40;
    assert!(stage(&dst, &flipped).is_err(), "a flipped bit");

    let mut wrong = chunks.clone();
    let last = wrong.len() - 1;
    let t = wrong[last].trailer.expect("trailer");
    wrong[last].trailer = Some(ImageTrailer {
        crc32: t.crc32 ^ 1,
        ..t
    });
    assert!(stage(&dst, &wrong).is_err(), "a wrong crc32 in the trailer");
    wrong[last].trailer = Some(ImageTrailer {
        total_len: t.total_len + 1,
        ..t
    });
    assert!(
        stage(&dst, &wrong).is_err(),
        "a wrong length in the trailer"
    );

    {
        let mut w = ok(dst.stage_snapshot(), "stage_snapshot");
        for c in &chunks[..chunks.len() - 1] {
            ok(w.write(&c.data), "piece");
        }
        let early = ImageTrailer {
            total_len: whole(&chunks[..chunks.len() - 1]).len() as u64,
            crc32: crc32fast::hash(&whole(&chunks[..chunks.len() - 1])),
        };
        assert!(w.finish(&early).is_err(), "an image without its end");
    }
    assert_eq!(everything(&dst), before, "nothing changed");
    let staged = ok(stage(&dst, &chunks), "the intact image");
    ok(dst.install_staged(staged), "install");
    assert_eq!(everything(&dst), everything(&src));
}

/// Installing an image below the end of the log drops every entry, those
/// after the image's index too (they may conflict with the leader's).
pub fn an_install_replaces_a_longer_log<F: NodeStoreFactory>(f: &mut F) {
    let src = node_store_with(f, &puts(1, 6, 1));
    let chunks = chunks_of(ok(src.begin_snapshot(), "begin_snapshot"));
    let mut dst = f.new_node_store();
    let mut own = puts(1, 4, 1);
    own.extend(puts(5, 9, 2));
    ok(dst.save(Some(&hs(2, 2, 4)), &own), "save");
    ok(dst.apply(&own[..4]), "apply 1..=4");
    let staged = ok(stage(&dst, &chunks), "stage");
    ok(dst.install_staged(staged), "install");
    let rec = ok(dst.load(), "load");
    assert_eq!(rec.snapshot, meta(6, 1));
    assert!(
        rec.entries.is_empty(),
        "entries 7..=9 of term 2 are gone too"
    );
    // The log continues right after the image.
    let next = puts(7, 8, 3);
    ok(
        dst.save(Some(&hs(3, 3, 6)), &next),
        "append after the image",
    );
    assert_eq!(ok(dst.load(), "load").entries, next);
}

/// An install is durable on return: a restart finds the image's state,
/// its meta as snapshot and applied index, and the log written after it.
pub fn an_install_survives_reopen<F: NodeStoreFactory>(f: &mut F) {
    let src = node_store_with(f, &puts(1, 10, 2));
    let want = everything(&src);
    let chunks = chunks_of(ok(src.begin_snapshot(), "begin_snapshot"));
    let mut dst = node_store_with(f, &puts(1, 2, 1));
    let staged = ok(stage(&dst, &chunks), "stage");
    ok(dst.install_staged(staged), "install");
    ok(dst.save(Some(&hs(2, 0, 10)), &puts(11, 12, 2)), "append");
    let dst = f.reopen_node_store(dst);
    assert_eq!(everything(&dst), want);
    assert_eq!(dst.applied(), meta(10, 2));
    let rec = ok(dst.load(), "load");
    assert_eq!(rec.snapshot, meta(10, 2));
    assert_eq!(rec.entries, puts(11, 12, 2));
    assert_eq!(value_of(&dst, "k10"), Some(("v10-t2".to_string(), 11)));
}

/// The state machine is the snapshot: once the log is compacted, what was
/// applied up to the snapshot is durable (a restart does not find a state
/// machine behind its log's start).
pub fn compaction_makes_the_applied_state_durable<F: NodeStoreFactory>(f: &mut F) {
    let entries = puts(1, 10, 1);
    let mut s = node_store_with(f, &entries);
    ok(s.compact(meta(8, 1)), "compact to 8");
    let s = f.reopen_node_store(s);
    assert!(s.applied_index() >= 8, "applied after reopen");
    let rec = ok(s.load(), "load");
    assert_eq!(rec.snapshot, meta(8, 1));
    assert_eq!(rec.entries, entries[8..].to_vec());
    assert_eq!(value_of(&s, "k8"), Some(("v8-t1".to_string(), 9)));
}

#[cfg(test)]
mod tests {
    /// Every `pub fn` case in this file is listed in
    /// [`node_store_conformance_tests`], so none is silently skipped.
    #[test]
    fn every_case_is_listed_in_the_macro() {
        let src = include_str!("node_store.rs");
        let (macro_part, rest) = src
            .split_once(
                "// ------------------------------------------------------------ helpers --",
            )
            .expect("helpers marker");
        let cases: Vec<&str> = rest
            .lines()
            .filter_map(|l| l.strip_prefix("pub fn "))
            .filter(|l| l.contains("<F: NodeStoreFactory>"))
            .filter_map(|l| l.split('<').next())
            .collect();
        assert!(cases.len() >= 8, "found only {} cases", cases.len());
        for case in &cases {
            assert!(
                macro_part.contains(&format!("            {case},\n")),
                "case `{case}` is missing from node_store_conformance_tests!"
            );
        }
        let listed = macro_part
            .lines()
            .skip_while(|l| !l.contains("@cases $factory;"))
            .skip(1)
            .take_while(|l| !l.trim().starts_with(");"))
            .count();
        assert_eq!(
            listed,
            cases.len(),
            "the macro lists cases that do not exist"
        );
    }
}
