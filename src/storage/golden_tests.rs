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
use super::mvcc_tree::keys::current_key;
use super::record::{self, RECORD_VERSION};
use super::sled_store::watermark::{Watermark, FILE_NAME as WATERMARK_FILE};
use super::sled_store::{
    log_key, ACTIVE_KV_KEY, APPLIED_KEY, HARD_STATE_KEY, HARD_STATE_TREE, IDENTITY_KEY,
    IDENTITY_TREE, KV_ALT_TREE, KV_TREE, LOG_TREE, SEQ_KEY, SNAPSHOT_META_KEY, SNAPSHOT_TREE,
};
use super::{EntryOutcome, LogStore, SledStore, StateMachine};
use crate::kv::{self, Command};
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

fn put_user() -> Command {
    Command::Put(kv::PutRequest {
        key: b"user/1".to_vec(),
        value: "héllo".as_bytes().to_vec(),
        ..Default::default()
    })
}

/// A put of `a` only if `a` is absent (the single-key API's `?cas=0`).
fn put_create_only() -> Command {
    Command::Txn(kv::TxnRequest {
        compare: vec![kv::Compare {
            key: b"a".to_vec(),
            range_end: Vec::new(),
            result: kv::CompareResult::Equal,
            target: kv::CompareTarget::ModRevision(0),
        }],
        success: vec![kv::RequestOp::Put(kv::PutRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })],
        failure: Vec::new(),
    })
}

/// A delete of `gone` only at mod revision 300: its compare fails.
fn delete_cas() -> Command {
    Command::Txn(kv::TxnRequest {
        compare: vec![kv::Compare {
            key: b"gone".to_vec(),
            range_end: Vec::new(),
            result: kv::CompareResult::Equal,
            target: kv::CompareTarget::ModRevision(300),
        }],
        success: vec![kv::RequestOp::DeleteRange(kv::DeleteRangeRequest {
            key: b"gone".to_vec(),
            range_end: Vec::new(),
            prev_kv: false,
        })],
        failure: Vec::new(),
    })
}

/// The batch of entries the end-to-end test saves (one log record) and
/// applies: a no-op, two puts, a delete whose compare fails.
fn batch() -> Vec<Entry> {
    let cmd = |index, c: Command| Entry {
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

// ----------------------------------------------------- golden bytes --

// variant 00
const PAYLOAD_NOOP: &str = "\
    00";
// variant 01 | 03 bytes 01 02 ff
const PAYLOAD_COMMAND: &str = "\
    01030102ff";
// index fb2c01 (300) | term 07 | Command: 01, 20 bytes: format 02, Put "user/1" "héllo"
const ENTRY: &str = "\
    fb2c01070114020006757365722f310668c3a96c6c6f00000000";
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
// version | crc32 | 06 "node-1" | 09 "cluster-a" | format 03
const IDENTITY_RECORD: &str = "\
    014a9901c9066e6f64652d3109636c75737465722d6103";
// version | crc32 over key 00..01 | count 04 | entries 1..=4 (index, term,
// payload: the kv::Command bytes, format byte 02 first)
const LOG_BATCH_RECORD: &str = "\
    01358bdd1d0401030002030114020006757365722f310668c3a96c6c6f000000 \
    0003030113020201016100000200010101610000000000000403011802020104 \
    676f6e65000002fb5802010204676f6e65000000";
// the MVCC tree's current record of "user/1" (key 01 "user/1"): version |
// crc32 | key | create 02 | mod 02 | version 01 | value "héllo" | lease 00
const KV_CURRENT_USER: &str = "\
    0143ef854b06757365722f310404020668c3a96c6c6f00";
// frames: Header{format 02, index 04, term 03}, Item{01 "a", 01 02},
// Item{02 "b", ""}, End{02}
const SMALL_IMAGE: &str = "\
    0900000001d7df032c000204030c00000001304dad2f010201610201020a0000 \
    0001ca055ac201020262000700000001dbd377740202";
// frames (u32 LE length + record keyed by frame number): Header{format 2,
// 4, 3}, the raw records of the MVCC tree in key order, End{n}
const IMAGE: &str = "\
    0900000001d7df032c000204031600000001d22ca725010201610c01771e02cb \
    0161060602000026000000010bc37281010701757365722f31170143ef854b06 \
    757365722f310404020668c3a96c6c6f002900000001e897556b011402610000 \
    000000000000000300000000000000000d0185f2be4801016106060200003900 \
    00000132c0c8dc011902757365722f3100000000000000000002000000000000 \
    00001801274491050106757365722f310404020668c3a96c6c6f002600000001 \
    75340bfa011103000000000000000200000000000000000d013e8e2237000675 \
    7365722f312100000001fe4d514f011103000000000000000300000000000000 \
    000801a0b947250001611000000001a404bfa50102fe010601d772dad6060700 \
    000001b5c848080207";
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
    assert_eq!(FORMAT_VERSION, 3, "data dir format version");
    assert_eq!(IMAGE_FORMAT, 2, "snapshot image format");
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
fn snapshot_image() {
    let items: [(&[u8], &[u8]); 2] = [(b"\x01a", b"\x01\x02"), (b"\x02b", b"")];
    let bytes = encode_image(applied(), items).expect("encode image");
    assert_golden("snapshot image", &bytes, SMALL_IMAGE);
    let (meta, back) = decode_image(&from_hex(SMALL_IMAGE)).expect("decode image");
    assert_eq!(meta, applied());
    let back: Vec<(Vec<u8>, Vec<u8>)> = back.into_iter().map(|i| (i.key, i.value)).collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = items
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(back, want);
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
    assert!(
        matches!(&results[3], EntryOutcome::Command(a) if a.events.is_empty()),
        "the failed compare changed nothing: {:?}",
        results[3]
    );
    assert_golden(
        "the MVCC tree's current record",
        &raw(KV_TREE, &current_key(b"user/1")),
        KV_CURRENT_USER,
    );
    assert_eq!(raw(KV_TREE, APPLIED_KEY), from_hex(APPLIED_RECORD));
    let (meta, image) = store.snapshot().expect("snapshot");
    assert_eq!(meta, applied());
    assert_golden("the image a sled store streams", &image, IMAGE);

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
    assert_eq!(
        raw(KV_ALT_TREE, &current_key(b"user/1")),
        from_hex(KV_CURRENT_USER)
    );
    assert_eq!(raw(KV_ALT_TREE, APPLIED_KEY), from_hex(APPLIED_RECORD));
}
