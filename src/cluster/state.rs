//! What `cluster up` asked for ([`Plan`], written before the supervisor starts) and what it
//! started ([`State`]: the supervisor's and every QEMU's pid with its start time, so that
//! `cluster down` never signals a process that merely reuses a pid), both under
//! out/cluster/NAME/.

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

pub const PLAN_FILE: &str = "plan.json";
pub const STATE_FILE: &str = "state.json";
/// The supervisor's own log: the switch's errors, why it stopped.
pub const SUPERVISOR_LOG: &str = "cluster.log";

/// out/cluster/NAME.
pub fn cluster_dir(out: &Path, cluster: &str) -> PathBuf {
    out.join("cluster").join(cluster)
}

/// A node's console log.
pub fn node_log(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}.log"))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanNode {
    /// Profile name.
    pub name: String,
    pub image: PathBuf,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanForward {
    pub host_port: u16,
    pub to: SocketAddrV4,
}

/// What the supervisor runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub cluster: String,
    /// The host's station: the nodes' NTP server address, on their subnet.
    pub host_address: Ipv4Addr,
    pub prefix: u8,
    pub host_mac: [u8; 6],
    pub forwards: Vec<PlanForward>,
    pub nodes: Vec<PlanNode>,
}

/// A process as started: its pid and the kernel's start time of that pid (clock ticks since
/// boot, /proc/PID/stat field 22).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub start: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeProc {
    pub name: String,
    pub proc: Proc,
}

/// What is running.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub supervisor: Proc,
    pub switch_port: u16,
    pub nodes: Vec<NodeProc>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `value` as JSON to `path` through a temporary file, so a reader never sees half.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(value).map_err(|source| StateError::Json {
        path: path.display().to_string(),
        source,
    })?;
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Reads a JSON file; None when it does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| StateError::Json {
                path: path.display().to_string(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// The start time of `pid`, None when there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Proc {
    /// This pid as it is now.
    pub fn of(pid: i32) -> Option<Proc> {
        Some(Proc {
            pid,
            start: start_time(pid)?,
        })
    }

    /// Whether the process that was started is still there (a zombie counts until reaped).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    /// SIGTERM, then SIGKILL after `grace`; true once it is gone (for our own children that
    /// means reaped by us, for others by their parent or init).
    pub fn stop(&self, grace: Duration) -> bool {
        if !self.alive() {
            return true;
        }
        self.signal(libc::SIGTERM);
        if self.wait_gone(grace) {
            return true;
        }
        self.signal(libc::SIGKILL);
        self.wait_gone(Duration::from_secs(5))
    }

    fn signal(&self, sig: libc::c_int) {
        if self.alive() {
            // SAFETY: kill(2) on a pid whose start time we just checked.
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    fn wait_gone(&self, limit: Duration) -> bool {
        let t = Instant::now();
        loop {
            // Reap it if it is our child (a no-op otherwise).
            // SAFETY: waitpid with WNOHANG on a pid; no memory is passed but a status int.
            unsafe {
                let mut st = 0;
                libc::waitpid(self.pid, &mut st, libc::WNOHANG);
            }
            if !self.alive() {
                return true;
            }
            if t.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_process_is_gone_and_a_reused_pid_is_not_ours() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let p = Proc::of(child.id() as i32).unwrap();
        assert!(p.alive());
        let other = Proc {
            pid: p.pid,
            start: p.start + 1,
        };
        assert!(!other.alive(), "another start time is another process");
        assert!(p.stop(Duration::from_secs(5)));
        assert!(!p.alive());
        // Already reaped by `stop`: nothing is left to wait for.
        assert!(child.try_wait().is_err());
        assert!(start_time(p.pid).is_none());
    }

    #[test]
    fn state_files_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(STATE_FILE);
        assert_eq!(read_json::<State>(&path).unwrap(), None);
        let s = State {
            supervisor: Proc { pid: 1, start: 2 },
            switch_port: 3,
            nodes: vec![NodeProc {
                name: "n".into(),
                proc: Proc { pid: 4, start: 5 },
            }],
        };
        write_json(&path, &s).unwrap();
        assert_eq!(read_json::<State>(&path).unwrap(), Some(s));
    }
}
