//! A set of byte-string intervals for the duplicate-key rule of
//! transactions ([`crate::kv::validate`]).
//!
//! A transaction may carry tens of thousands of operations (the op limit is
//! per nesting level), so "is this put's key inside one of the deletes" must
//! not be a linear scan: the set keeps disjoint, merged intervals in a
//! `BTreeMap` and answers in O(log n).

use std::collections::BTreeMap;
use std::ops::Bound::{Included, Unbounded};

/// Disjoint half-open intervals `[start, end)` of byte strings.
#[derive(Clone, Debug, Default)]
pub(crate) struct IntervalSet {
    /// start → end, disjoint and non-adjacent.
    by_start: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl IntervalSet {
    /// Adds `[start, end)`; an empty interval (`end <= start`) adds nothing.
    pub(crate) fn insert(&mut self, start: Vec<u8>, end: Vec<u8>) {
        if end <= start {
            return;
        }
        let (mut start, mut end) = (start, end);
        // Merge with the interval starting at or before `start` if it
        // reaches `start`.
        if let Some((s, e)) = self
            .by_start
            .range::<[u8], _>((Unbounded, Included(start.as_slice())))
            .next_back()
        {
            if *e >= start {
                let s = s.clone();
                if *e > end {
                    end = e.clone();
                }
                self.by_start.remove(&s);
                start = s;
            }
        }
        // Swallow every interval starting inside (or right at the end of)
        // the new one.
        while let Some((s, e)) = self
            .by_start
            .range::<[u8], _>((Included(start.as_slice()), Unbounded))
            .next()
        {
            if *s > end {
                break;
            }
            let s = s.clone();
            if *e > end {
                end = e.clone();
            }
            self.by_start.remove(&s);
        }
        self.by_start.insert(start, end);
    }

    /// Adds every interval of `other`.
    pub(crate) fn union(&mut self, other: IntervalSet) {
        for (s, e) in other.by_start {
            self.insert(s, e);
        }
    }

    /// Whether `point` lies in one of the intervals.
    pub(crate) fn contains(&self, point: &[u8]) -> bool {
        self.by_start
            .range::<[u8], _>((Unbounded, Included(point)))
            .next_back()
            .is_some_and(|(_, end)| point < end.as_slice())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_start.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(ivs: &[(&[u8], &[u8])]) -> IntervalSet {
        let mut s = IntervalSet::default();
        for (a, b) in ivs {
            s.insert(a.to_vec(), b.to_vec());
        }
        s
    }

    #[test]
    fn empty_intervals_are_ignored() {
        let s = set(&[(b"b", b"a"), (b"a", b"a")]);
        assert_eq!(s.len(), 0);
        assert!(!s.contains(b"a"));
    }

    #[test]
    fn overlapping_and_adjacent_intervals_merge() {
        let s = set(&[(b"a", b"c"), (b"b", b"d"), (b"d", b"e"), (b"x", b"y")]);
        assert_eq!(s.len(), 2);
        assert!(s.contains(b"a") && s.contains(b"d\xff") && !s.contains(b"e"));
        assert!(s.contains(b"x") && !s.contains(b"y") && !s.contains(b"f"));
    }

    proptest! {
        #[test]
        fn agrees_with_a_list_of_intervals(
            ivs in prop::collection::vec((prop::collection::vec(0u8..4, 0..3), prop::collection::vec(0u8..4, 0..3)), 0..12),
            probes in prop::collection::vec(prop::collection::vec(0u8..4, 0..4), 0..20),
        ) {
            let mut s = IntervalSet::default();
            let mut other = IntervalSet::default();
            for (i, (a, b)) in ivs.iter().enumerate() {
                // Half through `insert`, half through `union`.
                if i % 2 == 0 { s.insert(a.clone(), b.clone()) } else { other.insert(a.clone(), b.clone()) }
            }
            s.union(other);
            for p in &probes {
                let naive = ivs.iter().any(|(a, b)| a <= p && p < b);
                prop_assert_eq!(s.contains(p), naive, "{:?} in {:?}", p, ivs);
            }
        }
    }
}
