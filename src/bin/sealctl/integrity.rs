//! `sealctl integrity-check`: fail when the kernel logged an fs-verity or
//! overlayfs verity error during this boot (issue 19 item 4).
//!
//! A tampered or rotted object in the repository does not stop a sealed
//! boot: overlayfs checks a file's fs-verity digest when it is opened and
//! fs-verity checks each data block when it is read, and either only
//! returns EIO to the reader. The kernel logs every such failure, so this
//! command reads the kernel log of the current boot (`/dev/kmsg`,
//! non-blocking: every record still in the ring buffer, from the oldest)
//! and looks for the kernel's own messages (Linux 6.12):
//!
//! - `fs/verity/verify.c`, through `fsverity_err()` (`fs/verity/init.c`,
//!   which prefixes `fs-verity (<sb>, inode <n>): `):
//!   `FILE CORRUPTED! pos=…, level=…, want_hash=…, real_hash=…` (a data
//!   or Merkle-tree block whose hash does not match) and `Error <n> reading
//!   Merkle tree …` (the tree itself unreadable). Any `fs-verity (…):`
//!   record counts: `fsverity_err` is used for errors only.
//! - `fs/overlayfs/util.c`, `ovl_validate_verity()` /
//!   `ovl_ensure_verity_loaded()` (prefix `overlayfs: `): `lower file '…'
//!   has no fs-verity digest`, `… has the wrong fs-verity digest`, `…
//!   failed to load fs-verity info`. Any `overlayfs:` record naming
//!   `verity` counts (a mount with `verity=require` logs none when all is
//!   well: every good boot of tests/ab/run passes the check).
//!
//! The result goes to a JSON status file (default
//! `/run/sealroot/integrity.json`) and, one line per error, to stderr (the
//! journal under systemd). Exit status 1 when an error was found, so the
//! unit that runs it (`systemd/sealroot-integrity.service`, required by
//! `boot-complete.target`) fails the boot: not blessed, the floor not
//! raised, and systemd-boot falls back once the entry's tries run out.
//!
//! Limits: only what is still in the kernel's ring buffer is seen (a
//! record overwritten before the check ran is counted in `lost`, and a
//! boot that lost records is not failed for that alone); the kernel rate-
//! limits both messages, but one is enough. Errors after the check ran are
//! not seen by it (the boot is already blessed then).

use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The kernel log to read: /dev/kmsg (records), or a file holding
    /// kmsg records or plain `dmesg` lines (tests).
    #[arg(long, default_value = "/dev/kmsg")]
    kmsg: PathBuf,
    /// Where to write the result (JSON); `-` for none.
    #[arg(long, default_value = "/run/sealroot/integrity.json")]
    status: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("cannot read the kernel log {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
}

/// Which part of the kernel reported an integrity failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// fs-verity: a block of a verity file did not match its Merkle tree.
    FsVerity,
    /// overlayfs: a lower file's fs-verity digest is missing or wrong.
    Overlay,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::FsVerity => "fs-verity",
            Source::Overlay => "overlayfs",
        }
    }
}

/// The message text of one kernel log line: a /dev/kmsg record
/// (`prio,seq,usec,flags;text`), a `dmesg` line (`[  1.234] text`) or the
/// text itself. `None` for a record's continuation (dictionary) lines.
fn message(line: &str) -> Option<&str> {
    if line.starts_with(' ') {
        return None;
    }
    if let Some((head, text)) = line.split_once(';') {
        if !head.is_empty() && head.split(',').all(|f| !f.is_empty()) {
            let mut fields = head.split(',');
            if fields.next().is_some_and(|p| p.parse::<u32>().is_ok()) {
                return Some(text);
            }
        }
    }
    if let Some(rest) = line.strip_prefix('[') {
        if let Some((_, text)) = rest.split_once("] ") {
            return Some(text);
        }
    }
    Some(line)
}

/// Whether a kernel message is an fs-verity or overlayfs verity failure.
pub fn classify(text: &str) -> Option<Source> {
    let text = text.trim_start();
    // fsverity_err(): "fs-verity (<sb id>, inode <ino>): <what>"; its
    // inode-less form "fs-verity: " is also used for setup messages
    // ("fs-verity: sha256 using implementation ..."), so only the per-inode
    // form counts.
    if text.starts_with("fs-verity (") && text.contains("): ") {
        return Some(Source::FsVerity);
    }
    if let Some(rest) = text.strip_prefix("overlayfs: ") {
        if rest.contains("verity") {
            return Some(Source::Overlay);
        }
    }
    None
}

/// The result of one check.
#[derive(Debug, Default)]
pub struct Report {
    /// (source, message) of every failure found.
    pub errors: Vec<(Source, String)>,
    /// Kernel log lines looked at.
    pub lines: usize,
    /// Times the kernel said records were overwritten before we read them.
    pub lost: usize,
}

/// Check the kernel log text (records or lines, newline-separated).
pub fn check_text(text: &str, report: &mut Report) {
    for line in text.lines() {
        let Some(msg) = message(line) else { continue };
        report.lines += 1;
        if let Some(source) = classify(msg) {
            report.errors.push((source, msg.trim().to_string()));
        }
    }
}

/// Read everything the kernel log at PATH holds now. /dev/kmsg returns one
/// record a read, EAGAIN at the end (non-blocking) and EPIPE when records
/// were overwritten since the previous read; a regular file is read whole.
fn read_log(path: &Path, report: &mut Report) -> Result<String, Error> {
    let err = |error| Error::Read {
        path: path.display().to_string(),
        error,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => report.lost += 1,
            Err(e) => return Err(err(e)),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn status_json(report: &Report) -> serde_json::Value {
    let errors: Vec<serde_json::Value> = report
        .errors
        .iter()
        .map(|(s, m)| serde_json::json!({"source": s.name(), "message": m}))
        .collect();
    serde_json::json!({
        "state": if report.errors.is_empty() { "ok" } else { "failed" },
        "errors": errors,
        "kernel_log_lines": report.lines,
        "kernel_log_records_lost": report.lost,
    })
}

fn write_status(path: &Path, report: &Report) -> Result<(), Error> {
    let err = |error| Error::Write {
        path: path.display().to_string(),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut text = serde_json::to_string_pretty(&status_json(report)).unwrap_or_default();
    text.push('\n');
    // Written next to the target and renamed: a reader never sees half.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

pub fn run(args: Args) -> ExitCode {
    let mut report = Report::default();
    let result = read_log(&args.kmsg, &mut report).and_then(|text| {
        check_text(&text, &mut report);
        if args.status.as_os_str() != "-" {
            write_status(&args.status, &report)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        return crate::fail("integrity-check", e);
    }
    for (source, msg) in &report.errors {
        eprintln!(
            "sealctl integrity-check: {} error this boot: {msg}",
            source.name()
        );
    }
    if report.errors.is_empty() {
        println!(
            "no fs-verity or overlayfs verity error in this boot's kernel log ({} lines{})",
            report.lines,
            if report.lost > 0 {
                ", some records were overwritten before the check"
            } else {
                ""
            }
        );
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "sealctl integrity-check: {} integrity error(s): this boot must not be blessed",
            report.errors.len()
        );
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_messages_are_recognised() {
        // Shapes of Linux 6.12's fsverity_err() and overlayfs pr_warn lines.
        let corrupted = "fs-verity (vda, inode 1234): FILE CORRUPTED! pos=0, level=-1, \
                         want_hash=sha256:00, real_hash=sha256:11";
        assert_eq!(classify(corrupted), Some(Source::FsVerity));
        assert_eq!(
            classify("fs-verity (vda, inode 7): Error -5 reading Merkle tree block 0"),
            Some(Source::FsVerity)
        );
        assert_eq!(
            classify("overlayfs: lower file 'ab' has the wrong fs-verity digest"),
            Some(Source::Overlay)
        );
        assert_eq!(
            classify("overlayfs: lower file 'cd' has no fs-verity digest"),
            Some(Source::Overlay)
        );
    }

    #[test]
    fn a_good_boot_is_not_failed() {
        for line in [
            "fs-verity: sha256 using implementation \"sha256-avx2\"",
            "overlayfs: null uuid detected in lower fs '/', falling back to xino=off,index=off,nfs_export=off.",
            "EXT4-fs (vda): mounted filesystem with ordered data mode.",
            "systemd[1]: fs-verity (not a kernel line) ok",
            "",
        ] {
            assert_eq!(classify(line), None, "{line}");
        }
    }

    #[test]
    fn kmsg_records_and_dmesg_lines() {
        let log = "6,1,100,-;Linux version 6.12\n \
                   SUBSYSTEM=block\n\
                   3,812,5123456,-;fs-verity (vda, inode 99): FILE CORRUPTED! pos=4096, level=-1, want_hash=sha256:aa, real_hash=sha256:bb\n\
                   [    5.123] overlayfs: lower file 'x' has the wrong fs-verity digest\n\
                   4,813,5123999,c;something else; with a semicolon\n";
        let mut r = Report::default();
        check_text(log, &mut r);
        assert_eq!(r.lines, 4);
        assert_eq!(r.errors.len(), 2);
        assert_eq!(r.errors[0].0, Source::FsVerity);
        assert!(r.errors[0]
            .1
            .starts_with("fs-verity (vda, inode 99): FILE CORRUPTED!"));
        assert_eq!(r.errors[1].0, Source::Overlay);
        let v = status_json(&r);
        assert_eq!(v["state"], "failed");
        assert_eq!(v["errors"][1]["source"], "overlayfs");
    }

    #[test]
    fn status_file_from_a_log_file() {
        let dir = std::env::temp_dir().join(format!("sealctl-integrity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("kmsg");
        std::fs::write(&log, "6,1,1,-;EXT4-fs (vda): mounted\n").unwrap();
        let mut r = Report::default();
        let text = read_log(&log, &mut r).unwrap();
        check_text(&text, &mut r);
        let status = dir.join("run").join("integrity.json");
        write_status(&status, &r).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
        assert_eq!(v["state"], "ok");
        assert_eq!(v["kernel_log_lines"], 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
