//! The boot binary's small file I/O library, on rustix (the boot binary
//! avoids `std::fs` to stay within its size budget): bounded reads, write
//! all, `mkdir -p`, opens beneath a directory fd, and errno names for log
//! lines. Everything that reads a file at boot goes through here, so every
//! read has a size limit and every open of a repository or state name is
//! confined beneath its directory.
//!
//! Kernel facts relied on:
//! - `openat2(2)` (Linux 5.6) with `RESOLVE_BENEATH` refuses any path that
//!   leaves the directory fd (`EXDEV`), `RESOLVE_NO_SYMLINKS` any symlink
//!   (`ELOOP`), `RESOLVE_NO_MAGICLINKS` `/proc/*/fd`-style links.
//! - With `RESOLVE_BENEATH`, a `..` resolved while any rename or mount
//!   happens in the system makes the call fail with `EAGAIN`; retrying is
//!   the documented answer (bounded here).
//! - Opening a device node runs its driver's `open` (a tape rewinds, a
//!   modem line hangs up, a FIFO blocks), and the repository is on the disk
//!   an attacker writes. So [`open_beneath`] resolves the name with
//!   `O_PATH` (no open of the file itself), checks with `fstat` that it is
//!   a regular file, and only then opens that same inode for reading through
//!   `/proc/self/fd/N` (a reopen of the fd, not a new lookup of the name).
//!   `fstat` works on `O_PATH` descriptors since Linux 3.6.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a file could not be opened or read. `path` is the name as shown to
/// the user (e.g. `composefs/seals/<hex>.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    Missing {
        path: String,
    },
    /// `..` or an absolute symlink leads out of the directory (EXDEV).
    OutsideRepository {
        path: String,
    },
    NotRegularFile {
        path: String,
    },
    /// A symlink where none may be (seal files, state directories).
    Symlink {
        path: String,
    },
    Open {
        path: String,
        errno: Errno,
    },
    TooLarge {
        path: String,
        max: usize,
    },
    Read {
        path: String,
        errno: Errno,
    },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Missing { path } => write!(f, "{path} does not exist"),
            FileError::OutsideRepository { path } => write!(
                f,
                "{path} resolves outside the repository (symlink escaping {}/)",
                crate::layout::REPO_DIR
            ),
            FileError::NotRegularFile { path } => write!(f, "{path} is not a regular file"),
            FileError::Symlink { path } => write!(
                f,
                "{path} is a symlink or has one in its path; refusing to follow it"
            ),
            FileError::Open { path, errno } => {
                write!(f, "cannot open {path}: {}", errno_name(*errno))
            }
            FileError::TooLarge { path, max } => {
                write!(f, "{path} is larger than {max} bytes")
            }
            FileError::Read { path, errno } => {
                write!(f, "cannot read {path}: {}", errno_name(*errno))
            }
        }
    }
}

impl std::error::Error for FileError {}

/// Which symlinks a beneath-open may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// Symlinks that stay beneath the directory fd (an image named by a
    /// relative link into `objects/`, as composefs-rs stores it).
    Beneath,
    /// None at all (seal files, state directories): ELOOP is refused.
    Never,
}

impl Follow {
    pub(crate) fn resolve_flags(self) -> ResolveFlags {
        match self {
            Follow::Beneath => ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            Follow::Never => {
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS
            }
        }
    }
}

/// `openat2` with `RESOLVE_BENEATH` answers EAGAIN when a `..` component
/// (an image link `../objects/XX/…`) was resolved while a rename or mount
/// happened anywhere in the system, which a systemd initrd does all the
/// time; the kernel documents a retry as the answer. Bounded, so a
/// persistent EAGAIN still ends as an error.
pub(crate) fn openat2_retrying(
    mut open: impl FnMut() -> Result<OwnedFd, Errno>,
) -> Result<OwnedFd, Errno> {
    let mut attempts = 0;
    loop {
        match open() {
            Err(Errno::AGAIN) if attempts < 100 => {
                attempts += 1;
                std::thread::yield_now();
            }
            other => return other,
        }
    }
}

/// Open `rel` beneath the repository fd as a read-only regular file.
/// `shown` names it in errors (e.g. `composefs/images/<hex>`).
pub fn open_beneath(
    repo: impl AsFd,
    rel: &str,
    shown: &str,
    follow: Follow,
) -> Result<OwnedFd, FileError> {
    let path = shown.to_string();
    let handle = openat2_retrying(|| {
        rustix::fs::openat2(
            repo.as_fd(),
            rel,
            // O_PATH: nothing behind the name is opened until its type is
            // known (see the module docs).
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            follow.resolve_flags(),
        )
    })
    .map_err(|errno| match errno {
        Errno::NOENT => FileError::Missing { path: path.clone() },
        Errno::XDEV => FileError::OutsideRepository { path: path.clone() },
        Errno::LOOP if follow == Follow::Never => FileError::Symlink { path: path.clone() },
        errno => FileError::Open {
            path: path.clone(),
            errno,
        },
    })?;
    let st = rustix::fs::fstat(&handle).map_err(|errno| FileError::Open {
        path: path.clone(),
        errno,
    })?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(FileError::NotRegularFile { path });
    }
    reopen_for_reading(&handle).map_err(|errno| FileError::Open { path, errno })
}

/// Open the inode an `O_PATH` descriptor refers to, read-only, through its
/// `/proc/self/fd` entry: the same inode, whatever the name now points to.
pub fn reopen_for_reading(handle: impl AsFd) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    let proc_path = format!("/proc/self/fd/{}", handle.as_fd().as_raw_fd());
    rustix::fs::open(
        proc_path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
}

/// Read a whole repository file of at most `max` bytes.
pub fn read_beneath(
    repo: impl AsFd,
    rel: &str,
    shown: &str,
    max: usize,
    follow: Follow,
) -> Result<Vec<u8>, FileError> {
    let fd = open_beneath(repo, rel, shown, follow)?;
    read_fd_limited(&fd, max).map_err(|e| match e {
        Some(errno) => FileError::Read {
            path: shown.to_string(),
            errno,
        },
        None => FileError::TooLarge {
            path: shown.to_string(),
            max,
        },
    })
}

// Small file helpers on rustix. The boot binary avoids `std::fs` to stay
// within its size budget; these are all it needs.

/// Read all of `fd`; `Err(None)` if it holds more than `max` bytes.
pub fn read_fd_limited(fd: impl AsFd, max: usize) -> Result<Vec<u8>, Option<Errno>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match rustix::io::read(fd.as_fd(), &mut buf) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(errno) => return Err(Some(errno)),
        };
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > max {
            return Err(None);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Read the file at `path`; `Err(None)` if it is larger than `max`.
pub fn read_file_limited(path: &Path, max: usize) -> Result<Vec<u8>, Option<Errno>> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(Some)?;
    read_fd_limited(&fd, max)
}

/// Write all of `bytes` to `fd`.
pub fn write_all(fd: impl AsFd, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match rustix::io::write(fd.as_fd(), bytes) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `mkdir -p` with `mode` for the directories it creates.
pub fn mkdir_all(path: &Path, mode: u32) -> Result<(), Errno> {
    if is_dir(path) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            mkdir_all(parent, mode)?;
        }
    }
    match rustix::fs::mkdir(path, Mode::from_raw_mode(mode)) {
        Ok(()) => Ok(()),
        Err(Errno::EXIST) if is_dir(path) => Ok(()),
        // Something that is not a directory is in the way.
        Err(Errno::EXIST) => Err(Errno::NOTDIR),
        Err(e) => Err(e),
    }
}

/// Whether `path` (symlinks followed) is a directory.
pub fn is_dir(path: &Path) -> bool {
    rustix::fs::stat(path)
        .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
        .unwrap_or(false)
}

/// The symbolic name of an errno (`ENOENT`), for log lines that must not
/// depend on the C library's message table; unknown ones as `errno N`.
pub fn errno_name(e: rustix::io::Errno) -> String {
    use rustix::io::Errno;
    let name = match e {
        Errno::PERM => "EPERM",
        Errno::NOENT => "ENOENT",
        Errno::INTR => "EINTR",
        Errno::IO => "EIO",
        Errno::NXIO => "ENXIO",
        Errno::BADF => "EBADF",
        Errno::AGAIN => "EAGAIN",
        Errno::NOMEM => "ENOMEM",
        Errno::ACCESS => "EACCES",
        Errno::NOTBLK => "ENOTBLK",
        Errno::BUSY => "EBUSY",
        Errno::EXIST => "EEXIST",
        Errno::XDEV => "EXDEV",
        Errno::NODEV => "ENODEV",
        Errno::NOTDIR => "ENOTDIR",
        Errno::ISDIR => "EISDIR",
        Errno::INVAL => "EINVAL",
        Errno::NOTTY => "ENOTTY",
        Errno::FBIG => "EFBIG",
        Errno::NOSPC => "ENOSPC",
        Errno::ROFS => "EROFS",
        Errno::NAMETOOLONG => "ENAMETOOLONG",
        Errno::NOSYS => "ENOSYS",
        Errno::LOOP => "ELOOP",
        Errno::NODATA => "ENODATA",
        Errno::OVERFLOW => "EOVERFLOW",
        Errno::NOEXEC => "ENOEXEC",
        Errno::OPNOTSUPP => "EOPNOTSUPP",
        Errno::MSGSIZE => "EMSGSIZE",
        Errno::STALE => "ESTALE",
        Errno::UCLEAN => "EUCLEAN",
        Errno::KEYREJECTED => "EKEYREJECTED",
        Errno::BADMSG => "EBADMSG",
        _ => return format!("errno {}", e.raw_os_error()),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        use rustix::io::Errno;
        assert_eq!(errno_name(Errno::OPNOTSUPP), "EOPNOTSUPP");
        assert_eq!(errno_name(Errno::from_raw_os_error(61)), "ENODATA");
        assert_eq!(errno_name(Errno::from_raw_os_error(4095)), "errno 4095");
    }

    #[test]
    fn read_limits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 10000]).unwrap();
        assert_eq!(read_file_limited(&p, 10000).unwrap().len(), 10000);
        assert_eq!(read_file_limited(&p, 9999), Err(None));
        assert_eq!(
            read_file_limited(&dir.path().join("nope"), 1),
            Err(Some(Errno::NOENT))
        );
    }

    /// A FIFO planted under a repository name is refused without being
    /// opened: a writer blocked in its own open would be released by any
    /// open for reading, so it must still be waiting afterwards.
    #[test]
    fn planted_fifo_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("meta.json");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let writer_path = fifo.clone();
        let writer = std::thread::spawn(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(writer_path)
                .map(drop)
        });
        let repo =
            rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for follow in [Follow::Beneath, Follow::Never] {
            assert_eq!(
                open_beneath(&repo, "meta.json", "composefs/meta.json", follow).err(),
                Some(FileError::NotRegularFile {
                    path: "composefs/meta.json".into()
                })
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let opened = writer.is_finished();
        // Release the writer either way so the test never hangs.
        let reader = std::fs::File::open(&fifo).unwrap();
        writer.join().unwrap().unwrap();
        drop(reader);
        assert!(!opened, "open_beneath opened the FIFO");
    }

    #[test]
    fn regular_file_is_reopened_for_reading() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"sealed").unwrap();
        let repo =
            rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let bytes = read_beneath(&repo, "f", "f", 100, Follow::Never).unwrap();
        assert_eq!(bytes, b"sealed");
    }
}
