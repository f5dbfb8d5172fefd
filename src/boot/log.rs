//! The kmsg logger: every line goes to `/dev/kmsg` as `<N>sealroot: message`.
//!
//! Contract:
//! - [`info`], [`notice`], [`warning`], [`err`] write one record each, with
//!   the syslog priority 6, 5, 4, 3. Messages are single lines: embedded
//!   newlines and control characters are replaced so a record can never
//!   forge a second `sealroot:` line.
//! - `/dev/kmsg` is opened once, on first use. When it cannot be opened (a
//!   test on a host, a container) every line goes to stderr instead.
//!   [`open_early`] (PID 1, before `/dev` is mounted) tries it without
//!   marking it tried, so a failure there is retried by the next record.
//! - When this process is not PID 1 every line is also mirrored to stderr as
//!   `sealroot: message`, so tests and the systemd journal (which captures a
//!   service's stderr) read exactly the text the kernel log holds.
//! - `SEALROOT_LOG=stderr` in the environment (tests) skips `/dev/kmsg`.
//!
//! Kernel facts relied on:
//! - One `write(2)` to `/dev/kmsg` is one log record; a leading `<N>` sets
//!   its priority (facility 0 = kernel is changed to "user" by the kernel).
//! - Writes to `/dev/kmsg` are rate limited *per open file* (10 records per
//!   5 s unless `printk.devkmsg=on`). A boot logs more than that in well under
//!   a second, so the file is reopened every [`RECORDS_PER_OPEN`] records;
//!   otherwise the most important line, the last one, would be dropped.

use std::io::Write;
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};
use std::sync::Mutex;

/// Syslog priority of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Err = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

/// Reopen `/dev/kmsg` after this many records (the kernel's burst is 10).
const RECORDS_PER_OPEN: u32 = 8;

/// Longest message text kept (the kernel truncates records near 1 KiB).
const MAX_MESSAGE: usize = 900;

struct Sink {
    kmsg: Option<OwnedFd>,
    records: u32,
    tried: bool,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    kmsg: None,
    records: 0,
    tried: false,
});

fn open_wronly(path: &str) -> Option<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .ok()
}

fn open_kmsg() -> Option<OwnedFd> {
    // Tests run as root on a development host: keep their refusals out of
    // the host's kernel log.
    if std::env::var_os("SEALROOT_LOG").is_some_and(|v| v == "stderr") {
        return None;
    }
    open_wronly("/dev/kmsg")
}

/// Replace control characters and cap the length: one message, one line.
pub fn sanitize(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE));
    for c in message.chars() {
        if out.len() >= MAX_MESSAGE {
            out.push_str("...");
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// The exact text of a record, without the `<N>` priority prefix.
pub fn line(message: &str) -> String {
    format!("sealroot: {}", sanitize(message))
}

/// Write one record at `level`.
pub fn log(level: Level, message: &str) {
    let text = line(message);
    let mirror = rustix::process::getpid() != rustix::process::Pid::INIT;
    let mut sink = match SINK.lock() {
        Ok(sink) => sink,
        Err(poisoned) => poisoned.into_inner(),
    };
    if !sink.tried || (sink.kmsg.is_some() && sink.records >= RECORDS_PER_OPEN) {
        sink.tried = true;
        sink.records = 0;
        sink.kmsg = open_kmsg();
    }
    let record = format!("<{}>{}\n", level as u8, text);
    let kmsg_ok = match sink.kmsg.as_mut() {
        // One write, one record: never split it.
        Some(f) => rustix::io::write(f, record.as_bytes()).is_ok(),
        None => false,
    };
    sink.records = sink.records.saturating_add(1);
    if mirror || !kmsg_ok {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }
}

/// PID 1 before `/dev` is mounted: open `/dev/kmsg` now if the initramfs
/// carries the node, so the first line does not wait for the mounts. True
/// when it is open; when it is not, nothing is marked as tried and the next
/// record opens it again (after devtmpfs is mounted).
pub fn open_early() -> bool {
    let mut sink = match SINK.lock() {
        Ok(sink) => sink,
        Err(poisoned) => poisoned.into_inner(),
    };
    if sink.kmsg.is_none() {
        sink.kmsg = open_kmsg();
        sink.records = 0;
        sink.tried = sink.kmsg.is_some();
    }
    sink.kmsg.is_some()
}

pub fn err(message: &str) {
    log(Level::Err, message)
}

pub fn warning(message: &str) {
    log(Level::Warning, message)
}

pub fn notice(message: &str) {
    log(Level::Notice, message)
}

pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Write `text` straight to the console (PID 1 failure messages): kmsg only
/// reaches the console when the console log level lets it through (`quiet`
/// hides everything below warning), so a refusal is also written here.
pub fn console(message: &str) {
    let text = format!("{}\n", line(message));
    if let Some(f) = open_wronly("/dev/console") {
        let _ = crate::boot::io::write_all(&f, text.as_bytes());
    } else {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_one_line() {
        assert_eq!(
            line("a\nsealroot: forged\r\x1b[0m"),
            "sealroot: a sealroot: forged  [0m"
        );
    }

    #[test]
    fn sanitize_caps_length() {
        let long = "x".repeat(5000);
        let s = sanitize(&long);
        assert_eq!(s.len(), MAX_MESSAGE + 3);
        assert!(s.ends_with("..."));
    }
}
