//! Process bookkeeping for tests that run `dorado` commands which start
//! children of their own (etcd, replicas): find them, and check that none
//! outlives the command.

use std::time::{Duration, Instant};

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_owned));
            state.as_deref() != Some("Z")
        }
        Err(_) => false,
    }
}

/// Process ids whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Wait until none of `pids` is alive; returns those still alive after `timeout`.
pub fn wait_gone(pids: &[u64], timeout: Duration) -> Vec<u64> {
    let start = Instant::now();
    loop {
        let left: Vec<u64> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || start.elapsed() > timeout {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
