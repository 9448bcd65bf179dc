//! Debian arm64 packages through the host's own apt binaries, run with a private configuration.
//!
//! Everything apt reads or writes lives under one directory (`<cache>/apt/<suite>` by default):
//! its own `apt.conf` (passed through `APT_CONFIG`, which apt reads before anything else, and
//! which points `Dir::Etc::Parts`/`Dir::Etc::Main` away from the host's /etc/apt so host hooks
//! such as `APT::Update::Post-Invoke` never run), sources.list, lists, caches, an empty dpkg status
//! file and preferences. Release signatures are checked against the host's Debian archive
//! keyring; verification is never disabled. apt resolves dependencies (a simulated install
//! against the empty status); piimg then prunes the result with an explicit exclusion list.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::cache::{io_err, sha256_of_path, Cache, CacheError};
use crate::report::Reporter;

/// The host's Debian archive keyring (package debian-archive-keyring).
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The suite used when none is given.
pub const DEFAULT_SUITE: &str = "trixie";

/// Packages a node image needs from Debian (closure added by [`Apt::resolve`]).
pub const NODE_PACKAGES: &[&str] = &[
    "linux-image-arm64",
    "raspi-firmware",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "haproxy",
    "busybox-static",
];

/// Packages dropped from the closure, with why. The image has no dpkg, runs no maintainer
/// scripts, has our agent as PID 1, and piimg itself builds the initramfs, modules.dep and FAT
/// partition; anything only those tools need is left out. A dependency edge into an excluded
/// package is cut, so what only it pulled in disappears too (perl-base via debconf, coreutils/tar
/// via dpkg, ...).
pub const DEFAULT_EXCLUDES: &[(&str, &str)] = &[
    (
        "adduser",
        "maintainer scripts only; piimg writes /etc/passwd and /etc/group",
    ),
    ("base-passwd", "piimg writes /etc/passwd and /etc/group"),
    ("debconf", "maintainer-script configuration; no scripts run"),
    (
        "dosfstools",
        "raspi-firmware's hook checks the FAT; piimg writes the FAT itself",
    ),
    ("dpkg", "no package manager on the node"),
    (
        "dracut-install",
        "initramfs generator helper; piimg builds the initramfs",
    ),
    (
        "init-system-helpers",
        "service registration for maintainer scripts",
    ),
    ("initramfs-tools", "piimg builds the initramfs"),
    ("initramfs-tools-core", "piimg builds the initramfs"),
    (
        "kmod",
        "the agent loads modules itself; piimg writes modules.dep",
    ),
    ("klibc-utils", "initramfs-tools runtime"),
    ("linux-base", "kernel postinst helpers"),
    ("login.defs", "passwd/adduser data"),
    ("lsb-base", "init-script helpers; no sysvinit scripts run"),
    ("passwd", "account tools used by maintainer scripts"),
    ("perl-base", "maintainer scripts and debconf"),
    ("systemd", "the agent is PID 1"),
    ("sysvinit-utils", "init-script helpers"),
    ("udev", "the agent creates device nodes on devtmpfs"),
];

#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("could not run {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed ({status}):\n{stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("no Debian archive mirror in the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/*.sources): pass a mirror explicitly")]
    NoMirror,
    #[error("{0:?} is not a usable mirror URI (want http:// or https://, no spaces)")]
    BadMirror(String),
    #[error("{0:?} is not a valid suite name")]
    BadSuite(String),
    #[error("apt-cache show gave no {field} for {package} {version}")]
    MissingField {
        package: String,
        version: String,
        field: &'static str,
    },
    #[error("requested package {0} is on the exclusion list")]
    RequestedExcluded(String),
    #[error("apt's resolution did not contain requested package {0}")]
    NotResolved(String),
    #[error("no Debian security archive in the host's apt sources: set image.security_mirror, or leave \"security\" out of image.archives")]
    NoSecurityMirror,
    #[error("{0:?} is not a snapshot timestamp (want the snapshot archive's form, e.g. 20251120T000000Z)")]
    BadSnapshot(String),
    #[error("{0:?} is not an archive piimg resolves from (want \"updates\" or \"security\")")]
    BadArchive(String),
    #[error("apt gave no download URI under a configured mirror for {package} {version}: {uri}")]
    UnknownUri {
        package: String,
        version: String,
        uri: String,
    },
    #[error("the mirror serves no file at the pool path its own index names:\n  {}", .0.join("\n  "))]
    NotServed(Vec<String>),
    #[error("{package} {version}: {uri}: got {got}")]
    Download {
        package: String,
        version: String,
        uri: String,
        got: String,
    },
}

/// One binary package as apt's (signed) index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Path in the archive (`pool/main/...`).
    pub filename: String,
    pub sha256: String,
    pub size: u64,
    /// Depends + Pre-Depends: a list of groups, each a list of alternative package names.
    pub depends: Vec<Vec<String>>,
    pub provides: Vec<String>,
    /// Which of the suite's archives the file is downloaded from.
    pub archive: Archive,
}

/// The places one suite's packages come from: the suite itself, `SUITE-updates` (same archive,
/// same pool) and `SUITE-security` (Debian's security archive, its own mirror and pool).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Archive {
    #[default]
    Release,
    Updates,
    Security,
}

impl Archive {
    /// The name used in profiles and the lock (`None` for the suite itself).
    pub fn name(self) -> Option<&'static str> {
        match self {
            Archive::Release => None,
            Archive::Updates => Some("updates"),
            Archive::Security => Some("security"),
        }
    }

    pub fn parse(s: &str) -> Result<Archive, AptError> {
        match s {
            "updates" => Ok(Archive::Updates),
            "security" => Ok(Archive::Security),
            _ => Err(AptError::BadArchive(s.to_string())),
        }
    }

    /// The apt suite name, e.g. `trixie-security`.
    pub fn suite(self, base: &str) -> String {
        match self.name() {
            None => base.to_string(),
            Some(n) => format!("{base}-{n}"),
        }
    }

    /// The directory under the snapshot service (`archive/<this>/<timestamp>/`).
    fn snapshot_archive(self) -> &'static str {
        match self {
            Archive::Security => "debian-security",
            Archive::Release | Archive::Updates => "debian",
        }
    }
}

/// A timestamp of Debian's snapshot archive and the service's base URI.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub timestamp: String,
    pub mirror: String,
}

impl Snapshot {
    /// `20251120T000000Z`: the form the snapshot archive's URLs use.
    pub fn valid_timestamp(t: &str) -> bool {
        let b = t.as_bytes();
        b.len() == 16
            && b[8] == b'T'
            && b[15] == b'Z'
            && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
    }

    /// Where the snapshot archive serves `filename` of `archive`.
    pub fn uri(&self, archive: Archive, filename: &str) -> String {
        format!(
            "{}/archive/{}/{}/{}",
            self.mirror.trim_end_matches('/'),
            archive.snapshot_archive(),
            self.timestamp,
            filename
        )
    }
}

/// Where one Debian suite's packages come from, as a profile's `[image]` says. `None` mirrors
/// are read from the host's apt sources when needed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SuiteSources {
    pub suite: String,
    pub mirror: Option<String>,
    pub security_mirror: Option<String>,
    /// Archives resolved besides the suite itself.
    #[serde(serialize_with = "archive_names")]
    pub archives: Vec<Archive>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyring: Option<PathBuf>,
}

fn archive_names<S: serde::Serializer>(a: &[Archive], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(a.iter().filter_map(|a| a.name()))
}

impl SuiteSources {
    /// The suite from the host's mirrors with updates and security, the default of a profile.
    pub fn host(suite: &str) -> SuiteSources {
        SuiteSources {
            suite: suite.to_string(),
            mirror: None,
            security_mirror: None,
            archives: vec![Archive::Updates, Archive::Security],
            snapshot: None,
            keyring: None,
        }
    }
}

/// The kernel release (module directory name) of a versioned kernel image package:
/// `linux-image-6.12.107+deb13-arm64` -> `6.12.107+deb13-arm64`. None for the metapackage.
pub fn kernel_release(package: &str) -> Option<&str> {
    let rel = package.strip_prefix("linux-image-")?;
    rel.starts_with(|c: char| c.is_ascii_digit()).then_some(rel)
}

/// The versioned kernel image package in a resolved set (e.g. `linux-image-6.12.107+deb13-arm64`).
pub fn kernel_package(pkgs: &[DebPackage]) -> Option<&DebPackage> {
    pkgs.iter()
        .filter(|p| kernel_release(&p.name).is_some() && !p.name.ends_with("-dbg"))
        .max_by(|a, b| a.name.cmp(&b.name))
}

const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];

/// Which sources [`mirror_from_sources`] looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// The Debian archive: suites such as `trixie`, `bookworm-updates`.
    Archive,
    /// Debian's security archive: `trixie-security`.
    Security,
}

fn is_security_suite(s: &str) -> bool {
    s.strip_suffix("-security")
        .is_some_and(|base| DEBIAN_SUITES.contains(&base))
}

fn is_debian_suite(s: &str) -> bool {
    let base = s.split('-').next().unwrap_or(s);
    let suffix_ok = match s.find('-') {
        None => true,
        Some(i) => matches!(&s[i..], "-updates" | "-backports" | "-proposed-updates"),
    };
    DEBIAN_SUITES.contains(&base) && suffix_ok
}

/// The first Debian archive URI in apt sources: `sources_list` is the content of
/// /etc/apt/sources.list, `deb822` the contents of sources.list.d/*.sources in name order.
/// For [`SourceKind::Archive`] a source counts when it is a `deb` source listing a Debian suite
/// such as `trixie` or `bookworm-updates` (security and third-party suites do not count); for
/// [`SourceKind::Security`] one listing `SUITE-security`.
pub fn mirror_from_sources(
    sources_list: &str,
    deb822: &[String],
    kind: SourceKind,
) -> Option<String> {
    let wanted = |suite: &str| match kind {
        SourceKind::Archive => is_debian_suite(suite),
        SourceKind::Security => is_security_suite(suite),
    };
    for line in sources_list.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        // Skip an option block `[arch=... signed-by=...]`, which may span several words.
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let end = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
            rest.drain(..=end);
        }
        if let (Some(uri), Some(suite)) = (rest.first(), rest.get(1)) {
            if wanted(suite) {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    for file in deb822 {
        for para in file.split("\n\n") {
            let mut fields: BTreeMap<String, String> = BTreeMap::new();
            let mut last = String::new();
            for line in para.lines() {
                if line.starts_with('#') {
                    continue;
                }
                if line.starts_with([' ', '\t']) {
                    if let Some(v) = fields.get_mut(&last) {
                        v.push(' ');
                        v.push_str(line.trim());
                    }
                } else if let Some((k, v)) = line.split_once(':') {
                    last = k.trim().to_ascii_lowercase();
                    fields.insert(last.clone(), v.trim().to_string());
                }
            }
            let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
            if !get("types").split_whitespace().any(|t| t == "deb")
                || get("enabled").eq_ignore_ascii_case("no")
                || !get("suites").split_whitespace().any(wanted)
            {
                continue;
            }
            if let Some(uri) = get("uris").split_whitespace().next() {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// Reads the host's apt sources and returns the first Debian archive mirror.
pub fn host_mirror() -> Result<String, AptError> {
    host_source(SourceKind::Archive).ok_or(AptError::NoMirror)
}

/// Reads the host's apt sources and returns the first mirror of the security archive.
pub fn host_security_mirror() -> Result<String, AptError> {
    host_source(SourceKind::Security).ok_or(AptError::NoSecurityMirror)
}

fn host_source(kind: SourceKind) -> Option<String> {
    let sources_list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let mut names: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sources"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let deb822: Vec<String> = names
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    // Legacy one-line files in sources.list.d count after sources.list.
    let mut legacy: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "list"))
                .collect()
        })
        .unwrap_or_default();
    legacy.sort();
    let mut all_list = sources_list;
    for p in legacy {
        all_list.push('\n');
        all_list.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
    }
    mirror_from_sources(&all_list, &deb822, kind)
}

fn check_mirror(m: &str) -> Result<(), AptError> {
    let ok = (m.starts_with("http://") || m.starts_with("https://"))
        && !m.contains(char::is_whitespace)
        && !m.contains(['"', ';', '{', '}', '[', ']']);
    if ok {
        Ok(())
    } else {
        Err(AptError::BadMirror(m.to_string()))
    }
}

fn check_suite(s: &str) -> Result<(), AptError> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(AptError::BadSuite(s.to_string()))
    }
}

/// How to reach one Debian suite and the archives resolved with it.
#[derive(Debug, Clone)]
pub struct AptConfig {
    pub suite: String,
    /// Archive root, e.g. the `URIs:` value of the host's Debian source.
    pub mirror: String,
    /// Root of the security archive; `None` when security is not resolved.
    pub security_mirror: Option<String>,
    pub archives: Vec<Archive>,
    pub components: Vec<String>,
    pub keyring: PathBuf,
    pub snapshot: Option<Snapshot>,
}

impl AptConfig {
    /// `main non-free-firmware` of `suite` (raspi-firmware lives in non-free-firmware) with its
    /// updates and security archives, from the host's mirrors (or `mirror`), verified with the
    /// host's Debian archive keyring.
    pub fn new(suite: &str, mirror: Option<&str>) -> Result<AptConfig, AptError> {
        let mut s = SuiteSources::host(suite);
        s.mirror = mirror.map(str::to_string);
        if mirror.is_some() {
            // A given mirror says nothing about where security lives.
            s.archives.retain(|a| *a != Archive::Security);
        }
        AptConfig::from_sources(&s)
    }

    /// The configuration a profile's `[image]` describes; missing mirrors come from the host.
    pub fn from_sources(s: &SuiteSources) -> Result<AptConfig, AptError> {
        let mirror = match &s.mirror {
            Some(m) => m.trim_end_matches('/').to_string(),
            None => host_mirror()?,
        };
        check_mirror(&mirror)?;
        check_suite(&s.suite)?;
        let security_mirror = if s.archives.contains(&Archive::Security) {
            let m = match (&s.security_mirror, &s.mirror) {
                (Some(m), _) => m.trim_end_matches('/').to_string(),
                // The host's security source belongs with the host's mirror, not a chosen one.
                (None, Some(_)) => return Err(AptError::NoSecurityMirror),
                (None, None) => host_security_mirror()?,
            };
            check_mirror(&m)?;
            Some(m)
        } else {
            None
        };
        if let Some(snap) = &s.snapshot {
            check_mirror(snap.mirror.trim_end_matches('/'))?;
            if !Snapshot::valid_timestamp(&snap.timestamp) {
                return Err(AptError::BadSnapshot(snap.timestamp.clone()));
            }
        }
        let mut archives = s.archives.clone();
        archives.sort();
        archives.dedup();
        archives.retain(|a| *a != Archive::Release);
        Ok(AptConfig {
            suite: s.suite.clone(),
            mirror,
            security_mirror,
            archives,
            components: vec!["main".into(), "non-free-firmware".into()],
            keyring: s
                .keyring
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEBIAN_KEYRING)),
            snapshot: s.snapshot.clone(),
        })
    }

    /// The archive root `archive`'s files are served under.
    pub fn base(&self, archive: Archive) -> &str {
        match (archive, &self.security_mirror) {
            (Archive::Security, Some(m)) => m,
            _ => &self.mirror,
        }
    }

    /// The sources.list apt reads: one line per archive.
    fn sources_list(&self) -> String {
        let keyring = self.keyring.display();
        let comps = self.components.join(" ");
        std::iter::once(Archive::Release)
            .chain(self.archives.iter().copied())
            .map(|a| {
                format!(
                    "deb [arch=arm64 signed-by={keyring}] {} {} {comps}\n",
                    self.base(a),
                    a.suite(&self.suite)
                )
            })
            .collect()
    }
}

/// A private apt instance for one suite.
#[derive(Debug, Clone)]
pub struct Apt {
    dir: PathBuf,
    cfg: AptConfig,
}

/// Result of [`Apt::resolve`].
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The kept packages, sorted by name.
    pub packages: Vec<DebPackage>,
    /// Packages apt chose that were pruned (excluded, or only needed by excluded ones), sorted.
    pub pruned: Vec<String>,
}

impl Apt {
    /// The apt state for `cfg` under `<cache>/apt/<suite>-<hash of its sources>`: lists of
    /// different mirrors or keyrings never mix.
    pub fn in_cache(cache: &Cache, cfg: AptConfig) -> Result<Apt, AptError> {
        use sha2::{Digest, Sha256};
        let id = Sha256::digest(format!("{}{}", cfg.sources_list(), cfg.keyring.display()));
        let dir =
            cache
                .root()
                .join("apt")
                .join(format!("{}-{}", cfg.suite, &hex::encode(id)[..12]));
        Apt::new(dir, cfg)
    }

    /// The apt state in `dir` (created; configuration files rewritten every time).
    pub fn new(dir: impl Into<PathBuf>, cfg: AptConfig) -> Result<Apt, AptError> {
        let dir = dir.into();
        let apt = Apt { dir, cfg };
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "empty",
            "log",
            "state",
        ] {
            let d = apt.dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let _guard = apt.lock()?;
        apt.write_config()?;
        Ok(apt)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &AptConfig {
        &self.cfg
    }

    fn lock(&self) -> Result<super::cache::CacheLock, AptError> {
        Ok(super::cache::lock_file(&self.dir.join("piimg.lock"))?)
    }

    fn write_atomic(&self, name: &str, content: &str) -> Result<(), AptError> {
        let path = self.dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(content) {
            return Ok(());
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        std::io::Write::write_all(tmp.as_file_mut(), content.as_bytes())
            .map_err(io_err(tmp.path()))?;
        tmp.persist(&path).map_err(|e| CacheError::Io {
            path: path.display().to_string(),
            source: e.error,
        })?;
        Ok(())
    }

    fn write_config(&self) -> Result<(), AptError> {
        let d = |s: &str| self.dir.join(s).display().to_string();
        let keyring = self.cfg.keyring.display().to_string();
        let conf = format!(
            "// Written by piimg: a private apt that never reads or writes the host's apt state.\n\
             Dir::Etc::Main \"/dev/null\";\n\
             Dir::Etc::Parts \"{empty}\";\n\
             Dir::Etc::SourceList \"{sources}\";\n\
             Dir::Etc::SourceParts \"{empty}\";\n\
             Dir::Etc::Preferences \"{prefs}\";\n\
             Dir::Etc::PreferencesParts \"{empty}\";\n\
             Dir::Etc::Trusted \"{keyring}\";\n\
             Dir::Etc::TrustedParts \"{empty}\";\n\
             Dir::State \"{state}\";\n\
             Dir::State::Lists \"{lists}\";\n\
             Dir::State::status \"{status}\";\n\
             Dir::State::extended_states \"{state}/extended_states\";\n\
             Dir::Cache \"{cache}\";\n\
             Dir::Cache::archives \"{cache}/archives\";\n\
             Dir::Log \"{log}\";\n\
             APT::Architecture \"arm64\";\n\
             APT::Architectures {{ \"arm64\"; }};\n\
             APT::Install-Recommends \"false\";\n\
             APT::Install-Suggests \"false\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::AllowInsecureRepositories \"false\";\n\
             Acquire::AllowDowngradeToInsecureRepositories \"false\";\n\
             Acquire::Retries \"3\";\n",
            empty = d("empty"),
            sources = d("sources.list"),
            prefs = d("preferences"),
            state = d("state"),
            lists = d("lists"),
            status = d("status"),
            cache = d("cache"),
            log = d("log"),
        );
        self.write_atomic("apt.conf", &conf)?;
        self.write_atomic("sources.list", &self.cfg.sources_list())?;
        // An empty dpkg status: nothing is installed, so apt resolves the full closure.
        self.write_atomic("status", "")?;
        self.write_atomic("preferences", "")?;
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str], cwd: Option<&Path>) -> Result<String, AptError> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("APT_CONFIG", self.dir.join("apt.conf"))
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        if let Some(c) = cwd {
            cmd.current_dir(c);
        }
        let shown = format!("{program} {}", args.join(" "));
        let out = cmd.output().map_err(|source| AptError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(AptError::Failed {
                cmd: shown,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `apt-get update` (signed Release, sha256-checked indices). Any error or warning fails.
    pub fn update(&self, reporter: &dyn Reporter) -> Result<(), AptError> {
        let _guard = self.lock()?;
        self.write_config()?;
        let suites: Vec<String> = std::iter::once(Archive::Release)
            .chain(self.cfg.archives.iter().copied())
            .map(|a| a.suite(&self.cfg.suite))
            .collect();
        reporter.begin(&format!("apt-get update ({})", suites.join(", ")), None);
        let r = self.run("apt-get", &["-q", "update", "--error-on=any"], None);
        reporter.end();
        r.map(|_| ())
    }

    /// `apt-cache show NAME=VERSION...`, parsed.
    pub fn show(&self, pins: &[(String, String)]) -> Result<Vec<DebPackage>, AptError> {
        if pins.is_empty() {
            return Ok(Vec::new());
        }
        let args: Vec<String> = pins.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let mut argv = vec!["show", "--no-all-versions"];
        argv.extend(args.iter().map(String::as_str));
        let out = {
            let _guard = self.lock()?;
            self.run("apt-cache", &argv, None)?
        };
        let mut seen = BTreeSet::new();
        let mut pkgs = Vec::new();
        for stanza in out.split("\n\n") {
            if stanza.trim().is_empty() {
                continue;
            }
            let p = parse_stanza(stanza)?;
            if seen.insert(p.name.clone()) {
                pkgs.push(p);
            }
        }
        Ok(pkgs)
    }

    /// Resolves `requested` and its Depends/Pre-Depends closure with apt (simulated install
    /// against the empty status), then drops `exclude`d packages and whatever only they needed.
    pub fn resolve(&self, requested: &[&str], exclude: &[&str]) -> Result<Resolved, AptError> {
        for r in requested {
            if exclude.contains(r) {
                return Err(AptError::RequestedExcluded(r.to_string()));
            }
        }
        let mut argv = vec!["-q", "-s", "install", "--no-install-recommends"];
        argv.extend(requested.iter().copied());
        let out = {
            let _guard = self.lock()?;
            self.run("apt-get", &argv, None)?
        };
        let mut pins = Vec::new();
        for line in out.lines() {
            let Some(rest) = line.strip_prefix("Inst ") else {
                continue;
            };
            let mut it = rest.splitn(2, ' ');
            let name = it.next().unwrap_or("").to_string();
            let version = it
                .next()
                .and_then(|r| r.strip_prefix('('))
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("")
                .to_string();
            if !name.is_empty() && !version.is_empty() {
                pins.push((name, version));
            }
        }
        let all = self.show(&pins)?;
        let mut resolved = prune(all, requested, exclude)?;
        self.locate(&mut resolved.packages)?;
        Ok(resolved)
    }

    /// Sets each package's archive and pool path to where apt would fetch it from
    /// (`apt-get download --print-uris`), labelled `updates` when only `SUITE-updates` has it.
    fn locate(&self, pkgs: &mut [DebPackage]) -> Result<(), AptError> {
        if pkgs.is_empty() {
            return Ok(());
        }
        let specs: Vec<String> = pkgs
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        let mut argv = vec!["-q", "download", "--print-uris"];
        argv.extend(specs.iter().map(String::as_str));
        let names: Vec<&str> = pkgs.iter().map(|p| p.name.as_str()).collect();
        let (uris, policy) = {
            let _guard = self.lock()?;
            let tmp = tempfile::Builder::new()
                .prefix(".uris-")
                .tempdir_in(&self.dir)
                .map_err(io_err(&self.dir))?;
            let uris = self.run("apt-get", &argv, Some(tmp.path()))?;
            let mut pargv = vec!["policy"];
            pargv.extend(names.iter().copied());
            (uris, parse_policy(&self.run("apt-cache", &pargv, None)?))
        };
        // `'URI' FILE SIZE SHA256:HEX`, one line per package, in no promised order.
        let mut by_sha: BTreeMap<String, String> = BTreeMap::new();
        for line in uris.lines() {
            let mut w = line.split_whitespace();
            let (Some(uri), _, _, Some(hash)) = (w.next(), w.next(), w.next(), w.next()) else {
                continue;
            };
            if let Some(h) = hash.strip_prefix("SHA256:") {
                by_sha.insert(h.to_ascii_lowercase(), uri.trim_matches('\'').to_string());
            }
        }
        let security = self.cfg.security_mirror.as_deref();
        for p in pkgs.iter_mut() {
            let unknown = |uri: &str| AptError::UnknownUri {
                package: p.name.clone(),
                version: p.version.clone(),
                uri: uri.to_string(),
            };
            let uri = by_sha.get(&p.sha256).ok_or_else(|| unknown("(none)"))?;
            let strip = |base: &str| {
                uri.strip_prefix(base)
                    .and_then(|r| r.strip_prefix('/'))
                    .map(percent_decode)
            };
            let (archive, filename) = match security.and_then(strip) {
                Some(f) => (Archive::Security, f),
                None => {
                    let f = strip(&self.cfg.mirror).ok_or_else(|| unknown(uri))?;
                    let suites = policy
                        .get(&p.name)
                        .and_then(|pol| pol.versions.iter().find(|v| v.0 == p.version))
                        .map(|v| v.1.clone())
                        .unwrap_or_default();
                    let release = suites.contains(&self.cfg.suite);
                    let updates = Archive::Updates.suite(&self.cfg.suite);
                    if !release && suites.contains(&updates) {
                        (Archive::Updates, f)
                    } else {
                        (Archive::Release, f)
                    }
                }
            };
            p.archive = archive;
            p.filename = filename;
        }
        Ok(())
    }

    /// apt's candidate (the newest version over every configured archive) of each package the
    /// index knows, with the archive that offers it: security when the security archive does.
    pub fn candidates(&self, names: &[&str]) -> Result<BTreeMap<String, Candidate>, AptError> {
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut argv = vec!["policy"];
        argv.extend(names.iter().copied());
        let out = {
            let _guard = self.lock()?;
            self.run("apt-cache", &argv, None)?
        };
        let security = Archive::Security.suite(&self.cfg.suite);
        let mut found = BTreeMap::new();
        for (name, pol) in parse_policy(&out) {
            let Some(cand) = pol.candidate.clone() else {
                continue;
            };
            let suites = pol
                .versions
                .iter()
                .find(|v| v.0 == cand)
                .map(|v| v.1.clone())
                .unwrap_or_default();
            // apt lists versions newest first: what precedes the candidate is newer than it.
            let newer: Vec<String> = pol
                .versions
                .iter()
                .take_while(|v| v.0 != cand)
                .map(|v| v.0.clone())
                .collect();
            found.insert(
                name,
                Candidate {
                    version: cand,
                    security: suites.contains(&security),
                    suites,
                    newer_than_candidate: newer,
                },
            );
        }
        Ok(found)
    }

    /// Downloads one file of the archive by URI with apt's own downloader (`apt-helper
    /// download-file`), checks its size and sha256 and moves it into the cache; a file that does
    /// not match never enters the cache. A file the server does not have is [`Fetched::NotFound`].
    pub fn download_file(
        &self,
        f: &PoolFile,
        uri: &str,
        cache: &Cache,
    ) -> Result<Fetched, AptError> {
        let _guard = self.lock()?;
        let work = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        let dest = work.path().join("file");
        let helper = APT_HELPER;
        let mut cmd = Command::new(helper);
        // No hash for apt-helper: piimg checks size and sha256 itself, to name both on a mismatch.
        cmd.args(["-q", "download-file", uri])
            .arg(&dest)
            .env("APT_CONFIG", self.dir.join("apt.conf"))
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        let out = cmd.output().map_err(|source| AptError::Spawn {
            cmd: format!("{helper} download-file {uri}"),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let failed = |got: String| AptError::Download {
            package: f.name.to_string(),
            version: f.version.to_string(),
            uri: uri.to_string(),
            got,
        };
        if !out.status.success() {
            let text = format!("{stdout}{stderr}");
            if text.contains(" 404 ") || text.contains("404  Not Found") {
                return Ok(Fetched::NotFound);
            }
            let line = text
                .lines()
                .find(|l| l.starts_with("E:"))
                .unwrap_or(text.trim());
            return Err(failed(line.trim().to_string()));
        }
        let len = std::fs::metadata(&dest).map_err(io_err(&dest))?.len();
        if let Some(size) = f.size.filter(|&s| s != len) {
            return Err(failed(format!("{len} bytes, the lock records {size}")));
        }
        let got = sha256_of_path(&dest)?;
        if got != f.sha256 {
            return Err(failed(format!(
                "sha256 {got}, the lock records {}",
                f.sha256
            )));
        }
        if std::fs::rename(&dest, cache.path_of(&got)).is_err() {
            cache.insert_file(&dest, &got)?;
        }
        Ok(Fetched::Cached)
    }
}

/// One file of the archive to download: what a lock entry or a resolved package says of it.
#[derive(Debug, Clone)]
pub struct PoolFile<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub archive: Archive,
    pub filename: &'a str,
    pub sha256: &'a str,
    pub size: Option<u64>,
}

impl Apt {
    /// Downloads the files the cache lacks by pool path: from the mirror of each file's archive,
    /// then from the snapshot archive when one is configured. Returns the files nothing served
    /// (`NAME VERSION (URI)`); any other failure, a wrong size or sha256 included, is an error.
    pub fn download_pool(
        &self,
        files: &[PoolFile],
        cache: &Cache,
        reporter: &dyn Reporter,
    ) -> Result<Vec<String>, AptError> {
        let todo: Vec<&PoolFile> = files.iter().filter(|f| !cache.has(f.sha256)).collect();
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        let total: u64 = todo.iter().filter_map(|f| f.size).sum();
        reporter.begin(
            &format!("download {} packages ({})", todo.len(), self.cfg.suite),
            Some(total),
        );
        let result = (|| {
            let mut missing = Vec::new();
            for f in &todo {
                let mut uris = vec![format!("{}/{}", self.cfg.base(f.archive), f.filename)];
                if let Some(snap) = &self.cfg.snapshot {
                    uris.push(snap.uri(f.archive, f.filename));
                }
                let mut got = false;
                for uri in &uris {
                    if self.download_file(f, uri, cache)? == Fetched::Cached {
                        got = true;
                        break;
                    }
                }
                if !got {
                    missing.push(format!("{} {} ({})", f.name, f.version, uris[0]));
                }
                reporter.advance(f.size.unwrap_or(0));
            }
            Ok(missing)
        })();
        reporter.end();
        result
    }

    /// Downloads resolved packages the cache lacks; a file the mirror does not serve is an error.
    pub fn download(
        &self,
        pkgs: &[DebPackage],
        cache: &Cache,
        reporter: &dyn Reporter,
    ) -> Result<(), AptError> {
        let files: Vec<PoolFile> = pkgs
            .iter()
            .map(|p| PoolFile {
                name: &p.name,
                version: &p.version,
                archive: p.archive,
                filename: &p.filename,
                sha256: &p.sha256,
                size: Some(p.size),
            })
            .collect();
        let missing = self.download_pool(&files, cache, reporter)?;
        if missing.is_empty() {
            Ok(())
        } else {
            Err(AptError::NotServed(missing))
        }
    }
}

/// apt's downloader for single files, part of the apt package.
pub const APT_HELPER: &str = "/usr/lib/apt/apt-helper";

/// Outcome of [`Apt::download_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Cached,
    NotFound,
}

/// What [`Apt::candidates`] found for one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub version: String,
    /// Suites offering the candidate, e.g. `trixie-security`.
    pub suites: Vec<String>,
    pub security: bool,
    /// Versions apt ranks above the candidate (pinned away); normally none.
    pub newer_than_candidate: Vec<String>,
}

/// One package's part of `apt-cache policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub candidate: Option<String>,
    /// Versions newest first, each with the suites (`trixie-security`) that offer it.
    pub versions: Vec<(String, Vec<String>)>,
}

/// Parses `apt-cache policy NAME...`:
/// ```text
/// haproxy:
///   Installed: (none)
///   Candidate: 3.0.11-1+deb13u3
///   Version table:
///      3.0.11-1+deb13u3 500
///         500 http://mirror/debian trixie/main arm64 Packages
/// ```
pub fn parse_policy(text: &str) -> BTreeMap<String, Policy> {
    let mut all: BTreeMap<String, Policy> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_table = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            current = line
                .strip_suffix(':')
                .map(|n| n.split(':').next().unwrap_or(n).to_string());
            if let Some(n) = &current {
                all.entry(n.clone()).or_default();
            }
            in_table = false;
            continue;
        }
        let Some(pol) = current.as_ref().and_then(|n| all.get_mut(n)) else {
            continue;
        };
        let t = line.trim();
        if let Some(c) = t.strip_prefix("Candidate:") {
            let c = c.trim();
            pol.candidate = (c != "(none)").then(|| c.to_string());
        } else if t == "Version table:" {
            in_table = true;
        } else if in_table {
            let words: Vec<&str> = t.split_whitespace().collect();
            // A version line: `[***] VERSION PRIO`; a source line: `PRIO URI SUITE/COMP ARCH Packages`.
            let words: Vec<&str> = words.into_iter().filter(|w| *w != "***").collect();
            if words.len() == 2 {
                pol.versions.push((words[0].to_string(), Vec::new()));
            } else if words.len() >= 3 && words[0].parse::<i32>().is_ok() {
                if let (Some(v), Some(suite)) = (
                    pol.versions.last_mut(),
                    words[2]
                        .split('/')
                        .next()
                        .filter(|_| words[1].contains("://")),
                ) {
                    v.1.push(suite.to_string());
                }
            }
        }
    }
    all
}

/// Undoes the %XX escapes apt puts in URIs (`%2b` for `+`, `%7e` for `~`).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Package names from a Depends-style field: groups of alternatives, versions and arch
/// qualifiers stripped.
pub fn parse_depends(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|group| {
            group
                .split('|')
                .filter_map(|alt| {
                    let name = alt.trim().split([' ', '(', '[', '<']).next()?;
                    let name = name.split(':').next()?.trim();
                    (!name.is_empty()).then(|| name.to_string())
                })
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

fn parse_stanza(stanza: &str) -> Result<DebPackage, AptError> {
    let mut fields: BTreeMap<&str, String> = BTreeMap::new();
    let mut last = "";
    for line in stanza.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(v) = fields.get_mut(last) {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            last = k;
            fields.insert(k, v.trim().to_string());
        }
    }
    let name = fields.get("Package").cloned().unwrap_or_default();
    let version = fields.get("Version").cloned().unwrap_or_default();
    let need = |f: &'static str| {
        fields
            .get(f)
            .cloned()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| AptError::MissingField {
                package: name.clone(),
                version: version.clone(),
                field: f,
            })
    };
    let sha256 = need("SHA256")?;
    let filename = need("Filename")?;
    let arch = need("Architecture")?;
    let size = need("Size")?.parse().unwrap_or(0);
    let mut depends = Vec::new();
    for f in ["Pre-Depends", "Depends"] {
        if let Some(v) = fields.get(f) {
            depends.extend(parse_depends(v));
        }
    }
    let provides = fields
        .get("Provides")
        .map(|v| parse_depends(v).into_iter().flatten().collect())
        .unwrap_or_default();
    if name.is_empty() || version.is_empty() {
        return Err(AptError::MissingField {
            package: name,
            version,
            field: "Package/Version",
        });
    }
    Ok(DebPackage {
        name,
        version,
        arch,
        filename,
        sha256: sha256.to_ascii_lowercase(),
        size,
        depends,
        provides,
        archive: Archive::Release,
    })
}

/// Keeps what is reachable from `requested` through dependency edges that do not enter an
/// excluded package. Within an alternative group the first alternative satisfied by a kept
/// candidate wins (apt made the choice; we follow it).
pub fn prune(
    all: Vec<DebPackage>,
    requested: &[&str],
    exclude: &[&str],
) -> Result<Resolved, AptError> {
    let by_name: BTreeMap<&str, &DebPackage> = all.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut providers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in &all {
        providers.entry(p.name.as_str()).or_default().push(&p.name);
        for v in &p.provides {
            providers.entry(v.as_str()).or_default().push(&p.name);
        }
    }
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    let mut queue: VecDeque<&str> = VecDeque::new();
    for r in requested {
        let p = by_name
            .get(r)
            .ok_or_else(|| AptError::NotResolved(r.to_string()))?;
        if keep.insert(&p.name) {
            queue.push_back(&p.name);
        }
    }
    while let Some(n) = queue.pop_front() {
        let Some(p) = by_name.get(n) else { continue };
        for group in &p.depends {
            let chosen = group.iter().find_map(|alt| {
                let mut c: Vec<&str> = providers
                    .get(alt.as_str())?
                    .iter()
                    .copied()
                    .filter(|c| !exclude.contains(c))
                    .collect();
                c.sort();
                c.first().copied()
            });
            if let Some(c) = chosen {
                if keep.insert(c) {
                    queue.push_back(c);
                }
            }
        }
    }
    let mut packages: Vec<DebPackage> = all
        .iter()
        .filter(|p| keep.contains(p.name.as_str()))
        .cloned()
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    let mut pruned: Vec<String> = all
        .iter()
        .filter(|p| !keep.contains(p.name.as_str()))
        .map(|p| p.name.clone())
        .collect();
    pruned.sort();
    Ok(Resolved { packages, pruned })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_parsing() {
        let d = parse_depends("libc6 (>= 2.34), foo:any | bar (<< 2) [arm64], baz");
        assert_eq!(
            d,
            vec![
                vec!["libc6".to_string()],
                vec!["foo".to_string(), "bar".to_string()],
                vec!["baz".to_string()]
            ]
        );
    }

    #[test]
    fn mirror_from_deb822_skips_security_and_third_party() {
        let files = vec![
            "Types: deb\nURIs: https://example.invalid/node\nSuites: nodistro\nComponents: main\n"
                .to_string(),
            "Types: deb\nURIs: http://sec.example.invalid/debian-security\nSuites: trixie-security\n\n\
             Types: deb-src deb\nURIs: http://archive.example.invalid/debian/\nSuites: trixie trixie-updates\n"
                .to_string(),
        ];
        assert_eq!(
            mirror_from_sources("", &files, SourceKind::Archive).as_deref(),
            Some("http://archive.example.invalid/debian")
        );
        let list =
            "# c\ndeb [arch=amd64 signed-by=/x] http://one.example.invalid/debian bookworm main\n";
        assert_eq!(
            mirror_from_sources(list, &files, SourceKind::Archive).as_deref(),
            Some("http://one.example.invalid/debian")
        );
        assert_eq!(
            mirror_from_sources(
                "deb http://x.invalid/d bookworm-security main",
                &[],
                SourceKind::Archive
            ),
            None
        );
        assert_eq!(
            mirror_from_sources("", &files, SourceKind::Security).as_deref(),
            Some("http://sec.example.invalid/debian-security")
        );
        assert_eq!(
            mirror_from_sources(
                "deb http://x.invalid/d bookworm-security main",
                &[],
                SourceKind::Security
            )
            .as_deref(),
            Some("http://x.invalid/d")
        );
    }

    fn pkg(name: &str, deps: &str, provides: &str) -> DebPackage {
        DebPackage {
            name: name.into(),
            version: "1".into(),
            arch: "arm64".into(),
            filename: format!("pool/{name}.deb"),
            sha256: "0".repeat(64),
            size: 1,
            depends: parse_depends(deps),
            provides: parse_depends(provides).into_iter().flatten().collect(),
            archive: Archive::Release,
        }
    }

    #[test]
    fn prune_cuts_edges_into_excluded_packages() {
        let all = vec![
            pkg("app", "libc6, debconf | debconf-2.0, virt", ""),
            pkg("libc6", "", ""),
            pkg("debconf", "perl-base", "debconf-2.0"),
            pkg("perl-base", "libc6", ""),
            pkg("real", "", "virt"),
        ];
        let r = prune(all, &["app"], &["debconf"]).unwrap();
        let names: Vec<_> = r.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["app", "libc6", "real"]);
        assert_eq!(r.pruned, ["debconf", "perl-base"]);
    }

    #[test]
    fn policy_parsing() {
        let text = "haproxy:\n  Installed: (none)\n  Candidate: 3.0.12-1\n  Version table:\n     \
                    3.0.12-1 500\n        500 http://s.invalid/debian-security trixie-security/main arm64 Packages\n     \
                    3.0.11-1 500\n        500 http://m.invalid/debian trixie/main arm64 Packages\n        \
                    500 http://m.invalid/debian trixie-updates/main arm64 Packages\nzstd:\n  Installed: (none)\n  Candidate: (none)\n";
        let p = parse_policy(text);
        assert_eq!(p["haproxy"].candidate.as_deref(), Some("3.0.12-1"));
        assert_eq!(
            p["haproxy"].versions,
            vec![
                ("3.0.12-1".to_string(), vec!["trixie-security".to_string()]),
                (
                    "3.0.11-1".to_string(),
                    vec!["trixie".to_string(), "trixie-updates".to_string()]
                ),
            ]
        );
        assert_eq!(p["zstd"].candidate, None);
    }

    #[test]
    fn percent_escapes_and_snapshot_uris() {
        assert_eq!(
            percent_decode("pool/main/z/zstd_1.5%2bdfsg-1%7edeb12u1_arm64.deb"),
            "pool/main/z/zstd_1.5+dfsg-1~deb12u1_arm64.deb"
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        assert!(Snapshot::valid_timestamp("20251120T000000Z"));
        assert!(!Snapshot::valid_timestamp("2025-11-20"));
        assert!(!Snapshot::valid_timestamp("20251120T0000000"));
        let s = Snapshot {
            timestamp: "20251120T000000Z".into(),
            mirror: "http://snap.invalid/".into(),
        };
        assert_eq!(
            s.uri(Archive::Security, "pool/updates/main/x.deb"),
            "http://snap.invalid/archive/debian-security/20251120T000000Z/pool/updates/main/x.deb"
        );
        assert_eq!(
            s.uri(Archive::Updates, "pool/main/x.deb"),
            "http://snap.invalid/archive/debian/20251120T000000Z/pool/main/x.deb"
        );
    }

    #[test]
    fn kernel_release_names() {
        assert_eq!(
            kernel_release("linux-image-6.12.107+deb13-arm64"),
            Some("6.12.107+deb13-arm64")
        );
        assert_eq!(kernel_release("linux-image-arm64"), None);
    }
}
