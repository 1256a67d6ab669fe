//! Golden bytes of every on-disk format (and of the log payload, which is
//! stored in the log and sent in AppendEntries).
//!
//! Each test encodes a fixed, representative value and compares the bytes
//! with the checked-in hex below, then decodes the checked-in hex back to
//! the value. A test failing here means an encoding changed: data dirs
//! (or peers) written by the previous build would no longer read. That is
//! only ever done on purpose, with a version bump:
//!
//! 1. bump the version that covers the format — [`FORMAT_VERSION`] for
//!    anything in the data dir (sled records, the watermark file),
//!    [`RECORD_VERSION`] if the record framing itself changes,
//!    [`IMAGE_FORMAT`] for the snapshot image (which also travels on the
//!    wire, see `WIRE_VERSION` in `src/transport/wire.rs`), and update
//!    `versions_are_pinned` below;
//! 2. run `cargo test --lib golden`: every failing test prints the new
//!    bytes as a string literal ready to paste over the old constant;
//! 3. review the diff of the constants: only the types you meant to change
//!    may differ.
//!
//! The values use multi-byte varints (300), non-ASCII text and every
//! variant of every enum, so that a change to the integer, string or enum
//! encoding shows up.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::identity::{Identity, FORMAT_VERSION};
use super::image::{decode_image, encode_image, IMAGE_FORMAT};
use super::record::{self, RECORD_VERSION};
use super::sled_store::kv::{decode_kv_item, encode_kv_record};
use super::sled_store::watermark::{Watermark, FILE_NAME as WATERMARK_FILE};
use super::sled_store::{
    log_key, ACTIVE_KV_KEY, APPLIED_KEY, HARD_STATE_KEY, HARD_STATE_TREE, IDENTITY_KEY,
    IDENTITY_TREE, KV_ALT_TREE, KV_TREE, LOG_TREE, SEQ_KEY, SNAPSHOT_META_KEY, SNAPSHOT_TREE,
};
use super::{LogStore, SledStore, StateMachine};
use crate::kv::{ApplyResult, KvCommand, KvItem};
use crate::raft::{Entry, EntryPayload, HardState, SnapshotMeta};

// ------------------------------------------------------------ helpers --

/// Bytes from hex; whitespace is ignored.
pub(crate) fn from_hex(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad hex digits {s:?}"))
        })
        .collect()
}

/// `bytes` as a string literal of hex, 32 bytes a line, to paste into a
/// golden constant.
fn literal(bytes: &[u8]) -> String {
    let lines: Vec<String> = bytes
        .chunks(32)
        .map(|line| line.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    format!("\"\\\n    {}\"", lines.join(" \\\n    "))
}

/// Fails, printing the new bytes as a literal, when `actual` differs from
/// the golden hex.
pub(crate) fn assert_golden(what: &str, actual: &[u8], golden: &str) {
    let expected = from_hex(golden);
    assert!(
        actual == expected.as_slice(),
        "the encoding of {what} changed ({} bytes, golden {} bytes).\n\
         If that is deliberate, bump the format version (see the top of the \
         golden test file) and paste the new bytes:\n{}",
        actual.len(),
        expected.len(),
        literal(actual)
    );
}

fn bincode_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encode")
}

/// Checks a bare bincode encoding both ways.
fn assert_bincode<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    what: &str,
    value: &T,
    golden: &str,
) {
    assert_golden(what, &bincode_bytes(value), golden);
    let (back, used): (T, usize) =
        bincode::serde::decode_from_slice(&from_hex(golden), bincode::config::standard())
            .unwrap_or_else(|e| panic!("golden {what} does not decode: {e}"));
    assert_eq!(&back, value, "golden {what} decodes to another value");
    assert_eq!(
        used,
        from_hex(golden).len(),
        "golden {what} has trailing bytes"
    );
}

/// Checks a checksummed record stored under `key` both ways.
fn assert_record<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    what: &str,
    key: &[u8],
    value: &T,
    golden: &str,
) {
    let bytes = record::encode(key, value).expect("encode record");
    assert_golden(what, &bytes, golden);
    let back: T = record::decode(key, &from_hex(golden))
        .unwrap_or_else(|e| panic!("golden {what} does not decode: {e}"));
    assert_eq!(&back, value, "golden {what} decodes to another value");
}

// ------------------------------------------------- the fixed values --

const NODE: &str = "node-1";
const CLUSTER: &str = "cluster-a";

fn hard_state() -> HardState {
    HardState {
        term: 3,
        vote: 2,
        commit: 300,
    }
}

fn put_user() -> KvCommand {
    KvCommand::Put {
        key: "user/1".into(),
        value: "héllo".into(),
        cas: None,
    }
}

fn put_create_only() -> KvCommand {
    KvCommand::Put {
        key: "a".into(),
        value: String::new(),
        cas: Some(0),
    }
}

fn delete_cas() -> KvCommand {
    KvCommand::Delete {
        key: "gone".into(),
        cas: Some(300),
    }
}

fn delete_plain() -> KvCommand {
    KvCommand::Delete {
        key: "gone".into(),
        cas: None,
    }
}

/// The batch of entries the end-to-end test saves (one log record) and
/// applies: a no-op, two puts, a delete whose CAS fails.
fn batch() -> Vec<Entry> {
    let cmd = |index, c: KvCommand| Entry {
        index,
        term: 3,
        payload: EntryPayload::Command(c.encode()),
    };
    vec![
        Entry {
            index: 1,
            term: 3,
            payload: EntryPayload::Noop,
        },
        cmd(2, put_user()),
        cmd(3, put_create_only()),
        cmd(4, delete_cas()),
    ]
}

/// The state after applying [`batch`].
fn applied() -> SnapshotMeta {
    SnapshotMeta { index: 4, term: 3 }
}

fn image_items() -> Vec<KvItem> {
    vec![
        KvItem {
            key: "a".into(),
            value: String::new(),
            index: 3,
        },
        KvItem {
            key: "user/1".into(),
            value: "héllo".into(),
            index: 2,
        },
    ]
}

// ----------------------------------------------------- golden bytes --

// variant 00 Put | key 06 "user/1" | value 06 "héllo" | cas 00 None
const KV_PUT: &str = "\
    0006757365722f310668c3a96c6c6f00";
// Put | key 01 "a" | value 00 "" | cas 01 Some 00
const KV_PUT_CAS: &str = "\
    000161000100";
// variant 01 Delete | key 04 "gone" | cas 01 Some fb2c01 (300)
const KV_DELETE_CAS: &str = "\
    0104676f6e6501fb2c01";
// Delete | key 04 "gone" | cas 00 None
const KV_DELETE: &str = "\
    0104676f6e6500";
// variant 00
const PAYLOAD_NOOP: &str = "\
    00";
// variant 01 | 03 bytes 01 02 ff
const PAYLOAD_COMMAND: &str = "\
    01030102ff";
// index fb2c01 (300) | term 07 | Command: 01, 16 bytes of KV_PUT
const ENTRY: &str = "\
    fb2c010701100006757365722f310668c3a96c6c6f00";
// version 01 | crc32 LE | term 03 | vote 02 | commit fb2c01
const HARD_STATE_RECORD: &str = "\
    0141996c320302fb2c01";
// version | crc32 over key "meta" | index 04 | term 03
const SNAPSHOT_META_RECORD: &str = "\
    0111328e8e0403";
// same payload as SNAPSHOT_META_RECORD, crc32 over key ff "applied"
const APPLIED_RECORD: &str = "\
    010a4739150403";
// version | crc32 | slot 01 (one raw byte)
const ACTIVE_KV_RECORD: &str = "\
    016de9d19201";
// version | crc32 | fb2c01 (300)
const SEQ_RECORD: &str = "\
    01f947b7e5fb2c01";
// version | crc32 | 06 "node-1" | 09 "cluster-a" | format 02
const IDENTITY_RECORD: &str = "\
    01dca906be066e6f64652d3109636c75737465722d6102";
// version | crc32 over key 00..01 | count 04 | entries 1..=4 (index, term, payload)
const LOG_BATCH_RECORD: &str = "\
    0142fb2c6f04010300020301100006757365722f310668c3a96c6c6f00030301 \
    060001610001000403010a0104676f6e6501fb2c01";
// version | crc32 over "user/1" | mod index 02 | value 06 "héllo"
const KV_RECORD_USER: &str = "\
    0159787598020668c3a96c6c6f";
// version | crc32 over "a" | mod index 03 | value 00 ""
const KV_RECORD_EMPTY_VALUE: &str = "\
    01ad4ac0fb0300";
// frames (u32 LE length + record keyed by frame number): Header{format 1, 4, 3}, Item a, Item user/1, End{2}
const IMAGE: &str = "\
    09000000018e61452e000104030a000000016cf528d201016100031500000001 \
    e20c90440106757365722f310668c3a96c6c6f020700000001dbd377740202";
// length 08 | record under "watermark slot 0" of 300 (slot padded to 64 bytes with zeros)
const WATERMARK_SLOT_0: &str = "\
    0801eafe54d3fb2c01";
// length 08 | record under "watermark slot 1" of 299 (fb2b01)
const WATERMARK_SLOT_1: &str = "\
    0801480fa924fb2b01";

// ------------------------------------------------------------- tests --

/// The versions the golden bytes are for. Changing one without new golden
/// bytes (or the other way round) is the mistake this file exists for.
#[test]
fn versions_are_pinned() {
    assert_eq!(RECORD_VERSION, 1, "record framing version");
    assert_eq!(FORMAT_VERSION, 2, "data dir format version");
    assert_eq!(IMAGE_FORMAT, 1, "snapshot image format");
}

#[test]
fn kv_command_every_variant() {
    // Exhaustive: a new variant does not compile until it is pinned here.
    for cmd in [put_user(), put_create_only(), delete_cas(), delete_plain()] {
        let (what, golden) = match &cmd {
            KvCommand::Put { cas: None, .. } => ("KvCommand::Put", KV_PUT),
            KvCommand::Put { cas: Some(_), .. } => ("KvCommand::Put with cas", KV_PUT_CAS),
            KvCommand::Delete { cas: Some(_), .. } => ("KvCommand::Delete with cas", KV_DELETE_CAS),
            KvCommand::Delete { cas: None, .. } => ("KvCommand::Delete", KV_DELETE),
        };
        assert_golden(what, &cmd.encode(), golden);
        assert_eq!(
            KvCommand::decode(&from_hex(golden)).expect("decode"),
            cmd,
            "{what}"
        );
    }
}

#[test]
fn entry_payload_every_variant_and_entry() {
    for payload in [EntryPayload::Noop, EntryPayload::Command(vec![1, 2, 0xff])] {
        let (what, golden) = match &payload {
            EntryPayload::Noop => ("EntryPayload::Noop", PAYLOAD_NOOP),
            EntryPayload::Command(_) => ("EntryPayload::Command", PAYLOAD_COMMAND),
        };
        assert_bincode(what, &payload, golden);
    }
    assert_bincode(
        "Entry",
        &Entry {
            index: 300,
            term: 7,
            payload: EntryPayload::Command(put_user().encode()),
        },
        ENTRY,
    );
}

#[test]
fn hard_state_record() {
    assert_record(
        "HardState record",
        HARD_STATE_KEY,
        &hard_state(),
        HARD_STATE_RECORD,
    );
    // The framing, spelled out once: version, crc32 (LE) over version, key
    // and payload, then the bincode payload (three varints; 300 is
    // 0xfb followed by a little-endian u16).
    let bytes = from_hex(HARD_STATE_RECORD);
    assert_eq!(bytes[0], RECORD_VERSION);
    assert_eq!(&bytes[5..], &[3, 2, 0xfb, 0x2c, 0x01]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[RECORD_VERSION]);
    crc.update(HARD_STATE_KEY);
    crc.update(&bytes[5..]);
    assert_eq!(&bytes[1..5], &crc.finalize().to_le_bytes());
}

#[test]
fn snapshot_meta_and_applied_index_records() {
    assert_record(
        "SnapshotMeta record",
        SNAPSHOT_META_KEY,
        &applied(),
        SNAPSHOT_META_RECORD,
    );
    assert_record(
        "applied-index record",
        APPLIED_KEY,
        &applied(),
        APPLIED_RECORD,
    );
}

#[test]
fn active_kv_and_seq_records() {
    assert_record(
        "active_kv slot record",
        ACTIVE_KV_KEY,
        &1u8,
        ACTIVE_KV_RECORD,
    );
    assert_record("durable-write seq record", SEQ_KEY, &300u64, SEQ_RECORD);
}

#[test]
fn identity_record() {
    assert_record(
        "Identity record",
        IDENTITY_KEY,
        &Identity::current(NODE, CLUSTER),
        IDENTITY_RECORD,
    );
}

#[test]
fn log_batch_record() {
    let key = log_key(1);
    assert_eq!(key, [0, 0, 0, 0, 0, 0, 0, 1], "log keys are big-endian");
    assert_record("log batch record", &key, &batch(), LOG_BATCH_RECORD);
}

#[test]
fn kv_records() {
    for (what, item, golden) in [
        ("KV record", &image_items()[1], KV_RECORD_USER),
        (
            "KV record with an empty value",
            &image_items()[0],
            KV_RECORD_EMPTY_VALUE,
        ),
    ] {
        let mut bytes = Vec::new();
        encode_kv_record(item.key.as_bytes(), item.index, &item.value, &mut bytes).expect("encode");
        assert_golden(what, &bytes, golden);
        let back = decode_kv_item(KV_TREE, item.key.as_bytes(), &from_hex(golden)).expect("decode");
        assert_eq!(&back, item, "{what}");
    }
}

#[test]
fn snapshot_image() {
    let owned = image_items();
    let items: Vec<(&str, &str, u64)> = owned
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str(), i.index))
        .collect();
    let bytes = encode_image(applied(), items).expect("encode image");
    assert_golden("snapshot image", &bytes, IMAGE);
    let (meta, back) = decode_image(&from_hex(IMAGE)).expect("decode image");
    assert_eq!((meta, back), (applied(), image_items()));
}

#[test]
fn watermark_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = Watermark::create(dir.path(), 0).expect("create");
    w.record(299).expect("record 299"); // odd: slot 1
    w.record(300).expect("record 300"); // even: slot 0
    drop(w);
    let file = std::fs::read(dir.path().join(WATERMARK_FILE)).expect("read");
    assert_eq!(file.len(), 4096 + 64, "two 64-byte slots at 0 and 4096");
    let slot = |golden: &str| {
        let mut s = from_hex(golden);
        assert!(s.len() <= 64);
        s.resize(64, 0);
        s
    };
    let mut want = slot(WATERMARK_SLOT_0);
    want.resize(4096, 0);
    want.extend(slot(WATERMARK_SLOT_1));
    // On mismatch, print only the slot that changed.
    assert_golden(
        "watermark slot 0",
        trim_zeros(&file[..64]),
        WATERMARK_SLOT_0,
    );
    assert_golden(
        "watermark slot 1",
        trim_zeros(&file[4096..]),
        WATERMARK_SLOT_1,
    );
    assert_eq!(file, want, "the watermark file outside its slots");

    // The golden file opens with the higher of its two numbers.
    let other = tempfile::tempdir().expect("tempdir");
    std::fs::write(other.path().join(WATERMARK_FILE), &want).expect("write");
    let (_, seq) = Watermark::open(other.path())
        .expect("open")
        .expect("exists");
    assert_eq!(seq, 300);
}

fn trim_zeros(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|x| *x != 0).map_or(0, |i| i + 1);
    &b[..end]
}

/// The sled store writes exactly the golden records, under the documented
/// trees and keys, and its snapshot image is the golden image: the
/// encoders above are the ones the store uses.
#[test]
fn sled_store_writes_the_golden_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = SledStore::open(dir.path(), NODE, CLUSTER).expect("open");
    let db = store.raw_db().clone();
    let raw = |tree: &str, key: &[u8]| -> Vec<u8> {
        db.open_tree(tree)
            .expect("tree")
            .get(key)
            .expect("get")
            .unwrap_or_else(|| panic!("no record at {key:?} in {tree}"))
            .to_vec()
    };
    assert_eq!(raw(IDENTITY_TREE, IDENTITY_KEY), from_hex(IDENTITY_RECORD));

    store.save(Some(&hard_state()), &batch()).expect("save");
    assert_eq!(
        raw(HARD_STATE_TREE, HARD_STATE_KEY),
        from_hex(HARD_STATE_RECORD)
    );
    assert_eq!(raw(LOG_TREE, &log_key(1)), from_hex(LOG_BATCH_RECORD));

    let results = store.apply(&batch()).expect("apply");
    assert_eq!(results[3], ApplyResult::CasMismatch { current: 0 });
    assert_eq!(raw(KV_TREE, b"user/1"), from_hex(KV_RECORD_USER));
    assert_eq!(raw(KV_TREE, b"a"), from_hex(KV_RECORD_EMPTY_VALUE));
    assert_eq!(raw(KV_TREE, APPLIED_KEY), from_hex(APPLIED_RECORD));
    let (meta, image) = store.snapshot().expect("snapshot");
    assert_eq!(meta, applied());
    assert_eq!(image, from_hex(IMAGE), "the image a sled store streams");

    LogStore::compact(&mut store, applied()).expect("compact");
    assert_eq!(
        raw(SNAPSHOT_TREE, SNAPSHOT_META_KEY),
        from_hex(SNAPSHOT_META_RECORD)
    );

    // Restoring the golden image stages it in the other tree and flips
    // `active_kv` to slot 1.
    store.restore(applied(), &from_hex(IMAGE)).expect("restore");
    assert_eq!(
        raw(SNAPSHOT_TREE, ACTIVE_KV_KEY),
        from_hex(ACTIVE_KV_RECORD)
    );
    assert_eq!(raw(KV_ALT_TREE, b"user/1"), from_hex(KV_RECORD_USER));
    assert_eq!(raw(KV_ALT_TREE, APPLIED_KEY), from_hex(APPLIED_RECORD));
}
