//! Boots a node image in QEMU's `raspi3b` machine, the way the Pi firmware would: the partition
//! table and the boot partition are read with piimg's own readers, config.txt says which kernel,
//! initramfs and device tree to load, cmdline.txt gives the kernel command line.
//!
//! QEMU does not run the GPU firmware, so those files are extracted to a temporary folder and
//! passed as `-kernel`, `-initrd`, `-dtb` and `-append`. The SD card is the image itself opened
//! with `snapshot=on`: guest writes go to a temporary overlay that QEMU deletes, the user's file
//! is never written; `writable` lets the guest write to the file, as to a card that keeps its
//! state across boots (what a power cut leaves behind is what QEMU had written to the file). The serial console is copied to a caller-supplied writer and watched for a
//! pattern, a kernel panic or a timeout; QEMU is always stopped before `run` returns.

use crate::fs::fat32::read::{FatReadError, FatVolume};
use regex::Regex;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    #[error("writing the console: {0}")]
    Console(#[source] std::io::Error),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> QemuError + '_ {
    move |source| QemuError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub use piimg_agent::contract::table::{PartType, Partition};

/// Reads the partition table of a disk image (piimg_agent::contract::table::read): MBR primary
/// entries, or the GPT behind a protective MBR, in table order.
pub fn read_partitions<R: Read + Seek>(
    dev: &mut R,
    name: &str,
) -> Result<Vec<Partition>, QemuError> {
    use piimg_agent::contract::table::{self, ReadError, TableError};
    table::read(dev).map_err(|e| match e {
        ReadError::Io(source) => QemuError::Io {
            path: name.to_string(),
            source,
        },
        ReadError::Table(TableError::NoTable) => QemuError::NoTable(name.to_string()),
        ReadError::Table(t) => QemuError::Table {
            image: name.to_string(),
            msg: t.to_string(),
        },
    })
}

/// What config.txt tells the firmware to load (for a Pi 3 Model B, which QEMU's raspi3b is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub kernel: String,
    pub initramfs: Option<String>,
    pub device_tree: String,
    pub cmdline_file: String,
    /// `dtoverlay=` names, in order (parameters after `,` dropped).
    pub overlays: Vec<String>,
}

/// Parses config.txt as the firmware of a Pi 3 Model B would: `[all]` and `[pi3]` sections
/// apply; other model filters (`[pi4]`, `[pi02]`, `[pi3+]`, ...) and every other kind of filter
/// (`[gpio...]`, `[EDID=...]`, `[none]`, ...) do not. Model filters replace each other; `[all]`
/// resets everything.
pub fn parse_config_txt(text: &str) -> BootConfig {
    let mut kernel = None;
    let mut initramfs = None;
    let mut device_tree = None;
    let mut cmdline = None;
    let mut arm64 = false;
    let mut overlays = Vec::new();
    let (mut model_ok, mut other_ok) = (true, true);
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(f) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let f = f.trim().to_ascii_lowercase();
            match f.as_str() {
                "all" => (model_ok, other_ok) = (true, true),
                "pi3" => model_ok = true,
                m if m.starts_with("pi") || m.starts_with("cm") => model_ok = false,
                _ => other_ok = false,
            }
            continue;
        }
        if !(model_ok && other_ok) {
            continue;
        }
        if let Some(rest) = line.strip_prefix("initramfs ") {
            // `initramfs FILE followkernel` (or an address): the first word is the file.
            initramfs = rest.split_whitespace().next().map(str::to_string);
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim() {
            "kernel" => kernel = Some(v),
            "device_tree" => device_tree = Some(v),
            "cmdline" => cmdline = Some(v),
            "arm_64bit" => arm64 = v == "1",
            "dtoverlay" if !v.is_empty() => {
                overlays.push(v.split([',', ':']).next().unwrap_or("").to_string())
            }
            _ => {}
        }
    }
    BootConfig {
        // The firmware's defaults for a Pi 3.
        kernel: kernel.unwrap_or_else(|| if arm64 { "kernel8.img" } else { "kernel7.img" }.into()),
        initramfs,
        device_tree: device_tree.unwrap_or_else(|| "bcm2710-rpi-3-b.dtb".into()),
        cmdline_file: cmdline.unwrap_or_else(|| "cmdline.txt".into()),
        overlays,
    }
}

/// What the firmware's `disable-bt` overlay does that matters under QEMU: the Bluetooth node
/// under the PL011 UART (serial@7e201000) becomes unavailable, so the kernel makes the UART a
/// tty (ttyAMA0) instead of a serdev bus for Bluetooth, and console input reaches the guest.
/// Done in place: the node's `compatible` property is renamed to `status` (its value is not
/// "okay", which makes the node disabled). Returns whether the node was found and changed.
pub fn apply_disable_bt(dtb: &mut [u8]) -> bool {
    let be = |d: &[u8], at: usize| -> Option<u32> {
        d.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    if be(dtb, 0) != Some(0xd00d_feed) {
        return false;
    }
    let (Some(off_struct), Some(off_strings), Some(size_strings)) =
        (be(dtb, 8), be(dtb, 12), be(dtb, 32))
    else {
        return false;
    };
    let (off_struct, off_strings) = (off_struct as usize, off_strings as usize);
    let Some(strings) = dtb.get(off_strings..off_strings + size_strings as usize) else {
        return false;
    };
    let string_at = |o: u32| -> &[u8] {
        let rest = strings.get(o as usize..).unwrap_or(&[]);
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };
    // Offset of "status" in the strings block (any node with a status property put it there).
    let mut status_off = None;
    let mut i = 0;
    while i < strings.len() {
        let end = strings[i..]
            .iter()
            .position(|&b| b == 0)
            .map_or(strings.len(), |e| i + e);
        if &strings[i..end] == b"status" {
            status_off = Some(i as u32);
            break;
        }
        i = end + 1;
    }
    let Some(status_off) = status_off else {
        return false;
    };
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut p = off_struct;
    let mut target = None;
    while let Some(tok) = be(dtb, p) {
        p += 4;
        match tok {
            1 => {
                let Some(end) = dtb[p..].iter().position(|&b| b == 0) else {
                    return false;
                };
                path.push(dtb[p..p + end].to_vec());
                p = (p + end + 1 + 3) & !3;
            }
            2 => {
                path.pop();
            }
            3 => {
                let (Some(len), Some(nameoff)) = (be(dtb, p), be(dtb, p + 4)) else {
                    return false;
                };
                let in_bt = path.len() >= 2
                    && path[path.len() - 1] == b"bluetooth"
                    && path[path.len() - 2].starts_with(b"serial@7e201000");
                if in_bt {
                    let name = string_at(nameoff);
                    if name == b"status" {
                        // Already has a status: leave the tree as the firmware would see it.
                        return false;
                    }
                    if name == b"compatible" && target.is_none() {
                        target = Some(p + 4);
                    }
                }
                p = (p + 8 + len as usize + 3) & !3;
            }
            4 => {}
            _ => break,
        }
    }
    match target {
        Some(at) => {
            dtb[at..at + 4].copy_from_slice(&status_off.to_be_bytes());
            true
        }
        None => false,
    }
}

/// The boot files of an image, extracted into a folder.
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub partition: Partition,
    pub config: BootConfig,
    pub kernel: PathBuf,
    pub dtb: PathBuf,
    pub initramfs: Option<PathBuf>,
    /// cmdline.txt as one line.
    pub cmdline: String,
    /// `dtoverlay=` lines `piimg qemu` does not emulate.
    pub ignored_overlays: Vec<String>,
}

/// What QEMU loads itself, in place of the Pi firmware.
#[derive(Debug, Clone)]
pub struct KernelFiles {
    pub kernel: PathBuf,
    pub dtb: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
}

impl BootFiles {
    pub fn kernel_files(&self) -> KernelFiles {
        KernelFiles {
            kernel: self.kernel.clone(),
            dtb: self.dtb.clone(),
            initramfs: self.initramfs.clone(),
            cmdline: self.cmdline.clone(),
        }
    }
}

/// Finds the boot partition (the first FAT-typed partition that holds a FAT filesystem), reads
/// config.txt and cmdline.txt from it and copies the kernel, device tree and initramfs into
/// `dest`.
pub fn extract_boot(image: &Path, dest: &Path) -> Result<BootFiles, QemuError> {
    let name = image.display().to_string();
    let mut f = File::open(image).map_err(io(image))?;
    let parts = read_partitions(&mut f, &name)?;
    let mut last_err = "the table has no FAT-typed partition".to_string();
    let mut found = None;
    for p in parts.iter().filter(|p| p.is_fat_type()) {
        let dev = f.try_clone().map_err(io(image))?;
        match FatVolume::open(dev, p.start) {
            Ok(v) => {
                found = Some((p.clone(), v));
                break;
            }
            Err(e) => last_err = format!("partition {}: {e}", p.number),
        }
    }
    let (part, mut vol) = found.ok_or(QemuError::NoBootPartition {
        image: name.clone(),
        msg: last_err,
    })?;
    let fat = |source| QemuError::Fat {
        image: name.clone(),
        source,
    };
    let missing = |file: &str, by: &str| QemuError::MissingBootFile {
        image: name.clone(),
        file: file.to_string(),
        by: by.to_string(),
    };
    let config_text = match vol.read_file("config.txt") {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        // No config.txt: the firmware runs on defaults.
        Err(FatReadError::NotFound(_)) => String::new(),
        Err(e) => return Err(fat(e)),
    };
    let config = parse_config_txt(&config_text);
    let cmdline = match vol.read_file(&config.cmdline_file) {
        Ok(b) => String::from_utf8_lossy(&b)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Err(FatReadError::NotFound(_)) => String::new(),
        Err(e) => return Err(fat(e)),
    };
    let mut copy = |file: &str, by: &str, out_name: &str| -> Result<PathBuf, QemuError> {
        let out = dest.join(out_name);
        let mut w = File::create(&out).map_err(io(&out))?;
        match vol.copy_file(file, &mut w) {
            Ok(_) => Ok(out),
            Err(FatReadError::NotFound(_)) => Err(missing(file, by)),
            Err(e) => Err(fat(e)),
        }
    };
    let kernel = copy(&config.kernel, "kernel= in config.txt", "kernel")?;
    let dtb = copy(&config.device_tree, "device_tree= in config.txt", "dtb")?;
    // QEMU emulates no Bluetooth chip, but the board's device tree puts one on the PL011, which
    // would take ttyAMA0 (the console) away from the serial port: drop it, as the firmware's
    // disable-bt overlay would. Other overlays are the firmware's job and are only reported.
    let mut bytes = std::fs::read(&dtb).map_err(io(&dtb))?;
    if apply_disable_bt(&mut bytes) {
        std::fs::write(&dtb, &bytes).map_err(io(&dtb))?;
    }
    let ignored_overlays: Vec<String> = config
        .overlays
        .iter()
        .filter(|o| o.as_str() != "disable-bt")
        .cloned()
        .collect();
    let initramfs = match &config.initramfs {
        Some(i) => Some(copy(i, "initramfs in config.txt", "initramfs")?),
        None => None,
    };
    Ok(BootFiles {
        partition: part,
        config,
        kernel,
        dtb,
        initramfs,
        cmdline,
        ignored_overlays,
    })
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

/// Checks a `-m` size: digits with an optional M or G suffix.
pub fn check_memory(m: &str) -> Result<(), QemuError> {
    let digits = m.trim_end_matches(['M', 'G', 'm', 'g']);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || m.len() - digits.len() > 1
    {
        return Err(QemuError::BadMemory(m.to_string()));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub image: PathBuf,
    /// QEMU `-m` (raspi3b accepts only 1G).
    pub memory: String,
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

/// The kernel timestamp at the start of a console line (`[    5.678901] ...`).
pub fn kernel_timestamp(line: &str) -> Option<f64> {
    let rest = line.trim_start_matches(['\r', '\n']).strip_prefix('[')?;
    let (num, _) = rest.split_once(']')?;
    num.trim().parse().ok()
}

/// The guest's clock on a console line: a kernel timestamp, or the uptime the agent prints with
/// `piimg-agent: ready (uptime N s)`.
pub fn guest_timestamp(line: &str) -> Option<f64> {
    if let Some(t) = kernel_timestamp(line) {
        return Some(t);
    }
    let (_, rest) = line.split_once("piimg-agent: ready (uptime ")?;
    let (num, _) = rest.split_once(" s)")?;
    num.parse().ok()
}

/// The QEMU arguments for an image whose boot files are in `boot`.
pub fn qemu_args(opts: &RunOptions, boot: &KernelFiles) -> Vec<String> {
    let mut a: Vec<String> = [
        // One TCG thread for the four vCPUs. With a thread each (the default), every TLB flush
        // the kernel broadcasts stops all vCPUs, and the boot-time patching of ~50,000 ftrace
        // call sites alone takes ~20 s of wall time on a 2-core host; single-threaded, the kernel
        // reaches /init in ~4 s and the LB boots to `ready` in ~8 s (~36 s threaded).
        "-accel",
        "tcg,thread=single",
        "-M",
        "raspi3b",
        "-m",
        &opts.memory,
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
    let drive = format!(
        "file={},if=sd,format=raw{}",
        opts.image.display().to_string().replace(',', ",,"),
        if opts.writable { "" } else { ",snapshot=on" }
    );
    let mut netdev = "user,id=n0".to_string();
    for f in &opts.forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
    }
    // QEMU's raspi power-management model resets the machine the moment a watchdog is armed
    // (it has no countdown), so the agent is told to leave the watchdog alone.
    let cmdline = format!("{} piimg.watchdog=0", boot.cmdline);
    a.extend(
        [
            "-append",
            &cmdline,
            "-drive",
            &drive,
            "-nographic",
            "-serial",
            "mon:stdio",
            "-usb",
            "-device",
            // A universally administered address (the Pi's own OUI): with a locally
            // administered one, cdc_ether names the interface usb0 instead of eth0.
            "usb-net,netdev=n0,mac=b8:27:eb:00:00:01",
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

/// How a run ended: why, the console line, the guest clock and whether that clock is the line's own.
type Hit = (End, Option<String>, Option<f64>, bool);

/// Splits console output into lines and checks each for `--until` and kernel panics.
struct Watch<'a> {
    until: Option<&'a Regex>,
    pending: Vec<u8>,
    /// The guest clock of the last complete line that carried one.
    last_ts: Option<f64>,
    /// A match on the unfinished last line: a prompt waits without a newline, so it counts once
    /// the console has been quiet for a moment ([`Watch::quiet`]); if the line goes on, the
    /// whole line is checked instead.
    partial_hit: Option<Hit>,
}

impl<'a> Watch<'a> {
    fn new(until: Option<&'a Regex>) -> Self {
        Watch {
            until,
            pending: Vec::new(),
            last_ts: None,
            partial_hit: None,
        }
    }

    /// Console bytes as they come; a match on a complete line ends the run.
    fn feed(&mut self, bytes: &[u8]) -> Option<Hit> {
        self.pending.extend_from_slice(bytes);
        self.partial_hit = None;
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line).into_owned();
            if let Some(hit) = self.check(&text, false) {
                return Some(hit);
            }
        }
        if !self.pending.is_empty() {
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            self.partial_hit = self.check(&text, true);
        }
        None
    }

    fn has_partial_hit(&self) -> bool {
        self.partial_hit.is_some()
    }

    /// The console went quiet: a match on the unfinished line now counts.
    fn quiet(&mut self) -> Option<Hit> {
        self.partial_hit.take()
    }

    /// An end without a matching line, at the last guest time seen.
    fn end(&self, why: End) -> Hit {
        (why, None, self.last_ts, false)
    }

    /// Checks one console line (complete, or the unfinished tail when `partial`).
    fn check(&mut self, line: &str, partial: bool) -> Option<Hit> {
        let ts = guest_timestamp(line);
        if !partial {
            if let Some(t) = ts {
                self.last_ts = Some(t);
            }
        }
        let clean = line.trim_end_matches(['\r', '\n']).to_string();
        if !partial && clean.contains("Kernel panic") {
            return Some((
                End::Panic(clean.clone()),
                Some(clean),
                ts.or(self.last_ts),
                ts.is_some(),
            ));
        }
        match self.until {
            Some(re) if re.is_match(&clean) => {
                Some((End::Matched, Some(clean), ts.or(self.last_ts), ts.is_some()))
            }
            _ => None,
        }
    }
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
pub fn run(opts: &RunOptions, console: &mut dyn Write) -> Result<Outcome, QemuError> {
    let qemu = match &opts.qemu {
        Some(q) => q.clone(),
        None => find_in_path(QEMU_BINARY).ok_or(QemuError::QemuMissing)?,
    };
    check_memory(&opts.memory)?;
    let size = std::fs::metadata(&opts.image)
        .map_err(io(&opts.image))?
        .len();
    if !size.is_power_of_two() {
        return Err(QemuError::NotPowerOfTwo {
            image: opts.image.display().to_string(),
            size,
        });
    }
    let tmp = tempfile::Builder::new()
        .prefix("piimg-qemu-")
        .tempdir()
        .map_err(io(Path::new("temporary folder")))?;
    let (files, ignored_overlays) = match &opts.direct {
        Some(k) => (k.clone(), Vec::new()),
        None => {
            let b = extract_boot(&opts.image, tmp.path())?;
            (b.kernel_files(), b.ignored_overlays)
        }
    };
    let args = qemu_args(opts, &files);
    let mut command = vec![qemu.display().to_string()];
    command.extend(args.iter().cloned());

    let mut cmd = Command::new(&qemu);
    cmd.args(&args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // QEMU must not outlive us, whatever kills us.
    // SAFETY: prctl is async-signal-safe; called between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            QemuError::QemuMissing
        } else {
            QemuError::Spawn(e)
        }
    })?;
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
        let tx = tx.clone();
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
    drop(tx);

    let deadline = opts.timeout.map(|t| started + t);
    let mut watch = Watch::new(opts.until.as_ref());
    let mut stderr_tail: Vec<String> = Vec::new();
    let mut result: Option<Hit> = None;
    let mut out_done = false;
    let mut console_err = None;
    while result.is_none() {
        if INTERRUPT.load(Ordering::SeqCst) {
            result = Some(watch.end(End::Interrupted));
            break;
        }
        let wait = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    result = Some(watch.quiet().unwrap_or_else(|| watch.end(End::TimedOut)));
                    break;
                }
                (d - now).min(Duration::from_millis(200))
            }
            None => Duration::from_millis(200),
        };
        match rx.recv_timeout(wait) {
            Ok(Msg::Out(bytes)) => {
                if console_err.is_none() {
                    if let Err(e) = console.write_all(&bytes).and_then(|()| console.flush()) {
                        console_err = Some(e);
                    }
                }
                result = watch.feed(&bytes);
            }
            // Nothing for up to 200 ms: quiet enough for a prompt without its newline.
            Err(mpsc::RecvTimeoutError::Timeout) if watch.has_partial_hit() => {
                result = watch.quiet();
            }
            Ok(Msg::OutEof) => out_done = true,
            Ok(Msg::Err(l)) => {
                stderr_tail.push(l);
                if stderr_tail.len() > 20 {
                    stderr_tail.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => out_done = true,
        }
        if out_done && watch.has_partial_hit() {
            result = watch.quiet();
        } else if out_done {
            if let Ok(Some(status)) = child.try_wait() {
                result = Some(watch.end(End::Exited(status.code())));
            } else if matches!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
                let status = child.wait().map_err(QemuError::Spawn)?;
                result = Some(watch.end(End::Exited(status.code())));
            }
        }
    }
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
    let (end, line, guest_seconds, guest_exact) =
        result.unwrap_or_else(|| watch.end(End::Interrupted));
    Ok(Outcome {
        end,
        line,
        wall,
        guest_seconds,
        guest_exact,
        command,
        stderr_tail,
        ignored_overlays,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partition tables whose numbers point anywhere: an error naming the problem, never a
    /// panic or an overflowing offset.
    #[test]
    fn hostile_partition_tables_are_refused() {
        let disk = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut d = vec![0u8; 64 * 512];
            d[510] = 0x55;
            d[511] = 0xaa;
            edit(&mut d);
            read_partitions(&mut std::io::Cursor::new(d), "hostile.img")
        };
        // MBR: a partition starting near 2^32 sectors on a tiny disk.
        let r = disk(&|d| {
            d[446 + 4] = 0x83;
            d[446 + 8..446 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
            d[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        });
        assert!(matches!(r, Err(QemuError::Table { .. })), "{r:?}");
        let gpt = |entries_lba: u64, last: u64| {
            move |d: &mut Vec<u8>| {
                d[446 + 4] = 0xee;
                d[446 + 12..446 + 16].copy_from_slice(&63u32.to_le_bytes());
                d[512..520].copy_from_slice(b"EFI PART");
                d[512 + 72..512 + 80].copy_from_slice(&entries_lba.to_le_bytes());
                d[512 + 80..512 + 84].copy_from_slice(&4u32.to_le_bytes());
                d[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
                let e = 1024;
                d[e] = 1;
                d[e + 32..e + 40].copy_from_slice(&34u64.to_le_bytes());
                d[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
                // Valid checksums, so that the extents are what gets refused.
                use piimg_agent::contract::crc32;
                d[512 + 12..512 + 16].copy_from_slice(&92u32.to_le_bytes());
                let array = crc32(&d[1024..1024 + 4 * 128]);
                d[512 + 88..512 + 92].copy_from_slice(&array.to_le_bytes());
                let header = crc32(&d[512..512 + 92]);
                d[512 + 16..512 + 20].copy_from_slice(&header.to_le_bytes());
            }
        };
        for (lba, last, why) in [
            (u64::MAX / 4, 40, "outside the disk"),
            (2, u64::MAX, "bad extent"),
            (2, u64::MAX / 512, "bad extent"),
            (1 << 40, 40, "outside the disk"),
        ] {
            let r = disk(&gpt(lba, last));
            assert!(
                matches!(&r, Err(QemuError::Table { msg, .. }) if msg.contains(why)),
                "{lba} {last}: {r:?}"
            );
        }
        // A checksum that does not match is refused as the kernel refuses it.
        let r = disk(&|d| {
            gpt(2, 40)(d);
            d[1024 + 40] ^= 1;
        });
        assert!(
            matches!(&r, Err(QemuError::Table { msg, .. }) if msg.contains("checksum")),
            "{r:?}"
        );
        // The same table with sane numbers reads.
        let r = disk(&gpt(2, 40)).unwrap();
        assert_eq!((r[0].start, r[0].size), (34 * 512, 7 * 512));
    }

    #[test]
    fn config_txt_sections() {
        let c = parse_config_txt(
            "arm_64bit=1\nkernel=k.img\ninitramfs init.gz followkernel\n[pi4]\nkernel=pi4.img\ndtoverlay=vc4-kms-v3d\n\
             [pi3]\ndevice_tree=a.dtb\ndtoverlay=disable-bt\n[pi02]\ndevice_tree=zero.dtb\n[all]\ncmdline=c.txt\n\
             [gpio4=1]\nkernel=gpio.img\n",
        );
        assert_eq!(c.kernel, "k.img");
        assert_eq!(c.initramfs.as_deref(), Some("init.gz"));
        assert_eq!(c.device_tree, "a.dtb");
        assert_eq!(c.cmdline_file, "c.txt");
        assert_eq!(c.overlays, ["disable-bt"]);
        let d = parse_config_txt("arm_64bit=1\n");
        assert_eq!(d.kernel, "kernel8.img");
        assert_eq!(d.initramfs, None);
    }

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
    }

    #[test]
    fn watch_matches_whole_lines_prompts_and_panics() {
        let re = Regex::new("piimg-agent: ready").unwrap();
        let mut w = Watch::new(Some(&re));
        assert_eq!(w.feed(b"[    1.250000] mmc0: new\r\n"), None);
        // The line arrives in pieces: the unfinished match waits for the rest of the line.
        assert_eq!(w.feed(b"/ # piimg-agent: ready (up"), None);
        assert!(w.has_partial_hit());
        let hit = w.feed(b"time 6.42 s)\r\nnext").unwrap();
        assert_eq!(
            hit,
            (
                End::Matched,
                Some("/ # piimg-agent: ready (uptime 6.42 s)".to_string()),
                Some(6.42),
                true
            )
        );
        // A prompt that never gets its newline counts once the console is quiet.
        let prompt = Regex::new(r"login: $").unwrap();
        let mut w = Watch::new(Some(&prompt));
        assert_eq!(w.feed(b"[    2.5] x\nnode login: "), None);
        let hit = w.quiet().unwrap();
        assert_eq!(hit.0, End::Matched);
        assert_eq!(hit.1.as_deref(), Some("node login: "));
        assert_eq!((hit.2, hit.3), (Some(2.5), false));
        // More output on the same line replaces the partial match.
        let mut w = Watch::new(Some(&prompt));
        assert_eq!(w.feed(b"login: "), None);
        assert_eq!(w.feed(b"x"), None);
        assert_eq!(w.quiet(), None);
        // Panics end the run whatever `until` says; other ends keep the last clock seen.
        let mut w = Watch::new(None);
        let hit = w
            .feed(b"[    3.0] ok\n[    3.5] Kernel panic - not syncing: VFS\n")
            .unwrap();
        assert!(matches!(hit.0, End::Panic(ref l) if l.contains("not syncing")));
        assert_eq!((hit.2, hit.3), (Some(3.5), true));
        assert_eq!(
            w.end(End::TimedOut),
            (End::TimedOut, None, Some(3.5), false)
        );
    }

    #[test]
    fn kernel_timestamps() {
        assert_eq!(kernel_timestamp("[    5.678901] mmc0: new"), Some(5.678901));
        assert_eq!(kernel_timestamp("\r[ 12.5] x"), Some(12.5));
        assert_eq!(kernel_timestamp("piimg-agent: ready"), None);
        assert_eq!(
            guest_timestamp("/ # piimg-agent: ready (uptime 6.42 s)"),
            Some(6.42)
        );
        assert_eq!(guest_timestamp("[ 1.5] x"), Some(1.5));
        assert_eq!(guest_timestamp("piimg-agent: ready"), None);
        assert_eq!(guest_timestamp("piimg-agent: ready (uptime x s)"), None);
    }
}
