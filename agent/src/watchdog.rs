//! The hardware watchdog (bcm2835_wdt on a Pi): PID 1 pets it from its main loop, so a hung
//! main loop or a hung kernel resets the board instead of leaving it dead until someone
//! power-cycles it. A profile can turn it off (`agent.watchdog = false`).

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

pub const DEVICE: &str = "/dev/watchdog";
/// The timeout asked of the driver: long enough for a slow step of the main loop.
pub const TIMEOUT_SECS: i32 = 15;

pub struct Watchdog {
    file: File,
    every: Duration,
    last: Instant,
}

impl Watchdog {
    /// Opens and arms the device at `path`; sets its timeout where the driver allows and pets
    /// at a third of whatever timeout it ends up with.
    pub fn open(path: &Path) -> io::Result<Watchdog> {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        let timeout = set_timeout(&file, TIMEOUT_SECS)
            .unwrap_or(TIMEOUT_SECS)
            .max(3);
        let mut w = Watchdog {
            file,
            every: Duration::from_secs((timeout / 3) as u64),
            last: Instant::now(),
        };
        w.pet_now()?;
        Ok(w)
    }

    pub fn timeout_hint(&self) -> Duration {
        self.every * 3
    }

    /// Pets when a third of the timeout has passed since the last time.
    pub fn pet(&mut self) -> io::Result<()> {
        if self.last.elapsed() >= self.every {
            self.pet_now()?;
        }
        Ok(())
    }

    fn pet_now(&mut self) -> io::Result<()> {
        self.file.write_all(b"\0")?;
        self.last = Instant::now();
        Ok(())
    }

    /// Disarms it (the "magic close"): before a power-off, which must not turn into a reset.
    pub fn disarm(mut self) -> io::Result<()> {
        self.file.write_all(b"V")
    }
}

/// WDIOC_SETTIMEOUT; returns the timeout the driver took.
fn set_timeout(f: &File, secs: i32) -> io::Result<i32> {
    use std::os::unix::io::AsRawFd;
    // _IOWR('W', 6, int)
    const WDIOC_SETTIMEOUT: libc::c_ulong = 0xc004_5706;
    let mut v: libc::c_int = secs;
    // SAFETY: the ioctl reads and writes one int.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut v) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A regular file stands in for the device (the ioctl fails there, as on a driver that
    /// cannot change its timeout): armed with one pet, petted no more often than a third of
    /// the timeout, disarmed with the magic 'V'.
    #[test]
    fn pets_at_a_third_of_the_timeout_and_disarms_with_v() {
        let t = tempfile::NamedTempFile::new().unwrap();
        let mut w = Watchdog::open(t.path()).unwrap();
        assert_eq!(w.timeout_hint(), Duration::from_secs(15));
        w.pet().unwrap();
        w.pet().unwrap();
        assert_eq!(std::fs::read(t.path()).unwrap(), b"\0");
        w.last = Instant::now() - Duration::from_secs(6);
        w.pet().unwrap();
        w.disarm().unwrap();
        assert_eq!(std::fs::read(t.path()).unwrap(), b"\0\0V");
    }
}
