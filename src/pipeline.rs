//! The whole job of `piimg fetch` and `piimg build`: lock -> cache -> assembled trees -> image,
//! `.sha256` and manifest. The CLI calls these with a reporter; nothing here prints.

use crate::assemble::node::{self as asm, Inputs};
use crate::components::apt::SuiteSources;
use crate::components::cache::Cache;
use crate::components::lock::{Lock, LockEntry, Source};
use crate::components::{self, fetch, FetchOptions};
use crate::image::{self, Sizes};
use crate::profile::{NodeProfile, Profiles};
use crate::report::Reporter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Components(#[from] components::ComponentsError),
    #[error(transparent)]
    Lock(#[from] components::lock::LockError),
    #[error(transparent)]
    Cache(#[from] components::cache::CacheError),
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    #[error(transparent)]
    Assemble(#[from] crate::assemble::AssembleError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(
        "{lock} has no packages for Debian {suite}: run `piimg fetch --profile {profile}` first"
    )]
    SuiteNotLocked {
        lock: PathBuf,
        suite: String,
        profile: String,
    },
    #[error("reading {0}: {1}")]
    Input(PathBuf, #[source] std::io::Error),
    #[error("component {0} ({1}): {2}")]
    Component(String, PathBuf, #[source] std::io::Error),
    #[error("committing the outputs in {0}: {1}")]
    Commit(PathBuf, #[source] std::io::Error),
    #[error("--component {0}: expected NAME=PATH")]
    BadOverride(String),
    #[error("{profile} ({path}): {what} (needed by --netboot)")]
    NetbootUnset {
        profile: String,
        path: PathBuf,
        what: &'static str,
    },
    #[error(transparent)]
    NetbootTree(#[from] crate::netboot::tree::TreeError),
    #[error(transparent)]
    NetbootNode(#[from] crate::netboot::node::NetbootNodeError),
    #[error("root image (squashfs): {0}")]
    Squashfs(#[from] crate::fs::squashfs::SquashError),
    #[error("profiles {a} and {b} both use Debian {suite} but from different sources ([image] mirror, archives, snapshot or keyring): one lock holds one resolution per suite")]
    SourcesDisagree { suite: String, a: String, b: String },
}

/// Where `piimg.lock` lives: the project root, beside the profiles folder.
pub fn lock_path(profiles: &Path) -> PathBuf {
    match profiles.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join("piimg.lock"),
        _ => PathBuf::from("piimg.lock"),
    }
}

/// A URL component `fetch` could not pin.
#[derive(Debug, Clone)]
pub struct Unpinned {
    pub name: String,
    pub reason: String,
    /// The profiles that need it.
    pub profiles: Vec<String>,
}

/// Result of `fetch`.
#[derive(Debug, Clone, Default)]
pub struct FetchReport {
    pub suites: Vec<(String, usize)>,
    /// URL components that could not be pinned here (they can still be supplied as local files).
    pub unpinned: Vec<Unpinned>,
    pub lock_changed: bool,
    /// What the update changed, one line per package: `NAME OLD -> NEW (archive)`.
    pub changes: Vec<String>,
}

/// Resolves the selected nodes' components into the lock and the cache. With `update` false an
/// existing lock is only completed (missing suites/components), never changed.
pub fn fetch(
    nodes: &[&NodeProfile],
    cache: &Cache,
    lock_file: &Path,
    update: bool,
    reporter: &dyn Reporter,
) -> Result<FetchReport, PipelineError> {
    // Read, resolve and write the lock under one exclusive lock: two concurrent fetches would
    // otherwise each write the lock they read, and the first one's additions would be lost.
    let _guard = cache.lock(&lock_guard_name(lock_file))?;
    let mut lock = Lock::load_or_new(lock_file)?;
    let before = lock.clone();
    let mut report = FetchReport::default();
    for (suite, sources) in suites(nodes)? {
        fetch_suite(&mut lock, &suite, &sources, cache, update, reporter)?;
        report
            .suites
            .push((suite.to_string(), lock.suite_entries(&suite).len()));
    }
    for (name, (a, users)) in kubernetes_wanted(nodes) {
        if let Err(reason) = pin_url_component(&mut lock, &name, &a, cache, update, reporter) {
            report.unpinned.push(Unpinned {
                name,
                reason,
                profiles: users,
            });
        }
    }
    report.lock_changed = lock != before;
    report.changes = lock_changes(&before, &lock);
    if report.lock_changed || !lock_file.exists() {
        lock.save(lock_file)?;
    }
    Ok(report)
}

/// Resolves a suite's packages anew (on update, or when the lock has none), else fetches what
/// the lock pins into the cache.
fn fetch_suite(
    lock: &mut Lock,
    suite: &str,
    sources: &SuiteSources,
    cache: &Cache,
    update: bool,
    reporter: &dyn Reporter,
) -> Result<(), PipelineError> {
    if update || lock.suite_entries(suite).is_empty() {
        reporter.info(&format!("resolving Debian {suite} arm64 packages"));
        let resolved = components::update_suite(
            cache,
            sources,
            &asm::all_packages(),
            &components::apt::DEFAULT_EXCLUDES
                .iter()
                .map(|(name, _why)| *name)
                .collect::<Vec<_>>(),
            reporter,
        )?;
        lock.set_suite(suite, &resolved.packages);
        lock.set_snapshot(suite, sources.snapshot.as_ref());
        return Ok(());
    }
    let sub = Lock {
        version: lock.version,
        components: lock.suite_entries(suite).into_iter().cloned().collect(),
        snapshots: lock.snapshots.clone(),
    };
    components::fetch_locked(
        &sub,
        cache,
        &FetchOptions {
            offline: false,
            sources: sources.clone(),
        },
        reporter,
    )?;
    if sources.snapshot.is_some() {
        lock.set_snapshot(suite, sources.snapshot.as_ref());
    }
    Ok(())
}

/// The Kubernetes release binaries the nodes need (none a profile supplies itself; kubectl on
/// control planes only), each with the nodes that need it.
fn kubernetes_wanted(
    nodes: &[&NodeProfile],
) -> BTreeMap<String, (fetch::UrlArtifact, Vec<String>)> {
    let mut wanted: BTreeMap<String, (fetch::UrlArtifact, Vec<String>)> = BTreeMap::new();
    for n in nodes {
        let Some(k) = &n.config.kubernetes else {
            continue;
        };
        for a in fetch::kubernetes_artifacts(&k.version, fetch::DEFAULT_CRICTL) {
            if a.name == "kubectl" && n.config.role != piimg_agent::node::Role::ControlPlane {
                continue;
            }
            if n.components.contains_key(&a.name) {
                continue;
            }
            wanted
                .entry(a.name.clone())
                .or_insert_with(|| (a, Vec::new()))
                .1
                .push(n.name.clone());
        }
    }
    wanted
}

/// Fetches a release binary pinned by the lock, or pins it from the release's published
/// sha256. A failure is the reason it stays unpinned; the lock then still names its version.
fn pin_url_component(
    lock: &mut Lock,
    name: &str,
    a: &fetch::UrlArtifact,
    cache: &Cache,
    update: bool,
    reporter: &dyn Reporter,
) -> Result<(), String> {
    let locked = lock.get(name).cloned();
    let pinned = locked
        .as_ref()
        .filter(|e| e.version == a.version && e.sha256.is_some() && !update);
    let result = match pinned {
        Some(e) => {
            let url = match e.source() {
                Some(Source::Url(u)) => u.to_string(),
                _ => a.url.clone(),
            };
            fetch::fetch_url(name, &url, e.sha256.as_deref(), cache, reporter).map(|_| None)
        }
        None => fetch::pin_and_fetch(a, cache, reporter).map(Some),
    };
    match result {
        Ok(Some(pinned)) => {
            lock.upsert(pinned.lock_entry());
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            if locked.as_ref().is_none_or(|l| l.version != a.version) {
                lock.upsert(a.lock_entry());
            }
            Err(e.to_string())
        }
    }
}

/// The suites the nodes use, each with where its packages come from. Nodes of one suite must
/// agree on that: a lock holds one resolution per suite.
fn suites(nodes: &[&NodeProfile]) -> Result<BTreeMap<String, SuiteSources>, PipelineError> {
    let mut out: BTreeMap<String, (SuiteSources, &str)> = BTreeMap::new();
    for n in nodes {
        let s = &n.image.sources;
        match out.get(&s.suite) {
            Some((first, by)) if first != s => {
                return Err(PipelineError::SourcesDisagree {
                    suite: s.suite.clone(),
                    a: by.to_string(),
                    b: n.name.clone(),
                })
            }
            Some(_) => {}
            None => {
                out.insert(s.suite.clone(), (s.clone(), &n.name));
            }
        }
    }
    Ok(out.into_iter().map(|(k, (v, _))| (k, v)).collect())
}

/// `fetch --outdated`: every selected suite's locked packages that have a newer version.
pub fn outdated(
    nodes: &[&NodeProfile],
    cache: &Cache,
    lock_file: &Path,
    reporter: &dyn Reporter,
) -> Result<Vec<components::Outdated>, PipelineError> {
    let lock = Lock::load_or_new(lock_file)?;
    let mut all = Vec::new();
    for (suite, sources) in suites(nodes)? {
        if lock.suite_entries(&suite).is_empty() {
            continue;
        }
        reporter.info(&format!("checking Debian {suite} for newer packages"));
        all.extend(components::outdated(&lock, cache, &sources, reporter)?);
    }
    Ok(all)
}

/// The cache lock that serialises updates of one project's `piimg.lock` (kept in the cache, not
/// beside the lock, so the project folder gains no file).
fn lock_guard_name(lock_file: &Path) -> String {
    let abs = std::fs::canonicalize(lock_file.parent().unwrap_or(Path::new(".")))
        .unwrap_or_else(|_| lock_file.to_path_buf());
    let h = Sha256::digest(abs.as_os_str().as_encoded_bytes());
    format!("piimg-lock-{}", &hex::encode(h)[..16])
}

fn build_guard_name(out_dir: &Path, node: &str) -> String {
    let abs = std::fs::canonicalize(out_dir).unwrap_or_else(|_| out_dir.to_path_buf());
    let mut h = Sha256::new();
    h.update(abs.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(node.as_bytes());
    format!("build-{}", &hex::encode(h.finalize())[..16])
}

/// Temp files of `node`'s outputs (`.NODE.img.XXXX.partial`, ...) that a killed build left.
fn remove_leftovers(out_dir: &Path, node: &str) {
    let prefix = format!(".{node}.");
    let Ok(rd) = std::fs::read_dir(out_dir) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with(&prefix) && n.ends_with(".partial") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Options of one build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out_dir: PathBuf,
    pub offline: bool,
    /// `NAME=PATH` overrides from the command line (win over the profile's).
    pub overrides: Vec<(String, PathBuf)>,
    pub epoch: i64,
    pub agent: &'static [u8],
    /// Compressed copies to write beside the image.
    pub compress: Vec<crate::compress::Codec>,
}

/// Everything a build reads besides the cache's content-addressed components: when all of it is
/// unchanged, so is the image. Recorded in the manifest; `piimg flash --profile` rebuilds when it
/// differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInputs {
    pub piimg: String,
    pub agent_sha256: String,
    /// sha256 of the profile file and each file it extends, by path.
    pub profiles: BTreeMap<String, String>,
    /// sha256 of the cluster secrets file, when the node uses one (a digest of random keys
    /// reveals nothing of them).
    pub secrets: Option<String>,
    pub lock: Option<String>,
    /// One digest of the overlays folder (paths, modes, contents), when there is one.
    pub overlays: Option<String>,
    /// sha256 of each local component file, by component name.
    pub components: BTreeMap<String, String>,
    pub source_date_epoch: i64,
    pub compress: Vec<String>,
}

/// Streams the file (local components can be tens of MB).
fn sha256_path(p: &Path) -> Result<String, PipelineError> {
    let err = |e| PipelineError::Input(p.to_path_buf(), e);
    let mut f = std::fs::File::open(p).map_err(err)?;
    let (sha, _) = crate::components::cache::copy_hashing(
        &mut f,
        &mut std::io::sink(),
        &crate::report::Silent,
    )
    .map_err(err)?;
    Ok(sha)
}

fn dir_digest(dir: &Path, h: &mut Sha256) -> Result<(), PipelineError> {
    use std::os::unix::fs::MetadataExt;
    let err = |e| PipelineError::Input(dir.to_path_buf(), e);
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).map_err(|e| PipelineError::Input(p.clone(), e))?;
        h.update(p.as_os_str().as_encoded_bytes());
        h.update(md.mode().to_le_bytes());
        if md.is_dir() {
            dir_digest(&p, h)?;
        } else if md.file_type().is_symlink() {
            let t = std::fs::read_link(&p).map_err(|e| PipelineError::Input(p.clone(), e))?;
            h.update(t.as_os_str().as_encoded_bytes());
        } else {
            h.update(sha256_path(&p)?.as_bytes());
        }
    }
    Ok(())
}

/// The inputs of building `node` with `opts` now.
pub fn build_inputs(
    profiles: &Profiles,
    node: &NodeProfile,
    lock_file: &Path,
    opts: &BuildOptions,
) -> Result<BuildInputs, PipelineError> {
    let mut overrides: BTreeMap<String, PathBuf> = node.components.clone();
    overrides.extend(opts.overrides.iter().cloned());
    let overlays = match asm::overlays_dir(&profiles.dir) {
        Some(d) => {
            let mut h = Sha256::new();
            dir_digest(&d, &mut h)?;
            Some(hex::encode(h.finalize()))
        }
        None => None,
    };
    Ok(BuildInputs {
        piimg: env!("CARGO_PKG_VERSION").to_string(),
        agent_sha256: hex::encode(Sha256::digest(opts.agent)),
        profiles: node
            .sources
            .iter()
            .map(|p| Ok((p.display().to_string(), sha256_path(p)?)))
            .collect::<Result<_, PipelineError>>()?,
        // A node that needs none (a load balancer without Wi-Fi) may name a secrets file that
        // its cluster never created.
        secrets: match node.secrets_path.as_deref().map(sha256_path) {
            Some(Err(PipelineError::Input(_, e))) if e.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            r => r.transpose()?,
        },
        // No lock yet: the build itself says to run `piimg fetch`.
        lock: match sha256_path(lock_file) {
            Err(PipelineError::Input(_, e)) if e.kind() == std::io::ErrorKind::NotFound => None,
            r => Some(r?),
        },
        overlays,
        components: overrides
            .iter()
            .map(|(n, p)| match sha256_path(p) {
                Ok(h) => Ok((n.clone(), h)),
                Err(PipelineError::Input(p, e)) => Err(PipelineError::Component(n.clone(), p, e)),
                Err(e) => Err(e),
            })
            .collect::<Result<_, PipelineError>>()?,
        source_date_epoch: opts.epoch,
        compress: opts
            .compress
            .iter()
            .map(|c| c.extension().to_string())
            .collect(),
    })
}

/// Whether `out_dir` holds a complete, current build of `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    Current,
    /// Why it must be built (again).
    Stale(String),
}

/// The manifest's fields that the freshness check reads.
#[derive(Deserialize)]
struct RecordedBuild {
    sha256: String,
    inputs: Option<BuildInputs>,
}

/// Compares what `out_dir` holds for `node` with `inputs`: the manifest must exist, record the
/// same inputs, and name the image digest that the image's `.sha256` file holds (a set committed
/// only in part has no manifest, or one that disagrees).
pub fn freshness(out_dir: &Path, node: &str, inputs: &BuildInputs) -> Freshness {
    let manifest = out_dir.join(format!("{node}.manifest.json"));
    let image = out_dir.join(format!("{node}.img"));
    let Ok(text) = std::fs::read(&manifest) else {
        return Freshness::Stale(format!("{} does not exist", manifest.display()));
    };
    let Ok(rec) = serde_json::from_slice::<RecordedBuild>(&text) else {
        return Freshness::Stale(format!("{} is not readable", manifest.display()));
    };
    let Some(was) = rec.inputs else {
        return Freshness::Stale("the manifest records no build inputs".into());
    };
    let side =
        std::fs::read_to_string(out_dir.join(format!("{node}.img.sha256"))).unwrap_or_default();
    if side.split_whitespace().next() != Some(rec.sha256.as_str()) || !image.exists() {
        return Freshness::Stale(format!("{} does not match its manifest", image.display()));
    }
    if was == *inputs {
        return Freshness::Current;
    }
    let why: Vec<&str> = [
        (
            was.piimg != inputs.piimg || was.agent_sha256 != inputs.agent_sha256,
            "piimg version",
        ),
        (was.profiles != inputs.profiles, "profile"),
        (was.secrets != inputs.secrets, "secrets"),
        (was.lock != inputs.lock, "piimg.lock"),
        (was.overlays != inputs.overlays, "overlays"),
        (was.components != inputs.components, "local components"),
        (
            was.source_date_epoch != inputs.source_date_epoch,
            "SOURCE_DATE_EPOCH",
        ),
        (was.compress != inputs.compress, "compression"),
    ]
    .into_iter()
    .filter_map(|(changed, what)| changed.then_some(what))
    .collect();
    Freshness::Stale(format!("changed since the last build: {}", why.join(", ")))
}

/// The manifest written beside the image.
#[derive(Debug, Serialize)]
pub struct Manifest {
    pub profile: String,
    pub cluster: String,
    pub image: String,
    pub sha256: String,
    pub size: u64,
    /// `NAME.img.bmap`, and the mapped share of the image.
    pub bmap: String,
    pub mapped_bytes: u64,
    /// Compressed copies (file name, sha256).
    pub compressed: BTreeMap<String, String>,
    pub inputs: BuildInputs,
    pub source_date_epoch: i64,
    pub kernel_release: String,
    pub partitions: Vec<ManifestPartition>,
    pub node: piimg_agent::node::NodeConfig,
    pub components: Vec<LockEntry>,
    pub modules: Vec<String>,
    pub modules_not_in_kernel: Vec<String>,
    /// The board's drivers and why each is there (device tree paths, suppliers, by hand).
    pub drivers: BTreeMap<String, Vec<String>>,
    pub files: Vec<image::FileEntry>,
}

#[derive(Debug, Serialize)]
pub struct ManifestPartition {
    pub number: u32,
    pub name: String,
    pub start: u64,
    pub size: u64,
    pub partuuid: String,
}

#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub image: PathBuf,
    pub sha256: String,
    pub manifest: PathBuf,
    pub size: u64,
    pub mapped_bytes: u64,
}

/// Builds several nodes' images into `opts.out_dir`, `jobs` at a time, each reporting to its own
/// reporter; the results come in `nodes` order. A node that fails does not stop the others: their
/// outputs are independent and each is committed whole or not at all.
pub fn build_many(
    profiles: &Profiles,
    nodes: &[&NodeProfile],
    cache: &Cache,
    lock_file: &Path,
    opts: &BuildOptions,
    jobs: usize,
    reporters: &[impl Reporter],
) -> Vec<Result<BuildOutput, PipelineError>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let results: Mutex<BTreeMap<usize, Result<BuildOutput, PipelineError>>> =
        Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, nodes.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let (Some(node), Some(reporter)) = (nodes.get(i), reporters.get(i)) else {
                    break;
                };
                let r = build(profiles, node, cache, lock_file, opts, reporter);
                if let Ok(mut m) = results.lock() {
                    m.insert(i, r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_values()
        .collect()
}

/// Builds one node's image into `opts.out_dir`.
pub fn build(
    profiles: &Profiles,
    node: &NodeProfile,
    cache: &Cache,
    lock_file: &Path,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
) -> Result<BuildOutput, PipelineError> {
    let Prepared {
        _building,
        comps,
        depends,
        recorded,
    } = prepare(
        profiles,
        node,
        cache,
        lock_file,
        opts,
        &opts.out_dir,
        reporter,
    )?;
    let seed = id_seed(node);
    let layout = node_layout(node, &seed)?;
    let mut config = node.config.clone();
    config.storage.root_partuuid = Some(layout.parts[1].partuuid.clone());
    config.storage.data_partuuid = Some(layout.parts[2].partuuid.clone());
    let overlays = asm::overlays_dir(&profiles.dir);
    let inputs = Inputs {
        netboot_root: None,
        node,
        components: &comps,
        depends: &depends,
        cache,
        agent: opts.agent,
        overlays: overlays.as_deref(),
        epoch: opts.epoch,
        config: &config,
        cluster: &node.cluster,
    };
    let mut assembled = asm::assemble(&inputs, reporter)?;
    let dest = opts.out_dir.join(format!("{}.img", node.name));
    let written = image::write_image(
        &mut assembled,
        &layout,
        seed.as_bytes(),
        opts.epoch,
        &dest,
        reporter,
    )?;
    let sha256 = written.sha256.clone();
    let artifacts = image::stage_artifacts(written, &opts.compress, reporter)?;
    reporter.begin("writing the manifest", None);
    let mapped_bytes = artifacts.bmap.mapped_bytes();
    let manifest = Manifest::new(
        node, &sha256, &layout, &artifacts, recorded, &config, &assembled,
    )?;
    let manifest_path = opts.out_dir.join(format!("{}.manifest.json", node.name));
    let mut set = artifacts.set;
    let mut text = serde_json::to_vec_pretty(&manifest).map_err(image::ImageError::Json)?;
    text.push(b'\n');
    set.push(image::stage_bytes(&manifest_path, &text)?);
    commit_outputs(set, &opts.out_dir, !assembled.secret_paths.is_empty())?;
    reporter.end();
    Ok(BuildOutput {
        image: dest,
        sha256,
        manifest: manifest_path,
        size: layout.disk_size,
        mapped_bytes,
    })
}

/// What every build of a node does before assembling: hold the node's build guard for `out_dir`,
/// clear a killed build's leftovers, and have its components locked, fetched and opened.
struct Prepared {
    _building: components::cache::CacheLock,
    comps: BTreeMap<String, LockEntry>,
    depends: BTreeMap<String, Vec<String>>,
    recorded: BuildInputs,
}

fn prepare(
    profiles: &Profiles,
    node: &NodeProfile,
    cache: &Cache,
    lock_file: &Path,
    opts: &BuildOptions,
    out_dir: &Path,
    reporter: &dyn Reporter,
) -> Result<Prepared, PipelineError> {
    // One build of a node into a folder at a time; it then owns that node's temp files there,
    // and clears those a killed build left behind.
    std::fs::create_dir_all(out_dir)
        .map_err(|e| PipelineError::Commit(out_dir.to_path_buf(), e))?;
    let building = cache.lock(&build_guard_name(out_dir, &node.name))?;
    remove_leftovers(out_dir, &node.name);
    let lock = Lock::load_or_new(lock_file)?;
    let recorded = build_inputs(profiles, node, lock_file, opts)?;
    let suite = &node.image.sources.suite;
    if lock.suite_entries(suite).is_empty() {
        return Err(PipelineError::SuiteNotLocked {
            lock: lock_file.to_path_buf(),
            suite: suite.clone(),
            profile: node.name.clone(),
        });
    }
    let mut comps = node_components(&lock, node, cache, opts)?;
    let depends = lock_depends(&lock, suite);
    let needed = needed_components(&lock, &depends, node, &mut comps, reporter)?;
    components::fetch_locked(
        &needed,
        cache,
        &FetchOptions {
            offline: opts.offline,
            sources: node.image.sources.clone(),
        },
        reporter,
    )?;
    Ok(Prepared {
        _building: building,
        comps,
        depends,
        recorded,
    })
}

/// What `build --netboot` wrote for one node.
#[derive(Debug, Clone)]
pub struct NetbootOutput {
    pub record: crate::netboot::tree::NodeRecord,
    /// The node's folder in the tree.
    pub folder: PathBuf,
    pub root_url: String,
    pub root_bytes: u64,
    /// The node's local card (`NAME.secrets.img`), when its secrets stay off the tree.
    pub card: Option<PathBuf>,
}

/// Builds `node` into the netboot tree `tree_dir`: its boot files in the folder its bootloader
/// reads, its root as a squashfs image beside them, and (unless the profile serves them) its
/// secrets on a local card image in `opts.out_dir`.
pub fn build_netboot(
    profiles: &Profiles,
    node: &NodeProfile,
    cache: &Cache,
    lock_file: &Path,
    opts: &BuildOptions,
    tree_dir: &Path,
    reporter: &dyn Reporter,
) -> Result<NetbootOutput, PipelineError> {
    use crate::netboot::{node as nb, tree};
    let unset = |what| PipelineError::NetbootUnset {
        profile: node.name.clone(),
        path: node.path.clone(),
        what,
    };
    let key = node.netboot.key.clone().ok_or_else(|| {
        unset("no netboot.serial or netboot.mac: the folder its bootloader reads")
    })?;
    let server = node
        .netboot
        .server
        .ok_or_else(|| unset("no netboot.server: where `piimg serve` answers HTTP"))?;
    let folder = key.dir().to_string();
    let url = nb::root_url(server, &folder);
    // The card goes to the output folder: the node's guard there keeps an SD build of the same
    // node from clearing its staged file.
    std::fs::create_dir_all(&opts.out_dir)
        .map_err(|e| PipelineError::Commit(opts.out_dir.clone(), e))?;
    let _card_guard = cache.lock(&build_guard_name(&opts.out_dir, &node.name))?;
    remove_leftovers(&opts.out_dir, &node.name);
    let Prepared {
        _building,
        comps,
        depends,
        ..
    } = prepare(profiles, node, cache, lock_file, opts, tree_dir, reporter)?;
    let config = nb::netboot_config(&node.config);
    let overlays = asm::overlays_dir(&profiles.dir);
    let inputs = Inputs {
        netboot_root: Some(&url),
        node,
        components: &comps,
        depends: &depends,
        cache,
        agent: opts.agent,
        overlays: overlays.as_deref(),
        epoch: opts.epoch,
        config: &config,
        cluster: &node.cluster,
    };
    let mut assembled = asm::assemble(&inputs, reporter)?;
    let serve_secrets = node.netboot.secrets == crate::profile::SecretsPolicy::Serve;
    let has_secrets = !assembled.secret_paths.is_empty();
    // The card is staged before the tree changes and committed right after: a served root
    // without secrets never lacks the card that holds them.
    let card = if has_secrets && !serve_secrets {
        let t = nb::secrets_to_card(&mut assembled, &config, opts.epoch)?;
        reporter.begin("writing the secrets card", None);
        let dest = opts.out_dir.join(format!("{}.secrets.img", node.name));
        let size = (node.image.data_size + (2 << 20)).next_power_of_two();
        let seed = format!("{}:card", id_seed(node));
        let staged = image::write_card(&t, size, seed.as_bytes(), opts.epoch, &dest)?;
        reporter.end();
        Some((dest, staged))
    } else {
        None
    };

    reporter.begin("writing the root image (squashfs)", None);
    let staged = tempfile::Builder::new()
        .prefix(&format!(".{}.", node.name))
        .suffix(".partial")
        .tempfile_in(tree_dir)
        .map_err(|e| PipelineError::Commit(tree_dir.to_path_buf(), e))?;
    let report = crate::fs::squashfs::write(
        &assembled.root,
        staged.as_file(),
        &crate::fs::squashfs::SquashOptions::pi(opts.epoch),
    )?;
    let root_sha = sha256_path(staged.path())?;
    reporter.end();
    nb::add_netroot(
        &mut assembled.initramfs,
        &config,
        &root_sha,
        report.bytes,
        opts.epoch,
    )?;
    let initrd = image::initramfs_cpio(&assembled.initramfs)?;
    let placed = |name: &str, data, private| tree::Placed {
        name: name.to_string(),
        data,
        private,
    };
    let mut files: Vec<tree::Placed> = nb::boot_files(&assembled.boot)
        .into_iter()
        .map(|(n, d)| placed(&n, d, false))
        .collect();
    files.push(placed(
        asm::INITRAMFS_FILE,
        crate::tree::FileData::from_bytes(initrd),
        false,
    ));
    files.push(placed(
        nb::ROOT_IMAGE,
        crate::tree::FileData::Host {
            path: staged.path().to_path_buf(),
            len: report.bytes,
        },
        has_secrets && serve_secrets,
    ));
    // The Pi 3 boot ROM fetches bootcode.bin from the top of the tree, before any folder.
    let top: Vec<tree::Placed> = files
        .iter()
        .filter(|p| p.name == "bootcode.bin")
        .map(|p| placed(&p.name, p.data.clone(), false))
        .collect();
    reporter.begin("merging into the netboot tree", None);
    let record = tree::merge(
        tree_dir,
        tree::NodeFiles {
            node: node.name.clone(),
            board: config.board,
            role: config.role,
            folder: folder.clone(),
            root: nb::ROOT_IMAGE.to_string(),
            secrets_served: has_secrets && serve_secrets,
            files,
            top,
        },
    )?;
    reporter.end();
    drop(staged);
    let card_path = match card {
        Some((dest, staged)) => {
            let mut set = crate::fs::sparse::OutputSet::new();
            set.push(staged);
            commit_outputs(set, &opts.out_dir, true)?;
            Some(dest)
        }
        None => None,
    };
    Ok(NetbootOutput {
        folder: tree_dir.join(&folder),
        record,
        root_url: url,
        root_bytes: report.bytes,
        card: card_path,
    })
}

/// The components this node may use: its suite's packages, URL pins, then local overrides.
fn node_components(
    lock: &Lock,
    node: &NodeProfile,
    cache: &Cache,
    opts: &BuildOptions,
) -> Result<BTreeMap<String, LockEntry>, PipelineError> {
    let suite = &node.image.sources.suite;
    let mut comps: BTreeMap<String, LockEntry> = BTreeMap::new();
    for e in &lock.components {
        match e.source() {
            Some(Source::Debian { suite: s, .. }) if s == suite => {
                comps.insert(e.name.clone(), e.clone());
            }
            Some(Source::Url(_)) => {
                comps.insert(e.name.clone(), e.clone());
            }
            _ => {}
        }
    }
    let mut overrides: BTreeMap<String, PathBuf> = node.components.clone();
    overrides.extend(opts.overrides.iter().cloned());
    for (name, path) in &overrides {
        // A local file's version is unknown: say so rather than borrow the lock's.
        let e = fetch::add_local(name, "local", path, cache)?;
        comps.insert(name.clone(), e);
    }
    Ok(comps)
}

/// The part of the lock this node needs (only that must be in the cache). Optional tools that
/// are neither pinned nor supplied are dropped from `comps`, with a note.
fn needed_components(
    lock: &Lock,
    depends: &BTreeMap<String, Vec<String>>,
    node: &NodeProfile,
    comps: &mut BTreeMap<String, LockEntry>,
    reporter: &dyn Reporter,
) -> Result<Lock, PipelineError> {
    let role = node.config.role;
    let mut needed: BTreeSet<String> = BTreeSet::new();
    let (roots, firmware) = asm::node_packages(&node.config);
    needed.extend(asm::packages_for(&roots, depends, comps)?);
    needed.extend(firmware.into_iter().map(String::from));
    if let Some(k) = comps
        .keys()
        .find(|k| k.starts_with(asm::KERNEL_PACKAGE_PREFIX) && *k != "linux-image-arm64")
    {
        needed.insert(k.clone());
    }
    if role.is_kubernetes() {
        needed.extend(["kubelet", "kubeadm"].map(String::from));
        // The init node's cluster keeper runs kubectl; elsewhere these are tools for people,
        // included when pinned or supplied.
        let init = node.config.kubernetes.as_ref().is_some_and(|k| k.init);
        let mut optional = vec!["crictl"];
        if role == piimg_agent::node::Role::ControlPlane {
            if init {
                needed.insert("kubectl".to_string());
            } else {
                optional.push("kubectl");
            }
        }
        for name in optional {
            if comps.get(name).is_some_and(|e| e.sha256.is_some()) {
                needed.insert(name.to_string());
            } else {
                comps.remove(name);
                reporter.info(&format!(
                    "{name} is not pinned in the lock nor supplied: the image will not include it"
                ));
            }
        }
    }
    Ok(Lock {
        version: lock.version,
        snapshots: lock.snapshots.clone(),
        components: needed
            .iter()
            .map(|n| {
                comps
                    .get(n)
                    .cloned()
                    .ok_or_else(|| crate::assemble::AssembleError::NotLocked(n.clone()))
            })
            .collect::<Result<_, _>>()?,
    })
}

/// Every id of a node's image derives from its identity, so PARTUUIDs and filesystem UUIDs are
/// stable across builds and differ between nodes.
pub fn id_seed(node: &NodeProfile) -> String {
    format!(
        "piimg:{}:{}:{}",
        node.cluster, node.name, node.config.hostname
    )
}

fn node_layout(node: &NodeProfile, seed: &str) -> Result<crate::fs::disk::Layout, PipelineError> {
    Ok(image::layout(
        node.config.board.needs_mbr(),
        Sizes {
            disk: node.image.size,
            boot: node.image.boot_size,
            data: node.image.data_size,
        },
        seed.as_bytes(),
    )?)
}

impl Manifest {
    fn new(
        node: &NodeProfile,
        sha256: &str,
        layout: &crate::fs::disk::Layout,
        artifacts: &image::Artifacts,
        inputs: BuildInputs,
        config: &piimg_agent::node::NodeConfig,
        assembled: &asm::Assembled,
    ) -> Result<Manifest, PipelineError> {
        let mut files = image::list_tree(&assembled.boot, "boot", &[])?;
        files.extend(image::list_tree(
            &assembled.root,
            "root",
            &assembled.secret_paths,
        )?);
        files.extend(image::list_tree(&assembled.data, "data", &[])?);
        Ok(Manifest {
            profile: node.name.clone(),
            cluster: node.cluster.clone(),
            image: format!("{}.img", node.name),
            sha256: sha256.to_string(),
            size: layout.disk_size,
            bmap: format!("{}.img.bmap", node.name),
            mapped_bytes: artifacts.bmap.mapped_bytes(),
            compressed: artifacts.compressed.iter().cloned().collect(),
            source_date_epoch: inputs.source_date_epoch,
            inputs,
            kernel_release: assembled.kernel_release.clone(),
            partitions: layout
                .parts
                .iter()
                .map(|p| ManifestPartition {
                    number: p.number,
                    name: p.name.clone(),
                    start: p.start,
                    size: p.size,
                    partuuid: p.partuuid.clone(),
                })
                .collect(),
            node: config.redacted(),
            components: assembled.components.clone(),
            modules: assembled.modules_requested.clone(),
            modules_not_in_kernel: assembled.modules_missing.clone(),
            drivers: assembled
                .drivers
                .iter()
                .map(|c| (c.module.clone(), c.why.clone()))
                .collect(),
            files,
        })
    }
}

/// Commits the image and its files as one set. An image holding keys is as secret as the keys:
/// readable by its owner only, in a folder others cannot list.
fn commit_outputs(
    set: crate::fs::sparse::OutputSet,
    out_dir: &Path,
    secret: bool,
) -> Result<(), PipelineError> {
    let mode = if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| PipelineError::Commit(out_dir.to_path_buf(), e))?;
        0o600
    } else {
        0o644
    };
    set.commit(mode)
        .map_err(|e| PipelineError::Commit(out_dir.to_path_buf(), e))?;
    Ok(())
}

/// Packages (per suite, or per name for other components) whose version or file changed.
fn lock_changes(before: &Lock, after: &Lock) -> Vec<String> {
    let key = |e: &LockEntry| {
        let suite = match e.source() {
            Some(Source::Debian { suite, .. }) => suite.to_string(),
            _ => String::new(),
        };
        (e.name.clone(), suite)
    };
    let old: BTreeMap<_, &LockEntry> = before.components.iter().map(|e| (key(e), e)).collect();
    let new: BTreeMap<_, &LockEntry> = after.components.iter().map(|e| (key(e), e)).collect();
    let mut out = Vec::new();
    for (k, n) in &new {
        let from = n
            .archive
            .as_deref()
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        match old.get(k) {
            None => out.push(format!("added   {} {}{from}", n.name, n.version)),
            Some(o) if o.version != n.version || o.sha256 != n.sha256 => out.push(format!(
                "updated {} {} -> {}{from}",
                n.name, o.version, n.version
            )),
            Some(_) => {}
        }
    }
    for (k, o) in &old {
        if !new.contains_key(k) {
            out.push(format!("removed {} {}", o.name, o.version));
        }
    }
    out
}

/// Package -> the locked packages it depends on, as recorded by `piimg fetch`.
pub fn lock_depends(lock: &Lock, suite: &str) -> BTreeMap<String, Vec<String>> {
    lock.suite_entries(suite)
        .into_iter()
        .map(|e| (e.name.clone(), e.depends.clone()))
        .collect()
}
