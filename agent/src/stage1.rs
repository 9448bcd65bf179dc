//! Stage 1, in the initramfs: API mounts, storage modules, wait for the root partition, mount it,
//! switch_root, exec stage 2. Never returns and never panics the kernel: every failure is logged
//! and retried.

use crate::cmdline::{self, RootSpec};
use crate::console::say;
use crate::{blockdev, modules, mounts, sys};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const STAGE1_MODULES: &str = crate::contract::paths::STAGE1_MODULES;
const NEWROOT: &str = "/newroot";
/// How long to wait for the root device before complaining (then keep waiting).
const ROOT_WAIT: Duration = Duration::from_secs(30);

fn load_stage1_modules(loader: &modules::Loader) {
    let list = std::fs::read_to_string(STAGE1_MODULES).unwrap_or_default();
    for rel in modules::parse_list(&list) {
        if let Err(e) = loader.load_file(&rel) {
            say(&format!("module {rel}: {e}"));
        }
    }
}

/// Where the root device is, once it appears.
fn locate(spec: &RootSpec) -> Option<PathBuf> {
    match spec {
        RootSpec::PartUuid(u) => {
            blockdev::find_partuuid(Path::new("/sys/class/block"), Path::new("/dev"), u)
        }
        RootSpec::Device(d) => Path::new(d).exists().then(|| PathBuf::from(d)),
    }
}

fn wait_for_root(spec: &RootSpec, loader: &modules::Loader) -> PathBuf {
    let mut since = Instant::now();
    loop {
        if let Some(p) = locate(spec) {
            return p;
        }
        if since.elapsed() >= ROOT_WAIT {
            say(&format!(
                "root {spec:?} not found after {}s; block devices: {}; retrying",
                ROOT_WAIT.as_secs(),
                list_block_devices().join(" ")
            ));
            // A module may have failed on a transient error: try again.
            load_stage1_modules(loader);
            since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn list_block_devices() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/block")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn run() -> ! {
    for (t, e) in mounts::mount_all(Path::new("/"), &mounts::stage1_mounts()) {
        // No console may exist yet; try anyway.
        say(&format!("mount {t}: {e}"));
    }
    if !crate::console::stderr_is_open() {
        crate::console::attach_dev_console(Path::new("/dev/console"));
    }
    say("stage1 start");
    let cmd = cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let loader = modules::Loader::for_running_kernel(Path::new("/"));
    load_stage1_modules(&loader);
    let Some(spec) = cmd.root.clone() else {
        say("no root= on the kernel command line; waiting (fix cmdline.txt)");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    };
    loop {
        let dev = wait_for_root(&spec, &loader);
        say(&format!("root found {}", dev.display()));
        let _ = std::fs::create_dir_all(NEWROOT);
        let mut flags = 0;
        if cmd.read_only {
            flags |= libc::MS_RDONLY;
        }
        if let Err(e) = sys::mount(
            &dev.to_string_lossy(),
            Path::new(NEWROOT),
            Some(&cmd.rootfstype),
            flags,
            cmd.rootflags.as_deref(),
        ) {
            say(&format!(
                "mount {} on {NEWROOT} ({}): {e}; retrying in 2s",
                dev.display(),
                cmd.rootfstype
            ));
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        if !Path::new(NEWROOT)
            .join(cmd.init.trim_start_matches('/'))
            .exists()
        {
            say(&format!(
                "{} missing in the root filesystem; retrying in 5s",
                cmd.init
            ));
            let _ = sys::umount(Path::new(NEWROOT), 0);
            std::thread::sleep(Duration::from_secs(5));
            continue;
        }
        if let Err(e) = mounts::switch_root(Path::new(NEWROOT)) {
            say(&format!("switch_root: {e}; retrying in 5s"));
            std::thread::sleep(Duration::from_secs(5));
            continue;
        }
        say(&format!("exec {}", cmd.init));
        let e = std::process::Command::new(&cmd.init).arg0(&cmd.init).exec();
        // We are in the new root now: nothing to go back to. Keep PID 1 alive and say why.
        loop {
            say(&format!("exec {}: {e}; system halted here", cmd.init));
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}
