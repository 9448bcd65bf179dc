//! The process that keeps a cluster up after `cluster up` returns: it owns the switch and the
//! host's station (they live as long as the guests need them) and every QEMU, which it starts
//! with the console going to out/cluster/NAME/NODE.log and stops when it is told to (SIGTERM
//! from `cluster down` or from `up` on Ctrl-C). Each QEMU is also told to quit if this process
//! dies, so none is left behind either way.

use super::endpoint::{Endpoint, Forward};
use super::lan::{Lan, LanError};
use super::state::{self, NodeProc, Plan, Proc, State, StateError};
use crate::qemu::{self, LanPort, QemuError, RunOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("--forward {port}: 127.0.0.1:{port} is not free: {source}")]
    ForwardPort {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: {source}")]
    Qemu {
        node: String,
        #[source]
        source: QemuError,
    },
    #[error(transparent)]
    Lan(#[from] LanError),
    #[error(transparent)]
    State(#[from] StateError),
}

fn io(what: impl Into<String>) -> impl Fn(std::io::Error) -> SuperviseError {
    let what = what.into();
    move |source| SuperviseError::Io {
        what: what.clone(),
        source,
    }
}

/// The line appended to a node's log when its QEMU ends on its own.
pub const EXIT_LINE: &str = "piimg cluster: QEMU exited";

/// A free UDP port on 127.0.0.1 for a guest to receive on (free when asked; QEMU binds it
/// moments later).
fn free_udp_port() -> Result<u16, SuperviseError> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("a UDP port for a node"))?;
    Ok(s.local_addr().map_err(io("a UDP port for a node"))?.port())
}

/// Runs the cluster of `plan` from `dir` (out/cluster/NAME) until `stop` is set; then stops
/// every QEMU and removes the state file.
pub fn supervise(plan: &Plan, dir: &Path, stop: &AtomicBool) -> Result<(), SuperviseError> {
    let mut forwards = Vec::new();
    for f in &plan.forwards {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, f.host_port)).map_err(|source| {
            SuperviseError::ForwardPort {
                port: f.host_port,
                source,
            }
        })?;
        forwards.push(Forward { listener, to: f.to });
    }
    let endpoint = Endpoint::new(plan.host_mac, plan.host_address, plan.prefix, forwards);
    let mut ports = Vec::new();
    for _ in &plan.nodes {
        ports.push(free_udp_port()?);
    }
    let peers: Vec<SocketAddr> = ports
        .iter()
        .map(|&p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
        .collect();
    let mut lan = Lan::bind(0, &peers, Some(endpoint))?;
    let switch_port = lan.port()?;
    let lan_stop = Arc::new(AtomicBool::new(false));
    let lan_thread = {
        let lan_stop = lan_stop.clone();
        std::thread::Builder::new()
            .name("lan".into())
            .spawn(move || lan.run(&lan_stop))
            .map_err(io("the switch's thread"))?
    };
    // Boot files of every node, kept while its QEMU runs.
    let tmp = tempfile::Builder::new()
        .prefix("piimg-cluster-")
        .tempdir()
        .map_err(io("temporary folder"))?;
    let mut children: Vec<(String, Child, Proc)> = Vec::new();
    let started = start_all(plan, dir, tmp.path(), &ports, switch_port, &mut children);
    let result = started.and_then(|()| {
        let me = Proc::of(std::process::id() as i32)
            .ok_or_else(|| io("/proc/self/stat")(std::io::Error::other("unreadable")))?;
        let st = State {
            supervisor: me,
            switch_port,
            nodes: children
                .iter()
                .map(|(name, _, proc)| NodeProc {
                    name: name.clone(),
                    proc: *proc,
                })
                .collect(),
        };
        state::write_json(&dir.join(state::STATE_FILE), &st)?;
        watch(dir, &mut children, stop);
        Ok(())
    });
    for (_, child, proc) in &mut children {
        proc.stop(Duration::from_secs(5));
        let _ = child.try_wait();
    }
    let _ = std::fs::remove_file(dir.join(state::STATE_FILE));
    lan_stop.store(true, Ordering::SeqCst);
    let lan_result = lan_thread.join();
    result?;
    match lan_result {
        Ok(r) => Ok(r?),
        Err(_) => Err(io("the switch")(std::io::Error::other("panicked"))),
    }
}

/// Starts one QEMU per node (from this thread: each dies with it).
fn start_all(
    plan: &Plan,
    dir: &Path,
    tmp: &Path,
    ports: &[u16],
    switch_port: u16,
    children: &mut Vec<(String, Child, Proc)>,
) -> Result<(), SuperviseError> {
    for (node, &local_port) in plan.nodes.iter().zip(ports) {
        let opts = RunOptions {
            image: node.image.clone(),
            memory: None,
            forwards: Vec::new(),
            timeout: None,
            until: None,
            qemu: None,
            writable: false,
            direct: None,
            card: None,
            lan: Some(LanPort {
                mac: node.mac,
                local_port,
                switch_port,
            }),
        };
        let qerr = |source| SuperviseError::Qemu {
            node: node.name.clone(),
            source,
        };
        let boot = tmp.join(&node.name);
        std::fs::create_dir_all(&boot).map_err(io(boot.display().to_string()))?;
        let p = qemu::prepare(&opts, &boot).map_err(qerr)?;
        let log_path = state::node_log(dir, &node.name);
        let log = std::fs::File::create(&log_path).map_err(io(log_path.display().to_string()))?;
        let err = log
            .try_clone()
            .map_err(io(log_path.display().to_string()))?;
        let child = qemu::spawn_with(&p.qemu, &p.args, Stdio::null(), log.into(), err.into())
            .map_err(qerr)?;
        let pid = child.id() as i32;
        let proc = Proc::of(pid).unwrap_or(Proc { pid, start: 0 });
        children.push((node.name.clone(), child, proc));
    }
    Ok(())
}

/// Until `stop`: notes in its log when a node's QEMU ends by itself.
fn watch(dir: &Path, children: &mut [(String, Child, Proc)], stop: &AtomicBool) {
    let mut ended = vec![false; children.len()];
    while !stop.load(Ordering::SeqCst) {
        for (i, (name, child, _)) in children.iter_mut().enumerate() {
            if ended[i] {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                ended[i] = true;
                let log = state::node_log(dir, name);
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log) {
                    let _ = writeln!(f, "\n{EXIT_LINE} ({status})");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
