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
    #[error("apt-get download did not produce {package} {version} with sha256 {sha256}")]
    NotDownloaded {
        package: String,
        version: String,
        sha256: String,
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
/// A source counts when it is a `deb` source listing a Debian suite such as `trixie` or
/// `bookworm-updates` (security and third-party suites do not count).
pub fn mirror_from_sources(sources_list: &str, deb822: &[String]) -> Option<String> {
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
            if is_debian_suite(suite) {
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
                || !get("suites").split_whitespace().any(is_debian_suite)
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
    mirror_from_sources(&all_list, &deb822).ok_or(AptError::NoMirror)
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

/// How to reach one Debian suite.
#[derive(Debug, Clone)]
pub struct AptConfig {
    pub suite: String,
    /// Archive root, e.g. the `URIs:` value of the host's Debian source.
    pub mirror: String,
    pub components: Vec<String>,
    pub keyring: PathBuf,
}

impl AptConfig {
    /// `main non-free-firmware` of `suite` (raspi-firmware lives in non-free-firmware), verified
    /// with the host's Debian archive keyring. `mirror: None` reads the host's apt sources.
    pub fn new(suite: &str, mirror: Option<&str>) -> Result<AptConfig, AptError> {
        let mirror = match mirror {
            Some(m) => m.trim_end_matches('/').to_string(),
            None => host_mirror()?,
        };
        check_mirror(&mirror)?;
        check_suite(suite)?;
        Ok(AptConfig {
            suite: suite.to_string(),
            mirror,
            components: vec!["main".into(), "non-free-firmware".into()],
            keyring: PathBuf::from(DEBIAN_KEYRING),
        })
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
    /// The apt state for `cfg.suite` under `<cache>/apt/<suite>`.
    pub fn in_cache(cache: &Cache, cfg: AptConfig) -> Result<Apt, AptError> {
        let dir = cache.root().join("apt").join(&cfg.suite);
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
        let sources = format!(
            "deb [arch=arm64 signed-by={keyring}] {} {} {}\n",
            self.cfg.mirror,
            self.cfg.suite,
            self.cfg.components.join(" ")
        );
        self.write_atomic("sources.list", &sources)?;
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
        reporter.begin(&format!("apt-get update ({})", self.cfg.suite), None);
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
        prune(all, requested, exclude)
    }

    /// Downloads packages not yet in the cache with `apt-get download` (apt checks them against
    /// the signed index), re-checks each sha256 and moves it into the cache.
    pub fn download(
        &self,
        pkgs: &[DebPackage],
        cache: &Cache,
        reporter: &dyn Reporter,
    ) -> Result<(), AptError> {
        let todo: Vec<&DebPackage> = pkgs.iter().filter(|p| !cache.has(&p.sha256)).collect();
        if todo.is_empty() {
            return Ok(());
        }
        let _guard = self.lock()?;
        let total: u64 = todo.iter().map(|p| p.size).sum();
        reporter.begin(
            &format!("download {} packages ({})", todo.len(), self.cfg.suite),
            Some(total),
        );
        let work = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        let result = (|| {
            for p in &todo {
                let spec = format!("{}={}", p.name, p.version);
                self.run("apt-get", &["-q", "download", &spec], Some(work.path()))?;
                self.adopt_download(work.path(), p, cache)?;
                reporter.advance(p.size);
            }
            Ok(())
        })();
        reporter.end();
        result
    }

    fn adopt_download(&self, dir: &Path, p: &DebPackage, cache: &Cache) -> Result<(), AptError> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        names.sort();
        for path in names {
            let sha = sha256_of_path(&path)?;
            if sha == p.sha256 {
                let dest = cache.path_of(&sha);
                // Same filesystem (the apt dir is inside the cache): a rename of a verified file.
                if std::fs::rename(&path, &dest).is_err() {
                    cache.insert_file(&path, &sha)?;
                }
                return Ok(());
            }
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        Err(AptError::NotDownloaded {
            package: p.name.clone(),
            version: p.version.clone(),
            sha256: p.sha256.clone(),
        })
    }
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
            mirror_from_sources("", &files).as_deref(),
            Some("http://archive.example.invalid/debian")
        );
        let list =
            "# c\ndeb [arch=amd64 signed-by=/x] http://one.example.invalid/debian bookworm main\n";
        assert_eq!(
            mirror_from_sources(list, &files).as_deref(),
            Some("http://one.example.invalid/debian")
        );
        assert_eq!(
            mirror_from_sources("deb http://x.invalid/d bookworm-security main", &[]),
            None
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
    fn kernel_release_names() {
        assert_eq!(
            kernel_release("linux-image-6.12.107+deb13-arm64"),
            Some("6.12.107+deb13-arm64")
        );
        assert_eq!(kernel_release("linux-image-arm64"), None);
    }
}
