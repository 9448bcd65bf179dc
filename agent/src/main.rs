use piimg_agent::commands::{self, Mode};
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pid = piimg_agent::sys::getpid();
    let mode = commands::choose(
        &args,
        pid,
        Path::new(piimg_agent::node::NODE_CONFIG_PATH).exists(),
        Path::new(piimg_agent::stage1::STAGE1_MODULES).exists(),
    );
    let rc = match mode {
        Mode::Stage1 => pid1_guard("stage1", piimg_agent::stage1::run),
        Mode::Stage2 => pid1_guard("stage2", piimg_agent::stage2::run),
        Mode::Modprobe(names) => commands::modprobe(&names),
        Mode::ImportImages => commands::import_images(),
        Mode::Kubeadm => commands::kubeadm(),
        Mode::ClusterKeeper => commands::cluster_keeper(),
        Mode::NetApply(path) => commands::net_apply(&path),
        Mode::NetWatch(path) => commands::net_watch(&path),
        Mode::Usage => {
            eprintln!(
                "usage: piimg-agent [stage1|stage2|import-images|kubeadm|cluster-keeper|net-apply CONFIG|net-watch CONFIG|modprobe NAME...]\n\
                 (as PID 1 the stage is chosen from /etc/piimg/node.json and /etc/piimg/stage1.modules)"
            );
            2
        }
    };
    std::process::exit(rc);
}

/// PID 1 must never return or unwind out of main (the kernel would panic): a panic restarts the
/// stage, whose steps skip what is already done.
fn pid1_guard(stage: &str, run: fn() -> !) -> ! {
    loop {
        if std::panic::catch_unwind(|| {
            run();
        })
        .is_err()
        {
            piimg_agent::console::say(&format!("{stage} panicked; restarting it in 5s"));
            std::thread::sleep(std::time::Duration::from_secs(5));
        }
    }
}
