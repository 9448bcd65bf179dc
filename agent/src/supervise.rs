//! The service supervisor: starts services in order, prefixes their output on the console and
//! appends it to a log file, restarts with exponential backoff, reaps every child (PID 1 inherits
//! all orphans), and stops in reverse start order.
//!
//! Single-threaded by design: spawning and waitpid(-1) happen on the caller's thread only, so no
//! other thread can steal an exit status. Only output copying runs on threads.

use crate::console;
use crate::sys::{self, ExitStatus};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Runs for ever; restarted whenever it exits.
    Daemon,
    /// Runs until it exits 0, then never again (the done file makes that survive reboots).
    Oneshot { done_file: Option<PathBuf> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub kind: Kind,
    /// Not started until every one of these paths exists (a socket, another oneshot's done file).
    pub wait_for: Vec<PathBuf>,
    /// Runs on the console as its controlling terminal (the debug shell); output is not captured.
    pub console: bool,
}

impl ServiceSpec {
    pub fn daemon(name: &str, argv: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            kind: Kind::Daemon,
            wait_for: Vec::new(),
            console: false,
        }
    }

    pub fn oneshot(name: &str, argv: Vec<String>, done_file: Option<PathBuf>) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv,
            env: Vec::new(),
            kind: Kind::Oneshot { done_file },
            wait_for: Vec::new(),
            console: false,
        }
    }
}

/// Restart delay: `initial` doubling per consecutive failure up to `max`; a run that lasted
/// `reset_after` or longer counts as healthy and resets the delay.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// Delay before the restart that follows `failures` consecutive failures (1 = first).
    pub fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub backoff: Backoff,
    /// Directory for `<name>.log` (None: console only).
    pub log_dir: Option<PathBuf>,
    /// Time between SIGTERM and SIGKILL on stop.
    pub grace: Duration,
    /// The console device for console services.
    pub console_path: PathBuf,
    /// Strings never shown: replaced by `[redacted]` in console lines and log files (join
    /// tokens, certificate keys), whatever a service prints.
    pub redact: Vec<String>,
    /// Size at which a service's log is rotated (it keeps one older file).
    pub log_max_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backoff: Backoff::default(),
            log_dir: Some(PathBuf::from("/var/log")),
            grace: Duration::from_secs(10),
            console_path: PathBuf::from("/dev/console"),
            redact: Vec::new(),
            log_max_bytes: 4 << 20,
        }
    }
}

/// `text` with every secret replaced by `[redacted]`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[redacted]");
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running { pid: i32, since: Instant },
    Backoff { until: Instant },
    Done,
    Stopped,
}

/// What the status endpoint shows for one service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: String,
    pub pid: Option<i32>,
    pub restarts: u32,
}

pub type SharedStatus = Arc<Mutex<Vec<ServiceStatus>>>;

struct Service {
    spec: ServiceSpec,
    state: State,
    restarts: u32,
    failures: u32,
    started_once: bool,
    delays: Vec<Duration>,
}

pub struct Supervisor {
    services: Vec<Service>,
    opts: Options,
    status: SharedStatus,
    started: Vec<usize>,
    stopping: bool,
    /// Names in the order they were stopped (for tests and the shutdown log).
    pub stop_log: Vec<String>,
    /// Exits of processes that were not services (reaped orphans).
    pub orphans_reaped: u64,
}

impl Supervisor {
    pub fn new(specs: Vec<ServiceSpec>, opts: Options) -> Supervisor {
        let services = specs
            .into_iter()
            .map(|spec| {
                let done = match &spec.kind {
                    Kind::Oneshot { done_file: Some(f) } => f.exists(),
                    _ => false,
                };
                Service {
                    spec,
                    state: if done { State::Done } else { State::Waiting },
                    restarts: 0,
                    failures: 0,
                    started_once: done,
                    delays: Vec::new(),
                }
            })
            .collect();
        let s = Supervisor {
            services,
            opts,
            status: Arc::new(Mutex::new(Vec::new())),
            started: Vec::new(),
            stopping: false,
            stop_log: Vec::new(),
            orphans_reaped: 0,
        };
        s.publish();
        s
    }

    pub fn status_handle(&self) -> SharedStatus {
        self.status.clone()
    }

    /// Whether every service has been started at least once (or was already done).
    pub fn all_started(&self) -> bool {
        self.services.iter().all(|s| s.started_once)
    }

    /// The restart delays scheduled so far for `name`.
    pub fn delays(&self, name: &str) -> Vec<Duration> {
        self.find(name)
            .map(|s| s.delays.clone())
            .unwrap_or_default()
    }

    pub fn restarts(&self, name: &str) -> u32 {
        self.find(name).map_or(0, |s| s.restarts)
    }

    pub fn pid(&self, name: &str) -> Option<i32> {
        match self.find(name)?.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    pub fn is_done(&self, name: &str) -> bool {
        self.find(name).is_some_and(|s| s.state == State::Done)
    }

    fn find(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.spec.name == name)
    }

    fn publish(&self) {
        let v = self
            .services
            .iter()
            .map(|s| ServiceStatus {
                name: s.spec.name.clone(),
                state: match s.state {
                    State::Waiting => "waiting",
                    State::Running { .. } => "running",
                    State::Backoff { .. } => "backoff",
                    State::Done => "done",
                    State::Stopped => "stopped",
                }
                .to_string(),
                pid: match s.state {
                    State::Running { pid, .. } => Some(pid),
                    _ => None,
                },
                restarts: s.restarts,
            })
            .collect();
        if let Ok(mut g) = self.status.lock() {
            *g = v;
        }
    }

    /// Starts what is due; returns how long until the next scheduled start (None: nothing).
    pub fn tick(&mut self, now: Instant) -> Option<Duration> {
        if self.stopping {
            return None;
        }
        let mut next: Option<Duration> = None;
        for i in 0..self.services.len() {
            let due = match self.services[i].state {
                State::Waiting => self.services[i].spec.wait_for.iter().all(|p| p.exists()),
                State::Backoff { until } => {
                    if until <= now {
                        true
                    } else {
                        let d = until - now;
                        next = Some(next.map_or(d, |n| n.min(d)));
                        false
                    }
                }
                _ => false,
            };
            if due {
                self.start(i, now);
            }
        }
        self.publish();
        next
    }

    fn start(&mut self, i: usize, now: Instant) {
        let result = spawn(&self.services[i].spec, &self.opts);
        let svc = &mut self.services[i];
        if svc.started_once {
            svc.restarts += 1;
        }
        svc.started_once = true;
        if !self.started.contains(&i) {
            self.started.push(i);
        }
        match result {
            Ok(pid) => {
                svc.state = State::Running { pid, since: now };
                if worth_saying(svc.restarts) {
                    console::say(&format!("service {} running (pid {pid})", svc.spec.name));
                }
            }
            Err(e) => {
                let why = format!("spawn failed: {e}");
                self.schedule_restart(i, now, &why, false);
            }
        }
    }

    fn schedule_restart(&mut self, i: usize, now: Instant, why: &str, healthy_run: bool) {
        let backoff = self.opts.backoff;
        let svc = &mut self.services[i];
        if healthy_run {
            svc.failures = 0;
        }
        svc.failures += 1;
        let d = backoff.delay(svc.failures);
        svc.delays.push(d);
        svc.state = State::Backoff { until: now + d };
        if worth_saying(svc.failures) {
            console::say(&format!(
                "service {} exited ({why}) restart in {}s{}",
                svc.spec.name,
                d.as_secs_f64(),
                if svc.failures == QUIET_AFTER {
                    " (from now on said at the 16th, 32nd, 64th... failure)"
                } else {
                    ""
                }
            ));
        }
    }

    /// Reaps every exited child; returns how many were reaped.
    pub fn reap(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(exit) = sys::reap_one() {
            n += 1;
            let Some(i) = self
                .services
                .iter()
                .position(|s| matches!(s.state, State::Running { pid, .. } if pid == exit.pid))
            else {
                self.orphans_reaped += 1;
                continue;
            };
            self.exited(i, exit.status, now);
        }
        if n > 0 {
            self.publish();
        }
        n
    }

    fn exited(&mut self, i: usize, status: ExitStatus, now: Instant) {
        let since = match self.services[i].state {
            State::Running { since, .. } => since,
            _ => now,
        };
        if self.stopping {
            self.services[i].state = State::Stopped;
            return;
        }
        if let (Kind::Oneshot { done_file }, ExitStatus::Code(0)) =
            (&self.services[i].spec.kind, status)
        {
            if let Some(f) = done_file {
                if let Some(dir) = f.parent() {
                    let _ = fs::create_dir_all(dir);
                }
                // What the oneshot wrote reaches the disk before the marker says it is done
                // (kubeadm writes its files without fsync); the marker itself is atomic and
                // durable, so a power cut leaves either a whole marker over whole files or none.
                // SAFETY: sync() takes no arguments and cannot fail.
                unsafe { libc::sync() };
                if let Err(e) = sys::write_atomic(f, b"done\n", 0o644) {
                    console::say(&format!("cannot record {}: {e}", f.display()));
                }
            }
            self.services[i].state = State::Done;
            console::say(&format!("service {} done", self.services[i].spec.name));
            return;
        }
        let healthy = now.duration_since(since) >= self.opts.backoff.reset_after;
        self.schedule_restart(i, now, &status.to_string(), healthy);
    }

    /// One round of the main loop: wait for a signal (or the next due start), reap, start.
    /// Returns a signal other than SIGCHLD if one arrived.
    pub fn step(&mut self, poll: Duration) -> Option<libc::c_int> {
        let next = self.tick(Instant::now()).unwrap_or(poll).min(poll);
        let sig = sys::wait_signal(&sys::HANDLED_SIGNALS, next);
        self.reap(Instant::now());
        sig.filter(|&s| s != libc::SIGCHLD)
    }

    /// Stops every running service in reverse start order: SIGTERM to its process group, then
    /// SIGKILL after the grace period. No restarts happen afterwards.
    pub fn stop_all(&mut self) {
        self.stopping = true;
        let order: Vec<usize> = self.started.iter().rev().copied().collect();
        for i in order {
            let State::Running { pid, .. } = self.services[i].state else {
                continue;
            };
            let name = self.services[i].spec.name.clone();
            console::say(&format!("stopping {name} (pid {pid})"));
            self.stop_log.push(name.clone());
            let _ = sys::kill(-pid, libc::SIGTERM);
            let _ = sys::kill(pid, libc::SIGTERM);
            if !self.wait_stopped(i, self.opts.grace) {
                console::say(&format!("{name} ignored SIGTERM: killing"));
                let _ = sys::kill(-pid, libc::SIGKILL);
                let _ = sys::kill(pid, libc::SIGKILL);
                self.wait_stopped(i, Duration::from_secs(5));
            }
        }
        for s in &mut self.services {
            if !matches!(s.state, State::Running { .. } | State::Done) {
                s.state = State::Stopped;
            }
        }
        self.publish();
    }

    fn wait_stopped(&mut self, i: usize, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            self.reap(Instant::now());
            if !matches!(self.services[i].state, State::Running { .. }) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Restarts said on the console one by one; after these, only at powers of two, so that a
/// crash loop cannot take the whole console (the status endpoint counts every restart).
const QUIET_AFTER: u32 = 10;

fn worth_saying(n: u32) -> bool {
    n <= QUIET_AFTER || n.is_power_of_two()
}

/// A service's log file, capped: past `max` bytes it becomes `NAME.log.1` (replacing the one
/// before) and a new `NAME.log` starts, so a chatty service holds at most twice `max` on /var.
pub struct Log {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

/// 0600: a service may print what only root should read.
fn open_0600(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // A log created by an earlier image or by hand keeps its mode otherwise.
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

impl Log {
    pub fn open(path: PathBuf, max: u64) -> std::io::Result<Log> {
        let file = open_0600(&path)?;
        let size = file.metadata()?.len();
        Ok(Log {
            path,
            file,
            size,
            max,
        })
    }

    /// Appends one line, rotating first when it would pass the cap.
    pub fn write_line(&mut self, text: &str) {
        let n = text.len() as u64 + 1;
        if self.size > 0 && self.size + n > self.max {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            if fs::rename(&self.path, &old).is_ok() {
                if let Ok(f) = open_0600(&self.path) {
                    self.file = f;
                    self.size = 0;
                }
            }
        }
        let mut buf = Vec::with_capacity(text.len() + 1);
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'\n');
        if self.file.write_all(&buf).is_ok() {
            self.size += n;
        }
    }
}

fn open_log(opts: &Options, name: &str) -> Option<Arc<Mutex<Log>>> {
    let dir = opts.log_dir.as_ref()?;
    let _ = fs::create_dir_all(dir);
    let log = Log::open(dir.join(format!("{name}.log")), opts.log_max_bytes).ok()?;
    Some(Arc::new(Mutex::new(log)))
}

/// Copies lines from a child's pipe to the console (prefixed) and the log file.
fn pump(
    name: String,
    pipe: impl Read + Send + 'static,
    log: Option<Arc<Mutex<Log>>>,
    secrets: Arc<Vec<String>>,
) {
    let thread_name = format!("out-{name}");
    let prefix = name.clone();
    let spawned = std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&buf);
                let text = redact(text.trim_end_matches(['\n', '\r']), &secrets);
                console::line(&format!("[{prefix}] {text}"));
                if let Some(l) = &log {
                    if let Ok(mut f) = l.lock() {
                        f.write_line(&text);
                    }
                }
            }
        });
    if let Err(e) = spawned {
        console::say(&format!("cannot start output thread for {name}: {e}"));
    }
}

fn spawn(spec: &ServiceSpec, opts: &Options) -> std::io::Result<i32> {
    let (prog, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(prog);
    cmd.args(args).current_dir("/");
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    // PID 1 blocks the signals it waits for; a service must start with none blocked.
    // SAFETY: sigemptyset/sigprocmask are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    if spec.console {
        let tty = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&opts.console_path)?;
        cmd.stdin(tty.try_clone()?)
            .stdout(tty.try_clone()?)
            .stderr(tty);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY as _, 1);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        return Ok(child.id() as i32);
    }
    // Own process group, so stop() reaches the service's helpers too.
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let log = open_log(opts, &spec.name);
    let secrets = Arc::new(opts.redact.clone());
    if let Some(out) = child.stdout.take() {
        pump(spec.name.clone(), out, log.clone(), secrets.clone());
    }
    if let Some(err) = child.stderr.take() {
        pump(spec.name.clone(), err, log, secrets);
    }
    // The Child is dropped without wait(): reaping happens in Supervisor::reap.
    Ok(child.id() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=7).map(|f| b.delay(f).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.delay(1000), Duration::from_secs(30));
    }
}
