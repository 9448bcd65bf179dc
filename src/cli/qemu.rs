//! `piimg qemu` and `piimg verify`: glue over `piimg::qemu` and `piimg::verify`.

use anyhow::{Context, Result};
use piimg::qemu::{self, End, Forward, RunOptions};
use piimg::verify::{self, BuildRequest};
use std::path::{Path, PathBuf};
use std::time::Duration;

extern "C" fn on_signal(_: libc::c_int) {
    qemu::INTERRUPT.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// `piimg qemu`'s arguments.
pub struct QemuArgs<'a> {
    pub image: &'a Path,
    pub card: Option<&'a Path>,
    pub timeout: Option<u64>,
    pub until: Option<&'a str>,
    pub forwards: &'a [String],
    pub memory: Option<&'a str>,
    pub writable: bool,
    pub json: bool,
}

pub fn run_qemu(args: &QemuArgs) -> Result<i32> {
    let QemuArgs {
        image,
        card,
        timeout,
        until,
        forwards,
        memory,
        writable,
        json,
    } = *args;
    if card.is_some() && !image.is_dir() {
        anyhow::bail!(
            "--card attaches an SD card to a netboot folder; {} is an image (it is the card)",
            image.display()
        );
    }
    // A built image keeps matching its checksum and manifest: the guest writes to a copy.
    let sum = piimg::image::sidecar(image, ".sha256");
    if writable && sum.exists() {
        anyhow::bail!(
            "--writable would change {} and break {}; boot a copy: cp --sparse=always {} card.img && piimg qemu --writable card.img",
            image.display(),
            sum.display(),
            image.display()
        );
    }
    let until = until
        .map(|u| regex::Regex::new(u).with_context(|| format!("--until {u}")))
        .transpose()?;
    let forwards = forwards
        .iter()
        .map(|f| f.parse::<Forward>())
        .collect::<Result<Vec<_>, _>>()?;
    let opts = RunOptions {
        image: image.to_path_buf(),
        memory: memory.map(str::to_string),
        forwards,
        timeout: timeout.map(Duration::from_secs),
        until,
        qemu: None,
        writable,
        direct: None,
        card: card.map(Path::to_path_buf),
        lan: None,
    };
    // SIGINT/SIGTERM stop QEMU and clean up instead of killing us mid-run.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // With --json, stdout carries only the result; the console goes to stderr.
    let o = if json {
        qemu::run(&opts, &mut std::io::stderr())?
    } else {
        qemu::run(&opts, &mut std::io::stdout())?
    };
    let code = exit_code(&o.end, opts.until.is_some());
    if json {
        print_json(&o, code);
    } else {
        print_summary(&o, opts.until.as_ref(), code);
    }
    Ok(code)
}

/// 0 for what was asked (a match, or a clean exit without --until), 2 for a panic, 130 for
/// Ctrl-C, 1 otherwise.
fn exit_code(end: &End, has_until: bool) -> i32 {
    match end {
        End::Matched => 0,
        End::Panic(_) => 2,
        End::TimedOut => i32::from(has_until),
        End::Exited(c) => i32::from(*c != Some(0) || has_until),
        End::Interrupted => 130,
    }
}

fn print_json(o: &qemu::Outcome, code: i32) {
    let (end, qemu_exit) = match &o.end {
        End::Matched => ("matched", None),
        End::Panic(_) => ("panic", None),
        End::TimedOut => ("timeout", None),
        End::Exited(c) => ("exited", *c),
        End::Interrupted => ("interrupted", None),
    };
    let v = serde_json::json!({
        "end": end,
        "line": o.line,
        "wall_seconds": o.wall.as_secs_f64(),
        "guest_seconds": o.guest_seconds,
        "guest_exact": o.guest_exact,
        "qemu_exit": qemu_exit,
        "exit_status": code,
        "machine": o.machine.name(),
        "ignored_overlays": o.ignored_overlays,
        "qemu_stderr": o.stderr_tail,
    });
    println!("{v}");
}

fn print_summary(o: &qemu::Outcome, until: Option<&regex::Regex>, code: i32) {
    if let Some(note) = o.machine.note() {
        eprintln!("\npiimg qemu: {note}");
    }
    if !o.ignored_overlays.is_empty() {
        eprintln!(
            "piimg qemu: config.txt overlays not applied under QEMU: {}",
            o.ignored_overlays.join(", ")
        );
    }
    let guest = match (o.guest_seconds, o.guest_exact) {
        (Some(g), true) => format!("guest {g:.3} s"),
        (Some(g), false) => format!("guest >= {g:.3} s (last timestamp on the console)"),
        (None, _) => "guest time unknown".to_string(),
    };
    let tail = || {
        if o.stderr_tail.is_empty() {
            String::new()
        } else {
            format!("\nQEMU said:\n  {}", o.stderr_tail.join("\n  "))
        }
    };
    let wall = secs(o.wall);
    match &o.end {
        End::Matched => eprintln!(
            "\npiimg qemu: matched {:?} after {wall} wall, {guest}",
            o.line.as_deref().unwrap_or("")
        ),
        End::Panic(line) => {
            eprintln!("\npiimg qemu: kernel panic after {wall} wall, {guest}: {line}")
        }
        End::TimedOut => match until {
            Some(re) => eprintln!(
                "\npiimg qemu: timed out after {wall} without a console line matching {:?}{}",
                re.as_str(),
                tail()
            ),
            None => eprintln!("\npiimg qemu: stopped after {wall} (--timeout)"),
        },
        End::Exited(c) => eprintln!(
            "\npiimg qemu: QEMU exited ({}) after {wall}{}",
            c.map_or("killed by a signal".to_string(), |c| format!("status {c}")),
            if code == 0 { String::new() } else { tail() }
        ),
        End::Interrupted => eprintln!("\npiimg qemu: interrupted after {wall}"),
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}", p.display()))
}

pub fn run_verify(
    profiles: &Path,
    profile: &str,
    components: &[String],
    offline: bool,
    keep: Option<&Path>,
) -> Result<i32> {
    let exe = std::env::current_exe().context("finding the piimg executable")?;
    // The builds run in other working folders: every path becomes absolute.
    let components = components
        .iter()
        .map(|c| match c.split_once('=') {
            Some((n, p)) if !n.is_empty() && !p.is_empty() => {
                Ok(format!("{n}={}", absolute(Path::new(p))?.display()))
            }
            _ => anyhow::bail!("--component {c}: expected NAME=PATH"),
        })
        .collect::<Result<Vec<_>>>()?;
    let req = BuildRequest {
        exe,
        profiles: absolute(profiles)?,
        profile: profile.to_string(),
        components,
        offline,
    };
    let faketime = verify::faketime_available();
    let envs = verify::environments(faketime);
    if !faketime {
        eprintln!(
            "piimg verify: `faketime` is not installed (apt-get install faketime): the build clock is not varied"
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("piimg-verify-")
        .tempdir()
        .context("creating a temporary folder")?;
    let base = match keep {
        Some(k) => {
            std::fs::create_dir_all(k).with_context(|| format!("{}", k.display()))?;
            absolute(k)?
        }
        None => tmp.path().to_path_buf(),
    };
    let mut built = Vec::new();
    for (i, env) in envs.iter().enumerate() {
        let dir = base.join(format!("build{}", i + 1));
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        eprintln!("piimg verify: build {} of {profile}: {env}", i + 1);
        built.push(verify::build_in(&req, env, i + 1, &dir)?);
    }
    let cmp = verify::compare(
        [&built[0].image, &built[1].image],
        Some([&built[0].manifest, &built[1].manifest]),
    )?;
    print!("{}", cmp.report());
    if keep.is_some() {
        eprintln!("piimg verify: builds kept in {}", base.display());
    }
    Ok(if cmp.identical { 0 } else { 1 })
}
