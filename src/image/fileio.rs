//! The tool side's file I/O: one bounded read and one atomic write, which
//! every sealctl file read and replace goes through.
//!
//! Contract:
//! - [`read_bounded`] never allocates or reads more than `limit + 1` bytes,
//!   whatever the file claims or grows to while it is read.
//! - [`write_atomic`] leaves either the old file or the new one at the final
//!   name, never a mix: the data goes to a fresh temporary file beside it
//!   (`O_EXCL`, named `.tmp-sealctl-<pid>-<n>`), is fsync'd, renamed over
//!   the final name, and the directory is fsync'd so the rename survives a
//!   power cut. A failed write removes its temporary file;
//!   [`remove_stale_temps`] removes those a killed process left.
//!
//! Kernel facts relied on: `rename(2)` within one directory is atomic and
//! replaces the target; a rename is durable only after the directory is
//! fsync'd; `kill(pid, 0)` answers `ESRCH` only for a process that does not
//! exist.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temporary file sealctl creates beside a final name.
pub const TEMP_PREFIX: &str = ".tmp-sealctl-";

/// Why a file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileIoError {
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("{path} is {size} bytes, more than the {limit}-byte limit")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileIoError {
    let path = path.to_path_buf();
    move |error| FileIoError::Io { op, path, error }
}

/// Read the whole file at `path`, refusing one of more than `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FileIoError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FileIoError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let size = file.metadata().map_err(io_err("stat", path))?.len();
    let too_large = |size| FileIoError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit,
    };
    if size > limit {
        return Err(too_large(size));
    }
    let mut data = Vec::with_capacity(size as usize);
    // One byte more than allowed, so a file that grew since fstat is caught.
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(io_err("read", path))?;
    if data.len() as u64 > limit {
        return Err(too_large(data.len() as u64));
    }
    Ok(data)
}

/// fsync a directory, making the renames and unlinks in it durable.
pub fn fsync_dir(dir: &Path) -> Result<(), FileIoError> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        // A filesystem that cannot fsync a directory (EINVAL) makes its
        // renames as durable as it can by itself.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(io_err("fsync directory", dir)(e)),
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary path next to `final_path`.
pub fn temp_path_for(final_path: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = match final_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
}

/// Create a new temporary file next to `final_path` with `mode` (minus the
/// umask), `O_EXCL`.
pub fn create_temp(final_path: &Path, mode: u32) -> Result<(PathBuf, File), FileIoError> {
    let tmp = temp_path_for(final_path);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    Ok((tmp, file))
}

/// Move a fully written and fsync'd temporary file (or symlink) to its
/// final name, replacing it, then fsync the directory. The temporary is
/// removed if the rename fails.
pub fn publish(tmp: &Path, final_path: &Path) -> Result<(), FileIoError> {
    if let Err(e) = fs::rename(tmp, final_path) {
        let _ = fs::remove_file(tmp);
        return Err(io_err("rename", final_path)(e));
    }
    match final_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fsync_dir(dir),
        _ => fsync_dir(Path::new(".")),
    }
}

/// Replace `final_path` with `data`, atomically and durably (see the module
/// docs). `mode`: the exact permission bits, set after creating so that the
/// umask cannot strip them (an executable keeps its exec bits); `None` for
/// 0644 minus the umask and no `chmod`, for filesystems whose bits are fixed
/// by mount options and may refuse one (FAT: an ESP).
pub fn write_atomic(final_path: &Path, data: &[u8], mode: Option<u32>) -> Result<(), FileIoError> {
    let (tmp, mut file) = create_temp(final_path, if mode.is_some() { 0o600 } else { 0o644 })?;
    let result = file
        .write_all(data)
        .and_then(|()| match mode {
            Some(mode) => file.set_permissions(fs::Permissions::from_mode(mode)),
            None => Ok(()),
        })
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", &tmp));
    drop(file);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    publish(&tmp, final_path)
}

/// Whether the process `pid` exists (`kill(pid, 0)` is not `ESRCH`).
/// The one liveness check for temporaries a process owns.
pub fn process_alive(pid: i32) -> bool {
    match rustix::process::Pid::from_raw(pid) {
        Some(pid) => !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    }
}

/// The owner of a temporary name `<TEMP_PREFIX><pid>-<n>`, if it is one.
fn temp_owner(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    rest.split('-').next()?.parse().ok()
}

/// The temporary files a killed run left in `dir` (non-recursive): names
/// `<TEMP_PREFIX><pid>-<n>` whose process no longer exists (or is this
/// one). What [`remove_stale_temps`] removes and `sealctl gc` counts.
pub fn stale_temps(dir: &Path) -> Result<Vec<PathBuf>, FileIoError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let Some(owner) = entry.file_name().to_str().and_then(temp_owner) else {
            continue;
        };
        if owner == me || !process_alive(owner) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Remove the [`stale_temps`] of `dir`. Only files of processes that no
/// longer exist (or of this process) are removed, so two sealctl runs on
/// one repository do not delete each other's work.
pub fn remove_stale_temps(dir: &Path) -> Result<(), FileIoError> {
    for path in stale_temps(dir)? {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove stale temp", &path)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, vec![1u8; 100]).unwrap();
        assert_eq!(read_bounded(&p, 100).unwrap().len(), 100);
        assert!(matches!(
            read_bounded(&p, 99),
            Err(FileIoError::TooLarge {
                size: 100,
                limit: 99,
                ..
            })
        ));
        assert!(matches!(
            read_bounded(&dir.path().join("none"), 1),
            Err(FileIoError::Missing { .. })
        ));
        assert!(matches!(
            read_bounded(dir.path(), 1 << 20),
            Err(FileIoError::Io { op: "read", .. })
        ));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("file");
        write_atomic(&target, b"one", Some(0o644)).unwrap();
        write_atomic(&target, b"three", Some(0o755)).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"three");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file")]);
        // Into a directory that does not exist: an error, nothing created.
        let missing = dir.path().join("no/such/file");
        assert!(matches!(
            write_atomic(&missing, b"x", None),
            Err(FileIoError::Io { op: "create", .. })
        ));
    }

    #[test]
    fn stale_temps_of_dead_processes_go() {
        let dir = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22, so this pid never exists.
        let stale = dir.path().join(format!("{TEMP_PREFIX}999999999-0"));
        let live = dir.path().join(format!("{TEMP_PREFIX}1-0"));
        let other = dir.path().join("keep-me");
        for p in [&stale, &live, &other] {
            fs::write(p, b"x").unwrap();
        }
        remove_stale_temps(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(live.exists(), "pid 1 exists; its temp must stay");
        assert!(other.exists());
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(999_999_999));
        assert!(!process_alive(0));
    }
}
