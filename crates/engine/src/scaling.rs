//! When to add and remove blocks: a pure function of the load, so it can be tested
//! without processes and reasoned about alone.
//!
//! It follows Parsl's `simple` strategy as Globus Compute uses it: enough blocks for the
//! tasks held (times `parallelism`), within `min_blocks..=max_blocks`; a block whose
//! workers have all been idle for `max_idletime` is stopped, oldest-idle first, as long as
//! no task is waiting and the count stays at or above what the load and `min_blocks`
//! need.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::ScalingStrategy;
use crate::provider::BlockId;

/// The limits a strategy works within.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    pub strategy: ScalingStrategy,
    pub init_blocks: usize,
    pub min_blocks: usize,
    pub max_blocks: usize,
    pub parallelism: f64,
    pub max_idletime: Duration,
    /// Task slots one block is expected to have.
    pub slots_per_block: usize,
}

/// One block as the strategy sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BlockLoad {
    pub id: BlockId,
    /// Tasks running on it.
    pub running: usize,
    /// Since when it has had nothing to run (`None` while it runs something or has not
    /// connected yet: a starting block is never idle).
    pub idle_since: Option<Instant>,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    Hold,
    /// Start this many more blocks.
    Start(usize),
    /// Stop these idle blocks.
    Stop(Vec<BlockId>),
}

impl Policy {
    /// The plan for `pending` waiting tasks, `running` running ones, and `blocks`.
    pub(crate) fn plan(
        &self,
        pending: usize,
        running: usize,
        blocks: &[BlockLoad],
        now: Instant,
    ) -> Plan {
        let have = blocks.len();
        let target = match self.strategy {
            ScalingStrategy::None => self.init_blocks.max(self.min_blocks),
            ScalingStrategy::Simple => self.needed(pending + running).max(self.min_blocks),
        }
        .min(self.max_blocks);
        if have < target {
            return Plan::Start(target - have);
        }
        if self.strategy == ScalingStrategy::None || pending > 0 || have <= target {
            return Plan::Hold;
        }
        let mut idle: Vec<&BlockLoad> = blocks
            .iter()
            .filter(|b| b.running == 0)
            .filter(|b| {
                b.idle_since
                    .is_some_and(|since| now.duration_since(since) >= self.max_idletime)
            })
            .collect();
        idle.sort_by_key(|b| (b.idle_since, b.id));
        let stop: Vec<BlockId> = idle.iter().take(have - target).map(|b| b.id).collect();
        if stop.is_empty() {
            Plan::Hold
        } else {
            Plan::Stop(stop)
        }
    }

    /// Blocks the tasks held need.
    fn needed(&self, tasks: usize) -> usize {
        if tasks == 0 {
            return 0;
        }
        let slots = self.slots_per_block.max(1) as f64;
        let wanted = (tasks as f64 * self.parallelism / slots).ceil() as usize;
        // As in Parsl, tasks with no block at all get one whatever the parallelism, so
        // that nothing waits forever.
        wanted.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: usize, max: usize) -> Policy {
        Policy {
            strategy: ScalingStrategy::Simple,
            init_blocks: 1,
            min_blocks: min,
            max_blocks: max,
            parallelism: 1.0,
            max_idletime: Duration::from_secs(10),
            slots_per_block: 2,
        }
    }

    fn block(id: BlockId, running: usize, idle_for: Option<u64>, now: Instant) -> BlockLoad {
        BlockLoad {
            id,
            running,
            idle_since: idle_for.map(|s| now - Duration::from_secs(s)),
        }
    }

    #[test]
    fn waiting_tasks_add_blocks_up_to_max_blocks() {
        let now = Instant::now();
        let p = policy(0, 3);
        assert_eq!(p.plan(1, 0, &[], now), Plan::Start(1));
        assert_eq!(p.plan(5, 0, &[], now), Plan::Start(3));
        assert_eq!(p.plan(50, 0, &[], now), Plan::Start(3));
        assert_eq!(p.plan(3, 2, &[block(1, 2, None, now)], now), Plan::Start(2));
        let full = [
            block(1, 2, None, now),
            block(2, 2, None, now),
            block(3, 2, None, now),
        ];
        assert_eq!(p.plan(10, 6, &full, now), Plan::Hold);
    }

    #[test]
    fn idle_blocks_past_max_idletime_are_stopped_down_to_min_blocks() {
        let now = Instant::now();
        let p = policy(1, 3);
        let blocks = [
            block(1, 0, Some(30), now),
            block(2, 0, Some(20), now),
            block(3, 0, Some(5), now),
        ];
        // Block 3 has not been idle long enough and stays, which satisfies min_blocks.
        assert_eq!(p.plan(0, 0, &blocks, now), Plan::Stop(vec![1, 2]));
        // Both idle long enough, but one must stay: the one idle longest goes.
        let blocks = [block(1, 0, Some(20), now), block(2, 0, Some(30), now)];
        assert_eq!(p.plan(0, 0, &blocks, now), Plan::Stop(vec![2]));
        assert_eq!(p.plan(0, 0, &blocks[1..], now), Plan::Hold);
        // Nothing is stopped while tasks wait, nor a block that runs one.
        assert_eq!(p.plan(1, 0, &blocks, now), Plan::Hold);
        let busy = [block(1, 1, None, now), block(2, 0, Some(30), now)];
        assert_eq!(p.plan(0, 1, &busy, now), Plan::Stop(vec![2]));
    }

    #[test]
    fn min_blocks_are_kept_and_replaced_without_tasks() {
        let now = Instant::now();
        assert_eq!(policy(2, 3).plan(0, 0, &[], now), Plan::Start(2));
        let fixed = Policy {
            strategy: ScalingStrategy::None,
            ..policy(0, 1)
        };
        assert_eq!(fixed.plan(0, 0, &[], now), Plan::Start(1));
        assert_eq!(
            fixed.plan(0, 0, &[block(1, 0, Some(1000), now)], now),
            Plan::Hold
        );
    }

    #[test]
    fn parallelism_shares_slots() {
        let now = Instant::now();
        let p = Policy {
            parallelism: 0.5,
            ..policy(0, 10)
        };
        // 8 tasks at parallelism 0.5 want 4 slots: 2 blocks of 2.
        assert_eq!(p.plan(8, 0, &[], now), Plan::Start(2));
        let none = Policy {
            parallelism: 0.0,
            ..policy(0, 10)
        };
        assert_eq!(none.plan(8, 0, &[], now), Plan::Start(1));
        assert_eq!(none.plan(8, 0, &[block(1, 0, None, now)], now), Plan::Hold);
    }
}
