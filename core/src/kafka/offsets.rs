//! Which offsets a consumer may commit.
//!
//! Kafka commits are positions: committing offset `n` on a partition says "everything before `n`
//! is done". Deliveries finish out of order (a quick step overtakes a slow one on the same
//! partition), so the position to commit is the lowest offset still in flight, or one past the
//! last delivered offset when nothing is. This module keeps that per partition, with no I/O.

use std::collections::{BTreeSet, HashMap};

/// A topic and partition.
pub type Partition = (String, i32);

#[derive(Debug, Default)]
struct State {
    /// Delivered, not yet done.
    pending: BTreeSet<i64>,
    /// One past the highest delivered offset.
    next: i64,
    /// The last position handed out for committing (-1: none yet).
    committed: i64,
}

impl State {
    fn position(&self) -> i64 {
        self.pending.first().copied().unwrap_or(self.next)
    }
}

/// Offsets in flight per partition, and the positions safe to commit.
#[derive(Debug, Default)]
pub struct Offsets {
    partitions: HashMap<Partition, State>,
}

impl Offsets {
    /// A message was handed to the application.
    pub fn delivered(&mut self, topic: &str, partition: i32, offset: i64) {
        let state = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| State {
                committed: -1,
                ..State::default()
            });
        state.pending.insert(offset);
        state.next = state.next.max(offset + 1);
    }

    /// The work a message stands for is done (durable, or its result published). An offset of a
    /// partition this consumer no longer holds is ignored.
    pub fn done(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(state) = self.partitions.get_mut(&(topic.to_owned(), partition)) {
            state.pending.remove(&offset);
        }
    }

    /// Positions that moved since the last call: `(topic, partition, offset to commit)`.
    pub fn to_commit(&mut self) -> Vec<(String, i32, i64)> {
        let mut moved = Vec::new();
        for ((topic, partition), state) in &mut self.partitions {
            let position = state.position();
            if position > state.committed {
                state.committed = position;
                moved.push((topic.clone(), *partition, position));
            }
        }
        moved
    }

    /// The partition was taken away: forget it, returning the position to commit before it goes
    /// (`None` when nothing moved since the last commit).
    pub fn revoke(&mut self, topic: &str, partition: i32) -> Option<i64> {
        let state = self.partitions.remove(&(topic.to_owned(), partition))?;
        let position = state.position();
        (position > state.committed).then_some(position)
    }

    /// A commit of this partition failed: hand its position out again next time.
    pub fn retry(&mut self, topic: &str, partition: i32) {
        if let Some(state) = self.partitions.get_mut(&(topic.to_owned(), partition)) {
            state.committed = -1;
        }
    }

    /// Deliveries not yet done, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_oldest_unfinished_offset() {
        let mut offsets = Offsets::default();
        for offset in 10..15 {
            offsets.delivered("t", 0, offset);
        }
        // Nothing done: the position stays at the first delivered offset.
        assert_eq!(offsets.to_commit(), vec![("t".into(), 0, 10)]);
        offsets.done("t", 0, 11);
        offsets.done("t", 0, 12);
        assert!(offsets.to_commit().is_empty(), "10 is still running");
        offsets.done("t", 0, 10);
        assert_eq!(offsets.to_commit(), vec![("t".into(), 0, 13)]);
        offsets.done("t", 0, 14);
        offsets.done("t", 0, 13);
        assert_eq!(offsets.to_commit(), vec![("t".into(), 0, 15)]);
        assert!(offsets.to_commit().is_empty(), "nothing moved");
        assert_eq!(offsets.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut offsets = Offsets::default();
        offsets.delivered("t", 0, 0);
        offsets.delivered("t", 1, 7);
        offsets.delivered("u", 0, 3);
        offsets.done("t", 1, 7);
        let mut moved = offsets.to_commit();
        moved.sort();
        assert_eq!(
            moved,
            vec![("t".into(), 0, 0), ("t".into(), 1, 8), ("u".into(), 0, 3)]
        );
    }

    #[test]
    fn a_revoked_partition_commits_what_is_done_and_ignores_late_acks() {
        let mut offsets = Offsets::default();
        offsets.delivered("t", 0, 5);
        offsets.delivered("t", 0, 6);
        assert_eq!(offsets.to_commit(), vec![("t".into(), 0, 5)]);
        offsets.done("t", 0, 5);
        assert_eq!(offsets.revoke("t", 0), Some(6));
        // The step for offset 6 finishes after the partition moved to another consumer.
        offsets.done("t", 0, 6);
        assert!(offsets.to_commit().is_empty());
        assert_eq!(offsets.revoke("t", 0), None);
    }

    #[test]
    fn redelivered_offsets_do_not_move_the_position_back() {
        let mut offsets = Offsets::default();
        offsets.delivered("t", 0, 1);
        offsets.done("t", 0, 1);
        assert_eq!(offsets.to_commit(), vec![("t".into(), 0, 2)]);
        // A seek back (after a failed commit, say) delivers 1 again.
        offsets.delivered("t", 0, 1);
        assert!(offsets.to_commit().is_empty());
        offsets.done("t", 0, 1);
        assert!(offsets.to_commit().is_empty());
    }
}
