//! Temporary projects: a folder with copies of the repository's profiles and, on request, its
//! piimg.lock (or another lock) and overlays, which a test may edit without touching the
//! repository, and in which piimg runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::piimg::Piimg;
use super::{fresh_dir, repo, temp_dir};

/// What a new project gets: [`project`] starts with every shipped profile and nothing else.
#[must_use]
pub struct ProjectSpec {
    profiles: Option<Vec<String>>,
    lock: Option<PathBuf>,
    overlays: bool,
}

/// A project spec holding every shipped profile, no lock, no overlays.
pub fn project() -> ProjectSpec {
    ProjectSpec {
        profiles: None,
        lock: None,
        overlays: false,
    }
}

impl ProjectSpec {
    /// Only these profiles (`qemu` for profiles/qemu.toml).
    pub fn only(mut self, names: &[&str]) -> ProjectSpec {
        self.profiles = Some(names.iter().map(|n| n.to_string()).collect());
        self
    }

    /// The repository's piimg.lock.
    pub fn lock(self) -> ProjectSpec {
        self.lock_from(&repo().join("piimg.lock"))
    }

    /// `lock` as the project's piimg.lock.
    pub fn lock_from(mut self, lock: &Path) -> ProjectSpec {
        self.lock = Some(lock.to_path_buf());
        self
    }

    /// A copy of the repository's overlays/.
    pub fn overlays(mut self) -> ProjectSpec {
        self.overlays = true;
        self
    }

    /// Creates the project in `root` (made if missing).
    pub fn create_in(self, root: &Path) -> Project {
        let profiles = root.join("profiles");
        std::fs::create_dir_all(&profiles).unwrap();
        let src = repo().join("profiles");
        match &self.profiles {
            Some(names) => {
                for n in names {
                    let file = format!("{n}.toml");
                    std::fs::copy(src.join(&file), profiles.join(&file))
                        .unwrap_or_else(|e| panic!("profiles/{file}: {e}"));
                }
            }
            None => {
                for e in std::fs::read_dir(&src).unwrap() {
                    let p = e.unwrap().path();
                    if p.extension().is_some_and(|x| x == "toml") {
                        std::fs::copy(&p, profiles.join(p.file_name().unwrap())).unwrap();
                    }
                }
            }
        }
        if let Some(lock) = &self.lock {
            std::fs::copy(lock, root.join("piimg.lock"))
                .unwrap_or_else(|e| panic!("{}: {e}", lock.display()));
        }
        if self.overlays {
            let st = Command::new("cp")
                .arg("-a")
                .arg(repo().join("overlays"))
                .arg(root.join("overlays"))
                .status()
                .unwrap();
            assert!(st.success(), "copying overlays/");
        }
        Project {
            root: root.to_path_buf(),
            _temp: None,
        }
    }

    /// Creates the project in [`fresh_dir`]`(name)`, which outlives the test.
    pub fn create_fresh(self, name: &str) -> Project {
        self.create_in(&fresh_dir(name))
    }

    /// Creates the project in a temporary folder, removed with the [`Project`].
    pub fn create_temp(self, prefix: &str) -> Project {
        let t = temp_dir(prefix);
        let mut p = self.create_in(t.path());
        p._temp = Some(t);
        p
    }
}

/// A project folder; removed when dropped if it was made by [`ProjectSpec::create_temp`].
pub struct Project {
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Project {
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn profiles(&self) -> PathBuf {
        self.root.join("profiles")
    }

    /// profiles/NAME.toml.
    pub fn profile(&self, name: &str) -> PathBuf {
        self.profiles().join(format!("{name}.toml"))
    }

    /// secrets/CLUSTER.toml, where piimg keeps the cluster's generated secrets.
    pub fn secrets(&self, cluster: &str) -> PathBuf {
        self.root.join("secrets").join(format!("{cluster}.toml"))
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.profile(name)).unwrap()
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.profile(name), text).unwrap();
    }

    /// Replaces the first `from` in profile `name`, which must hold it.
    #[track_caller]
    pub fn replace(&self, name: &str, from: &str, to: &str) {
        let t = self.read(name);
        assert!(t.contains(from), "{name}.toml has no `{from}`");
        self.write(name, &t.replacen(from, to, 1));
    }

    /// Adds `text` as lines at the end of profile `name`.
    pub fn append(&self, name: &str, text: &str) {
        let t = self.read(name);
        self.write(name, &format!("{t}\n{text}\n"));
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.profile(name)).unwrap();
    }

    /// piimg, run in this project.
    pub fn piimg(&self) -> Piimg {
        Piimg::new().cwd(&self.root)
    }

    /// piimg, run in this project with the download cache the test binaries share and no
    /// SOURCE_DATE_EPOCH from the test's environment.
    pub fn piimg_cached(&self) -> Piimg {
        self.piimg().shared_cache().no_epoch()
    }
}
