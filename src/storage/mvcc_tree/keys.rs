//! The tree keys of [`super::MvccTree`]: slots, the escaped user key of the
//! history slot, and their parsing (which never panics: a malformed key is
//! reported to the caller, who turns it into a corruption error).
//!
//! Every key starts with a slot byte, so the MVCC records can share a tree
//! with other records (the store's applied index lives under `0xFF`).

use crate::kv::KeyRange;

/// Slot of the current records: `0x01 ‖ user key`.
///
/// Format: the slot byte, then the user key's raw bytes (the slot holds
/// nothing else, so the raw bytes already sort in key order).
pub const CURRENT: u8 = 0x01;
/// Slot of the history by key: `0x02 ‖ escaped key ‖ rev BE ‖ sub BE`.
///
/// Format: the slot byte; the user key escaped ([`escape_into`]: `0x00` →
/// `0x00 0xFF`, every other byte as is, then the terminator `0x00 0x00`);
/// the revision and the sub-revision as 8-byte big-endian integers.
/// Escaping keeps the versions of one key together and the keys in key
/// order: a key that is a prefix of another sorts (with all its versions)
/// before it, because the terminator `0x00 0x00` is below every escaped
/// byte.
pub const HISTORY: u8 = 0x02;
/// Slot of the history by revision: `0x03 ‖ rev BE ‖ sub BE`.
///
/// Format: the slot byte, then revision and sub-revision as 8-byte
/// big-endian integers, so the slot lists changes in revision order.
pub const BY_REVISION: u8 = 0x03;
/// First byte of the meta records. (`0xFF` is the store's applied index.)
pub const META: u8 = 0xFE;

/// Key of the current revision (meta). Format of the value: a checksummed
/// record of an `i64` (bincode varint, zigzag).
pub const META_REVISION: &[u8] = &[META, 0x01];
/// Key of the compact revision (meta); value as [`META_REVISION`].
pub const META_COMPACT: &[u8] = &[META, 0x02];
/// Key of the revision up to which history has been physically removed
/// (meta): every change below it has been pruned. Value as
/// [`META_REVISION`].
pub const META_PRUNED: &[u8] = &[META, 0x03];

/// Bytes of the terminator after an escaped key.
const TERMINATOR: [u8; 2] = [0x00, 0x00];

/// Appends `key` escaped (see [`HISTORY`]) with its terminator.
pub fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&TERMINATOR);
}

/// `0x01 ‖ key`.
pub fn current_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(CURRENT);
    out.extend_from_slice(key);
    out
}

/// `0x02 ‖ escaped key`: the prefix of every version of `key`.
pub fn history_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 19);
    out.push(HISTORY);
    escape_into(key, &mut out);
    out
}

/// `0x02 ‖ escaped key ‖ rev ‖ sub`.
pub fn history_key(key: &[u8], rev: i64, sub: i64) -> Vec<u8> {
    let mut out = history_prefix(key);
    push_change(&mut out, rev, sub);
    out
}

/// `0x03 ‖ rev ‖ sub`.
pub fn by_revision_key(rev: i64, sub: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(BY_REVISION);
    push_change(&mut out, rev, sub);
    out
}

/// Appends a change id as two big-endian integers. Revisions and
/// sub-revisions are never negative, so their two's-complement big-endian
/// bytes sort like the numbers.
pub fn push_change(out: &mut Vec<u8>, rev: i64, sub: i64) {
    out.extend_from_slice(&rev.to_be_bytes());
    out.extend_from_slice(&sub.to_be_bytes());
}

/// Reads a change id from exactly 16 bytes.
pub fn parse_change(bytes: &[u8]) -> Option<(i64, i64)> {
    let rev: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let sub: [u8; 8] = bytes.get(8..16)?.try_into().ok()?;
    (bytes.len() == 16).then(|| (i64::from_be_bytes(rev), i64::from_be_bytes(sub)))
}

/// A parsed history key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryKey {
    /// The user key.
    pub key: Vec<u8>,
    /// Length of `0x02 ‖ escaped key` in the tree key: the key's group.
    pub prefix_len: usize,
    /// Revision.
    pub rev: i64,
    /// Sub-revision.
    pub sub: i64,
}

/// Parses `0x02 ‖ escaped key ‖ rev ‖ sub`; `None` if malformed.
pub fn parse_history_key(tree_key: &[u8]) -> Option<HistoryKey> {
    let (&slot, mut rest) = tree_key.split_first()?;
    if slot != HISTORY {
        return None;
    }
    let mut key = Vec::new();
    loop {
        match rest {
            [0x00, 0x00, tail @ ..] => {
                rest = tail;
                break;
            }
            [0x00, 0xFF, tail @ ..] => {
                key.push(0);
                rest = tail;
            }
            [0x00, ..] | [] => return None,
            [b, tail @ ..] => {
                key.push(*b);
                rest = tail;
            }
        }
    }
    let (rev, sub) = parse_change(rest)?;
    Some(HistoryKey {
        key,
        prefix_len: tree_key.len() - 16,
        rev,
        sub,
    })
}

/// The tree-key bounds, in `slot`, of the user keys of `range` encoded by
/// `encode` (which must preserve order); `None` for an empty range.
/// Upper bounds are exclusive; a range with no end runs to the slot's end.
pub fn slot_bounds(
    range: KeyRange<'_>,
    slot: u8,
    encode: impl Fn(&[u8]) -> Vec<u8>,
) -> Option<(Vec<u8>, Vec<u8>)> {
    if range.is_empty() {
        return None;
    }
    let slot_end = vec![slot + 1];
    Some(match range {
        KeyRange::Single(k) => {
            let lo = encode(k);
            // Every tree key of this one user key starts with `lo`.
            let hi = prefix_successor(&lo).unwrap_or(slot_end);
            (lo, hi)
        }
        KeyRange::From(k) => (encode(k), slot_end),
        KeyRange::Between(start, end) => (encode(start), encode(end)),
    })
}

/// The least byte string greater than every string starting with `prefix`
/// (`None` if `prefix` is all `0xFF`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let i = prefix.iter().rposition(|&b| b < 0xFF)?;
    let mut out = prefix[..=i].to_vec();
    out[i] += 1;
    Some(out)
}

/// A tree key printed for an error message.
pub fn describe(tree_key: &[u8]) -> String {
    let readable = |key: &[u8]| match std::str::from_utf8(key) {
        Ok(s) if s.chars().count() <= 80 => format!("{s:?}"),
        _ => format!("0x{}", hex(&key[..key.len().min(80)])),
    };
    match tree_key.first() {
        Some(&CURRENT) => format!("current {}", readable(&tree_key[1..])),
        Some(&HISTORY) => match parse_history_key(tree_key) {
            Some(h) => format!("history {} @{}.{}", readable(&h.key), h.rev, h.sub),
            None => format!("history 0x{}", hex(tree_key)),
        },
        Some(&BY_REVISION) => match parse_change(&tree_key[1..]) {
            Some((rev, sub)) => format!("by-revision @{rev}.{sub}"),
            None => format!("by-revision 0x{}", hex(tree_key)),
        },
        _ if tree_key == META_REVISION => "meta revision".into(),
        _ if tree_key == META_COMPACT => "meta compact revision".into(),
        _ if tree_key == META_PRUNED => "meta pruned-up-to".into(),
        _ => format!("0x{}", hex(tree_key)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_preserves_order_and_groups_versions() {
        let keys: Vec<&[u8]> = vec![
            b"\x00",
            b"\x00\x00",
            b"\x00\x01",
            b"a",
            b"a\x00",
            b"a\x00\xff",
            b"a\x01",
            b"ab",
            b"\xff",
            b"\xff\xff",
        ];
        for a in &keys {
            for b in &keys {
                // Every version of a key sorts against every version of
                // another key as the keys do.
                for (ra, rb) in [(1, i64::MAX), (i64::MAX, 1), (5, 5)] {
                    let ka = history_key(a, ra, 0);
                    let kb = history_key(b, rb, 0);
                    if a != b {
                        assert_eq!(a.cmp(b), ka.cmp(&kb), "{a:?} {b:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn history_key_roundtrips_and_rejects_garbage() {
        for key in [&b"a"[..], b"\x00", b"a\x00b\x00", b"\xff\x00\xff"] {
            let k = history_key(key, 7, 3);
            let h = parse_history_key(&k).expect("parses");
            assert_eq!((h.key.as_slice(), h.rev, h.sub), (key, 7, 3));
            assert_eq!(&k[..h.prefix_len], history_prefix(key).as_slice());
        }
        for bad in [
            &b""[..],
            b"\x02",
            b"\x02a",
            b"\x02a\x00",
            b"\x02a\x00\x01",
            b"\x01a\x00\x00",
        ] {
            assert!(parse_history_key(bad).is_none(), "{bad:?}");
        }
        let mut short = history_key(b"a", 1, 1);
        short.pop();
        assert!(parse_history_key(&short).is_none());
    }
}
