//! `piimg serve`: the netboot servers in the foreground until Ctrl-C, one log line per request.

use anyhow::{bail, Result};
use piimg::netboot::dhcp::{self, ProxyDhcp};
use piimg::netboot::http;
use piimg::netboot::tftp::{Event, Server};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set by SIGINT/SIGTERM; the server finishes its loop and returns.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Serves `dir` over TFTP on `bind:tftp_port` and HTTP on `bind:http_port` (and proxyDHCP on
/// `proxy_dhcp`) until SIGINT or SIGTERM; exit status 0 then.
pub fn run(
    dir: &Path,
    bind: IpAddr,
    tftp_port: u16,
    http_port: u16,
    proxy_dhcp: Option<&str>,
    quiet: bool,
) -> Result<i32> {
    if !dir.is_dir() {
        bail!("--dir {}: no such folder", dir.display());
    }
    let server = Server::bind(dir, SocketAddr::new(bind, tftp_port))?;
    let web = http::Server::bind(dir, SocketAddr::new(bind, http_port))?;
    let dhcp = match proxy_dhcp {
        Some(iface) => Some(ProxyDhcp::bind(iface, tftp_address(bind)?)?),
        None => None,
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // With a port 0 printed even with -q: whoever started us must learn the port chosen.
    if !quiet || tftp_port == 0 || http_port == 0 {
        eprintln!(
            "serving {} over TFTP on {} (Ctrl-C stops)",
            dir.display(),
            server.local_addr()?
        );
        eprintln!(
            "serving {} over HTTP on http://{}/",
            dir.display(),
            web.local_addr()?
        );
    }
    if let Some(dhcp) = &dhcp {
        announce_proxy_dhcp(dhcp, tftp_port, quiet);
    }
    std::thread::scope(|scope| -> Result<()> {
        // Whichever server stops first, on an error, stops the others.
        let proxy = dhcp.as_ref().map(|d| {
            scope.spawn(|| {
                let r = d.serve(&STOP, &|e| log_dhcp(&e, quiet));
                STOP.store(true, Ordering::SeqCst);
                r
            })
        });
        let web = scope.spawn(|| web.serve(&STOP, &|e| log_http(&e, dir, quiet)));
        let tftp = server.serve(&STOP, &|e| log(&e, dir, quiet));
        STOP.store(true, Ordering::SeqCst);
        if let Some(proxy) = proxy {
            match proxy.join() {
                Ok(r) => r?,
                Err(_) => bail!("the proxyDHCP thread panicked"),
            }
        }
        if web.join().is_err() {
            bail!("the HTTP thread panicked");
        }
        Ok(tftp?)
    })?;
    if !quiet {
        eprintln!("stopped");
    }
    Ok(0)
}

/// ` (node NAME)` when `file` lies in a node's folder of a tree `piimg build --netboot` wrote;
/// the records are read again each time, since builds merge nodes in while serving.
fn node_of(dir: &Path, file: &str) -> String {
    let folder = file.trim_start_matches('/').split('/').next().unwrap_or("");
    piimg::netboot::tree::read_records(dir)
        .ok()
        .and_then(|r| r.into_values().find(|r| r.folder == folder))
        .map_or(String::new(), |r| format!(" (node {})", r.node))
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// One stderr line per request; with -q only the ones that went wrong. Names come from the
/// network: escaped, so none can forge a line of the log.
fn log(e: &Event, dir: &Path, quiet: bool) {
    match e {
        Event::Sent {
            peer,
            file,
            bytes,
            elapsed,
            blksize,
            window,
        } if !quiet => eprintln!(
            "tftp {peer} {}{}: {bytes} bytes in {} (blksize {blksize}, windowsize {window})",
            file.escape_debug(),
            node_of(dir, file),
            secs(*elapsed)
        ),
        Event::Sent { .. } => {}
        Event::Failed {
            peer,
            file,
            reason,
            elapsed,
        } => eprintln!(
            "tftp {peer} {}{}: failed after {}: {reason}",
            file.escape_debug(),
            node_of(dir, file),
            secs(*elapsed)
        ),
        Event::Refused { peer, file, reason } => {
            eprintln!("tftp {peer} {}: refused: {reason}", file.escape_debug())
        }
    }
}

/// The TFTP server the proxyDHCP names: --bind when it is one IPv4 address, else None (the
/// interface's own address). The Pi boot ROM speaks IPv4 only.
fn tftp_address(bind: IpAddr) -> Result<Option<Ipv4Addr>> {
    match bind {
        IpAddr::V4(a) if !a.is_unspecified() => Ok(Some(a)),
        IpAddr::V6(a) if !a.is_unspecified() => {
            bail!("--proxy-dhcp needs an IPv4 --bind (or none): Raspberry Pi boot ROMs speak IPv4 only")
        }
        _ => Ok(None),
    }
}

fn announce_proxy_dhcp(dhcp: &ProxyDhcp, port: u16, quiet: bool) {
    if quiet {
        return;
    }
    eprintln!(
        "answering Raspberry Pi boot ROMs on {} with proxyDHCP (TFTP server {})",
        dhcp.interface(),
        dhcp.server()
    );
    // Not an error: tests, and setups that forward port 69, serve elsewhere on purpose.
    if port != 69 {
        eprintln!("warning: Raspberry Pis fetch over TFTP from port 69, not --tftp-port {port}");
    }
}

/// One stderr line per PXE request; the DHCP traffic of other devices is not logged.
fn log_dhcp(e: &dhcp::Event, quiet: bool) {
    match e {
        dhcp::Event::Answered {
            mac,
            xid,
            reply,
            tftp,
        } if !quiet => eprintln!("dhcp {mac} xid {xid:#010x}: sent {reply}, TFTP server {tftp}"),
        dhcp::Event::Answered { .. } => {}
        dhcp::Event::Ignored {
            mac: Some(mac),
            reason,
        } if reason.from_pxe_client() && !quiet => eprintln!("dhcp {mac}: ignored: {reason}"),
        dhcp::Event::Ignored { .. } => {}
        dhcp::Event::Unsent { mac, reply, error } => {
            eprintln!("dhcp {mac}: sending {reply} failed: {error}")
        }
    }
}

/// One stderr line per HTTP request; with -q only the ones refused or cut short.
fn log_http(e: &http::Event, dir: &Path, quiet: bool) {
    if quiet && e.status < 400 && e.problem.is_none() {
        return;
    }
    let request = match e.method.as_str() {
        "" => String::new(),
        m => format!(
            " {} {}{}",
            m.escape_debug(),
            e.target.escape_debug(),
            node_of(dir, &e.target)
        ),
    };
    let problem = match &e.problem {
        Some(p) => format!(": {}", p.escape_debug()),
        None => String::new(),
    };
    eprintln!(
        "http {}{request}: {}, {} bytes in {}{problem}",
        e.peer,
        e.status,
        e.bytes,
        secs(e.elapsed)
    );
}
