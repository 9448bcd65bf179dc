//! The serial console as it arrives: split into lines, each checked for the `--until` pattern
//! and a kernel panic, and the guest clock read from the kernel's and the agent's timestamps.

use super::End;
use regex::Regex;

/// The kernel timestamp at the start of a console line (`[    5.678901] ...`).
pub fn kernel_timestamp(line: &str) -> Option<f64> {
    let rest = line.trim_start_matches(['\r', '\n']).strip_prefix('[')?;
    let (num, _) = rest.split_once(']')?;
    num.trim().parse().ok()
}

/// The guest's clock on a console line: a kernel timestamp, or the uptime the agent prints with
/// `piimg-agent: ready (uptime N s)`.
pub fn guest_timestamp(line: &str) -> Option<f64> {
    if let Some(t) = kernel_timestamp(line) {
        return Some(t);
    }
    let (_, rest) = line.split_once("piimg-agent: ready (uptime ")?;
    let (num, _) = rest.split_once(" s)")?;
    num.parse().ok()
}

/// How a run ended: why, the console line, the guest clock and whether that clock is the line's own.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Hit {
    pub end: End,
    pub line: Option<String>,
    pub guest_seconds: Option<f64>,
    pub guest_exact: bool,
}

/// Splits console output into lines and checks each for `--until` and kernel panics.
pub(super) struct Watch<'a> {
    until: Option<&'a Regex>,
    pending: Vec<u8>,
    /// The guest clock of the last complete line that carried one.
    last_ts: Option<f64>,
    /// A match on the unfinished last line: a prompt waits without a newline, so it counts once
    /// the console has been quiet for a moment ([`Watch::quiet`]); if the line goes on, the
    /// whole line is checked instead.
    partial_hit: Option<Hit>,
}

impl<'a> Watch<'a> {
    pub(super) fn new(until: Option<&'a Regex>) -> Self {
        Watch {
            until,
            pending: Vec::new(),
            last_ts: None,
            partial_hit: None,
        }
    }

    /// Console bytes as they come; a match on a complete line ends the run.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Option<Hit> {
        self.pending.extend_from_slice(bytes);
        self.partial_hit = None;
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line).into_owned();
            if let Some(hit) = self.check(&text, false) {
                return Some(hit);
            }
        }
        if !self.pending.is_empty() {
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            self.partial_hit = self.check(&text, true);
        }
        None
    }

    pub(super) fn has_partial_hit(&self) -> bool {
        self.partial_hit.is_some()
    }

    /// The console went quiet: a match on the unfinished line now counts.
    pub(super) fn quiet(&mut self) -> Option<Hit> {
        self.partial_hit.take()
    }

    /// An end without a matching line, at the last guest time seen.
    pub(super) fn end(&self, why: End) -> Hit {
        Hit {
            end: why,
            line: None,
            guest_seconds: self.last_ts,
            guest_exact: false,
        }
    }

    /// Checks one console line (complete, or the unfinished tail when `partial`).
    pub(super) fn check(&mut self, line: &str, partial: bool) -> Option<Hit> {
        let ts = guest_timestamp(line);
        if !partial {
            if let Some(t) = ts {
                self.last_ts = Some(t);
            }
        }
        let clean = line.trim_end_matches(['\r', '\n']).to_string();
        if !partial && clean.contains("Kernel panic") {
            return Some(Hit {
                end: End::Panic(clean.clone()),
                line: Some(clean),
                guest_seconds: ts.or(self.last_ts),
                guest_exact: ts.is_some(),
            });
        }
        match self.until {
            Some(re) if re.is_match(&clean) => Some(Hit {
                end: End::Matched,
                line: Some(clean),
                guest_seconds: ts.or(self.last_ts),
                guest_exact: ts.is_some(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_matches_whole_lines_prompts_and_panics() {
        let re = Regex::new("piimg-agent: ready").unwrap();
        let mut w = Watch::new(Some(&re));
        assert_eq!(w.feed(b"[    1.250000] mmc0: new\r\n"), None);
        // The line arrives in pieces: the unfinished match waits for the rest of the line.
        assert_eq!(w.feed(b"/ # piimg-agent: ready (up"), None);
        assert!(w.has_partial_hit());
        let hit = w.feed(b"time 6.42 s)\r\nnext").unwrap();
        assert_eq!(
            hit,
            Hit {
                end: End::Matched,
                line: Some("/ # piimg-agent: ready (uptime 6.42 s)".to_string()),
                guest_seconds: Some(6.42),
                guest_exact: true
            }
        );
        // A prompt that never gets its newline counts once the console is quiet.
        let prompt = Regex::new(r"login: $").unwrap();
        let mut w = Watch::new(Some(&prompt));
        assert_eq!(w.feed(b"[    2.5] x\nnode login: "), None);
        let hit = w.quiet().unwrap();
        assert_eq!(hit.end, End::Matched);
        assert_eq!(hit.line.as_deref(), Some("node login: "));
        assert_eq!((hit.guest_seconds, hit.guest_exact), (Some(2.5), false));
        // More output on the same line replaces the partial match.
        let mut w = Watch::new(Some(&prompt));
        assert_eq!(w.feed(b"login: "), None);
        assert_eq!(w.feed(b"x"), None);
        assert_eq!(w.quiet(), None);
        // Panics end the run whatever `until` says; other ends keep the last clock seen.
        let mut w = Watch::new(None);
        let hit = w
            .feed(b"[    3.0] ok\n[    3.5] Kernel panic - not syncing: VFS\n")
            .unwrap();
        assert!(matches!(hit.end, End::Panic(ref l) if l.contains("not syncing")));
        assert_eq!((hit.guest_seconds, hit.guest_exact), (Some(3.5), true));
        let end = w.end(End::TimedOut);
        assert_eq!((end.end, end.guest_seconds), (End::TimedOut, Some(3.5)));
    }

    #[test]
    fn kernel_timestamps() {
        assert_eq!(kernel_timestamp("[    5.678901] mmc0: new"), Some(5.678901));
        assert_eq!(kernel_timestamp("\r[ 12.5] x"), Some(12.5));
        assert_eq!(kernel_timestamp("piimg-agent: ready"), None);
        assert_eq!(
            guest_timestamp("/ # piimg-agent: ready (uptime 6.42 s)"),
            Some(6.42)
        );
        assert_eq!(guest_timestamp("[ 1.5] x"), Some(1.5));
        assert_eq!(guest_timestamp("piimg-agent: ready"), None);
        assert_eq!(guest_timestamp("piimg-agent: ready (uptime x s)"), None);
    }
}
