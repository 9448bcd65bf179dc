//! Progress on stderr: an indicatif bar per step on a terminal, one line per step otherwise
//! (logs, CI), nothing with `-q`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use piimg::report::Reporter;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

pub struct Progress {
    quiet: bool,
    tty: bool,
    current: Mutex<Option<(ProgressBar, String, Instant)>>,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress {
            quiet,
            tty: std::io::stderr().is_terminal(),
            current: Mutex::new(None),
        }
    }
}

impl Reporter for Progress {
    fn begin(&self, step: &str, total: Option<u64>) {
        if self.quiet {
            return;
        }
        let bar = if self.tty {
            let b = match total {
                Some(t) => ProgressBar::new(t).with_style(
                    ProgressStyle::with_template(
                        "{msg:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner(),
            };
            b.set_draw_target(ProgressDrawTarget::stderr());
            b.set_message(step.to_string());
            b
        } else {
            eprintln!("piimg: {step}...");
            ProgressBar::hidden()
        };
        if let Ok(mut c) = self.current.lock() {
            *c = Some((bar, step.to_string(), Instant::now()));
        }
    }

    fn advance(&self, n: u64) {
        if let Ok(c) = self.current.lock() {
            if let Some((b, _, _)) = c.as_ref() {
                b.inc(n);
            }
        }
    }

    fn end(&self) {
        if let Ok(mut c) = self.current.lock() {
            if let Some((b, step, t)) = c.take() {
                b.finish_and_clear();
                if self.tty && !self.quiet {
                    eprintln!("piimg: {step} ({:.1} s)", t.elapsed().as_secs_f64());
                }
            }
        }
    }

    fn info(&self, msg: &str) {
        if !self.quiet {
            if let Ok(c) = self.current.lock() {
                match c.as_ref() {
                    Some((b, _, _)) if self.tty => b.println(format!("piimg: {msg}")),
                    _ => eprintln!("piimg: {msg}"),
                }
            }
        }
    }
}

/// Progress of one node among several built at once: a line per step, named after the node
/// (bars from concurrent builds would overwrite each other).
pub struct NodeLines {
    name: String,
    quiet: bool,
}

impl NodeLines {
    pub fn new(name: &str, quiet: bool) -> NodeLines {
        NodeLines {
            name: name.to_string(),
            quiet,
        }
    }
}

impl Reporter for NodeLines {
    fn begin(&self, step: &str, _total: Option<u64>) {
        if !self.quiet {
            eprintln!("piimg: {}: {step}...", self.name);
        }
    }

    fn info(&self, msg: &str) {
        if !self.quiet {
            eprintln!("piimg: {}: {msg}", self.name);
        }
    }
}
