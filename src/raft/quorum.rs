//! Quorum arithmetic: the one place that knows what "a majority" means.
//!
//! Election (vote tallying, CheckQuorum), replication (the commit index)
//! and ReadIndex (confirming a heartbeat round) all ask the same three
//! questions of a [`VoterSet`]: how many make a majority, what value has a
//! majority reached, and has a vote been won or lost. They are answered
//! here and nowhere else, so that membership changes (joint consensus, or
//! one server at a time) only have to extend this module: a joint
//! configuration answers each question as "both voter sets agree".

use super::types::NodeId;

/// One configuration of voters: the members whose acknowledgements count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoterSet {
    /// The voters, in configuration order, without duplicates.
    ids: Vec<NodeId>,
}

/// Where a vote stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority granted it.
    Won,
    /// A majority refused it: it can no longer be won.
    Lost,
    /// Neither yet.
    Pending,
}

impl VoterSet {
    /// A configuration of `ids` (distinct; [`super::Config::validate`]
    /// checks that).
    pub fn new(ids: Vec<NodeId>) -> Self {
        VoterSet { ids }
    }

    /// The voters, in configuration order.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// Number of voters.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True for an empty configuration (never valid for a running node).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// True when `id` votes in this configuration.
    pub fn contains(&self, id: NodeId) -> bool {
        self.ids.contains(&id)
    }

    /// Acknowledgements needed for a majority.
    pub fn majority(&self) -> usize {
        self.ids.len() / 2 + 1
    }

    /// True when this node's own acknowledgement is a majority by itself
    /// (a one-voter cluster): it need not wait for anyone.
    pub fn is_self_majority(&self) -> bool {
        self.majority() == 1
    }

    /// The highest value a majority of the voters has reached, given each
    /// voter's value in `values` (voters missing from it count as 0, ids
    /// that are not voters are ignored). The commit index is this over the
    /// match indexes; a ReadIndex round is confirmed up to this over the
    /// echoed round ids. `scratch` is reused to avoid an allocation per
    /// call on the hot path.
    pub fn quorum_index(
        &self,
        values: impl IntoIterator<Item = (NodeId, u64)>,
        scratch: &mut Vec<u64>,
    ) -> u64 {
        scratch.clear();
        for (id, v) in values {
            if self.contains(id) {
                scratch.push(v);
            }
        }
        if scratch.len() < self.ids.len() {
            scratch.resize(self.ids.len(), 0);
        }
        scratch.sort_unstable_by(|a, b| b.cmp(a));
        scratch.get(self.majority() - 1).copied().unwrap_or(0)
    }

    /// Tallies `votes` (`(voter, granted)`, at most one per voter; votes of
    /// non-voters are ignored).
    pub fn vote_result(&self, votes: &[(NodeId, bool)]) -> VoteResult {
        let (mut yes, mut no) = (0, 0);
        for &(id, granted) in votes {
            if !self.contains(id) {
                continue;
            }
            if granted {
                yes += 1;
            } else {
                no += 1;
            }
        }
        if yes >= self.majority() {
            VoteResult::Won
        } else if no >= self.majority() {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    /// True when `active` (voters heard from recently, each at most once)
    /// is a majority: CheckQuorum.
    pub fn has_quorum(&self, active: impl IntoIterator<Item = NodeId>) -> bool {
        let n = active.into_iter().filter(|id| self.contains(*id)).count();
        n >= self.majority()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_sizes() {
        assert_eq!(VoterSet::new(vec![1]).majority(), 1);
        assert_eq!(VoterSet::new(vec![1, 2]).majority(), 2);
        assert_eq!(VoterSet::new(vec![1, 2, 3]).majority(), 2);
        assert_eq!(VoterSet::new(vec![1, 2, 3, 4]).majority(), 3);
        assert_eq!(VoterSet::new(vec![1, 2, 3, 4, 5]).majority(), 3);
        assert!(VoterSet::new(vec![7]).is_self_majority());
        assert!(!VoterSet::new(vec![7, 8, 9]).is_self_majority());
    }

    #[test]
    fn quorum_index_is_the_majority_value() {
        let v = VoterSet::new(vec![1, 2, 3, 4, 5]);
        let mut s = Vec::new();
        let idx = v.quorum_index([(1, 9), (2, 7), (3, 5), (4, 3), (5, 1)], &mut s);
        assert_eq!(idx, 5, "three of five have reached 5");
        // Missing voters count as 0; non-voters are ignored.
        let idx = v.quorum_index([(1, 9), (2, 7), (99, 100)], &mut s);
        assert_eq!(idx, 0);
        let idx = v.quorum_index([(1, 9), (2, 7), (3, 8)], &mut s);
        assert_eq!(idx, 7);
        let one = VoterSet::new(vec![4]);
        assert_eq!(one.quorum_index([(4, 12)], &mut s), 12);
    }

    #[test]
    fn votes_are_won_lost_or_pending() {
        let v = VoterSet::new(vec![1, 2, 3]);
        assert_eq!(v.vote_result(&[(1, true)]), VoteResult::Pending);
        assert_eq!(v.vote_result(&[(1, true), (2, true)]), VoteResult::Won);
        assert_eq!(v.vote_result(&[(1, true), (2, false)]), VoteResult::Pending);
        assert_eq!(
            v.vote_result(&[(1, true), (2, false), (3, false)]),
            VoteResult::Lost
        );
        // A stranger's vote does not count.
        assert_eq!(v.vote_result(&[(1, true), (9, true)]), VoteResult::Pending);
    }

    #[test]
    fn check_quorum_counts_voters_only() {
        let v = VoterSet::new(vec![1, 2, 3, 4, 5]);
        assert!(!v.has_quorum([1, 2]));
        assert!(v.has_quorum([1, 2, 5]));
        assert!(!v.has_quorum([1, 2, 77]));
    }
}
