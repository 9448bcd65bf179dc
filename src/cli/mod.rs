//! The command line: clap definitions and thin glue over the library. Only this layer prints.

mod build;
mod cluster;
mod fetch;
mod flash;
pub mod fs;
mod init;
mod netboot;
mod profiles;
mod progress;
mod qemu;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Default SOURCE_DATE_EPOCH (2026-01-01T00:00:00Z) when the environment sets none, so that two
/// builds of the same input agree without any setup.
pub const DEFAULT_SOURCE_DATE_EPOCH: i64 = 1_767_225_600;

#[derive(Debug, Parser)]
#[command(
    name = "piimg",
    version,
    about = "Build bootable, reproducible Raspberry Pi Kubernetes node images from TOML profiles",
    after_help = "Examples:\n  piimg check\n  piimg show --profile cp1\n  piimg build --profile lb1"
)]
pub struct Cli {
    /// Folder holding the node profiles (*.toml)
    #[arg(long, global = true, default_value = "profiles", value_name = "DIR")]
    pub profiles: PathBuf,
    /// More detail (build: list every component that went into the image)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and validate every profile, print the cluster and its HA assessment
    #[command(
        after_help = "Example:\n  piimg check --profiles profiles/\n  piimg check --json | jq .clusters[0].ha"
    )]
    Check {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Print the fully resolved node configuration that goes into the image (secrets redacted)
    #[command(
        after_help = "Example:\n  piimg show --profile cp1\n  piimg show --profile w1 --json"
    )]
    Show {
        /// Profile name (file stem in the profiles folder)
        #[arg(long, value_name = "NAME")]
        profile: String,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Build the SD-card image of one node (or of every node of a cluster) into out/: NAME.img,
    /// NAME.img.sha256, NAME.img.bmap and NAME.manifest.json
    #[command(
        group(clap::ArgGroup::new("which").required(true).args(["profile", "cluster", "all"])),
        after_help = "Example:\n  piimg build --profile lb1\n  piimg build --profile lb1 --compress zstd\n  piimg build --profile w1 --component kubelet=./kubelet --component kubeadm=./kubeadm\n  piimg build --cluster home --component kubelet=./kubelet --component kubeadm=./kubeadm \\\n      --component kubectl=./kubectl\n\nWith --cluster or --all the nodes are built --jobs at a time (default: one per core); a node\nthat fails does not stop the others, and the exit status is 1 when any failed.\n\nThe outputs are committed together (the manifest last). Images that hold cluster secrets\n(control-plane and worker nodes) and every file beside them are written mode 0600."
    )]
    Build {
        /// Profile name (file stem in the profiles folder)
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// Every node of this cluster (the profiles' `cluster` field)
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// Every node in the profiles folder
        #[arg(long)]
        all: bool,
        /// Nodes built at a time with --cluster or --all (default: the number of cores)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "profile")]
        jobs: Option<u32>,
        /// Output folder
        #[arg(long, default_value = "out", value_name = "DIR")]
        out: PathBuf,
        /// Replace a component with a local file (repeatable)
        #[arg(long = "component", value_name = "NAME=PATH")]
        components: Vec<String>,
        /// Use only the cache; fail naming anything missing
        #[arg(long)]
        offline: bool,
        /// Also write a compressed copy NAME.img.zst / NAME.img.xz with its own .sha256
        /// (multi-threaded; the same bytes on every run); repeatable
        #[arg(long, value_enum, value_name = "CODEC")]
        compress: Vec<piimg::compress::Codec>,
        /// Write each node into OUT/netboot instead of an SD image: its boot files in the folder
        /// its bootloader reads (profile netboot.serial or netboot.mac), its root as a squashfs
        /// image fetched over HTTP from netboot.server, and its secrets on a local card image
        /// OUT/NAME.secrets.img (unless netboot.secrets = "serve")
        #[arg(long, conflicts_with_all = ["compress", "jobs"])]
        netboot: bool,
    },
    /// Resolve components into piimg.lock and download them into the cache
    #[command(
        after_help = "Examples:\n  piimg fetch --all\n  piimg fetch --profile lb1\n  piimg fetch --all --update   # re-resolve: newer packages, new pins\n  piimg fetch --outdated       # exit 1 when the archive has newer packages than the lock\n\nLocked .debs are downloaded by the pool path and checked against the size and sha256 the lock\nrecords; the archive's index is read only to resolve what the lock lacks, on --update and on\n--outdated."
    )]
    Fetch {
        /// Only what this node needs
        #[arg(long, value_name = "NAME", conflicts_with = "all")]
        profile: Option<String>,
        /// Everything every node in the profiles folder needs (the default)
        #[arg(long)]
        all: bool,
        /// Re-resolve packages and pins even where the lock has them (changes the lock)
        #[arg(long, conflicts_with = "outdated")]
        update: bool,
        /// List locked packages the archive has newer versions of (security updates marked);
        /// exit 0 when none, 1 when some; the lock is not changed
        #[arg(long)]
        outdated: bool,
        /// With --outdated: print JSON
        #[arg(long, requires = "outdated")]
        json: bool,
    },
    /// Write an image to an SD card: only its mapped blocks, then read back and verified
    #[command(
        after_help = "Examples:\n  piimg flash --list\n  piimg flash out/w1.img /dev/sdb\n  piimg flash out/w1.img.zst /dev/mmcblk0\n  piimg flash --profile w1 /dev/sdb    # builds out/w1.img first when missing or stale\n\nIMAGE is NAME.img, NAME.img.zst or NAME.img.xz; NAME.img.bmap beside it says which blocks to\nwrite (without it: the image file's holes are skipped; a compressed image is written whole).\nBlocks left unwritten keep the card's old data, which the filesystems treat as free space;\npiimg writes zeros over the first and last MiB of every partition and of the card where the\nimage has no data (old filesystem, RAID and GPT signatures live there), moves a GPT image's\nbackup table to the card's end, syncs, reads every written byte back against its sha256 and\nasks the kernel to re-read the partition table.\n\nRefused: partitions, regular files (unless --file), devices with a mounted partition, swap or\nholder (LVM, RAID, device-mapper), the disk holding / or /boot, devices smaller than the image,\nand fixed (non-removable) disks unless --allow-fixed. Asks for the device's name first unless\n--yes."
    )]
    Flash {
        /// IMAGE DEVICE, or just DEVICE with --profile
        #[arg(value_name = "IMAGE|DEVICE", num_args = 0..=2)]
        positional: Vec<PathBuf>,
        /// Flash out/NAME.img, building it first when missing or stale
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// Output folder of --profile builds
        #[arg(long, default_value = "out", value_name = "DIR")]
        out: PathBuf,
        /// With --profile: replace a component with a local file (repeatable)
        #[arg(long = "component", value_name = "NAME=PATH", requires = "profile")]
        components: Vec<String>,
        /// With --profile: use only the cache
        #[arg(long, requires = "profile")]
        offline: bool,
        /// List removable disks that are free to write, with size and model
        #[arg(long, conflicts_with_all = ["positional", "profile"])]
        list: bool,
        /// With --list: JSON
        #[arg(long, requires = "list")]
        json: bool,
        /// Do not ask for the device's name (fixed disks still need --allow-fixed)
        #[arg(long)]
        yes: bool,
        /// Allow a disk the kernel does not report as removable
        #[arg(long)]
        allow_fixed: bool,
        /// The target is a regular file (created at the image's size when missing)
        #[arg(long)]
        file: bool,
    },
    /// Start a new cluster: a shared base profile and one profile per node in DIR
    #[command(
        after_help = "Example:\n  piimg init profiles --cluster lab --subnet 10.0.7.0/24 --ntp 10.0.7.1 --control-planes 3 --workers 2\n  piimg check --profiles profiles\n\nAddresses are consecutive from --first-address (default: the subnet's 10th address): the load\nbalancer first, then control planes, then workers. The load balancer (or, without one, the first\ncontrol plane) is the API endpoint; the first control plane runs `kubeadm init`. Existing files\nare never overwritten: piimg refuses and writes nothing."
    )]
    Init(init::InitArgs),
    /// Print a shell completion script (bash, zsh, fish)
    #[command(
        after_help = "Install:\n  bash: piimg completions bash > ~/.local/share/bash-completion/completions/piimg\n  zsh:  piimg completions zsh > ~/.zfunc/_piimg   (with fpath+=(~/.zfunc) before compinit)\n  fish: piimg completions fish > ~/.config/fish/completions/piimg.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff)
    #[command(
        after_help = "Install:\n  piimg man > ~/.local/share/man/man1/piimg.1   (then: man piimg)"
    )]
    Man,
    /// Write filesystems and disk images from a folder (like mke2fs -d, mkfs.vfat + mcopy)
    #[command(subcommand)]
    Fs(fs::FsCmd),
    /// Boot an image in QEMU: Pi 3 and Zero 2 W images in the raspi3b machine, Pi 4 and CM4
    /// images in raspi4b (QEMU >= 9). The kernel, dtb, initramfs and cmdline are read from its
    /// boot partition; the console is stdin/stdout; the image file is not modified unless
    /// --writable is given
    #[command(
        after_help = "Network: the guest gets QEMU's USB Ethernet adapter (eth0, 10.0.2.15 on QEMU's user network, the host is 10.0.2.2) on the OTG port. raspi4b emulates no GENET Ethernet and no PCIe, so a Pi 4's own NIC is never tested here; its device tree is edited in memory for QEMU (Bluetooth and the Wi-Fi chip removed, the card on the Arasan controller, nodes QEMU does not emulate disabled).\n\nExamples:\n  piimg qemu out/qemu.img\n  piimg qemu out/qemu.img --until 'piimg-agent: ready' --timeout 300 --forward 6443:6443 --forward 7780:7780\n  cp --sparse=always out/qemu.img card.img && piimg qemu --writable card.img   (a card that keeps what the node wrote, across boots)\n\nExit status: 0 when --until matched (or QEMU ended / --timeout passed without --until), 1 on a timeout or QEMU failure, 2 on a kernel panic.\nQuit an interactive session with Ctrl-A X."
    )]
    Qemu {
        /// The image (out/NAME.img), or a node's netboot folder (out/netboot/SERIAL: booted
        /// with no SD card; its root comes from `piimg serve` over HTTP)
        image: PathBuf,
        /// With a netboot folder: attach this image as the SD card (e.g. out/NAME.secrets.img)
        #[arg(long, value_name = "IMAGE")]
        card: Option<PathBuf>,
        /// Stop after this many seconds
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Stop with success when a console line matches this regular expression
        #[arg(long, value_name = "REGEX")]
        until: Option<String>,
        /// Forward a TCP port on 127.0.0.1 to the guest (repeatable)
        #[arg(long = "forward", value_name = "HOSTPORT:GUESTPORT")]
        forwards: Vec<String>,
        /// Guest memory: QEMU's raspi3b takes only 1G and raspi4b only 2G (the default)
        #[arg(long, value_name = "SIZE")]
        memory: Option<String>,
        /// Let the guest write to IMAGE itself, as to a real card (default: writes go to a
        /// temporary overlay). Refused for an image with a .sha256 beside it: boot a copy
        #[arg(long)]
        writable: bool,
        /// Print the result as one JSON object on stdout (end, line, wall_seconds,
        /// guest_seconds, exit_status, ...); the console goes to stderr
        #[arg(long)]
        json: bool,
    },
    /// Build a profile twice in different environments (time zone, locale, umask, clock) and
    /// check that the images are identical; otherwise say where they differ
    #[command(
        after_help = "Example:\n  piimg verify --profile lb1\n  piimg verify --profile w1 --component kubelet=./kubelet --component kubeadm=./kubeadm"
    )]
    Verify {
        /// Profile name (file stem in the profiles folder)
        #[arg(long, value_name = "NAME")]
        profile: String,
        /// Replace a component with a local file (repeatable)
        #[arg(long = "component", value_name = "NAME=PATH")]
        components: Vec<String>,
        /// Use only the cache
        #[arg(long)]
        offline: bool,
        /// Keep both builds in this folder (default: a temporary folder, removed)
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Serve netboot files to Raspberry Pis over TFTP and HTTP until Ctrl-C (read-only; one log
    /// line per transfer on stderr)
    #[command(
        after_help = "Examples:\n  piimg serve                         # out/netboot on UDP port 69 (needs root) and TCP 8080\n  piimg serve --dir out/netboot --bind 10.0.7.1 --tftp-port 6969 --http-port 8080\n\nBoth servers hand out the same files: names are relative to --dir (a leading / is dropped);\n`..`, symlinks that lead outside it, folders and hidden names (.store, .piimg) are refused.\nTFTP options: blksize, tsize, timeout, windowsize; block numbers roll over after 65535.\nHTTP: GET and HEAD, single byte ranges (resumed downloads), one request per connection.\nPort 0 picks a free port; the ports in use are printed on stderr (with -q too when one is 0)."
    )]
    Serve {
        /// Folder whose files are served
        #[arg(long, default_value = "out/netboot", value_name = "DIR")]
        dir: PathBuf,
        /// Address to listen on
        #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
        bind: std::net::IpAddr,
        /// UDP port of the TFTP server
        #[arg(long, default_value_t = 69, value_name = "N")]
        tftp_port: u16,
        /// Also answer Raspberry Pi boot ROMs on this interface with proxyDHCP (the TFTP
        /// server's address and "Raspberry Pi Boot"; the router's DHCP still assigns addresses)
        #[arg(long, value_name = "IFACE")]
        proxy_dhcp: Option<String>,
        /// TCP port of the HTTP server (root images)
        #[arg(long, default_value_t = 8080, value_name = "N")]
        http_port: u16,
    },
    /// Boot a whole cluster in QEMU on one virtual LAN (`up`), and stop it (`down`)
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Netboot trees written by `piimg build --netboot`
    Netboot {
        #[command(subcommand)]
        command: NetbootCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetbootCommand {
    /// Walk a netboot tree in the order a Pi's boot ROM, bootloader and firmware fetch files,
    /// and name the first one it would not find (exit 1), or say the tree is complete
    #[command(
        after_help = "Examples:\n  piimg netboot check                      # every node of out/netboot\n  piimg netboot check out/netboot --serial 9ffefdef\n  piimg netboot check /srv/tftp --mac dc:a6:32:01:36:c2 --board rpi4b\n\nThe board comes from the tree's record of the node (.piimg/NODE.json) unless --board names it.\nThe root image is followed from cmdline.txt's piimg.root= (HTTP serves the same folder).\nWarns when a root image holds secrets (profile netboot.secrets = \"serve\")."
    )]
    Check {
        /// The tree
        #[arg(default_value = "out/netboot", value_name = "DIR")]
        dir: PathBuf,
        /// Only the node whose folder is this board serial (8 hex digits)
        #[arg(long, value_name = "SERIAL", conflicts_with = "mac")]
        serial: Option<String>,
        /// Only the node whose folder is this MAC address (Pi 4 with TFTP_PREFIX=2)
        #[arg(long, value_name = "MAC")]
        mac: Option<String>,
        /// The board that boots from it: rpi3b, rpi3bplus, rpi4b or cm4
        #[arg(long, value_name = "BOARD", value_parser = netboot::parse_board)]
        board: Option<piimg_agent::node::Board>,
    },
}

/// SOURCE_DATE_EPOCH from the environment, or the fixed default.
pub fn source_date_epoch() -> Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH=`{v}` is not a number of seconds")),
        Err(_) => Ok(DEFAULT_SOURCE_DATE_EPOCH),
    }
}

/// What a build from the command line is given: its output folder, the cache policy, local
/// components, the epoch and the embedded agent.
pub fn build_options(
    out: &std::path::Path,
    offline: bool,
    components: &[String],
    compress: Vec<piimg::compress::Codec>,
) -> Result<piimg::pipeline::BuildOptions> {
    Ok(piimg::pipeline::BuildOptions {
        out_dir: out.to_path_buf(),
        offline,
        overrides: profiles::parse_overrides(components)?,
        epoch: source_date_epoch()?,
        agent: piimg::assemble::agent_binary()?,
        compress,
    })
}

/// Runs the parsed command; the returned code is the process exit status.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Check { json } => profiles::check(&cli.profiles, json, cli.quiet),
        Command::Show { ref profile, json } => profiles::show(&cli.profiles, profile, json),
        Command::Build {
            ref profile,
            ref cluster,
            all,
            jobs,
            ref out,
            ref components,
            offline,
            ref compress,
            netboot,
        } => {
            let how = build::BuildArgs {
                out,
                components,
                offline,
                compress,
                quiet: cli.quiet,
                verbose: cli.verbose,
            };
            if netboot {
                let scope = match (profile, all) {
                    (Some(name), _) => build::Scope::Node(name),
                    (None, true) => build::Scope::All,
                    (None, false) => build::Scope::Cluster(cluster.as_deref()),
                };
                return build::build_netboot(&cli.profiles, scope, &how);
            }
            match profile {
                Some(name) => build::build(&cli.profiles, name, &how),
                None => build::build_many(
                    &cli.profiles,
                    if all { None } else { cluster.as_deref() },
                    jobs,
                    &how,
                ),
            }
        }
        Command::Fetch {
            ref profile,
            all: _,
            update: _,
            outdated: true,
            json,
        } => fetch::outdated(&cli.profiles, profile.as_deref(), json, cli.quiet),
        Command::Fetch {
            ref profile,
            all: _,
            update,
            outdated: false,
            json: _,
        } => fetch::fetch(&cli.profiles, profile.as_deref(), update, cli.quiet),
        Command::Flash {
            ref positional,
            ref profile,
            ref out,
            ref components,
            offline,
            list,
            json,
            yes,
            allow_fixed,
            file,
        } => flash::run(flash::FlashArgs {
            profiles: &cli.profiles,
            positional,
            profile: profile.as_deref(),
            out,
            components,
            offline,
            list,
            json,
            yes,
            allow_fixed,
            file,
            quiet: cli.quiet,
            verbose: cli.verbose,
        }),
        Command::Fs(cmd) => fs::run(cmd).map(|()| 0),
        Command::Init(ref a) => init::run(a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "piimg", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(0)
        }
        Command::Qemu {
            ref image,
            ref card,
            timeout,
            ref until,
            ref forwards,
            ref memory,
            writable,
            json,
        } => qemu::run_qemu(&qemu::QemuArgs {
            image,
            card: card.as_deref(),
            timeout,
            until: until.as_deref(),
            forwards,
            memory: memory.as_deref(),
            writable,
            json,
        }),
        Command::Verify {
            ref profile,
            ref components,
            offline,
            ref keep,
        } => qemu::run_verify(&cli.profiles, profile, components, offline, keep.as_deref()),
        Command::Serve {
            ref dir,
            bind,
            tftp_port,
            ref proxy_dhcp,
            http_port,
        } => serve::run(
            dir,
            bind,
            tftp_port,
            http_port,
            proxy_dhcp.as_deref(),
            cli.quiet,
        ),
        Command::Cluster { ref command } => {
            cluster::run(command, &cli.profiles, cli.quiet, cli.verbose)
        }
        Command::Netboot {
            command:
                NetbootCommand::Check {
                    ref dir,
                    ref serial,
                    ref mac,
                    board,
                },
        } => netboot::check(dir, serial.as_deref(), mac.as_deref(), board, cli.quiet),
    }
}

/// The error and its causes, outermost first, each said once: many library errors already
/// include their cause's text (`{path}: {source}`), which `{:#}` would print a second time.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
