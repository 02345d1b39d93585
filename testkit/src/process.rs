//! One guard for every child process a test, benchmark or demo starts, so
//! that a failing test (a panic unwinding through it) never leaves an etcd or
//! a replica running, and a paused (SIGSTOPped) child is continued before it
//! is killed. Replica harnesses ([`crate::cluster`], the fault suite's, the
//! benchmarks') wrap it instead of each keeping their own `Child`.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed (SIGCONT, then SIGKILL) and reaped on drop.
#[derive(Debug, Default)]
pub struct ChildGuard {
    child: Option<Child>,
    paused: bool,
}

impl ChildGuard {
    /// Spawn `cmd` (stdin from /dev/null unless the caller set it).
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        let child = cmd.spawn()?;
        Ok(ChildGuard {
            child: Some(child),
            paused: false,
        })
    }

    /// Replace whatever ran before (killed first) with a new process.
    pub fn respawn(&mut self, cmd: &mut Command) -> std::io::Result<()> {
        self.kill();
        *self = ChildGuard::spawn(cmd)?;
        Ok(())
    }

    /// Process id, while it runs (or has exited without being reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it was started and has not been seen to exit.
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// Stopped with SIGSTOP and not yet continued.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether it is alive; reaps it if it exited.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none() && self.child.is_some()
    }

    /// Its exit status if it has exited (reaped, after which the guard is empty).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                self.paused = false;
                Some(status)
            }
            Ok(None) | Err(_) => None,
        }
    }

    /// Wait (polling every 20 ms) for it to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Send `sig` (a `kill(1)` name: `TERM`, `STOP`, ...). A guard without a
    /// process is a no-op.
    pub fn signal(&self, sig: &str) -> Result<(), ProcessError> {
        match self.pid() {
            Some(pid) => signal_pid(pid, sig),
            None => Ok(()),
        }
    }

    /// SIGSTOP (a paused process: still holds its lease and sockets).
    pub fn pause(&mut self) -> Result<(), ProcessError> {
        if self.child.is_some() {
            self.signal("STOP")?;
            self.paused = true;
        }
        Ok(())
    }

    /// SIGCONT after [`ChildGuard::pause`].
    pub fn resume(&mut self) -> Result<(), ProcessError> {
        if self.paused {
            self.signal("CONT")?;
            self.paused = false;
        }
        Ok(())
    }

    /// `kill -9` and reap (a crash). SIGCONT first, so that a paused process
    /// is not left stopped if SIGKILL were delayed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                let _ = signal_pid(child.id(), "CONT");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }
}

/// Send `sig` (a `kill(1)` name) to `pid`.
pub fn signal_pid(pid: u32, sig: &str) -> Result<(), ProcessError> {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(ProcessError::Kill)?;
    if status.success() {
        Ok(())
    } else {
        Err(ProcessError::Signal {
            signal: sig.to_string(),
            pid,
        })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a signal could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// `kill(1)` could not be run.
    #[error("cannot run kill: {0}")]
    Kill(std::io::Error),
    /// `kill(1)` refused (the process is gone, or not ours).
    #[error("kill -{signal} {pid} failed")]
    Signal {
        /// The signal name.
        signal: String,
        /// The process id.
        pid: u32,
    },
}

/// The last `n` lines of `text`, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of a file (empty if it cannot be read).
pub fn tail_file(path: &Path, n: usize) -> String {
    tail(&std::fs::read_to_string(path).unwrap_or_default(), n)
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports (all held until every one is picked).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound address").port())
        .collect()
}

/// Poll `cond` every 50 ms until it holds or `timeout` passes; panics naming `what`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let holds = cond();
        async move {
            if holds.await {
                Ok(())
            } else {
                Err("not yet".into())
            }
        }
    })
    .await
}

/// Poll `probe` every 50 ms until it returns `Ok(value)`, and return that
/// value; after `timeout`, panic naming `what` and the last `Err`, which
/// says what was seen instead.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    poll(timeout, probe).await.unwrap_or_else(|last| {
        panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
    })
}

/// Poll `probe` every 50 ms until it returns `Ok(value)`; after `timeout`,
/// `Err` with the last thing it saw instead. The one polling loop of the
/// test harnesses ([`wait_for`] panics, the end-to-end tests return it).
pub async fn poll<T, F, Fut>(timeout: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if start.elapsed() >= timeout {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::{alive, wait_gone};

    fn sleeper() -> ChildGuard {
        ChildGuard::spawn(Command::new("sleep").arg("30").stdin(Stdio::null()))
            .expect("spawn sleep")
    }

    #[test]
    fn a_dropped_guard_kills_and_reaps_its_process_even_when_paused() {
        let mut guard = sleeper();
        let pid = guard.pid().expect("running");
        guard.pause().expect("SIGSTOP");
        assert!(guard.is_paused());
        drop(guard);
        assert_eq!(
            wait_gone(&[u64::from(pid)], Duration::from_secs(5)),
            Vec::<u64>::new()
        );
        assert!(!alive(u64::from(pid)));
    }

    #[tokio::test]
    async fn exit_status_is_seen_once_and_the_guard_empties() {
        let mut guard =
            ChildGuard::spawn(Command::new("sh").args(["-c", "exit 3"])).expect("spawn sh");
        let status = guard
            .wait_exit(Duration::from_secs(5))
            .await
            .expect("sh exits");
        assert_eq!(status.code(), Some(3));
        assert!(!guard.is_started());
        assert!(!guard.is_running());
        assert_eq!(guard.pid(), None);
        // Signals to an empty guard are no-ops, not errors.
        guard.signal("TERM").expect("no-op");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(8);
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 8, "{ports:?}");
    }
}
