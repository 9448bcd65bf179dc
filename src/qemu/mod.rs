//! Boots a node image in QEMU's `raspi3b` or `raspi4b` machine (the one its device tree needs,
//! see [`Machine`]), the way the Pi firmware would: the partition
//! table and the boot partition are read with piimg's own readers, config.txt says which kernel,
//! initramfs and device tree to load, cmdline.txt gives the kernel command line.
//!
//! QEMU does not run the GPU firmware, so those files are extracted to a temporary folder and
//! passed as `-kernel`, `-initrd`, `-dtb` and `-append`. The SD card is the image itself opened
//! with `snapshot=on`: guest writes go to a temporary overlay that QEMU deletes, the user's file
//! is never written; `writable` lets the guest write to the file, as to a card that keeps its
//! state across boots (what a power cut leaves behind is what QEMU had written to the file).
//! The serial console is copied to a caller-supplied writer and watched for a pattern, a kernel
//! panic or a timeout; QEMU is always stopped before `run` returns.
//!
//! [`boot`] reads what the firmware would load, [`machine`] and [`pi4`] fit the device tree to
//! the QEMU machine, [`watch`] reads the console; this file starts, watches and stops QEMU.

mod boot;
mod machine;
pub mod pi4;
mod watch;

pub use boot::{
    board_of, extract_boot, folder_boot, parse_config_txt, parse_config_txt_for, raspi3b_dtb,
    read_partitions, BootConfig, BootFiles, KernelFiles, PartType, Partition,
};
pub use machine::Machine;
pub use watch::{guest_timestamp, kernel_timestamp};

use crate::fs::fat32::read::FatReadError;
use regex::Regex;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use watch::{Hit, Watch};

pub const QEMU_BINARY: &str = "qemu-system-aarch64";

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no partition table (no MBR boot signature)")]
    NoTable(String),
    #[error("{image}: {msg}")]
    Table { image: String, msg: String },
    #[error("{image}: no FAT boot partition: {msg}")]
    NoBootPartition { image: String, msg: String },
    #[error("boot partition of {image}: {source}")]
    Fat {
        image: String,
        #[source]
        source: FatReadError,
    },
    #[error("device tree {file} of {image}: {source}")]
    DeviceTree {
        image: String,
        file: String,
        #[source]
        source: pi4::Pi4DtbError,
    },
    #[error("boot partition of {image}: {file} (named by {by}) is missing")]
    MissingBootFile {
        image: String,
        file: String,
        by: String,
    },
    #[error(
        "{image} is {size} bytes; QEMU's SD card model needs a power-of-two size (piimg images are)"
    )]
    NotPowerOfTwo { image: String, size: u64 },
    #[error(
        "{QEMU_BINARY} was not found in PATH: install it with `apt-get install qemu-system-arm`"
    )]
    QemuMissing,
    #[error("starting {QEMU_BINARY}: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("--forward {0}: expected HOSTPORT:GUESTPORT (e.g. 6443:6443)")]
    BadForward(String),
    #[error("--memory {0}: expected a size such as 1G or 512M")]
    BadMemory(String),
    #[error("--memory {given}: QEMU's {machine} emulates one board size, {only}")]
    MachineMemory {
        given: String,
        machine: &'static str,
        only: &'static str,
    },
    #[error("writing the console: {0}")]
    Console(#[source] std::io::Error),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> QemuError + '_ {
    move |source| QemuError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A `HOSTPORT:GUESTPORT` TCP forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host: u16,
    pub guest: u16,
}

impl std::str::FromStr for Forward {
    type Err = QemuError;
    fn from_str(s: &str) -> Result<Self, QemuError> {
        let bad = || QemuError::BadForward(s.to_string());
        let (h, g) = s.split_once(':').ok_or_else(bad)?;
        let host: u16 = h.parse().map_err(|_| bad())?;
        let guest: u16 = g.parse().map_err(|_| bad())?;
        if host == 0 || guest == 0 {
            return Err(bad());
        }
        Ok(Forward { host, guest })
    }
}

/// Checks a `-m` size: digits with an optional M or G suffix. Returns MiB.
pub fn check_memory(m: &str) -> Result<u64, QemuError> {
    let digits = m.trim_end_matches(['M', 'G', 'm', 'g']);
    let bad = || QemuError::BadMemory(m.to_string());
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || m.len() - digits.len() > 1
    {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mib = if m.ends_with(['G', 'g']) {
        n.checked_mul(1024).ok_or_else(bad)?
    } else {
        n
    };
    Ok(mib)
}

/// QEMU's raspi machines each take exactly the RAM of the board they emulate (raspi3b 1 GiB,
/// raspi4b 2 GiB) and refuse any other `-m`: say so before starting QEMU.
fn check_machine_memory(m: &str, machine: Machine) -> Result<(), QemuError> {
    let only = machine.default_memory();
    if check_memory(m)? != check_memory(only)? {
        return Err(QemuError::MachineMemory {
            given: m.to_string(),
            machine: machine.name(),
            only,
        });
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub image: PathBuf,
    /// QEMU `-m` (raspi3b accepts only 1G, raspi4b only 2G); None: the machine's size.
    pub memory: Option<String>,
    pub forwards: Vec<Forward>,
    /// Stop after this long (None: run until QEMU exits or `until` matches).
    pub timeout: Option<Duration>,
    /// Stop with success when a console line matches.
    pub until: Option<Regex>,
    /// The QEMU binary (default [`QEMU_BINARY`], found in PATH).
    pub qemu: Option<PathBuf>,
    /// Guest writes go to the image file itself instead of a temporary overlay.
    pub writable: bool,
    /// Boot these files instead of those the image's boot partition names (the image is then
    /// only the SD card): tests that boot a kernel against a bare filesystem image.
    pub direct: Option<KernelFiles>,
    /// With a netboot folder as `image`: an SD card to attach (e.g. `NAME.secrets.img`).
    pub card: Option<PathBuf>,
    /// A port of a virtual segment instead of QEMU's user-mode network (`forwards` unused).
    pub lan: Option<LanPort>,
}

/// The guest's NIC on a virtual segment (`piimg cluster up`): its MAC, and the loopback UDP
/// ports it receives frames on and sends them to (the switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanPort {
    pub mac: [u8; 6],
    pub local_port: u16,
    pub switch_port: u16,
}

impl LanPort {
    /// `-netdev dgram` (QEMU >= 7.2): one datagram per frame, on 127.0.0.1 only.
    fn netdev(&self) -> String {
        format!(
            "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={},remote.type=inet,remote.host=127.0.0.1,remote.port={}",
            self.local_port, self.switch_port
        )
    }
}

/// Why the run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// A console line matched `until`.
    Matched,
    /// The kernel panicked (the line).
    Panic(String),
    /// The timeout passed first.
    TimedOut,
    /// QEMU exited by itself (its exit code, None if killed by a signal).
    Exited(Option<i32>),
    /// Stopped on request (SIGINT/SIGTERM to piimg).
    Interrupted,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub end: End,
    /// The console line that ended the run (a match or the panic).
    pub line: Option<String>,
    /// Wall time from starting QEMU to the end.
    pub wall: Duration,
    /// The guest's clock at that point: the kernel timestamp `[ N.NNN]` (or the agent's `ready
    /// (uptime N s)`) of the line itself (`exact`), else of the last such line before it (a lower
    /// bound).
    pub guest_seconds: Option<f64>,
    pub guest_exact: bool,
    /// The QEMU machine the image's device tree asked for.
    pub machine: Machine,
    /// The QEMU command line that ran (for the user to repeat by hand).
    pub command: Vec<String>,
    /// The last lines QEMU wrote to its stderr.
    pub stderr_tail: Vec<String>,
    /// `dtoverlay=` lines of config.txt that were not applied.
    pub ignored_overlays: Vec<String>,
}

/// Set from a signal handler to stop a run early and still clean up.
pub static INTERRUPT: AtomicBool = AtomicBool::new(false);

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The SD card QEMU gets: the image, or with a netboot folder the `card` if one is given.
fn sd_card(opts: &RunOptions) -> Option<&Path> {
    if opts.image.is_dir() {
        opts.card.as_deref()
    } else {
        Some(&opts.image)
    }
}

/// The QEMU arguments for an image whose boot files are in `boot`, on `machine`.
pub fn qemu_args(opts: &RunOptions, machine: Machine, boot: &KernelFiles) -> Vec<String> {
    let memory = opts.memory.as_deref().unwrap_or(machine.default_memory());
    let mut a: Vec<String> = [
        // One TCG thread for the four vCPUs. With a thread each (the default), every TLB flush
        // the kernel broadcasts stops all vCPUs, and the boot-time patching of ~50,000 ftrace
        // call sites alone takes ~20 s of wall time on a 2-core host; single-threaded, the kernel
        // reaches /init in ~4 s and the LB boots to `ready` in ~8 s (~36 s threaded).
        "-accel",
        "tcg,thread=single",
        "-M",
        machine.name(),
        "-m",
        memory,
        "-kernel",
        &boot.kernel.display().to_string(),
        "-dtb",
        &boot.dtb.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(i) = &boot.initramfs {
        a.extend(["-initrd".to_string(), i.display().to_string()]);
    }
    // snapshot=on: writes go to a temporary overlay; the image file stays as it was.
    let drive = sd_card(opts).map(|sd| {
        format!(
            "file={},if=sd,format=raw{}",
            sd.display().to_string().replace(',', ",,"),
            if opts.writable { "" } else { ",snapshot=on" }
        )
    });
    let mut netdev = "user,id=n0".to_string();
    for f in &opts.forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
    }
    // A universally administered address (the Pi's own OUI): with a locally administered one,
    // cdc_ether names the interface usb0 instead of eth0.
    let mut nic = "usb-net,netdev=n0,mac=b8:27:eb:00:00:01".to_string();
    if let Some(lan) = &opts.lan {
        netdev = lan.netdev();
        nic = format!(
            "usb-net,netdev=n0,mac={}",
            crate::cluster::mac_text(&lan.mac)
        );
    }
    // QEMU's raspi power-management model resets the machine the moment a watchdog is armed
    // (it has no countdown), so the agent is told to leave the watchdog alone.
    let cmdline = format!("{} piimg.watchdog=0", boot.cmdline);
    a.extend(["-append".to_string(), cmdline]);
    if let Some(drive) = drive {
        a.extend(["-drive".to_string(), drive]);
    }
    a.extend(
        [
            "-nographic",
            "-serial",
            "mon:stdio",
            "-usb",
            "-device",
            &nic,
            "-netdev",
            &netdev,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a
}

enum Msg {
    Out(Vec<u8>),
    OutEof,
    Err(String),
}

/// Asks QEMU to quit (SIGTERM: it restores the terminal), then kills it if it does not.
fn stop(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Extracts the boot files, boots the image and watches the console until `until` matches, the
/// kernel panics, the timeout passes or QEMU exits. Console bytes go to `console` as they come;
/// QEMU reads the caller's stdin (the serial port's input). QEMU is stopped before this returns.
/// What starting QEMU for `opts` takes: the binary, its arguments (boot files extracted into
/// `tmp`, which must outlive QEMU), the machine and the overlays config.txt asks for in vain.
pub struct Prepared {
    pub qemu: PathBuf,
    pub args: Vec<String>,
    pub machine: Machine,
    pub ignored_overlays: Vec<String>,
}

/// Checks `opts`, reads the boot files as the firmware would and builds QEMU's command line.
pub fn prepare(opts: &RunOptions, tmp: &Path) -> Result<Prepared, QemuError> {
    let qemu = match &opts.qemu {
        Some(q) => q.clone(),
        None => find_in_path(QEMU_BINARY).ok_or(QemuError::QemuMissing)?,
    };
    if let Some(m) = &opts.memory {
        check_memory(m)?;
    }
    let netboot = opts.image.is_dir();
    if let Some(sd) = sd_card(opts) {
        check_image_size(sd)?;
    }
    let (files, ignored_overlays) = match &opts.direct {
        Some(k) => (k.clone(), Vec::new()),
        None if netboot => (folder_boot(&opts.image, tmp)?, Vec::new()),
        None => {
            let b = extract_boot(&opts.image, tmp)?;
            (b.kernel_files(), b.ignored_overlays)
        }
    };
    let machine = Machine::of_dtb(&std::fs::read(&files.dtb).map_err(io(&files.dtb))?);
    if let Some(m) = &opts.memory {
        check_machine_memory(m, machine)?;
    }
    let args = qemu_args(opts, machine, &files);
    Ok(Prepared {
        qemu,
        args,
        machine,
        ignored_overlays,
    })
}

pub fn run(opts: &RunOptions, console: &mut dyn Write) -> Result<Outcome, QemuError> {
    let tmp = tempfile::Builder::new()
        .prefix("piimg-qemu-")
        .tempdir()
        .map_err(io(Path::new("temporary folder")))?;
    let Prepared {
        qemu,
        args,
        machine,
        ignored_overlays,
    } = prepare(opts, tmp.path())?;
    let mut command = vec![qemu.display().to_string()];
    command.extend(args.iter().cloned());

    let started = Instant::now();
    let mut child = spawn(&qemu, &args)?;
    let rx = forward_output(&mut child);
    let mut session = Session {
        rx: &rx,
        console,
        watch: Watch::new(opts.until.as_ref()),
        stderr_tail: Vec::new(),
        console_err: None,
    };
    let result = session.watch_until(&mut child, opts.timeout.map(|t| started + t));
    let Session {
        watch,
        mut stderr_tail,
        console_err,
        ..
    } = session;
    let wall = started.elapsed();
    stop(&mut child);
    // What QEMU said while stopping (e.g. "terminating on signal 15") is not interesting; what
    // it said before is already in the tail.
    while let Ok(m) = rx.try_recv() {
        if let Msg::Err(l) = m {
            stderr_tail.push(l);
        }
    }
    if let Some(e) = console_err {
        return Err(QemuError::Console(e));
    }
    let Hit {
        end,
        line,
        guest_seconds,
        guest_exact,
    } = result?.unwrap_or_else(|| watch.end(End::Interrupted));
    Ok(Outcome {
        end,
        line,
        wall,
        guest_seconds,
        guest_exact,
        machine,
        command,
        stderr_tail,
        ignored_overlays,
    })
}

/// QEMU's SD card model takes only power-of-two sizes.
fn check_image_size(image: &Path) -> Result<(), QemuError> {
    let size = std::fs::metadata(image).map_err(io(image))?.len();
    if !size.is_power_of_two() {
        return Err(QemuError::NotPowerOfTwo {
            image: image.display().to_string(),
            size,
        });
    }
    Ok(())
}

/// Starts QEMU with piped output; it must not outlive us, whatever kills us.
fn spawn(qemu: &Path, args: &[String]) -> Result<Child, QemuError> {
    spawn_with(qemu, args, Stdio::inherit(), Stdio::piped(), Stdio::piped())
}

/// Starts QEMU with the given standard streams; it gets SIGTERM when the thread that started
/// it ends, whatever ends it.
pub fn spawn_with(
    qemu: &Path,
    args: &[String],
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<Child, QemuError> {
    let mut cmd = Command::new(qemu);
    cmd.args(args).stdin(stdin).stdout(stdout).stderr(stderr);
    // SAFETY: prctl is async-signal-safe; called between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            QemuError::QemuMissing
        } else {
            QemuError::Spawn(e)
        }
    })
}

/// Reader threads that turn QEMU's stdout (console bytes) and stderr (lines) into messages.
fn forward_output(child: &mut Child) -> mpsc::Receiver<Msg> {
    let (tx, rx) = mpsc::channel::<Msg>();
    if let Some(mut out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(Msg::Out(buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(Msg::OutEof);
        });
    }
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(err).lines() {
                match l {
                    Ok(l) => {
                        if tx.send(Msg::Err(l)).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
    }
    rx
}

/// One watched run: console bytes go to the caller and the watcher; stderr's last lines are kept
/// for the error report.
struct Session<'a> {
    rx: &'a mpsc::Receiver<Msg>,
    console: &'a mut dyn Write,
    watch: Watch<'a>,
    stderr_tail: Vec<String>,
    /// The first error writing the console; the run goes on so QEMU is still stopped cleanly.
    console_err: Option<std::io::Error>,
}

impl Session<'_> {
    /// Runs until the watcher has a result, the deadline passes, Ctrl-C, or QEMU exits.
    fn watch_until(
        &mut self,
        child: &mut Child,
        deadline: Option<Instant>,
    ) -> Result<Option<Hit>, QemuError> {
        let mut out_done = false;
        loop {
            if INTERRUPT.load(Ordering::SeqCst) {
                return Ok(Some(self.watch.end(End::Interrupted)));
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        let hit = self.watch.quiet();
                        return Ok(Some(hit.unwrap_or_else(|| self.watch.end(End::TimedOut))));
                    }
                    (d - now).min(Duration::from_millis(200))
                }
                None => Duration::from_millis(200),
            };
            let mut result = match self.rx.recv_timeout(wait) {
                Ok(Msg::Out(bytes)) => self.console_bytes(&bytes),
                // Nothing for up to 200 ms: quiet enough for a prompt without its newline.
                Err(mpsc::RecvTimeoutError::Timeout) if self.watch.has_partial_hit() => {
                    self.watch.quiet()
                }
                Ok(Msg::OutEof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    out_done = true;
                    None
                }
                Ok(Msg::Err(l)) => {
                    self.stderr_tail.push(l);
                    if self.stderr_tail.len() > 20 {
                        self.stderr_tail.remove(0);
                    }
                    None
                }
                Err(mpsc::RecvTimeoutError::Timeout) => None,
            };
            if out_done && result.is_none() {
                result = self.after_output_ended(child)?;
            }
            if result.is_some() {
                return Ok(result);
            }
        }
    }

    fn console_bytes(&mut self, bytes: &[u8]) -> Option<Hit> {
        if self.console_err.is_none() {
            if let Err(e) = self
                .console
                .write_all(bytes)
                .and_then(|()| self.console.flush())
            {
                self.console_err = Some(e);
            }
        }
        self.watch.feed(bytes)
    }

    /// QEMU closed its stdout: a partial line is all there will be; else wait for its exit.
    fn after_output_ended(&mut self, child: &mut Child) -> Result<Option<Hit>, QemuError> {
        if self.watch.has_partial_hit() {
            return Ok(self.watch.quiet());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(Some(self.watch.end(End::Exited(status.code()))));
        }
        if matches!(self.rx.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
            let status = child.wait().map_err(QemuError::Spawn)?;
            return Ok(Some(self.watch.end(End::Exited(status.code()))));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_and_memory() {
        assert_eq!(
            "8080:80".parse::<Forward>().unwrap(),
            Forward {
                host: 8080,
                guest: 80
            }
        );
        assert!("80".parse::<Forward>().is_err());
        assert!("0:80".parse::<Forward>().is_err());
        assert!("x:80".parse::<Forward>().is_err());
        assert!(check_memory("1G").is_ok());
        assert!(check_memory("1024M").is_ok());
        assert!(check_memory("1GG").is_err());
        assert!(check_memory("G").is_err());
        assert_eq!(check_memory("2G").unwrap(), 2048);
        assert!(check_machine_memory("2048M", Machine::Raspi4b).is_ok());
        let e = check_machine_memory("1G", Machine::Raspi4b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--memory 1G: QEMU's raspi4b emulates one board size, 2G"
        );
        assert!(check_machine_memory("2G", Machine::Raspi3b).is_err());
    }
}
