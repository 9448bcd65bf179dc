//! `piimg serve`: the netboot servers in the foreground until Ctrl-C, one log line per request.

use anyhow::{bail, Result};
use piimg::netboot::tftp::{Event, Server};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set by SIGINT/SIGTERM; the server finishes its loop and returns.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Serves `dir` over TFTP on `bind:port` until SIGINT or SIGTERM; exit status 0 then.
pub fn run(dir: &Path, bind: IpAddr, port: u16, quiet: bool) -> Result<i32> {
    if !dir.is_dir() {
        bail!("--dir {}: no such folder", dir.display());
    }
    let server = Server::bind(dir, SocketAddr::new(bind, port))?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // Printed even for port 0, so whoever started us learns the port that was chosen.
    if !quiet {
        eprintln!(
            "serving {} over TFTP on {} (Ctrl-C stops)",
            dir.display(),
            server.local_addr()?
        );
    }
    server.serve(&STOP, &|e| log(&e, quiet))?;
    if !quiet {
        eprintln!("stopped");
    }
    Ok(0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// One stderr line per request; with -q only the ones that went wrong. Names come from the
/// network: escaped, so none can forge a line of the log.
fn log(e: &Event, quiet: bool) {
    match e {
        Event::Sent {
            peer,
            file,
            bytes,
            elapsed,
            blksize,
            window,
        } if !quiet => eprintln!(
            "tftp {peer} {}: {bytes} bytes in {} (blksize {blksize}, windowsize {window})",
            file.escape_debug(),
            secs(*elapsed)
        ),
        Event::Sent { .. } => {}
        Event::Failed {
            peer,
            file,
            reason,
            elapsed,
        } => eprintln!(
            "tftp {peer} {}: failed after {}: {reason}",
            file.escape_debug(),
            secs(*elapsed)
        ),
        Event::Refused { peer, file, reason } => {
            eprintln!("tftp {peer} {}: refused: {reason}", file.escape_debug())
        }
    }
}
