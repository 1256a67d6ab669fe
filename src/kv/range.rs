//! etcd's key-range conventions: [`KeyRange`] and [`prefix_end`].
//!
//! etcd encodes every range as `(key, range_end)`:
//! - empty `range_end`: the single key `key`;
//! - `range_end == [0]`: every key ≥ `key` (so `key == [0]` with
//!   `range_end == [0]` is every key, keys being non-empty);
//! - otherwise the half-open interval `[key, range_end)`, which is empty
//!   when `range_end <= key`;
//! - a prefix `P` is `[P, prefix_end(P))`.

use std::ops::Bound;

/// Lower and upper bound of a non-empty [`KeyRange`], for `BTreeMap::range`
/// and similar.
pub type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// A set of keys in etcd's `(key, range_end)` form, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// Exactly this key.
    Single(&'a [u8]),
    /// Every key ≥ this one.
    From(&'a [u8]),
    /// Every key in `[start, end)`; empty when `end <= start`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    /// Decodes etcd's `(key, range_end)` pair (see the module doc).
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeyRange<'a> {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Between(key, end),
        }
    }

    /// Whether `key` belongs to the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match *self {
            KeyRange::Single(k) => key == k,
            KeyRange::From(start) => key >= start,
            KeyRange::Between(start, end) => key >= start && key < end,
        }
    }

    /// Whether no key can belong to the range (`[start, end)` with
    /// `end <= start`).
    pub fn is_empty(&self) -> bool {
        matches!(*self, KeyRange::Between(start, end) if end <= start)
    }

    /// The range as bounds for `BTreeMap::range` and similar, or `None` when
    /// it is empty. (`BTreeMap::range` panics on inverted bounds, so callers
    /// must never build bounds themselves from an inverted range.)
    pub fn bounds(&self) -> Option<KeyBounds<'a>> {
        if self.is_empty() {
            return None;
        }
        Some(match *self {
            KeyRange::Single(k) => (Bound::Included(k), Bound::Included(k)),
            KeyRange::From(start) => (Bound::Included(start), Bound::Unbounded),
            KeyRange::Between(start, end) => (Bound::Included(start), Bound::Excluded(end)),
        })
    }
}

/// The `range_end` that makes `[prefix, range_end)` the set of keys starting
/// with `prefix` (etcd's `GetPrefixRangeEnd`): drop trailing 0xFF bytes and
/// increment the last remaining byte. A prefix with no byte below 0xFF
/// (including the empty prefix) has no such bound, and the answer is `[0]`,
/// "every key ≥ prefix".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xFF) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"a\xfe\xff\xff"), b"a\xff");
        assert_eq!(prefix_end(b"\x00"), b"\x01");
    }

    #[test]
    fn prefix_end_of_all_ff_or_empty_is_from_key() {
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b"\xff\xff\xff"), vec![0]);
    }

    #[test]
    fn prefix_range_contains_exactly_the_keys_with_the_prefix() {
        let keys: Vec<&[u8]> = vec![
            b"a",
            b"a\x00",
            b"a\xff",
            b"a\xff\xff",
            b"ab",
            b"b",
            b"\xff",
            b"\xff\x00",
        ];
        for prefix in [&b"a"[..], b"a\xff", b"\xff", b""] {
            let end = prefix_end(prefix);
            let r = KeyRange::new(prefix, &end);
            for k in &keys {
                assert_eq!(r.contains(k), k.starts_with(prefix), "{prefix:?} {k:?}");
            }
        }
    }

    #[test]
    fn range_end_conventions() {
        assert_eq!(KeyRange::new(b"k", b""), KeyRange::Single(b"k"));
        assert_eq!(KeyRange::new(b"k", b"\x00"), KeyRange::From(b"k"));
        assert_eq!(KeyRange::new(b"a", b"c"), KeyRange::Between(b"a", b"c"));
        let all = KeyRange::new(b"\x00", b"\x00");
        for k in [&b"\x00"[..], b"a", b"\xff\xff"] {
            assert!(all.contains(k));
        }
        let single = KeyRange::new(b"k", b"");
        assert!(single.contains(b"k") && !single.contains(b"k\x00") && !single.contains(b"j"));
        let from = KeyRange::new(b"k", b"\x00");
        assert!(from.contains(b"k") && from.contains(b"z") && !from.contains(b"j"));
        let between = KeyRange::new(b"a", b"c");
        assert!(between.contains(b"a") && between.contains(b"b\xff") && !between.contains(b"c"));
    }

    #[test]
    fn inverted_or_equal_bounds_are_empty_and_give_no_bounds() {
        for r in [KeyRange::new(b"c", b"a"), KeyRange::new(b"a", b"a")] {
            assert!(r.is_empty());
            assert!(r.bounds().is_none());
            assert!(!r.contains(b"a") && !r.contains(b"b") && !r.contains(b"c"));
        }
        assert!(!KeyRange::new(b"a", b"b").is_empty());
        assert!(KeyRange::new(b"a", b"b").bounds().is_some());
    }
}
