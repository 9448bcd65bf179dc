//! `piimg cluster up|down`: builds what is missing or stale, starts the supervisor
//! (`piimg::cluster::supervise`, in a process of its own so that the cluster outlives `up`),
//! shows the nodes' states from their console logs, and stops it all again.

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use piimg::cluster::plan::{self, Member, NodeStatus};
use piimg::cluster::state::{self, Plan, Proc, State};
use piimg::pipeline::Freshness;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Build the cluster's missing or stale images and boot every node in QEMU (raspi3b) on
    /// one virtual Ethernet segment
    #[command(
        after_help = "Example:\n  piimg cluster up --cluster qemu-ha --component kubelet=./kubelet --component kubeadm=./kubeadm \\\n      --component kubectl=./kubectl --forward 7780:qemu-ha-lb1:7780 --until ready\n  curl http://127.0.0.1:7780/status\n  piimg cluster down --cluster qemu-ha\n\nThe segment exists only inside the QEMU processes and host loopback: piimg runs an Ethernet\nswitch on a UDP port of 127.0.0.1 and each QEMU sends its frames there (-netdev dgram). The host\nis a station on it at the nodes' NTP address (their profiles' network.ntp, on their subnet): it\nanswers SNTP with the host's clock and carries --forward connections from 127.0.0.1:HOSTPORT to\nNODE's address, port GUESTPORT. Only rpi3b, rpi3bplus and zero2w nodes: QEMU's raspi4b has no\nEthernet.\n\nConsole logs: OUT/cluster/NAME/NODE.log. Without --until the command stays until Ctrl-C, which\nstops every QEMU; with --until ready it returns once all nodes are ready and the cluster keeps\nrunning until `piimg cluster down`. Exit status: 0 ready, 1 on timeout or a failed node (the\ncluster is stopped), 130 on Ctrl-C."
    )]
    Up {
        /// The cluster (the profiles' `cluster` field)
        #[arg(long, value_name = "NAME")]
        cluster: String,
        /// Output folder of the images; logs and state go to OUT/cluster/NAME
        #[arg(long, default_value = "out", value_name = "DIR")]
        out: PathBuf,
        /// Replace a component with a local file when building (repeatable)
        #[arg(long = "component", value_name = "NAME=PATH")]
        components: Vec<String>,
        /// Forward 127.0.0.1:HOSTPORT to a node's port (NODE: profile name or hostname;
        /// repeatable)
        #[arg(long = "forward", value_name = "HOSTPORT:NODE:GUESTPORT")]
        forwards: Vec<String>,
        /// Return once every node is ready, leaving the cluster running
        #[arg(long, value_enum, value_name = "STATE")]
        until: Option<UntilState>,
        /// Give up (and stop the cluster) when not every node is ready after this long
        #[arg(long, default_value_t = 600, value_name = "SECS")]
        timeout: u64,
        /// Use only the cache when building
        #[arg(long)]
        offline: bool,
    },
    /// Stop every QEMU process `cluster up` started for the cluster
    Down {
        /// The cluster
        #[arg(long, value_name = "NAME")]
        cluster: String,
        /// The output folder `cluster up` was given
        #[arg(long, default_value = "out", value_name = "DIR")]
        out: PathBuf,
    },
    /// (internal) The process that runs the switch and the QEMUs of OUT/cluster/NAME
    #[command(hide = true)]
    Supervise {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UntilState {
    Ready,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn catch_signals() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn run(cmd: &ClusterCommand, profiles: &Path, quiet: bool, verbose: u8) -> Result<i32> {
    match cmd {
        ClusterCommand::Up {
            cluster,
            out,
            components,
            forwards,
            until,
            timeout,
            offline,
        } => up(&UpArgs {
            profiles,
            cluster,
            out,
            components,
            forwards,
            until_ready: until.is_some(),
            timeout: Duration::from_secs(*timeout),
            offline: *offline,
            quiet,
            verbose,
        }),
        ClusterCommand::Down { cluster, out } => {
            let n = down(&state::cluster_dir(out, cluster))?;
            if !quiet {
                match n {
                    None => eprintln!("piimg: cluster {cluster} is not up"),
                    Some(n) => eprintln!(
                        "piimg: cluster {cluster} stopped ({n} QEMU processes were running)"
                    ),
                }
            }
            Ok(0)
        }
        ClusterCommand::Supervise { dir } => supervise(dir),
    }
}

struct UpArgs<'a> {
    profiles: &'a Path,
    cluster: &'a str,
    out: &'a Path,
    components: &'a [String],
    forwards: &'a [String],
    until_ready: bool,
    timeout: Duration,
    offline: bool,
    quiet: bool,
    verbose: u8,
}

fn up(a: &UpArgs) -> Result<i32> {
    let dir = state::cluster_dir(a.out, a.cluster);
    if let Some(st) = state::read_json::<State>(&dir.join(state::STATE_FILE))? {
        if st.supervisor.alive() {
            bail!(
                "cluster {} is already up (pid {}): piimg cluster down --cluster {}",
                a.cluster,
                st.supervisor.pid,
                a.cluster
            );
        }
    }
    let Some(p) = super::profiles::load(a.profiles, None, false, a.quiet)? else {
        return Ok(1);
    };
    let nodes: Vec<&piimg::profile::NodeProfile> =
        p.nodes.iter().filter(|n| n.cluster == a.cluster).collect();
    let out = std::path::absolute(a.out).context("the output folder")?;
    let members: Vec<Member> = nodes
        .iter()
        .map(|n| Member {
            name: &n.name,
            hostname: &n.config.hostname,
            board: n.config.board,
            address: n.config.network.address,
            ntp: &n.config.network.ntp,
            image: out.join(format!("{}.img", n.name)),
        })
        .collect();
    let plan = plan::plan(a.cluster, &members, a.forwards)?;
    if build_stale(a, &p, &nodes)? != 0 {
        return Ok(1);
    }
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    state::write_json(&dir.join(state::PLAN_FILE), &plan)?;
    catch_signals();
    let started = Instant::now();
    let Some(st) = start_supervisor(&dir)? else {
        return Ok(1);
    };
    if !a.quiet {
        eprintln!(
            "piimg: {} nodes booting on the virtual LAN (switch 127.0.0.1:{}, host station {}); consoles in {}",
            plan.nodes.len(),
            st.switch_port,
            plan.host_address,
            dir.display()
        );
    }
    let table = Table::new(&plan, a.quiet);
    let deadline = started + a.timeout;
    let mut all_ready = false;
    loop {
        let states: Vec<NodeStatus> = plan
            .nodes
            .iter()
            .map(|n| {
                let text = std::fs::read(state::node_log(&dir, &n.name)).unwrap_or_default();
                plan::node_status(&String::from_utf8_lossy(&text))
            })
            .collect();
        table.show(&states, started);
        let failed: Vec<String> = plan
            .nodes
            .iter()
            .zip(&states)
            .filter_map(|(n, s)| match s {
                NodeStatus::Failed(why) => Some(format!("{} ({why})", n.name)),
                _ => None,
            })
            .collect();
        if STOP.load(Ordering::SeqCst) {
            table.clear();
            down(&dir)?;
            eprintln!("piimg: interrupted: cluster {} stopped", a.cluster);
            return Ok(130);
        }
        if !failed.is_empty() {
            table.clear();
            down(&dir)?;
            eprintln!(
                "piimg: failed: {}; cluster {} stopped (logs in {})",
                failed.join(", "),
                a.cluster,
                dir.display()
            );
            return Ok(1);
        }
        if !st.supervisor.alive() {
            table.clear();
            down(&dir)?;
            eprintln!(
                "piimg: the cluster's supervisor ended (see {})",
                dir.join(state::SUPERVISOR_LOG).display()
            );
            return Ok(1);
        }
        let ready = states.iter().all(|s| *s == NodeStatus::Ready);
        if ready && !all_ready {
            all_ready = true;
            table.clear();
            if !a.quiet {
                eprintln!(
                    "piimg: all {} nodes of {} ready after {:.1} s",
                    plan.nodes.len(),
                    a.cluster,
                    started.elapsed().as_secs_f64()
                );
                for f in &plan.forwards {
                    eprintln!("piimg: 127.0.0.1:{} -> {}", f.host_port, f.to);
                }
            }
            if a.until_ready {
                if !a.quiet {
                    eprintln!(
                        "piimg: stop it with: piimg cluster down --cluster {}",
                        a.cluster
                    );
                }
                return Ok(0);
            }
            if !a.quiet {
                eprintln!("piimg: running until Ctrl-C");
            }
        }
        if !all_ready && Instant::now() >= deadline {
            table.clear();
            down(&dir)?;
            let late: Vec<&str> = plan
                .nodes
                .iter()
                .zip(&states)
                .filter(|(_, s)| **s != NodeStatus::Ready)
                .map(|(n, _)| n.name.as_str())
                .collect();
            eprintln!(
                "piimg: timed out after {} s; not ready: {}; cluster {} stopped (logs in {})",
                a.timeout.as_secs(),
                late.join(", "),
                a.cluster,
                dir.display()
            );
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Builds the nodes whose images are missing or stale, by the rule `piimg flash --profile`
/// uses (the manifest's recorded inputs against the current ones).
fn build_stale(
    a: &UpArgs,
    p: &piimg::profile::Profiles,
    nodes: &[&piimg::profile::NodeProfile],
) -> Result<i32> {
    let opts = super::build_options(a.out, a.offline, a.components, Vec::new())?;
    let lock = piimg::pipeline::lock_path(a.profiles);
    let mut stale = Vec::new();
    for n in nodes {
        let inputs = piimg::pipeline::build_inputs(p, n, &lock, &opts)?;
        match piimg::pipeline::freshness(a.out, &n.name, &inputs) {
            Freshness::Current => {
                if a.verbose > 0 {
                    eprintln!("piimg: {}.img is current", n.name);
                }
            }
            Freshness::Stale(why) => {
                if !a.quiet {
                    eprintln!("piimg: building {}: {why}", n.name);
                }
                stale.push(*n);
            }
        }
    }
    if stale.is_empty() {
        return Ok(0);
    }
    let reporters: Vec<super::progress::NodeLines> = stale
        .iter()
        .map(|n| super::progress::NodeLines::new(&n.name, a.quiet))
        .collect();
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let results = piimg::pipeline::build_many(
        p,
        &stale,
        &super::profiles::cache()?,
        &lock,
        &opts,
        jobs,
        &reporters,
    );
    let mut failed = 0;
    for (n, r) in stale.iter().zip(results) {
        if let Err(e) = r {
            eprintln!("piimg: {}: {}", n.name, super::error_chain(&e.into()));
            failed += 1;
        }
    }
    Ok(i32::from(failed > 0))
}

/// Starts `piimg cluster supervise` in a session of its own (Ctrl-C at the terminal reaches
/// `up`, which stops it in order) and waits for its state file.
fn start_supervisor(dir: &Path) -> Result<Option<State>> {
    let state_file = dir.join(state::STATE_FILE);
    let _ = std::fs::remove_file(&state_file);
    let log_path = dir.join(state::SUPERVISOR_LOG);
    let log = std::fs::File::create(&log_path).with_context(|| log_path.display().to_string())?;
    let exe = std::env::current_exe().context("finding the piimg executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["cluster", "supervise", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; called between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the cluster's supervisor")?;
    let t = Instant::now();
    loop {
        if let Some(st) = state::read_json::<State>(&state_file)? {
            return Ok(Some(st));
        }
        if let Some(status) = child.try_wait()? {
            let said = std::fs::read_to_string(&log_path).unwrap_or_default();
            eprintln!(
                "piimg: the cluster did not start ({status}): {}",
                said.trim()
            );
            return Ok(None);
        }
        if STOP.load(Ordering::SeqCst) || t.elapsed() > Duration::from_secs(120) {
            if let Some(p) = Proc::of(child.id() as i32) {
                p.stop(Duration::from_secs(15));
            }
            let _ = child.wait();
            if let Some(st) = state::read_json::<State>(&state_file)? {
                stop_state(&st);
            }
            bail!("the cluster's supervisor did not start in time");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops what the state file of `dir` records; None when nothing was up.
fn down(dir: &Path) -> Result<Option<usize>> {
    let Some(st) = state::read_json::<State>(&dir.join(state::STATE_FILE))? else {
        return Ok(None);
    };
    let n = stop_state(&st);
    let _ = std::fs::remove_file(dir.join(state::STATE_FILE));
    Ok(Some(n))
}

/// The supervisor first (it stops its QEMUs), then any QEMU still there (the supervisor was
/// killed before it could). Returns how many QEMUs were running.
fn stop_state(st: &State) -> usize {
    let running = st.nodes.iter().filter(|n| n.proc.alive()).count();
    st.supervisor.stop(Duration::from_secs(20));
    for n in &st.nodes {
        n.proc.stop(Duration::from_secs(5));
    }
    running
}

/// `piimg cluster supervise`: runs until SIGTERM (or SIGINT).
fn supervise(dir: &Path) -> Result<i32> {
    catch_signals();
    let plan: Plan = state::read_json(&dir.join(state::PLAN_FILE))?
        .with_context(|| format!("{}: no plan", dir.display()))?;
    let r = piimg::cluster::supervise::supervise(&plan, dir, &STOP);
    r?;
    Ok(0)
}

/// The live table: a spinner per node with its state and time, on a terminal; a line per
/// change otherwise; nothing with -q.
struct Table {
    bars: Vec<ProgressBar>,
    names: Vec<String>,
    last: std::cell::RefCell<Vec<Option<NodeStatus>>>,
    tty: bool,
    quiet: bool,
    _multi: MultiProgress,
}

impl Table {
    fn new(plan: &Plan, quiet: bool) -> Table {
        let tty = std::io::stderr().is_terminal() && !quiet;
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let width = plan.nodes.iter().map(|n| n.name.len()).max().unwrap_or(4);
        let bars = plan
            .nodes
            .iter()
            .map(|n| {
                let b = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
                b.set_message(format!("{:width$}  {:15}  booting", n.name, n.address));
                b
            })
            .collect();
        Table {
            bars,
            names: plan
                .nodes
                .iter()
                .map(|n| format!("{:width$}  {:15}", n.name, n.address))
                .collect(),
            last: std::cell::RefCell::new(vec![None; plan.nodes.len()]),
            tty,
            quiet,
            _multi: multi,
        }
    }

    fn show(&self, states: &[NodeStatus], started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        let mut last = self.last.borrow_mut();
        for (i, s) in states.iter().enumerate() {
            let word = match s {
                NodeStatus::Booting => "booting".to_string(),
                NodeStatus::Ready => "ready".to_string(),
                NodeStatus::Failed(why) => format!("failed: {why}"),
            };
            if self.tty {
                if *s == NodeStatus::Booting {
                    self.bars[i].set_message(format!("{}  booting  {secs:.0} s", self.names[i]));
                    self.bars[i].tick();
                } else if last[i].as_ref() != Some(s) {
                    self.bars[i].set_message(format!("{}  {word}  {secs:.1} s", self.names[i]));
                    self.bars[i].tick();
                }
            } else if !self.quiet && last[i].as_ref() != Some(s) {
                eprintln!("piimg: {}  {word}  {secs:.1} s", self.names[i]);
            }
            last[i] = Some(s.clone());
        }
    }

    fn clear(&self) {
        for b in &self.bars {
            b.finish();
        }
    }
}
