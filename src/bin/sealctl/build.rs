//! `sealctl build ROOTFS --repo REPO [--sign KEY]` (needs the scanner and
//! EROFS writer; see `sealroot::repo`). Also holds the progress line used by
//! `build`, `verify` and `install`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> ExitCode {
    crate::fail("build", "not implemented yet")
}

/// A progress callback `(files, bytes)` that redraws one stderr line at most
/// ten times a second, and does nothing when stderr is not a terminal.
pub fn progress_line(command: &'static str) -> impl Fn(u64, u64) + Sync {
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let last = Mutex::new(None::<Instant>);
    move |files, bytes| {
        if !tty {
            return;
        }
        let now = Instant::now();
        let Ok(mut last) = last.lock() else { return };
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_millis(100)) {
            return;
        }
        *last = Some(now);
        let secs = now.duration_since(start).as_secs_f64().max(0.001);
        let mib = bytes as f64 / (1024.0 * 1024.0);
        eprint!(
            "\r\x1b[K{command}: {files} files, {mib:.1} MiB, {:.1} MiB/s",
            mib / secs
        );
    }
}

/// End the progress line (if one was drawn).
pub fn progress_done() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
}
