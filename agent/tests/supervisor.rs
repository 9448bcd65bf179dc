//! The supervisor with real child processes. One test function on purpose: the supervisor reaps
//! with waitpid(-1), which would steal the children of tests running in parallel threads.

use piimg_agent::console;
use piimg_agent::supervise::{Backoff, Kind, Options, ServiceSpec, Supervisor};
use piimg_agent::sys;
use std::path::Path;
use std::time::{Duration, Instant};

fn sh(name: &str, script: &str) -> ServiceSpec {
    ServiceSpec::daemon(name, &["/bin/sh", "-c", script])
}

/// Runs the supervisor loop until `done` holds; panics after a generous guard (a hang, not a
/// speed assertion).
fn run_until(sup: &mut Supervisor, what: &str, mut done: impl FnMut(&Supervisor) -> bool) {
    let guard = Instant::now() + Duration::from_secs(60);
    while !done(sup) {
        assert!(Instant::now() < guard, "never reached: {what}");
        sup.step(Duration::from_millis(20));
    }
}

fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut z = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let mut f = rest.split(' ');
        let state = f.next().unwrap();
        let ppid: i32 = f.next().unwrap().parse().unwrap();
        if ppid == me && state == "Z" {
            z.push(pid);
        }
    }
    z
}

#[test]
fn supervisor_end_to_end() {
    // As in PID 1: the handled signals are blocked; children must not inherit that mask.
    sys::block_signals(&sys::HANDLED_SIGNALS);
    sys::set_child_subreaper();
    let lines = console::capture();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let stopfile = dir.join("stopped");
    let gate = dir.join("gate");
    let done_file = dir.join("state/once.done");

    let stopper = |n: &str| {
        sh(
            n,
            &format!(
                "trap 'echo {n} >> {}; exit 0' TERM; echo started; while :; do sleep 0.05; done",
                stopfile.display()
            ),
        )
    };
    let mut gated = sh("gated", "exec sleep 30");
    gated.wait_for = vec![gate.clone()];
    let specs = vec![
        sh("crash", "echo boom; echo oops >&2; exit 3"),
        // kubeadm printing its join command: the token never reaches console or log.
        ServiceSpec::oneshot(
            "leaky",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo join --token abcdef.0123456789abcdef --certificate-key 0a1b2c3d4e5f6789; echo 0123456789abcdef >&2".into(),
            ],
            None,
        ),
        // The background sleep is orphaned when the subshell exits: it comes back to us.
        sh(
            "orphaner",
            "(sleep 0.1 &); (sleep 0.1 &); echo spawned; exec sleep 30",
        ),
        stopper("a"),
        stopper("b"),
        stopper("c"),
        ServiceSpec::oneshot(
            "once",
            vec!["/bin/sh".into(), "-c".into(), "echo once".into()],
            Some(done_file.clone()),
        ),
        gated,
        ServiceSpec::daemon("missing", &["/nonexistent/binary"]),
        ServiceSpec::oneshot(
            "sigmask",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                "grep SigBlk /proc/self/status".into(),
            ],
            None,
        ),
    ];
    let opts = Options {
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
            reset_after: Duration::from_secs(600),
        },
        log_dir: Some(dir.join("log")),
        grace: Duration::from_secs(5),
        console_path: "/dev/null".into(),
        redact: vec![
            "abcdef.0123456789abcdef".into(),
            "0123456789abcdef".into(),
            "0a1b2c3d4e5f6789".into(),
        ],
        log_max_bytes: 4 << 20,
    };
    let mut sup = Supervisor::new(specs, opts);
    assert!(!sup.all_started());

    run_until(&mut sup, "crash loop of 6 restarts", |s| {
        s.delays("crash").len() >= 6
    });
    let ms: Vec<u128> = sup.delays("crash").iter().map(|d| d.as_millis()).collect();
    assert_eq!(&ms[..6], &[50, 100, 200, 400, 400, 400]);
    assert!(sup.restarts("crash") >= 5);

    // The gate is closed: everything but "gated" has started.
    assert_eq!(sup.pid("gated"), None);
    assert!(!sup.all_started());
    std::fs::write(&gate, b"").unwrap();
    run_until(&mut sup, "gated starts", |s| s.pid("gated").is_some());
    assert!(sup.all_started());

    run_until(&mut sup, "oneshot done", |s| s.is_done("once"));
    assert_eq!(std::fs::read_to_string(&done_file).unwrap(), "done\n");
    run_until(&mut sup, "orphans reaped", |s| s.orphans_reaped >= 2);

    // A program that cannot be executed is retried with backoff too.
    run_until(&mut sup, "missing retried", |s| {
        s.delays("missing").len() >= 2
    });

    // Each stopper writes "started" before we stop it (so its TERM trap is installed).
    let log_has = |n: &str, what: &str| {
        std::fs::read_to_string(dir.join("log").join(format!("{n}.log")))
            .map(|t| t.contains(what))
            .unwrap_or(false)
    };
    run_until(&mut sup, "stoppers ready", |_| {
        ["a", "b", "c"].iter().all(|n| log_has(n, "started"))
    });

    sup.stop_all();
    assert_eq!(std::fs::read_to_string(&stopfile).unwrap(), "c\nb\na\n");
    let order: Vec<&str> = sup
        .stop_log
        .iter()
        .map(String::as_str)
        .filter(|n| *n != "crash" && *n != "missing")
        .collect();
    assert_eq!(order, vec!["gated", "c", "b", "a", "orphaner"]);
    // Nothing restarts after stop, and nothing is left as a zombie.
    for _ in 0..10 {
        sup.step(Duration::from_millis(20));
    }
    assert_eq!(sup.pid("a"), None);
    assert_eq!(zombie_children(), Vec::<i32>::new());

    // Console lines: prefixed output and the stable milestone formats.
    let lines = lines.lock().unwrap().clone();
    let has = |s: &str| lines.iter().any(|l| l == s);
    assert!(has("[crash] boom"), "{lines:#?}");
    assert!(has("[crash] oops"));
    assert!(has("[sigmask] SigBlk:\t0000000000000000"), "{lines:#?}");
    // Grandchildren too (the shells exec sleep): SIGTERM alone stopped every service.
    assert!(
        !lines.iter().any(|l| l.contains("ignored SIGTERM")),
        "{lines:#?}"
    );
    assert!(has(
        "piimg-agent: service crash exited (exit 3) restart in 0.05s"
    ));
    assert!(has(
        "piimg-agent: service crash exited (exit 3) restart in 0.4s"
    ));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("piimg-agent: service a running (pid ")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("piimg-agent: service missing exited (spawn failed: ")));
    // Secrets are redacted on the console and in the log, which only root may read.
    assert!(
        has("[leaky] join --token [redacted] --certificate-key [redacted]"),
        "{lines:#?}"
    );
    assert!(has("[leaky] [redacted]"), "{lines:#?}");
    let leaky = std::fs::read_to_string(dir.join("log/leaky.log")).unwrap();
    assert!(
        !leaky.contains("0123456789abcdef") && !leaky.contains("0a1b2c3d4e5f6789"),
        "{leaky}"
    );
    use std::os::unix::fs::PermissionsExt;
    for log in ["leaky", "crash", "a"] {
        let mode = std::fs::metadata(dir.join(format!("log/{log}.log")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{log}.log");
    }
    // Log files hold the unprefixed output.
    let crash_log = std::fs::read_to_string(dir.join("log/crash.log")).unwrap();
    assert!(crash_log.lines().filter(|l| *l == "boom").count() >= 2);
    assert!(Path::new(&dir.join("log/once.log")).exists());
    let _ = Kind::Daemon;
}
