//! Terminal progress for long operations (build, verify, install).
//!
//! Contract:
//! - One updating line on stderr (`\r` + text + erase-to-end-of-line), drawn
//!   only when stderr is a terminal (`isatty`), at most about 10 times a
//!   second however often it is updated. Silent otherwise, so logs and pipes
//!   never see control characters.
//! - [`Progress`] is `Sync`: worker threads call [`Progress::add`] through a
//!   shared reference; counters are atomics and drawing is skipped, not
//!   waited for, when another thread is drawing.
//! - [`Progress::finish`] erases the line, leaving the terminal as it was.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_millis(100);

pub struct Progress {
    label: String,
    enabled: bool,
    start: Instant,
    files: AtomicU64,
    bytes: AtomicU64,
    total_files: AtomicU64,
    total_bytes: AtomicU64,
    drew: AtomicBool,
    last_draw: Mutex<Instant>,
}

impl Progress {
    /// A reporter labelled `label`, drawing only if stderr is a terminal.
    pub fn new(label: &str) -> Progress {
        let tty = rustix::termios::isatty(std::io::stderr());
        Self::with_enabled(label, tty)
    }

    /// A reporter that never draws.
    pub fn hidden() -> Progress {
        Self::with_enabled("", false)
    }

    fn with_enabled(label: &str, enabled: bool) -> Progress {
        let now = Instant::now();
        Progress {
            label: label.to_owned(),
            enabled,
            start: now,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total_files: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            drew: AtomicBool::new(false),
            // First draw only after one interval: short operations stay quiet.
            last_draw: Mutex::new(now),
        }
    }

    /// Whether this reporter draws anything.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Known totals (0 = unknown), shown as "done/total".
    pub fn set_total(&self, files: u64, bytes: u64) {
        self.total_files.store(files, Ordering::Relaxed);
        self.total_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Count `files` more files and `bytes` more bytes done.
    pub fn add(&self, files: u64, bytes: u64) {
        self.files.fetch_add(files, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if !self.enabled {
            return;
        }
        let Ok(mut last) = self.last_draw.try_lock() else {
            return;
        };
        let now = Instant::now();
        if now.duration_since(*last) < INTERVAL {
            return;
        }
        *last = now;
        self.draw(now);
    }

    /// (files, bytes) counted so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.files.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// The text of the progress line at `now` (without control characters).
    pub fn line(&self, now: Instant) -> String {
        let (files, bytes) = self.counts();
        let tf = self.total_files.load(Ordering::Relaxed);
        let tb = self.total_bytes.load(Ordering::Relaxed);
        let secs = now.duration_since(self.start).as_secs_f64().max(1e-3);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut s = format!("{}: {files}", self.label);
        if tf > 0 {
            s.push_str(&format!("/{tf}"));
        }
        s.push_str(&format!(" files, {:.1}", mib(bytes)));
        if tb > 0 {
            s.push_str(&format!("/{:.1}", mib(tb)));
        }
        s.push_str(&format!(" MiB, {:.1} MiB/s", mib(bytes) / secs));
        s
    }

    fn draw(&self, now: Instant) {
        let line = self.line(now);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
        self.drew.store(true, Ordering::Relaxed);
    }

    /// Erase the line if anything was drawn.
    pub fn finish(&self) {
        if self.enabled && self.drew.load(Ordering::Relaxed) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
        self.drew.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_line() {
        let p = Progress::hidden();
        assert!(!p.is_enabled());
        p.set_total(10, 4 << 20);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..250 {
                        p.add(1, 1024);
                    }
                });
            }
        });
        assert_eq!(p.counts(), (1000, 1024 * 1000));
        let line = p.line(p.start + Duration::from_secs(2));
        assert!(
            line.starts_with(": 1000/10 files, 1.0/4.0 MiB, 0.5 MiB/s"),
            "{line}"
        );
    }
}
