//! `piimg cluster up` end to end, the shipped `qemu-ha` cluster in raspi3b QEMUs on one virtual
//! LAN over loopback, checked from the outside. The load balancer and the two workers: the
//! agents' status endpoints through `--forward` (the host's station splicing into the segment),
//! the agents' own word that they set their clocks from the station's SNTP, HAProxy's health
//! checks from one node to the others, a pod on one worker reaching a pod on the other by its
//! pod IP, and no QEMU left after `cluster down`. The load balancer and the three control
//! planes: failover between their (stand-in) API servers.
//!
//! Needs Debian's archive for the first build on a machine (packages are cached in
//! target/tmp/piimg-test-cache) and qemu-system-aarch64 >= 7.2 (`-netdev dgram`).

mod common;
use common::project::{project, Project};
use common::KUBE_STANDINS;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NODES: [(&str, &str); 3] = [
    ("qemu-ha-lb1", "10.77.0.10"),
    ("qemu-ha-w1", "10.77.0.21"),
    ("qemu-ha-w2", "10.77.0.22"),
];

/// `cluster up --cluster qemu-ha --until ready` with the Kubernetes stand-ins and `forwards`
/// (HOSTPORT:NODE:GUESTPORT), run to its end.
fn up_until_ready(proj: &Project, timeout_secs: u32, forwards: &[String]) -> common::piimg::Run {
    let mut up = proj
        .piimg_cached()
        .args(["cluster", "up", "--cluster", "qemu-ha", "--until", "ready"])
        .arg("--timeout")
        .arg(timeout_secs.to_string());
    for f in forwards {
        up = up.arg("--forward").arg(f);
    }
    up.standins(&KUBE_STANDINS).run()
}

/// The load balancer and the control planes, for the failover test.
const CONTROL_PLANES: [(&str, &str); 4] = [
    ("qemu-ha-lb1", "10.77.0.10"),
    ("qemu-ha-cp1", "10.77.0.11"),
    ("qemu-ha-cp2", "10.77.0.12"),
    ("qemu-ha-cp3", "10.77.0.13"),
];

/// One cluster at a time: each is several emulated Pis, and two clusters on two cores only
/// slow each other down.
static CLUSTERS: Mutex<()> = Mutex::new(());

/// Runs `cluster down` when dropped, so that a failed assertion leaves no QEMU behind.
struct Down<'a>(&'a Project);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .piimg()
            .args(["cluster", "down", "--cluster", "qemu-ha"])
            .run();
    }
}

/// QEMU processes whose command line names a file under `root` (other QEMUs on the machine
/// are not ours to count).
fn qemus_under(root: &Path) -> Vec<i32> {
    let root = root.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("qemu-system-aarch64") && cmdline.contains(&root) {
            out.push(pid);
        }
    }
    out
}

/// The agent's /status through a forward, parsed.
fn status(port: u16) -> serde_json::Value {
    let resp = common::http_get(port, "/status");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "status endpoint: {head}");
    serde_json::from_str(body).unwrap()
}

fn log(dir: &Path, node: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(dir.join(format!("{node}.log"))).unwrap()).into_owned()
}

/// Waits for a console line of `node` containing all of `needles`; returns it.
fn wait_line(dir: &Path, node: &str, needles: &[&str], within: Duration) -> String {
    let until = Instant::now() + within;
    loop {
        let text = log(dir, node);
        if let Some(l) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return l.trim_end().to_string();
        }
        assert!(
            Instant::now() < until,
            "{node}: no console line with {needles:?}; the log ends:\n{}",
            text.lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The stand-in kubelet's test-mode lines: each Kubernetes node of `nodes` (all but the load
/// balancer, which runs no kubelet) pings every other node's address.
fn ping_lines(nodes: &[(&str, &str)]) -> String {
    nodes
        .iter()
        .filter(|(n, _)| !n.ends_with("-lb1"))
        .map(|(n, _)| {
            let others: Vec<&str> = nodes
                .iter()
                .filter(|(o, _)| o != n)
                .map(|(_, a)| *a)
                .collect();
            format!("{n} ping {}\n", others.join(","))
        })
        .collect()
}

/// Every ping of [`ping_lines`] reached its address.
fn assert_pings(dir: &Path, nodes: &[(&str, &str)]) {
    for (n, _) in nodes.iter().filter(|(n, _)| !n.ends_with("-lb1")) {
        for (o, a) in nodes.iter().filter(|(o, _)| o != n) {
            let line = wait_line(
                dir,
                n,
                &[&format!("piimg-test-standin kubelet: ping {a}: ")],
                Duration::from_secs(90),
            );
            assert!(line.ends_with(": reached"), "{n} -> {o}: {line}");
        }
    }
}

/// The container image the workers import for the pod-to-pod check.
const POD_IMAGE: &str = "docker.io/piimg/cluster-pod:1";

/// `node_pod_cidr` as `piimg show` reports it for `node`.
fn node_pod_cidr(proj: &Project, node: &str) -> String {
    let show = proj.piimg().args(["show", "--profile", node]).run();
    show.assert_ok();
    let text = show.combined();
    text.lines()
        .find_map(|l| l.strip_prefix("node_pod_cidr = \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no node_pod_cidr in:\n{text}"))
        .to_string()
}

/// The address after a subnet's first (the bridge takes .1, host-local hands out .2 first).
fn first_pod_ip(subnet: &str) -> std::net::Ipv4Addr {
    let net: std::net::Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
    std::net::Ipv4Addr::from(u32::from(net) + 2)
}

#[test]
fn a_cluster_boots_on_one_virtual_lan_gets_its_time_there_and_goes_down_without_a_trace() {
    let _one = CLUSTERS.lock().unwrap_or_else(|e| e.into_inner());
    let proj = project()
        .only(&["qemu-ha", "qemu-ha-lb1", "qemu-ha-w1", "qemu-ha-w2"])
        .lock()
        .overlays()
        .create_temp("piimg-cluster-");
    // The load balancer health-checks the workers' status endpoints (nodes that answer, though
    // not with TLS) and an address no node has: HAProxy tells them apart only if lb1 reaches
    // each worker.
    proj.replace(
        "qemu-ha-lb1",
        "bind = \"0.0.0.0:6443\"",
        "bind = \"0.0.0.0:6443\"\nbackends = [\"10.77.0.21:7780\", \"10.77.0.22:7780\", \"10.77.0.99:7780\"]",
    );
    // Pod to pod: both workers get a busybox image to import; the stand-in kubelet's test mode
    // runs a server pod on w2 and, on w1, a client pod that fetches from it by pod IP: the
    // first address host-local gives out of w2's pod subnet (.1 is the bridge's).
    let w2_subnet = node_pod_cidr(&proj, "qemu-ha-w2");
    let w2_pod = first_pod_ip(&w2_subnet);
    let busybox = common::oci::busybox_from_cache(&proj, "qemu-ha-lb1");
    let overlay = proj.root().join("overlays/worker");
    std::fs::create_dir_all(overlay.join("usr/share/piimg/images")).unwrap();
    std::fs::write(
        overlay.join("usr/share/piimg/images/pod.tar"),
        common::oci::oci_archive(&busybox, POD_IMAGE),
    )
    .unwrap();
    std::fs::create_dir_all(overlay.join("etc/piimg-test")).unwrap();
    std::fs::write(
        overlay.join("etc/piimg-test/kubelet-pods"),
        format!(
            "{}qemu-ha-w2 serve 8080 {POD_IMAGE}\nqemu-ha-w1 fetch {w2_pod}:8080 {POD_IMAGE}\n",
            ping_lines(&NODES)
        ),
    )
    .unwrap();
    let ports: Vec<u16> = NODES.iter().map(|_| common::free_port()).collect();
    let forwards: Vec<String> = NODES
        .iter()
        .zip(&ports)
        .map(|((node, _), port)| format!("{port}:{node}:7780"))
        .collect();
    let _down = Down(&proj);
    let t = Instant::now();
    let run = up_until_ready(&proj, 400, &forwards);
    let wall = t.elapsed();
    eprintln!("{}", run.combined());
    run.assert_ok();
    eprintln!(
        "cluster up (build and boot) took {:.1} s",
        wall.as_secs_f64()
    );
    let dir: PathBuf = proj.root().join("out/cluster/qemu-ha");
    assert_eq!(qemus_under(proj.root()).len(), 3, "one QEMU per node");

    let host_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for ((node, address), port) in NODES.iter().zip(&ports) {
        // host -> 127.0.0.1:port -> the host's station -> the segment -> the node's agent.
        let v = status(*port);
        assert_eq!(v["hostname"], *node, "{v}");
        assert_eq!(v["addresses"][0], format!("{address}/24"), "{v}");
        // Every node set its clock from the station, to the host's time (the image's clock
        // starts at its build time, months earlier).
        let line = wait_line(
            &dir,
            node,
            &["piimg-agent: clock synced from 10.77.0.1: "],
            Duration::from_secs(5),
        );
        let synced: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            (synced - host_now).abs() < 600,
            "{node}: synced to {synced}, host {host_now}"
        );
    }
    // The workers' kubeadm ran: it waits for the synced clock.
    for (node, _) in &NODES[1..] {
        wait_line(
            &dir,
            node,
            &["[kubeadm] piimg-test-standin kubeadm: argv: join"],
            Duration::from_secs(5),
        );
    }
    // w1's client pod reached w2's server pod by its pod IP, and the answer names w2 and that
    // address: across the LAN by the routes the agent installed from the profiles (no
    // overlay network, and the bridge does not masquerade).
    let pong = wait_line(
        &dir,
        "qemu-ha-w1",
        &[&format!(
            "piimg-test-standin kubelet: pod-to-pod {w2_pod}:8080: pong from qemu-ha-w2: "
        )],
        Duration::from_secs(240),
    );
    assert!(
        pong.contains(&format!(
            " inet {w2_pod}/{} ",
            w2_subnet.split('/').nth(1).unwrap()
        )),
        "{pong}"
    );
    eprintln!("w1: {pong}");
    // Each worker reached every other node's address (the load balancer reaches them: its
    // checks above).
    assert_pings(&dir, &NODES);
    // Node to node: HAProxy on lb1 got a TCP connection to w1 (its TLS check then fails on
    // the plain-HTTP answer: layer 6), and none to the absent address (layer 4).
    let w1 = wait_line(
        &dir,
        "qemu-ha-lb1",
        &["Server kube-apiservers/backend1 is DOWN, reason: "],
        Duration::from_secs(60),
    );
    assert!(w1.contains("reason: Layer6"), "{w1}");
    let w2 = wait_line(
        &dir,
        "qemu-ha-lb1",
        &["Server kube-apiservers/backend2 is DOWN, reason: "],
        Duration::from_secs(60),
    );
    assert!(w2.contains("reason: Layer6"), "{w2}");
    let absent = wait_line(
        &dir,
        "qemu-ha-lb1",
        &["Server kube-apiservers/backend3 is DOWN, reason: "],
        Duration::from_secs(60),
    );
    assert!(absent.contains("reason: Layer4"), "{absent}");

    let down = proj
        .piimg()
        .args(["cluster", "down", "--cluster", "qemu-ha"])
        .run();
    down.assert_ok();
    assert!(
        down.combined()
            .contains("stopped (3 QEMU processes were running)"),
        "{}",
        down.combined()
    );
    assert_eq!(
        qemus_under(proj.root()),
        Vec::<i32>::new(),
        "QEMU left behind"
    );
    assert!(!dir.join("state.json").exists());
    // A second `down` finds nothing to stop.
    let again = proj
        .piimg()
        .args(["cluster", "down", "--cluster", "qemu-ha"])
        .run();
    again.assert_ok();
    assert!(
        again.combined().contains("is not up"),
        "{}",
        again.combined()
    );
}

#[test]
fn a_pi4_node_is_refused_before_anything_is_built() {
    let proj = project()
        .only(&["qemu-ha", "qemu-ha-lb1", "qemu-ha-cp1", "qemu-ha-w1"])
        .create_temp("piimg-cluster-pi4-");
    proj.replace("qemu-ha-w1", "board = \"rpi3b\"", "board = \"rpi4b\"");
    let run = proj
        .piimg()
        .args(["cluster", "up", "--cluster", "qemu-ha"])
        .run();
    run.assert_code(1);
    assert!(
        run.combined()
            .contains("qemu-ha-w1 is a rpi4b: QEMU's raspi4b machine emulates no Ethernet"),
        "{}",
        run.combined()
    );
    assert!(!proj.root().join("out").exists(), "nothing is built");
}

/// `GET https://10.77.0.10:6443/readyz` as kubectl sends it, through the forward at `port`
/// (curl connects there and still checks the certificate for the endpoint's address, against
/// the cluster CA in `ca`): the body, or curl's error.
fn readyz(port: u16, ca: &Path) -> Result<String, String> {
    let o = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "15", "--cacert"])
        .arg(ca)
        .arg("--connect-to")
        .arg(format!("10.77.0.10:6443:127.0.0.1:{port}"))
        .arg("https://10.77.0.10:6443/readyz")
        .output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

/// `n` requests through the load balancer: the control plane that answered each.
fn answers(port: u16, ca: &Path, n: usize) -> Vec<Result<String, String>> {
    (0..n)
        .map(|_| readyz(port, ca).map(|b| b.trim_start_matches("ok from ").to_string()))
        .collect()
}

/// How often lb1's HAProxy has logged `line` (it logs state changes; the backends derived from
/// the control planes are named after them).
fn haproxy_count(dir: &Path, line: &str) -> usize {
    log(dir, "qemu-ha-lb1").matches(line).count()
}

/// Waits until lb1's HAProxy has logged `line` more than `before` times; returns when.
fn wait_haproxy(dir: &Path, line: &str, before: usize, within: Duration) -> Instant {
    let until = Instant::now() + within;
    loop {
        if haproxy_count(dir, line) > before {
            return Instant::now();
        }
        assert!(
            Instant::now() < until,
            "lb1 never logged {line:?} again; its log ends:\n{}",
            log(dir, "qemu-ha-lb1")
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The load balancer and three control planes (1 GiB raspi3b: kubeadm's Mem check ignored),
/// each control plane serving a stand-in API server with a certificate the cluster CA issued
/// (kubeadm's certs phase, the stand-in's). From the host through lb1's forwarded frontend,
/// with the CA checked: requests reach all three; cp2's API server stopped, HAProxy marks it
/// DOWN within its checks (inter 2s, fall 3) and no request fails or reaches it after that;
/// started again, it is UP and back in rotation.
#[test]
fn the_load_balancer_fails_over_when_a_control_planes_api_server_stops() {
    let _one = CLUSTERS.lock().unwrap_or_else(|e| e.into_inner());
    let proj = project()
        .only(&[
            "qemu-ha",
            "qemu-ha-lb1",
            "qemu-ha-cp1",
            "qemu-ha-cp2",
            "qemu-ha-cp3",
        ])
        .lock()
        .overlays()
        .create_temp("piimg-cluster-failover-");
    let modes = proj.root().join("overlays/control-plane/etc/piimg-test");
    std::fs::create_dir_all(&modes).unwrap();
    std::fs::write(modes.join("apiserver-control"), b"").unwrap();
    std::fs::write(modes.join("kubelet-pods"), ping_lines(&CONTROL_PLANES)).unwrap();
    let (front, control) = (common::free_port(), common::free_port());
    let _down = Down(&proj);
    let t = Instant::now();
    let run = up_until_ready(
        &proj,
        500,
        &[
            format!("{front}:qemu-ha-lb1:6443"),
            format!("{control}:qemu-ha-cp2:7781"),
        ],
    );
    eprintln!("{}", run.combined());
    run.assert_ok();
    eprintln!(
        "cluster up, 4 nodes (build and boot): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let dir = proj.root().join("out/cluster/qemu-ha");
    for cp in ["qemu-ha-cp1", "qemu-ha-cp2", "qemu-ha-cp3"] {
        wait_line(
            &dir,
            cp,
            &["[kubeadm]", "[WARNING Mem]: the system RAM"],
            Duration::from_secs(5),
        );
    }
    let ca = proj.root().join("ca.crt");
    let secrets = common::read_toml(&proj.secrets("qemu-ha"));
    std::fs::write(&ca, secrets["ca_cert"].as_str().unwrap()).unwrap();
    // Until HAProxy has all three in rotation (each API server starts after its node joins).
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let all = answers(front, &ca, 9);
        let mut seen: Vec<String> = all.iter().filter_map(|r| r.clone().ok()).collect();
        seen.sort();
        seen.dedup();
        if seen == ["qemu-ha-cp1", "qemu-ha-cp2", "qemu-ha-cp3"] {
            break;
        }
        assert!(
            Instant::now() < until,
            "round robin never reached all three: {all:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let (down_line, up_line) = (
        "[haproxy] Server kube-apiservers/qemu-ha-cp2 is DOWN",
        "[haproxy] Server kube-apiservers/qemu-ha-cp2 is UP",
    );
    let downs = haproxy_count(&dir, down_line);
    // Each control plane reached every other node's address.
    assert_pings(&dir, &CONTROL_PLANES);
    let stop = common::http_get(control, "/cgi-bin/apiserver?stop");
    assert!(stop.contains("apiserver stop: stopped"), "{stop}");
    let stopped = Instant::now();
    let down = wait_haproxy(&dir, down_line, downs, Duration::from_secs(60));
    let took = down - stopped;
    eprintln!(
        "cp2's API server stopped: DOWN after {:.1} s",
        took.as_secs_f64()
    );
    // Three failed checks 2 s apart, plus the guest's slowness under emulation.
    assert!(took < Duration::from_secs(20), "DOWN after {took:?}");
    let after = answers(front, &ca, 9);
    assert!(
        after
            .iter()
            .all(|r| matches!(r, Ok(n) if n == "qemu-ha-cp1" || n == "qemu-ha-cp3")),
        "with cp2 down: {after:?}"
    );

    let ups = haproxy_count(&dir, up_line);
    let start = common::http_get(control, "/cgi-bin/apiserver?start");
    assert!(start.contains("apiserver start: running"), "{start}");
    wait_haproxy(&dir, up_line, ups, Duration::from_secs(60));
    let back = answers(front, &ca, 9);
    assert!(
        back.iter().all(Result::is_ok)
            && back
                .iter()
                .any(|r| matches!(r, Ok(n) if n == "qemu-ha-cp2")),
        "cp2 back in rotation: {back:?}"
    );
}

/// At a terminal, without `--until`: the table is live (a spinner per node, redrawn in place,
/// each node going from booting to ready), and Ctrl-C typed at that terminal stops the whole
/// cluster: exit status 130, no QEMU left, no state behind. Then a timeout too short to boot. `script` gives piimg the terminal
/// and passes on what the test types, as a terminal would.
#[test]
fn at_a_terminal_the_table_is_live_and_ctrl_c_stops_every_qemu() {
    use std::io::{Read, Write};
    let _one = CLUSTERS.lock().unwrap_or_else(|e| e.into_inner());
    let proj = project()
        .only(&["qemu-ha", "qemu-ha-lb1"])
        .lock()
        .overlays()
        .create_temp("piimg-cluster-tty-");
    // Without its control planes here, lb1 names a backend of its own.
    proj.replace(
        "qemu-ha-lb1",
        "bind = \"0.0.0.0:6443\"",
        "bind = \"0.0.0.0:6443\"\nbackends = [\"10.77.0.11:6443\"]",
    );
    let cmd = proj
        .piimg_cached()
        .args(["cluster", "up", "--cluster", "qemu-ha", "--timeout", "300"])
        .command();
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = std::process::Command::new("script");
    script
        .args(["-qefc", &format!("exec {line}"), "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(dir) = cmd.get_current_dir() {
        script.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    let mut child = script.spawn().unwrap();
    let _down = Down(&proj);
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Vec::new();
    let until = Instant::now() + Duration::from_secs(400);
    let ready = |s: &[u8]| String::from_utf8_lossy(s).contains("10.77.0.10       ready");
    while !ready(&screen) {
        assert!(
            Instant::now() < until,
            "lb1 never showed ready:\n{}",
            String::from_utf8_lossy(&screen)
        );
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(500)) {
            screen.extend(b);
        }
    }
    let text = String::from_utf8_lossy(&screen).into_owned();
    // Live: the booting row is redrawn in place (cursor movement), with a spinner, before it
    // says ready; no line-per-change log as without a terminal.
    assert!(text.contains("booting"), "{text}");
    assert!(
        text.contains("\u{1b}["),
        "no redraw on the terminal: {text:?}"
    );
    assert!(!text.contains("piimg: qemu-ha-lb1  10.77.0.10"), "{text}");
    assert_eq!(qemus_under(proj.root()).len(), 1);

    child.stdin.as_mut().unwrap().write_all(b"\x03").unwrap();
    let status = child.wait().unwrap();
    while let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
        screen.extend(b);
    }
    assert_eq!(
        status.code(),
        Some(130),
        "after Ctrl-C:\n{}",
        String::from_utf8_lossy(&screen)
    );
    assert_eq!(
        qemus_under(proj.root()),
        Vec::<i32>::new(),
        "QEMU left behind"
    );
    assert!(!proj.root().join("out/cluster/qemu-ha/state.json").exists());

    // A node not ready in time: exit 1, the node named, the cluster stopped (the image is
    // built now, so the second is all boot).
    let late = proj
        .piimg_cached()
        .args(["cluster", "up", "--cluster", "qemu-ha", "--until", "ready"])
        .args(["--timeout", "1"])
        .run();
    late.assert_code(1);
    assert!(
        late.combined()
            .contains("timed out after 1 s; not ready: qemu-ha-lb1; cluster qemu-ha stopped"),
        "{}",
        late.combined()
    );
    assert_eq!(qemus_under(proj.root()), Vec::<i32>::new());
}
