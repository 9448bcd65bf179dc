//! Running the piimg binary under test: one builder for the command line, the environment
//! (SOURCE_DATE_EPOCH, TZ, umask, the download cache) and the folder it runs in, and one result
//! type whose failure message shows the command, its exit and everything it printed.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use super::{cache_home, standin};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_piimg");

/// A piimg command line being put together ([`Piimg::new`]); [`Piimg::run`] runs it to the end.
#[must_use]
pub struct Piimg {
    args: Vec<std::ffi::OsString>,
    cmd: Command,
    umask: Option<String>,
}

impl Piimg {
    /// `piimg` with no arguments, in the test's folder and environment, stdin closed.
    pub fn new() -> Piimg {
        let mut cmd = Command::new(BIN);
        cmd.stdin(Stdio::null());
        Piimg {
            args: Vec::new(),
            cmd,
            umask: None,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Piimg {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Piimg {
        for a in args {
            self.args.push(a.as_ref().to_os_string());
        }
        self
    }

    /// The folder it runs in (where `profiles/`, `piimg.lock` and `out/` are found).
    pub fn cwd(mut self, dir: &Path) -> Piimg {
        self.cmd.current_dir(dir);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Piimg {
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Piimg {
        self.cmd.env_remove(key);
        self
    }

    /// `--profiles DIR`.
    pub fn profiles(self, dir: &Path) -> Piimg {
        self.arg("--profiles").arg(dir)
    }

    /// `$XDG_CACHE_HOME`: where the downloads are kept.
    pub fn cache(self, dir: &Path) -> Piimg {
        self.env("XDG_CACHE_HOME", dir)
    }

    /// The download cache every test binary shares ([`cache_home`]).
    pub fn shared_cache(self) -> Piimg {
        self.cache(&cache_home())
    }

    /// `SOURCE_DATE_EPOCH`.
    pub fn epoch(self, epoch: &str) -> Piimg {
        self.env("SOURCE_DATE_EPOCH", epoch)
    }

    /// No `SOURCE_DATE_EPOCH`, whatever the test's environment holds.
    pub fn no_epoch(self) -> Piimg {
        self.env_remove("SOURCE_DATE_EPOCH")
    }

    pub fn tz(self, tz: &str) -> Piimg {
        self.env("TZ", tz)
    }

    /// No proxy from the environment: the traffic stays on loopback.
    pub fn no_proxy(self) -> Piimg {
        self.env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
    }

    /// The umask piimg starts with (through `sh`: [`Command`] has none of its own).
    pub fn umask(mut self, umask: &str) -> Piimg {
        self.umask = Some(umask.to_string());
        self
    }

    /// `--component NAME=tests/standins/NAME` for each name.
    pub fn standins(mut self, names: &[&str]) -> Piimg {
        for n in names {
            self = self
                .arg("--component")
                .arg(format!("{n}={}", standin(n).display()));
        }
        self
    }

    /// The arguments as they will be shown in a failure message.
    fn shown_args(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The [`Command`] itself, for a test that drives the process (stdin, signals) on its own.
    pub fn command(mut self) -> Command {
        match &self.umask {
            Some(umask) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
                    .arg(BIN)
                    .args(&self.args);
                // The folder and environment set so far go to `sh`, and so to piimg.
                if let Some(dir) = self.cmd.get_current_dir() {
                    sh.current_dir(dir);
                }
                for (k, v) in self.cmd.get_envs() {
                    match v {
                        Some(v) => sh.env(k, v),
                        None => sh.env_remove(k),
                    };
                }
                sh.stdin(Stdio::null());
                sh
            }
            None => {
                self.cmd.args(&self.args);
                self.cmd
            }
        }
    }

    /// Starts piimg with its output captured; [`Running::wait`] collects it.
    pub fn spawn(self) -> Running {
        let args = self.shown_args();
        let child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start piimg {}: {e}", args.join(" ")));
        Running { child, args }
    }

    /// Runs piimg to the end.
    pub fn run(self) -> Run {
        let args = self.shown_args();
        let o = self
            .command()
            .output()
            .unwrap_or_else(|e| panic!("cannot run piimg {}: {e}", args.join(" ")));
        Run::new(args, o)
    }
}

/// A piimg process started by [`Piimg::spawn`].
pub struct Running {
    pub child: Child,
    args: Vec<String>,
}

impl Running {
    /// Waits for the end and collects what it printed.
    pub fn wait(self) -> Run {
        let o = self.child.wait_with_output().unwrap();
        Run::new(self.args, o)
    }

    /// Kills it (SIGKILL) and reaps it; what it printed is dropped.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One finished piimg run.
#[derive(Debug, Clone)]
pub struct Run {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn new(args: Vec<String>, o: Output) -> Run {
        Run {
            args,
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout then stderr, as one text.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The whole run, for a failure message.
    pub fn text(&self) -> String {
        format!(
            "piimg {}\nexit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }

    /// Fails the test, showing the run, unless piimg exited 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Run {
        assert_eq!(self.code, Some(0), "{}", self.text());
        self
    }

    /// Fails the test, showing the run, unless piimg exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "{}", self.text());
        self
    }
}
