//! The run's event log: every nemesis action, client operation and notable
//! store fault, stamped with virtual time. Kept in memory; printed in full by
//! `dorado-sim --seed N` and summarised in failure messages.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

/// Cheap to clone; clones share one log.
#[derive(Debug, Clone)]
pub struct Log {
    start: Instant,
    lines: Arc<Mutex<Vec<String>>>,
    echo: bool,
}

impl Log {
    /// A log whose clock starts now; `echo` also prints every event to stderr.
    pub fn new(echo: bool) -> Self {
        Log {
            start: Instant::now(),
            lines: Arc::default(),
            echo,
        }
    }

    /// Virtual nanoseconds since the start of the run.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Record an event.
    pub fn ev(&self, what: impl Into<String>) {
        let line = format!("{:>9.3}s {}", self.now_ns() as f64 / 1e9, what.into());
        if self.echo {
            eprintln!("{line}");
        }
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }

    /// A digest of everything recorded so far (FNV-1a: stable across builds
    /// and processes, unlike std's seeded hashers).
    pub fn digest(&self) -> u64 {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in lines.iter().flat_map(|l| l.bytes().chain([b'\n'])) {
            h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    /// Everything recorded so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
