//! The log format of [`Command`], pinned byte by byte.

use super::*;
use crate::kv::request::*;

/// Each expected byte is derived from the Format section of the module doc,
/// not copied from an encoder's output.
fn golden() -> Vec<(Command, Vec<u8>)> {
    vec![
        (
            Command::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v1".to_vec(),
                lease: 7,
                prev_kv: true,
                ignore_value: false,
                ignore_lease: false,
            }),
            vec![
                2, // format
                0, // Command::Put
                1, b'k', // key
                2, b'v', b'1', // value
                14,   // lease 7, zigzag
                1, 0, 0, // prev_kv, ignore_value, ignore_lease
            ],
        ),
        (
            Command::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: vec![0],
                prev_kv: false,
            }),
            vec![
                2, // format
                1, // Command::DeleteRange
                1, b'a', // key
                1, 0, // range_end [0]
                0, // prev_kv
            ],
        ),
        (
            Command::Txn(TxnRequest {
                compare: vec![
                    Compare {
                        key: b"k".to_vec(),
                        range_end: Vec::new(),
                        result: CompareResult::NotEqual,
                        target: CompareTarget::ModRevision(-3),
                    },
                    Compare {
                        key: b"v".to_vec(),
                        range_end: vec![0],
                        result: CompareResult::Equal,
                        target: CompareTarget::Value(b"x".to_vec()),
                    },
                ],
                success: vec![RequestOp::Range(RangeRequest {
                    key: b"k".to_vec(),
                    range_end: b"l".to_vec(),
                    limit: 300,
                    revision: 0,
                    sort_order: SortOrder::Descend,
                    sort_target: SortTarget::Mod,
                    serializable: false,
                    keys_only: true,
                    count_only: false,
                    min_mod_revision: 0,
                    max_mod_revision: 0,
                    min_create_revision: 1,
                    max_create_revision: 0,
                })],
                failure: vec![RequestOp::Txn(TxnRequest::default())],
            }),
            vec![
                2, // format
                2, // Command::Txn
                2, // two compares
                1, b'k', 0, // key, empty range_end
                3, // CompareResult::NotEqual
                2, 5, // CompareTarget::ModRevision(-3), zigzag 5
                1, b'v', 1, 0, // key, range_end [0]
                0, // CompareResult::Equal
                3, 1, b'x', // CompareTarget::Value(b"x")
                1,    // one success op
                0,    // RequestOp::Range
                1, b'k', 1, b'l', // key, range_end
                251, 0x58, 0x02, // limit 300 → zigzag 600 = 0x0258, u16 form
                0,    // revision
                2, 3, // SortOrder::Descend, SortTarget::Mod
                0, 1, 0, // serializable, keys_only, count_only
                0, 0, 2, 0, // min/max mod, min create 1 (zigzag 2), max create
                1, // one failure op
                3, // RequestOp::Txn
                0, 0, 0, // empty compare, success, failure
            ],
        ),
        (
            Command::Compact(CompactionRequest {
                revision: 5,
                physical: true,
            }),
            vec![
                2,  // format
                3,  // Command::Compact
                10, // revision 5, zigzag
                1,  // physical
            ],
        ),
    ]
}

#[test]
fn encoding_matches_the_documented_bytes() {
    for (cmd, bytes) in golden() {
        assert_eq!(cmd.encode(), bytes, "{cmd:?}");
    }
}

#[test]
fn documented_bytes_decode_to_the_command() {
    for (cmd, bytes) in golden() {
        assert_eq!(Command::decode(&bytes).unwrap(), cmd);
    }
}

#[test]
fn empty_payload_is_refused() {
    assert_eq!(Command::decode(&[]), Err(CommandDecodeError::Empty));
}

#[test]
fn unknown_format_is_refused_naming_both() {
    let mut bytes = golden()[0].1.clone();
    bytes[0] = 3;
    let err = Command::decode(&bytes).unwrap_err();
    assert_eq!(err, CommandDecodeError::UnknownFormat { found: 3 });
    assert!(err.to_string().contains("format 3") && err.to_string().contains("format 2"));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = golden()[3].1.clone();
    bytes.push(0);
    assert_eq!(
        Command::decode(&bytes),
        Err(CommandDecodeError::TrailingBytes(1))
    );
}

#[test]
fn truncated_and_unknown_variants_are_refused() {
    let bytes = golden()[2].1.clone();
    for cut in 1..bytes.len() {
        assert!(
            matches!(
                Command::decode(&bytes[..cut]),
                Err(CommandDecodeError::Malformed(_))
            ),
            "cut at {cut}"
        );
    }
    // Variant 4 does not exist (yet).
    assert!(matches!(
        Command::decode(&[2, 4]),
        Err(CommandDecodeError::Malformed(_))
    ));
}

#[test]
fn entries_of_the_single_key_format_are_an_unknown_format() {
    // Entries written by the single-key model (data-dir format 2): a put of
    // "user/1" = "héllo" and a delete of "gone", as that format pinned them.
    let old: [&[u8]; 2] = [
        &[
            0x00, 0x06, b'u', b's', b'e', b'r', b'/', b'1', 0x06, b'h', 0xc3, 0xa9, b'l', b'l',
            b'o', 0x00,
        ],
        &[0x01, 0x04, b'g', b'o', b'n', b'e', 0x00],
    ];
    for bytes in old {
        assert_eq!(
            Command::decode(bytes),
            Err(CommandDecodeError::UnknownFormat { found: bytes[0] })
        );
    }
}
