//! Supervisor and console soak, on the host where PID 1's loop is testable: a service that
//! crashes as fast as the backoff allows and one that prints as fast as it can, behind a console
//! as slow as a 115200-baud serial line. Measured: the worst main-loop step (the supervisor's
//! `step` and the agent's own console lines), memory growth, log bytes on disk, console drops.
//!
//! CI runs 5 s; PIIMG_SOAK_SECS=N runs longer, PIIMG_SOAK_CRASHES=N until the crash loop has
//! restarted N times (scripts/soak.sh). The figures are printed.

use piimg_agent::console;
use piimg_agent::supervise::{Backoff, Options, ServiceSpec, Supervisor};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What reached the console: its byte count and the last 64 KiB (kept bounded so that the test's
/// own memory does not hide the agent's in the RSS figure).
#[derive(Default)]
struct Seen {
    bytes: u64,
    dropped_notice: bool,
    tail: Vec<u8>,
}

/// A console at 115200 baud: 11,520 bytes a second, each write waits its turn.
struct SerialLine {
    seen: Arc<Mutex<Seen>>,
}

impl Write for SerialLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_secs_f64(buf.len() as f64 / 11_520.0));
        if let Ok(mut s) = self.seen.lock() {
            s.bytes += buf.len() as u64;
            s.dropped_notice |= buf
                .windows(b"service lines dropped".len())
                .any(|w| w == b"service lines dropped");
            s.tail.extend_from_slice(buf);
            let cut = s.tail.len().saturating_sub(64 << 10);
            s.tail.drain(..cut);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn dir_bytes(d: &std::path::Path) -> u64 {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn a_crash_loop_and_a_flood_do_not_stall_pid1_or_fill_the_disk() {
    piimg_agent::sys::block_signals(&[libc::SIGCHLD]);
    let secs: u64 = std::env::var("PIIMG_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let crash_goal: u32 = std::env::var("PIIMG_SOAK_CRASHES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let seen = Arc::new(Mutex::new(Seen::default()));
    console::start_async(Box::new(SerialLine { seen: seen.clone() }));
    let t = tempfile::tempdir().unwrap();
    let log_dir = t.path().join("log");
    let cap = 1 << 20;
    let opts = Options {
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(1),
            reset_after: Duration::from_secs(600),
        },
        log_dir: Some(log_dir.clone()),
        grace: Duration::from_secs(2),
        console_path: "/dev/null".into(),
        log_max_bytes: cap,
        ..Options::default()
    };
    let mut sup = Supervisor::new(
        vec![
            ServiceSpec::daemon("crasher", &["/bin/false"]),
            // ~70-byte lines as fast as a pipe takes them.
            ServiceSpec::daemon(
                "flood",
                &[
                    "/bin/sh",
                    "-c",
                    "yes 'flood line: the quick brown fox jumps over the lazy dog 0123456789'",
                ],
            ),
        ],
        opts,
    );
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let (mut worst_step, mut worst_say, mut steps) = (Duration::ZERO, Duration::ZERO, 0u64);
    // The flood's bytes: its log's growth, plus the size it had each time it rotated (a
    // rotation shows as the file getting smaller; more than one between two steps is missed,
    // so the figure is a lower bound).
    let flood_log = log_dir.join("flood.log");
    let (mut flood_rotated, mut flood_last) = (0u64, 0u64);
    while t0.elapsed() < Duration::from_secs(secs) || sup.restarts("crasher") < crash_goal {
        let s = Instant::now();
        sup.step(Duration::from_millis(20));
        // The poll itself may take its 20 ms: what counts is the time beyond it.
        worst_step = worst_step.max(s.elapsed().saturating_sub(Duration::from_millis(20)));
        let s = Instant::now();
        console::say(&format!("tick {steps}"));
        worst_say = worst_say.max(s.elapsed());
        steps += 1;
        let size = std::fs::metadata(&flood_log).map_or(0, |m| m.len());
        if size < flood_last {
            flood_rotated += flood_last;
        }
        flood_last = size;
    }
    let crashes = sup.restarts("crasher");
    let ran = t0.elapsed().as_secs_f64();
    let flood_bytes = flood_rotated + flood_last;
    let rss1 = rss_kib();
    sup.stop_all();
    let log_bytes = dir_bytes(&log_dir);
    console::flush(Duration::from_secs(5));
    let seen = seen.lock().unwrap();
    let text = String::from_utf8_lossy(&seen.tail).into_owned();
    eprintln!(
        "SOAK: {ran:.0} s, {steps} loop steps, crasher restarted {crashes} times, worst step beyond its poll {worst_step:?}, worst agent console line {worst_say:?}, RSS {rss0} -> {rss1} KiB, logs on disk {log_bytes} bytes (cap {cap} per file), console {} bytes, flood logged >= {flood_bytes} bytes ({:.1} MB/s)",
        seen.bytes,
        flood_bytes as f64 / ran / 1e6
    );
    assert!(
        crashes as u64 > secs * 20,
        "the crash loop ran only {crashes} times"
    );
    assert!(worst_step < Duration::from_millis(250), "{worst_step:?}");
    assert!(worst_say < Duration::from_millis(50), "{worst_say:?}");
    assert!(
        log_bytes <= 4 * cap + (1 << 16),
        "{log_bytes} bytes of logs"
    );
    assert!(
        log_dir.join("flood.log.1").exists(),
        "the flood's log never rotated"
    );
    assert!(
        rss1 < rss0 + 64 * 1024,
        "memory grew from {rss0} to {rss1} KiB"
    );
    assert!(seen.dropped_notice, "no drop was reported");
    // The agent's own lines are not the ones dropped.
    assert!(
        text.contains(&format!("tick {}", steps - 1)),
        "the last tick never reached the console"
    );
}
