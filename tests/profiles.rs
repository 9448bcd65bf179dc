//! The profile model through the real binary: `piimg check` / `show` / `build` on the shipped
//! example profiles and on broken copies of them, one test per validation rule.

mod common;
use common::checkers::text_of;
use common::piimg::Run;
use common::project::{project, Project};

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// A temp project holding a copy of the shipped profiles (secrets land beside them).
fn shipped() -> Project {
    project().create_temp("piimg-profiles-")
}

/// Only the six-node home cluster (the QEMU profiles removed).
fn home_only() -> Project {
    let p = shipped();
    for n in [
        "qemu",
        "qemu-worker",
        "qemu-ha",
        "qemu-ha-lb1",
        "qemu-ha-cp1",
        "qemu-ha-cp2",
        "qemu-ha-cp3",
        "qemu-ha-w1",
        "qemu-ha-w2",
    ] {
        p.remove(n);
    }
    p
}

/// `piimg --profiles DIR ARGS` in the project, at a fixed SOURCE_DATE_EPOCH.
fn run(p: &Project, args: &[&str]) -> Run {
    p.piimg()
        .profiles(&p.profiles())
        .epoch("1767225600")
        .args(args)
        .run()
}

fn secrets_text(p: &Project, cluster: &str) -> String {
    std::fs::read_to_string(p.secrets(cluster)).unwrap()
}

/// `check` fails with exit 1 and an error line that names file:line, the field and the message.
fn expect_error(p: &Project, file: &str, line: Option<usize>, field: &str, msg: &str) {
    let o = run(p, &["check"]);
    let err = &o.stderr;
    assert_eq!(o.code, Some(1), "stdout: {}\nstderr: {err}", o.stdout);
    let path = p.profile(file).display().to_string();
    let loc = match line {
        Some(l) => format!("{path}:{l}:"),
        None => format!("{path}:"),
    };
    let found = err.lines().any(|l| {
        l.starts_with(&loc)
            && l.contains(": error: ")
            && (field.is_empty() || l.contains(&format!(" {field}: ")))
            && l.contains(msg)
    });
    assert!(
        found,
        "expected an error at {loc} field `{field}` containing `{msg}`, got:\n{err}"
    );
}

#[test]
fn shipped_profiles_check_clean() {
    let p = shipped();
    let o = run(&p, &["check"]);
    let out = &o.stdout;
    assert_eq!(o.code, Some(0), "{out}\n{}", o.stderr);
    assert!(out.contains("cluster home (6 nodes)"), "{out}");
    for (name, role, addr) in [
        ("cp1", "control-plane", "192.168.50.11/24"),
        ("cp2", "control-plane", "192.168.50.12/24"),
        ("cp3", "control-plane", "192.168.50.13/24"),
        ("w1", "worker", "192.168.50.21/24"),
        ("w2", "worker", "192.168.50.22/24"),
        ("lb1", "load-balancer", "192.168.50.10/24"),
    ] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"));
        assert!(line.contains(role) && line.contains(addr), "{line}");
    }
    assert!(
        out.contains("3 control-plane members, tolerates 1 failure"),
        "{out}"
    );
    // The QEMU cluster's 1 GiB control planes: kubeadm's Mem check ignored, with a warning at
    // the line that asks for it.
    assert!(out.contains("cluster qemu-ha (6 nodes)"), "{out}");
    assert!(
        o.stderr
            .lines()
            .any(|l| l.contains("profiles/qemu-ha.toml:")
                && l.contains(
                    "warning: kubernetes.ignore_preflight_errors: rpi3b has at most 1 GiB"
                )),
        "{}",
        o.stderr
    );
}

#[test]
fn json_output_parses_back() {
    let p = shipped();
    let o = run(&p, &["check", "--json"]);
    assert_eq!(o.code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let home = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "home")
        .unwrap();
    assert_eq!(home["nodes"].as_array().unwrap().len(), 6);
    assert_eq!(home["ha"]["control_plane_members"], 3);
    assert_eq!(home["ha"]["tolerated_failures"], 1);

    let o = run(&p, &["show", "--profile", "lb1", "--json"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let backends: Vec<&str> = v["node"]["load_balancer"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        backends,
        [
            "192.168.50.11:6443",
            "192.168.50.12:6443",
            "192.168.50.13:6443"
        ]
    );

    let broken = home_only();
    broken.replace("w1", "192.168.50.21/24", "192.168.50.21/33");
    let o = run(&broken, &["check", "--json"]);
    assert_eq!(o.code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["diagnostics"][0]["field"], "network.address");
    assert_eq!(v["diagnostics"][0]["line"], 8);
}

#[test]
fn inheritance_merges_deeply_and_node_wins() {
    let p = home_only();
    // The node overrides one [network] key; the others come from cluster.toml.
    p.append("w2", "gateway = \"192.168.50.254\"");
    let o = run(&p, &["show", "--profile", "w2", "--json"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["node"]["network"]["gateway"], "192.168.50.254");
    assert_eq!(v["node"]["network"]["dns"][0], "192.168.50.1");
    assert_eq!(v["node"]["network"]["interface"], "eth0");
    assert_eq!(v["node"]["kubernetes"]["version"], "v1.31.4");
    assert_eq!(v["image"]["size"], 4u64 << 30);
    // A two-level chain: cluster <- rack <- node.
    p.write(
        "rack",
        "abstract = true\nextends = \"cluster\"\n[image]\nsize = \"8GiB\"\n",
    );
    p.replace("w1", "extends = \"cluster\"", "extends = \"rack\"");
    let o = run(&p, &["show", "--profile", "w1", "--json"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["image"]["size"], 8u64 << 30);
    assert_eq!(v["node"]["network"]["gateway"], "192.168.50.1");
}

#[test]
fn extends_cycle_and_missing_base() {
    let p = home_only();
    p.write("a", "extends = \"b\"\n");
    p.write("b", "extends = \"a\"\n");
    p.replace("w1", "extends = \"cluster\"", "extends = \"a\"");
    expect_error(&p, "b", Some(1), "extends", "cycle");
    let p = home_only();
    p.replace("w1", "extends = \"cluster\"", "extends = \"nosuch\"");
    expect_error(&p, "w1", Some(1), "extends", "no profile named `nosuch`");
}

#[test]
fn malformed_toml() {
    let p = home_only();
    p.replace("cp2", "role = \"control-plane\"", "role = \"control-plane");
    expect_error(&p, "cp2", Some(4), "", "malformed TOML");
}

#[test]
fn unknown_field() {
    let p = home_only();
    p.replace("cp2", "address =", "adress =");
    expect_error(
        &p,
        "cp2",
        Some(8),
        "network.adress",
        "unknown field `adress`",
    );
}

#[test]
fn unknown_board_and_role() {
    let p = home_only();
    p.replace("w1", "board = \"rpi4b\"", "board = \"rpi9\"");
    expect_error(&p, "w1", Some(3), "board", "unknown variant `rpi9`");
    let p = home_only();
    p.replace("w1", "role = \"worker\"", "role = \"boss\"");
    expect_error(&p, "w1", Some(4), "role", "unknown variant `boss`");
}

#[test]
fn bad_cidr() {
    let p = home_only();
    p.replace("w1", "192.168.50.21/24", "192.168.50.21");
    expect_error(&p, "w1", Some(8), "network.address", "is not a CIDR");
    let p = home_only();
    p.replace("cluster", "10.244.0.0/16", "10.244.0.0/99");
    // The pod CIDR comes from cluster.toml: the error points there, once per node using it.
    expect_error(
        &p,
        "cluster",
        Some(18),
        "kubernetes.pod_cidr",
        "is not a CIDR",
    );
}

#[test]
fn gateway_outside_subnet() {
    let p = home_only();
    p.append("w1", "gateway = \"10.1.1.1\"");
    expect_error(
        &p,
        "w1",
        Some(10),
        "network.gateway",
        "10.1.1.1 is outside the node's subnet 192.168.50.0/24",
    );
}

#[test]
fn duplicate_hostname_and_address() {
    let p = home_only();
    p.replace("w2", "hostname = \"w2\"", "hostname = \"w1\"");
    expect_error(&p, "w2", Some(2), "hostname", "also the hostname of");
    let p = home_only();
    p.replace("w2", "192.168.50.22/24", "192.168.50.21/24");
    expect_error(&p, "w2", Some(8), "network.address", "also the address of");
}

#[test]
fn endpoint_must_be_the_load_balancer() {
    let p = home_only();
    p.append(
        "w1",
        "[kubernetes]\ncontrol_plane_endpoint = \"192.168.50.11:6443\"",
    );
    expect_error(
        &p,
        "w1",
        Some(11),
        "kubernetes.control_plane_endpoint",
        "is not the load balancer's address (192.168.50.10)",
    );
    // Without a load balancer the endpoint must be a control-plane node.
    let p = home_only();
    p.remove("lb1");
    p.replace("cluster", "192.168.50.10:6443", "192.168.50.99:6443");
    expect_error(
        &p,
        "cluster",
        Some(17),
        "kubernetes.control_plane_endpoint",
        "neither a load balancer nor a control-plane node",
    );
    let p = home_only();
    p.remove("lb1");
    p.replace("cluster", "192.168.50.10:6443", "192.168.50.11:6443");
    let o = run(&p, &["check"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.contains("no load balancer"), "{}", o.stdout);
}

#[test]
fn init_exactly_once() {
    let p = home_only();
    p.replace("cp1", "init = true", "init = false");
    expect_error(&p, "cp1", None, "kubernetes.init", "no control-plane node");
    let p = home_only();
    p.append("cp3", "[kubernetes]\ninit = true");
    expect_error(
        &p,
        "cp3",
        Some(11),
        "kubernetes.init",
        "several control-plane nodes initialise",
    );
    let p = home_only();
    p.append("w1", "[kubernetes]\ninit = true");
    expect_error(
        &p,
        "w1",
        Some(11),
        "kubernetes.init",
        "only a control-plane node",
    );
}

#[test]
fn cidrs_must_not_overlap_the_node_network() {
    let p = home_only();
    p.replace("cluster", "10.244.0.0/16", "192.168.0.0/16");
    expect_error(
        &p,
        "cluster",
        Some(18),
        "kubernetes.pod_cidr",
        "192.168.0.0/16 overlaps the node network 192.168.50.0/24",
    );
    let p = home_only();
    p.replace("cluster", "10.96.0.0/12", "192.168.50.128/25");
    expect_error(
        &p,
        "cluster",
        Some(19),
        "kubernetes.service_cidr",
        "overlaps the node network",
    );
}

#[test]
fn token_hash_and_key_formats() {
    let p = home_only();
    assert_eq!(run(&p, &["check"]).code, Some(0));
    let secrets = p.root().join("secrets/home.toml");
    let text = secrets_text(&p, "home");
    let bad = text
        .lines()
        .map(|l| {
            if l.starts_with("token") {
                "token = \"NOT-A-TOKEN\"".to_string()
            } else if l.starts_with("certificate_key") {
                "certificate_key = \"abc\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&secrets, bad).unwrap();
    let o = run(&p, &["check"]);
    let err = &o.stderr;
    assert_eq!(o.code, Some(1));
    let sp = secrets.display().to_string();
    assert!(
        err.lines()
            .any(|l| l.starts_with(&sp) && l.contains(" token: not a kubeadm bootstrap token")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with(&sp) && l.contains(" certificate_key: expected 64")),
        "{err}"
    );
    assert!(
        !err.contains("NOT-A-TOKEN"),
        "a secret value was echoed: {err}"
    );

    let p = home_only();
    p.append("w1", "[kubernetes]\ndiscovery_ca_hash = \"sha256:xyz\"");
    expect_error(&p, "w1", Some(11), "kubernetes.discovery_ca_hash", "64 hex");
}

#[test]
fn secrets_generated_private_and_never_printed() {
    let p = shipped();
    let o = run(&p, &["check"]);
    assert_eq!(o.code, Some(0));
    assert!(
        o.stderr.contains("generated cluster secrets"),
        "{}",
        o.stderr
    );
    let path = p.root().join("secrets/home.toml");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = secrets_text(&p, "home");
    let v: toml::Table = toml::from_str(&text).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    let key = v["certificate_key"].as_str().unwrap().to_string();
    let (a, b) = token.split_once('.').unwrap();
    assert!(a.len() == 6 && b.len() == 16);
    assert!(token
        .bytes()
        .all(|c| c == b'.' || c.is_ascii_lowercase() || c.is_ascii_digit()));
    assert!(key.len() == 64 && key.bytes().all(|c| c.is_ascii_hexdigit()));

    // The discovery hash is the SPKI hash openssl computes from the CA certificate.
    let ca = p.root().join("ca.crt");
    std::fs::write(&ca, v["ca_cert"].as_str().unwrap()).unwrap();
    let hash = text_of(Command::new("sh").arg("-c").arg(format!(
        "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum",
        ca.display()
    )));
    let expected = format!("sha256:{}", hash.split_whitespace().next().unwrap());
    let o = run(&p, &["show", "--profile", "w1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["node"]["kubernetes"]["ca_cert_hash"], expected.as_str());

    // A second run reuses the file; no command prints a secret.
    let before = secrets_text(&p, "home");
    for args in [
        vec!["check"],
        vec!["check", "--json"],
        vec!["show", "--profile", "cp1"],
        vec!["show", "--profile", "cp1", "--json"],
        vec!["show", "--profile", "w1"],
    ] {
        let o = run(&p, &args);
        assert_eq!(o.code, Some(0), "{args:?}");
        let all = o.combined();
        assert!(!all.contains(&token), "{args:?} printed the token");
        assert!(!all.contains(&key), "{args:?} printed the certificate key");
        assert!(!all.contains("PRIVATE KEY"), "{args:?} printed the CA key");
        assert!(!all.contains("generated cluster secrets"));
    }
    assert_eq!(before, secrets_text(&p, "home"));
}

#[test]
fn ha_assessment_warnings() {
    let p = home_only();
    p.write(
        "cp4",
        "extends = \"cluster\"\nhostname = \"cp4\"\nboard = \"rpi4b\"\nrole = \"control-plane\"\n[network]\naddress = \"192.168.50.14/24\"\n",
    );
    let o = run(&p, &["check"]);
    assert_eq!(o.code, Some(0));
    let out = &o.stdout;
    assert!(
        out.contains("4 control-plane members, tolerates 1 failure"),
        "{out}"
    );
    assert!(
        out.contains("even count adds no failure tolerance over 3"),
        "{out}"
    );

    let p = home_only();
    p.remove("cp2");
    p.remove("cp3");
    let o = run(&p, &["check"]);
    let out = &o.stdout;
    assert!(
        out.contains("1 control-plane member, tolerates 0 failures"),
        "{out}"
    );
    assert!(out.contains("not highly available"), "{out}");
}

#[test]
fn show_unknown_profile_and_build_validates() {
    let p = home_only();
    let o = run(&p, &["show", "--profile", "nosuch"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("no node profile named `nosuch`"));
    p.replace("w1", "192.168.50.21/24", "192.168.50.21/40");
    let o = run(&p, &["build", "--profile", "w1", "--out", "out"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("network.address"), "{}", o.stderr);
    assert!(!p.root().join("out").exists());
}

#[test]
fn token_ttl_is_a_finite_duration() {
    let p = home_only();
    p.append("w1", "[kubernetes]\ntoken_ttl = \"0s\"");
    expect_error(&p, "w1", Some(11), "kubernetes.token_ttl", "never expire");
    let p = home_only();
    p.append("w1", "[kubernetes]\ntoken_ttl = \"1 day\"");
    expect_error(&p, "w1", Some(11), "kubernetes.token_ttl", "not a duration");
    // The default lands in the kubeadm configuration the init node uses.
    let p = home_only();
    p.replace("cp1", "init = true", "init = true\ntoken_ttl = \"1h30m\"");
    let o = run(&p, &["show", "--profile", "cp1", "--json"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["node"]["kubernetes"]["token_ttl"], "1h30m");
    let o = run(&p, &["show", "--profile", "w1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["node"]["kubernetes"]["token_ttl"], "24h");
}

#[test]
fn control_plane_boards_have_the_memory_kubeadm_requires() {
    let p = home_only();
    p.replace("cp2", "board = \"rpi4b\"", "board = \"rpi3b\"");
    expect_error(&p, "cp2", Some(3), "board", "1700 MB");
}

#[test]
fn kubernetes_nodes_need_ntp_and_never_start_their_clock_before_the_ca() {
    let p = home_only();
    p.replace("cluster", "ntp = [\"pool.ntp.org\"]", "");
    expect_error(&p, "w1", None, "network.ntp", "no clock of its own");

    // SOURCE_DATE_EPOCH (2026-01-01) lies before the CA generated now: the node's clock floor
    // is the CA's notBefore, as openssl reads it.
    let p = shipped();
    let o = run(&p, &["show", "--profile", "w1", "--json"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let floor = v["node"]["build_epoch"].as_i64().unwrap();
    let secrets: toml::Table = toml::from_str(&secrets_text(&p, "home")).unwrap();
    let ca = p.root().join("ca.crt");
    std::fs::write(&ca, secrets["ca_cert"].as_str().unwrap()).unwrap();
    let text = text_of(
        Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-startdate",
                "-dateopt",
                "iso_8601",
                "-in",
            ])
            .arg(&ca),
    );
    // notBefore=2026-11-24 00:00:00Z
    let date = text.trim().trim_start_matches("notBefore=");
    let not_before: i64 = text_of(Command::new("date").args(["-u", "-d", date, "+%s"]))
        .trim()
        .parse()
        .unwrap();
    assert!(
        not_before > 1_767_225_600,
        "the CA predates SOURCE_DATE_EPOCH?"
    );
    assert_eq!(floor, not_before);
}

#[test]
fn pod_subnets_come_from_the_profiles_and_are_routed_between_nodes() {
    let p = shipped();
    let o = run(&p, &["show", "--profile", "w1", "--json"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    // 192.168.50.21/24 in 10.244.0.0/16: the node's host number picks its /24.
    assert_eq!(v["node"]["kubernetes"]["node_pod_cidr"], "10.244.21.0/24");
    let routes: Vec<(String, String)> = v["node"]["network"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["to"].as_str().unwrap().to_string(),
                r["via"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("10.244.11.0/24", "192.168.50.11"),
        ("10.244.12.0/24", "192.168.50.12"),
        ("10.244.13.0/24", "192.168.50.13"),
        ("10.244.22.0/24", "192.168.50.22"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(routes, want);
    // The load balancer runs no pods and gets no pod routes.
    let o = run(&p, &["show", "--profile", "lb1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(v["node"]["network"]["routes"]
        .as_array()
        .is_none_or(|r| r.is_empty()));

    // Two nodes claiming one subnet, and a node whose host number does not fit.
    let p = home_only();
    p.append("w2", "[kubernetes]\nnode_pod_cidr = \"10.244.21.0/24\"");
    expect_error(&p, "w2", Some(11), "kubernetes.node_pod_cidr", "collides");
    let p = home_only();
    p.replace(
        "cluster",
        "pod_cidr = \"10.244.0.0/16\"",
        "pod_cidr = \"10.244.0.0/20\"",
    );
    expect_error(
        &p,
        "cluster",
        Some(18),
        "kubernetes.pod_cidr",
        "host number 21 of 192.168.50.21/24 is beyond the 16 /24 subnets",
    );
}

#[test]
fn control_planes_join_one_after_another() {
    let p = shipped();
    let after = |name: &str| -> Vec<String> {
        let o = run(&p, &["show", "--profile", name, "--json"]);
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        v["node"]["kubernetes"]["join_after"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    assert!(after("cp1").is_empty(), "the init node waits for nobody");
    assert_eq!(after("cp2"), ["192.168.50.11:6443"]);
    assert_eq!(after("cp3"), ["192.168.50.11:6443", "192.168.50.12:6443"]);
    assert!(after("w1").is_empty(), "workers join at any time");
}

#[test]
fn a_zero_2_w_declares_wifi_or_usb_ethernet_and_an_inherited_interface_is_neither() {
    let p = home_only();
    p.replace("w1", "board = \"rpi4b\"", "board = \"zero2w\"");
    // A Zero 2 W cannot netboot: its serial line goes (the comment keeps the line numbers).
    p.replace("w1", "netboot.serial = \"00000005\"", "");
    // cluster.toml names eth0 for every node: a name, not an adapter.
    expect_error(
        &p,
        "w1",
        Some(3),
        "board",
        "a Zero 2 W has no Ethernet port: add [network.wifi] with ssid and country, or declare a USB Ethernet adapter with network.usb_ethernet = true",
    );
    p.append("w1", "usb_ethernet = true");
    run(&p, &["check"]).assert_ok();
}

#[test]
fn wifi_makes_wlan0_the_interface_and_its_country_is_checked() {
    let p = home_only();
    p.replace("w1", "board = \"rpi4b\"", "board = \"zero2w\"");
    // A Zero 2 W cannot netboot: its serial line goes (the comment keeps the line numbers).
    p.replace("w1", "netboot.serial = \"00000005\"", "");
    p.append("w1", "[network.wifi]\nssid = \"home\"\ncountry = \"UK\"");
    expect_error(
        &p,
        "w1",
        Some(12),
        "network.wifi.country",
        "`UK` is not an ISO 3166-1 alpha-2 country code",
    );
    p.replace("w1", "\"UK\"", "\"GB\"");
    let o = run(&p, &["check"]);
    o.assert_ok();
    let w1 = p.profile("w1").display().to_string();
    assert!(
        o.stderr.lines().any(|l| l.starts_with(&format!("{w1}:11:"))
            && l.contains("warning: network.wifi.ssid: no passphrase for `home`")),
        "{}",
        o.text()
    );
    let o = run(&p, &["show", "--profile", "w1", "--json"]);
    o.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let net = &v["node"]["network"];
    assert_eq!(net["interface"], "wlan0", "{}", o.stdout);
    assert_eq!(net["wifi"]["ssid"], "home");
    assert_eq!(net["wifi"]["country"], "GB");

    // An interface named beside [network.wifi] contradicts it.
    p.replace(
        "w1",
        "address = \"192.168.50.21/24\"",
        "address = \"192.168.50.21/24\"\ninterface = \"eth1\"",
    );
    expect_error(
        &p,
        "w1",
        Some(9),
        "network.interface",
        "`eth1` beside [network.wifi]: a Wi-Fi node's interface is wlan0",
    );
}

#[test]
fn a_wifi_passphrase_lives_in_the_secrets_file_and_is_never_printed() {
    let p = home_only();
    // A node on Wi-Fi cannot netboot: the example's placeholder serial goes.
    p.replace("w1", "netboot.serial = \"00000005\"", "");
    p.append("w1", "[network.wifi]\nssid = \"home\"\ncountry = \"GB\"");
    run(&p, &["check"]).assert_ok();
    let path = p.secrets("home");
    let with = |passphrase: &str| {
        let text = secrets_text(&p, "home");
        let text = text.split("\n[wifi]\n").next().unwrap().to_string();
        std::fs::write(
            &path,
            format!("{text}\n[wifi]\n\"home\" = \"{passphrase}\"\n"),
        )
        .unwrap();
    };
    with("2short");
    let o = run(&p, &["check"]);
    o.assert_code(1);
    let line = secrets_text(&p, "home")
        .lines()
        .position(|l| l.starts_with("\"home\""))
        .unwrap()
        + 1;
    let at = format!("{}:{line}:", path.display());
    assert!(
        o.stderr.lines().any(|l| l.starts_with(&at)
            && l.contains("error: wifi.home: a WPA passphrase is 8 to 63 printable ASCII")),
        "{}",
        o.text()
    );
    assert!(!o.combined().contains("2short"), "{}", o.text());
    with("long enough passphrase");
    let o = run(&p, &["check"]);
    o.assert_ok();
    assert!(!o.stderr.contains("no passphrase"), "{}", o.text());
    let o = run(&p, &["show", "--profile", "w1", "--json"]);
    o.assert_ok();
    assert!(
        !o.combined().contains("long enough passphrase"),
        "{}",
        o.text()
    );
}
