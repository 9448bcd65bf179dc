//! The command line as people use it every day, through the real binary: `piimg init` (checked
//! by `piimg check` and by building one of its nodes), warnings scoped to what a command reads,
//! errors said once, unknown profile names, shell completions (`bash -n`) and the man page
//! (`man -l`).

mod common;
use common::checkers::run;
use common::piimg::Piimg;
use common::project::project;
use common::{fresh_dir, repo};

use std::path::{Path, PathBuf};
use std::process::Command;

/// `piimg ARGS` in `dir`: whether it succeeded, its stdout and its stderr.
fn piimg(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let r = Piimg::new().cwd(dir).args(args).run();
    (r.success(), r.stdout, r.stderr)
}

fn work(name: &str) -> PathBuf {
    fresh_dir(&format!("cli-{name}"))
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// `piimg init` of a three-control-plane cluster `lab` in profiles/.
const LAB_INIT: [&str; 8] = [
    "init",
    "profiles",
    "--cluster",
    "lab",
    "--subnet",
    "10.77.0.0/24",
    "--ntp",
    "10.77.0.1",
];

#[test]
fn init_writes_a_cluster_that_check_accepts_and_that_builds() {
    let w = work("init");
    let (ok, out, err) = piimg(&w, &LAB_INIT);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("HA: 3 control-plane members, tolerates 1 failure"),
        "{out}"
    );
    let names: Vec<String> = listing(&w.join("profiles"))
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(
        names,
        ["cp1.toml", "cp2.toml", "cp3.toml", "lab.toml", "lb1.toml", "w1.toml", "w2.toml"]
    );
    let (ok, out, err) = piimg(&w, &["check", "--profiles", "profiles", "--json"]);
    assert!(ok, "{out}{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ha = &j["clusters"][0]["ha"];
    assert_eq!(ha["control_plane_members"], 3, "{j}");
    assert_eq!(ha["tolerated_failures"], 1, "{j}");
    assert!(ha["warnings"].as_array().unwrap().is_empty(), "{j}");
    let (_, shown, _) = piimg(
        &w,
        &[
            "show",
            "--profiles",
            "profiles",
            "--profile",
            "w2",
            "--json",
        ],
    );
    let node: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        node["node"]["network"]["address"], "10.77.0.15/24",
        "{node}"
    );
    assert_eq!(
        node["node"]["kubernetes"]["control_plane_endpoint"],
        "10.77.0.10:6443"
    );
    let inits: usize = ["cp1", "cp2", "cp3"]
        .iter()
        .map(|n| {
            let (_, s, _) = piimg(
                &w,
                &["show", "--profiles", "profiles", "--profile", n, "--json"],
            );
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            usize::from(v["node"]["kubernetes"]["init"] == true)
        })
        .sum();
    assert_eq!(inits, 1, "exactly one init node");

    // Never overwrites: the second run fails and changes nothing.
    let before = listing(&w.join("profiles"));
    let (ok, _, err) = piimg(&w, &LAB_INIT);
    assert!(!ok && err.contains("refusing to overwrite"), "{err}");
    assert_eq!(listing(&w.join("profiles")), before);

    // A node of it builds with the project's lock.
    std::fs::copy(repo().join("piimg.lock"), w.join("piimg.lock")).unwrap();
    let (ok, out, err) = piimg(
        &w,
        &["-q", "build", "--profiles", "profiles", "--profile", "lb1"],
    );
    assert!(ok, "{out}{err}");
    run(Command::new("sgdisk").arg("-v").arg(w.join("out/lb1.img")));
}

#[test]
fn init_counts_follow_the_quorum_arithmetic_and_bad_requests_write_nothing() {
    let w = work("init-counts");
    let (ok, out, err) = piimg(
        &w,
        &[
            "init",
            "two",
            "--cluster",
            "duo",
            "--subnet",
            "10.78.0.0/24",
            "--ntp",
            "pool.ntp.org",
            "--control-planes",
            "2",
            "--workers",
            "1",
            "--no-load-balancer",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("tolerates 0 failures"), "{out}");
    assert!(
        err.contains("an even count adds no failure tolerance"),
        "{err}"
    );
    assert!(out.contains("API endpoint 10.78.0.10:6443"), "{out}");
    let (ok, out, _) = piimg(&w, &["check", "--profiles", "two"]);
    assert!(ok && out.contains("even count"), "{out}");

    for (args, says) in [
        (vec!["--subnet", "10.79.0.0/24"], "--ntp is required"),
        (
            vec!["--subnet", "10.79.0.0/24", "--ntp", "x", "--board", "rpi3b"],
            "kubeadm requires 1700 MB",
        ),
        (
            vec!["--subnet", "10.79.0.0/28", "--ntp", "x", "--workers", "9"],
            "is not a host address",
        ),
    ] {
        let mut a = vec!["init", "bad", "--cluster", "bad"];
        a.extend(args);
        let (ok, _, err) = piimg(&w, &a);
        assert!(!ok && err.contains(says), "{a:?}: {err}");
        assert!(!w.join("bad").exists(), "{a:?} wrote something");
    }
}

/// A copy of the shipped profiles plus a profile of another cluster with a warning and one
/// that does not parse.
fn noisy_project(w: &Path) {
    project()
        .create_in(w)
        .write("broken", "cluster = \"other\"\nhostname = [\n");
}

#[test]
fn warnings_and_errors_are_about_the_profiles_a_command_reads() {
    let w = work("scope");
    noisy_project(&w);
    let (ok, out, err) = piimg(&w, &["show", "--profile", "cp1"]);
    assert!(ok, "{out}{err}");
    assert!(
        !err.contains("qemu") && !err.contains("broken"),
        "show cp1 talks about other clusters' profiles: {err}"
    );
    let (ok, _, err) = piimg(&w, &["show", "--profile", "qemu"]);
    assert!(ok && err.contains("debug shell is on"), "{err}");
    // check still reports everything, the unreadable file included.
    let (ok, out, err) = piimg(&w, &["check"]);
    assert!(!ok && err.contains("broken.toml"), "{out}{err}");
}

#[test]
fn an_unknown_profile_lists_the_ones_that_exist_and_the_closest() {
    let w = work("unknown");
    noisy_project(&w);
    for cmd in ["show", "build"] {
        let (ok, _, err) = piimg(&w, &[cmd, "--profile", "cp"]);
        assert!(!ok, "{err}");
        assert!(
            err.contains("no node profile named `cp`")
                && err.contains("cp1, cp2, cp3, lb1")
                && err.contains("did you mean `cp1`?"),
            "{cmd}: {err}"
        );
        assert!(!err.contains("debug shell"), "{cmd}: {err}");
    }
    let (_, _, err) = piimg(&w, &["build", "--profile", "zzzzzz"]);
    assert!(!err.contains("did you mean"), "{err}");
}

#[test]
fn each_error_is_said_once() {
    let w = work("once");
    let (ok, _, err) = piimg(&w, &["qemu", "/nonexistent.img"]);
    assert!(!ok);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains("/nonexistent.img"), "{err}");
    noisy_project(&w);
    std::fs::copy(repo().join("piimg.lock"), w.join("piimg.lock")).unwrap();
    let (ok, _, err) = piimg(
        &w,
        &["build", "--profile", "lb1", "--component", "kubelet=/nope"],
    );
    assert!(!ok);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains("kubelet") && err.contains("/nope"), "{err}");
}

#[test]
fn completions_load_and_the_man_page_renders() {
    let w = work("completions");
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = piimg(&w, &["completions", shell]);
        assert!(
            ok && out.contains("flash") && out.contains("init"),
            "{shell}: {err}"
        );
        std::fs::write(w.join(shell), &out).unwrap();
    }
    run(Command::new("bash").arg("-n").arg(w.join("bash")));
    let registered = run(Command::new("bash").arg("-c").arg(format!(
        "source {} && complete -p piimg",
        w.join("bash").display()
    )));
    assert!(registered.contains("piimg"), "{registered}");
    let (ok, page, err) = piimg(&w, &["man"]);
    assert!(ok, "{err}");
    std::fs::write(w.join("piimg.1"), page).unwrap();
    let text = run(Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(w.join("piimg.1"))
        .env("MANWIDTH", "100"));
    assert!(
        text.contains("piimg") && text.contains("flash") && text.contains("completions"),
        "{text}"
    );
}

#[test]
fn qemu_writable_refuses_a_built_image_and_leaves_it_alone() {
    let w = work("writable");
    let img = w.join("node.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(w.join("node.img.sha256"), "0000  node.img\n").unwrap();
    let before = std::fs::metadata(&img).unwrap().modified().unwrap();
    let (ok, _, err) = piimg(&w, &["qemu", "--writable", "node.img"]);
    assert!(!ok);
    assert!(
        err.contains("--writable would change node.img and break node.img.sha256; boot a copy: cp --sparse=always node.img card.img"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&img).unwrap().modified().unwrap(), before);
}
