//! What this invocation of the binary is: stage 1, stage 2, the kernel's modprobe helper, or a
//! helper subcommand. One binary serves as /init (initramfs), /sbin/init (rootfs) and modprobe.
//!
//! Rules, first match wins:
//! 1. argv[0]'s file name is `modprobe`, or argv[1] is `modprobe` -> modprobe (the kernel calls
//!    `modprobe -q -- NAME`; stage 2 points /proc/sys/kernel/modprobe at a `modprobe` symlink).
//! 2. argv[1] is `import-images`, `kubeadm`, `cluster-keeper`, `net-apply`, `stage1` or
//!    `stage2` -> that.
//! 3. PID 1: /etc/piimg/node.json exists -> stage 2; else /etc/piimg/stage1.modules exists ->
//!    stage 1 (the initramfs holds no node.json: it carries secrets); else stage 2 without a
//!    config (a broken rootfs must not loop through stage 1 again).
//! 4. Otherwise, arguments shaped like `-q -- NAME` -> modprobe; else usage.

use crate::console::say;
use crate::modules;
use crate::roles;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Stage1,
    Stage2,
    Modprobe(Vec<String>),
    ImportImages,
    /// The kubeadm service: init or join, reset first after a failed attempt.
    Kubeadm,
    /// The init node's cluster keeper (pod subnets into Node objects, token deletion).
    ClusterKeeper,
    /// Applies a node config's network section (for tests in a network namespace).
    NetApply(String),
    /// Applies the network section, then keeps it applied (what stage 2 does; for tests).
    NetWatch(String),
    Usage,
}

/// Module names in modprobe arguments (options dropped; everything after `--` is a name).
fn modprobe_names(args: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    let mut opts_done = false;
    for a in args {
        if !opts_done && a == "--" {
            opts_done = true;
        } else if !opts_done && a.starts_with('-') {
            continue;
        } else {
            names.push(a.clone());
        }
    }
    names
}

pub fn choose(args: &[String], pid: i32, has_node_json: bool, has_stage1_list: bool) -> Mode {
    let arg0 = args.first().map(String::as_str).unwrap_or("");
    let base = arg0.rsplit('/').next().unwrap_or(arg0);
    if base == "modprobe" {
        return Mode::Modprobe(modprobe_names(&args[1..]));
    }
    match args.get(1).map(String::as_str) {
        Some("modprobe") => return Mode::Modprobe(modprobe_names(&args[2..])),
        Some("import-images") => return Mode::ImportImages,
        Some("kubeadm") => return Mode::Kubeadm,
        Some("cluster-keeper") => return Mode::ClusterKeeper,
        Some("net-apply") => {
            return args
                .get(2)
                .map_or(Mode::Usage, |p| Mode::NetApply(p.clone()));
        }
        Some("net-watch") => {
            return args
                .get(2)
                .map_or(Mode::Usage, |p| Mode::NetWatch(p.clone()));
        }
        Some("stage1") => return Mode::Stage1,
        Some("stage2") => return Mode::Stage2,
        _ => {}
    }
    if pid == 1 {
        return if has_node_json {
            Mode::Stage2
        } else if has_stage1_list {
            Mode::Stage1
        } else {
            Mode::Stage2
        };
    }
    if args.len() >= 3 && args[1..].iter().any(|a| a == "--") {
        return Mode::Modprobe(modprobe_names(&args[1..]));
    }
    Mode::Usage
}

/// The kernel's modprobe: exit 0 when every module is loaded (or built in).
pub fn modprobe(names: &[String]) -> i32 {
    let sys = crate::syscall::LinuxSyscall;
    let loader = modules::Loader::for_running_kernel(&sys, Path::new("/"));
    let db = modules::ModuleDb::load(&loader.module_dir);
    let mut rc = 0;
    for n in names {
        if let Err(e) = loader.modprobe(&sys, &db, n) {
            // The kernel asks for many optional aliases: stay quiet about unknown ones.
            if !matches!(e, modules::ModError::NotFound(_)) {
                say(&format!("modprobe {n}: {e}"));
            }
            rc = 1;
        }
    }
    rc
}

/// Imports every image archive with ctr; exit 0 only when all succeeded.
pub fn import_images() -> i32 {
    let files = roles::image_archives(Path::new("/"), &roles::IMAGE_DIRS);
    let mut rc = 0;
    for f in &files {
        let argv = roles::image_import_command(f);
        let status = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .status();
        match status {
            Ok(s) if s.success() => println!("imported {}", f.display()),
            Ok(s) => {
                println!("import {} failed: {s}", f.display());
                rc = 1;
            }
            Err(e) => {
                println!("import {}: {e}", f.display());
                rc = 1;
            }
        }
    }
    println!("{} archive(s) processed", files.len());
    rc
}

/// The node config at NODE_CONFIG_PATH, for the helper subcommands.
fn node_config(who: &str) -> Option<crate::node::NodeConfig> {
    match std::fs::read(crate::node::NODE_CONFIG_PATH)
        .map_err(|e| e.to_string())
        .and_then(|b| crate::node::NodeConfig::from_json(&b).map_err(|e| e.to_string()))
    {
        Ok(cfg) => Some(cfg),
        Err(e) => {
            println!("{who}: {}: {e}", crate::node::NODE_CONFIG_PATH);
            None
        }
    }
}

/// The kubeadm service (see [`crate::kubeadm`]).
pub fn kubeadm() -> i32 {
    node_config("kubeadm-run").map_or(2, |cfg| crate::kubeadm::run(&cfg))
}

/// The init node's cluster keeper (see [`crate::keeper`]).
pub fn cluster_keeper() -> i32 {
    node_config("keeper").map_or(2, |cfg| {
        crate::keeper::run_keeper(&cfg, &crate::keeper::Tools::default())
    })
}

/// `net-apply`, then watches: re-applies whenever the interface loses its address.
pub fn net_watch(path: &str) -> i32 {
    let rc = net_apply(path);
    if rc == 2 {
        return rc;
    }
    let Ok(cfg) = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| crate::node::NodeConfig::from_json(&b).map_err(|e| e.to_string()))
    else {
        return 2;
    };
    crate::net::keep_applied(&cfg.network, std::time::Duration::from_secs(5), &|| false);
    0
}

/// Applies the network section of a node config file (needs CAP_NET_ADMIN).
pub fn net_apply(path: &str) -> i32 {
    let cfg = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| crate::node::NodeConfig::from_json(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            say(&format!("{path}: {e}"));
            return 2;
        }
    };
    let r = crate::net::Netlink::open().and_then(|mut nl| {
        crate::net::loopback_up(&mut nl)?;
        crate::net::configure(&mut nl, &cfg.network)
    });
    match r {
        Ok(()) => {
            say(&format!(
                "network up {} {}",
                cfg.network.interface, cfg.network.address
            ));
            0
        }
        Err(e) => {
            say(&format!("network: {e}"));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn stage_choice() {
        assert_eq!(choose(&a(&["/init"]), 1, false, true), Mode::Stage1);
        assert_eq!(choose(&a(&["/sbin/init"]), 1, true, false), Mode::Stage2);
        // Both present (should not happen): the node config wins.
        assert_eq!(choose(&a(&["/sbin/init"]), 1, true, true), Mode::Stage2);
        assert_eq!(choose(&a(&["/sbin/init"]), 1, false, false), Mode::Stage2);
        // Unknown kernel words passed to init do not change the stage.
        assert_eq!(
            choose(&a(&["/init", "single"]), 1, false, true),
            Mode::Stage1
        );
        assert_eq!(choose(&a(&["/sbin/init"]), 42, true, false), Mode::Usage);
        assert_eq!(choose(&a(&["x", "stage1"]), 42, true, false), Mode::Stage1);
    }

    #[test]
    fn modprobe_invocations() {
        assert_eq!(
            choose(
                &a(&["/run/piimg/modprobe", "-q", "--", "fs-ext4"]),
                812,
                true,
                false
            ),
            Mode::Modprobe(a(&["fs-ext4"]))
        );
        assert_eq!(
            choose(
                &a(&["/sbin/init", "-q", "--", "net-pf-10"]),
                812,
                true,
                false
            ),
            Mode::Modprobe(a(&["net-pf-10"]))
        );
        assert_eq!(
            choose(&a(&["agent", "modprobe", "br_netfilter"]), 5, false, false),
            Mode::Modprobe(a(&["br_netfilter"]))
        );
        assert_eq!(
            choose(&a(&["modprobe", "-q", "--", "-odd-"]), 5, false, false),
            Mode::Modprobe(a(&["-odd-"]))
        );
    }
}
