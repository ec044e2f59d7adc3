//! How many workers a pool runs on its node, by Parsl's rules, so that a configuration
//! written for Globus Compute sizes its pools the same way here.

use crate::wire::WorkerLayout;

/// What the node offers: `PARSL_CORES` and `PARSL_MEMORY_GB` override what is detected,
/// as they do for Parsl's worker pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Node {
    pub cores: usize,
    pub memory_gib: Option<f64>,
}

impl Node {
    pub(crate) fn detect() -> Node {
        let cores = std::env::var("PARSL_CORES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(crate::config::cores);
        let memory_gib = std::env::var("PARSL_MEMORY_GB")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .or_else(available_memory_gib);
        Node { cores, memory_gib }
    }
}

/// MemAvailable from /proc/meminfo, in GiB.
fn available_memory_gib() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// Task slots for `layout` on `node`: per node, the smallest of
/// `max_workers_per_node`, the cores over `cores_per_worker`, the memory over
/// `mem_per_worker` and the number of accelerators. Zero means not even one worker fits,
/// which the caller reports.
pub(crate) fn slots(layout: &WorkerLayout, node: Node) -> usize {
    match layout {
        WorkerLayout::Threads { threads } => *threads,
        WorkerLayout::Processes { processes } => *processes,
        WorkerLayout::PerNode {
            max_workers,
            cores_per_worker,
            mem_per_worker,
            accelerators,
        } => {
            let mut count = max_workers.unwrap_or(usize::MAX);
            count = count.min((node.cores as f64 / cores_per_worker).floor() as usize);
            if let (Some(per), Some(memory)) = (mem_per_worker, node.memory_gib) {
                count = count.min((memory / per).floor() as usize);
            }
            if !accelerators.is_empty() {
                count = count.min(accelerators.len());
            }
            count
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processes(max: Option<usize>, cores: f64, mem: Option<f64>, acc: usize) -> WorkerLayout {
        WorkerLayout::PerNode {
            max_workers: max,
            cores_per_worker: cores,
            mem_per_worker: mem,
            accelerators: (0..acc).map(|i| i.to_string()).collect(),
        }
    }

    #[test]
    fn the_tightest_limit_wins() {
        let node = Node {
            cores: 8,
            memory_gib: Some(10.0),
        };
        assert_eq!(slots(&processes(None, 1.0, None, 0), node), 8);
        assert_eq!(slots(&processes(Some(3), 1.0, None, 0), node), 3);
        assert_eq!(slots(&processes(Some(30), 1.0, None, 0), node), 8);
        assert_eq!(slots(&processes(None, 0.5, None, 0), node), 16);
        assert_eq!(slots(&processes(None, 1.0, Some(4.0), 0), node), 2);
        assert_eq!(slots(&processes(None, 1.0, None, 2), node), 2);
        assert_eq!(slots(&processes(None, 16.0, None, 0), node), 0);
        assert_eq!(slots(&WorkerLayout::Threads { threads: 40 }, node), 40);
        assert_eq!(slots(&WorkerLayout::Processes { processes: 40 }, node), 40);
    }
}
