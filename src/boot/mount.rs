//! The mount sequence: the measured EROFS image fd, the `verity=require`
//! overlay, the state mounts, and the physical root kept read-only inside.
//!
//! Contract:
//! - [`open_image`] opens `composefs/images/<hex>` beneath the repository
//!   with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: a symlink may
//!   point into `objects/` (composefs-rs does that) but never out of
//!   `composefs/`. The result must be a regular file.
//! - [`check_verity_filesystem`] refuses an image or object store on a
//!   filesystem whose fs-verity the kernel does not implement itself: only
//!   ext4 (`statfs` magic 0xEF53), f2fs (0xF2F52010) and btrfs (0x9123683E)
//!   pass. FUSE (0x65735546) forwards `FS_IOC_MEASURE_VERITY` to a user-space
//!   daemon, which could answer any digest it likes.
//! - [`measure`] asks the kernel for that fd's fs-verity digest and compares
//!   the full digest (algorithm and every byte) with the expected one.
//! - [`compose`] mounts EROFS from THAT SAME fd (`source=/proc/self/fd/N`, or
//!   a read-only loop device bound to the fd when the kernel answers ENOTBLK:
//!   no file-backed EROFS before 6.12), then an overlay with `lowerdir+` =
//!   the EROFS mount, `datadir+` = `composefs/objects`, `metacopy=on`,
//!   `redirect_dir=on`, `verity=require` (string form `lowerdir=A::B` when
//!   the kernel does not know `lowerdir+`, before 6.8). `verity=require` is
//!   never dropped: a kernel that rejects it ends the boot
//!   ([`MountError::VerityRequireRejected`]).
//! - Then the state: `/etc` (persistent overlay, transient tmpfs overlay,
//!   bind, or the image's own), `/var` (bind from state or the image's), the
//!   physical root bind-mounted read-only at `/sysroot` inside the new root,
//!   and finally the whole tree is moved on top of the physical root's mount
//!   point. The image must contain the directories `/etc`, `/var` (when
//!   their mode mounts something) and `/sysroot`.
//! - Nothing is left mounted on failure: everything is assembled under a
//!   private scratch tmpfs that one lazy unmount removes.
//!
//! Kernel facts relied on:
//! - Before Linux 6.15 overlayfs layers must be attached in the caller's
//!   mount namespace (`clone_private_mount` refuses detached mounts with
//!   EINVAL), so the EROFS mount is attached under the scratch tmpfs before
//!   the overlay is created; the overlay keeps private clones of its layers,
//!   so the scratch copy can be unmounted right after.
//! - `MS_MOVE` refuses to move a mount whose parent is shared (systemd makes
//!   every mount shared), hence the scratch tmpfs is made private.
//! - A detailed reason for an `fsconfig` failure can be read from the
//!   filesystem context fd (`e overlayfs: ...`); it is appended to errors.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::{Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags, MoveMountFlags,
    UnmountFlags,
};

use crate::boot::config::{EtcMode, VarMode};
use crate::boot::io::{
    errno_name, is_dir, mkdir_all, open_beneath, openat2_retrying, FileError, Follow,
};
use crate::digest::Digest;

use crate::layout::{self, REPO_DIR};
use crate::sys::VerityError;

/// Errors opening or measuring the image, or reading a repository file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// Opening or reading the file itself (missing, symlink, too large, …).
    File(FileError),
    /// The file has no fs-verity (ENODATA).
    VerityMissing {
        path: String,
    },
    /// The kernel or filesystem cannot do fs-verity (EOPNOTSUPP / ENOTTY).
    VerityUnsupported {
        path: String,
        errno: Errno,
    },
    Measure {
        path: String,
        errno: Errno,
    },
    WrongDigest {
        path: String,
        expected: Box<Digest>,
        found: Box<Digest>,
    },
    /// The file is on a filesystem whose fs-verity answers do not come from
    /// the kernel itself ([`VERITY_FILESYSTEMS`]).
    UntrustedFilesystem {
        path: String,
        magic: u64,
    },
    /// `fstatfs` failed.
    Statfs {
        path: String,
        errno: Errno,
    },
}

/// `statfs` magic numbers of the filesystems whose fs-verity the kernel
/// implements itself, with their names for log lines.
pub const VERITY_FILESYSTEMS: &[(u64, &str)] = &[
    (0xEF53, "ext4"),
    (0xF2F5_2010, "f2fs"),
    (0x9123_683E, "btrfs"),
];

impl From<FileError> for ImageError {
    fn from(e: FileError) -> Self {
        ImageError::File(e)
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::File(e) => e.fmt(f),
            ImageError::VerityMissing { path } => {
                write!(f, "image {path} has no fs-verity (ENODATA)")
            }
            ImageError::VerityUnsupported { path, errno } => write!(
                f,
                "cannot measure image {path}: fs-verity not supported by this kernel or filesystem ({})",
                errno_name(*errno)
            ),
            ImageError::Measure { path, errno } => {
                write!(f, "cannot measure image {path}: {}", errno_name(*errno))
            }
            ImageError::WrongDigest {
                path,
                expected,
                found,
            } => write!(
                f,
                "image {path} digest mismatch: expected {expected}, measured {found}"
            ),
            ImageError::UntrustedFilesystem { path, magic } => write!(
                f,
                "{path} is on a filesystem (statfs magic 0x{magic:x}) whose fs-verity the \
                 kernel does not implement itself; the repository must be on ext4, f2fs or btrfs"
            ),
            ImageError::Statfs { path, errno } => {
                write!(f, "cannot statfs {path}: {}", errno_name(*errno))
            }
        }
    }
}

impl std::error::Error for ImageError {}

/// Errors of the mount sequence proper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountError {
    Scratch {
        path: String,
        errno: Errno,
    },
    Erofs {
        step: String,
        errno: Errno,
        kernel: String,
    },
    LoopDevice {
        step: &'static str,
        errno: Errno,
    },
    Overlay {
        step: String,
        errno: Errno,
        kernel: String,
    },
    /// The kernel refused `verity=require`; there is no fallback.
    VerityRequireRejected {
        errno: Errno,
        kernel: String,
    },
    /// The string form cannot carry this path (`:`, `,` or `\`).
    UnsafePath {
        path: String,
    },
    /// The image lacks a directory a mount goes on.
    MissingMountPoint {
        path: String,
    },
    State {
        what: &'static str,
        path: String,
        errno: Errno,
    },
    /// A state directory (relative to the physical root) is a symlink or
    /// has one in its path.
    StateSymlink {
        path: String,
    },
    Attach {
        target: String,
        errno: Errno,
    },
}

fn kernel_suffix(kernel: &str) -> String {
    if kernel.is_empty() {
        String::new()
    } else {
        format!(" (kernel: {kernel})")
    }
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::Scratch { path, errno } => write!(
                f,
                "cannot prepare scratch directory {path}: {}",
                errno_name(*errno)
            ),
            MountError::Erofs {
                step,
                errno,
                kernel,
            } => write!(
                f,
                "cannot mount EROFS image ({step}): {}{}{}",
                errno_name(*errno),
                kernel_suffix(kernel),
                // The measured digest matched, so the stored Merkle tree is
                // the sealed one: EIO here means the image's data blocks no
                // longer match it, i.e. the file was altered after install.
                if *errno == Errno::IO {
                    "; the image's data does not match its fs-verity hashes (altered on disk): reinstall it"
                } else {
                    ""
                }
            ),
            MountError::LoopDevice { step, errno } => write!(
                f,
                "cannot set up a loop device for the image ({step}): {}",
                errno_name(*errno)
            ),
            MountError::Overlay {
                step,
                errno,
                kernel,
            } => write!(
                f,
                "cannot mount overlay ({step}): {}{}",
                errno_name(*errno),
                kernel_suffix(kernel)
            ),
            MountError::VerityRequireRejected { errno, kernel } => write!(
                f,
                "kernel rejected overlay option verity=require: {}{}; not mounting without it",
                errno_name(*errno),
                kernel_suffix(kernel)
            ),
            MountError::UnsafePath { path } => write!(
                f,
                "path {path:?} contains ':', ',' or '\\' and cannot be given to overlayfs's lowerdir= string"
            ),
            MountError::MissingMountPoint { path } => write!(
                f,
                "the sealed image has no directory {path} to mount on"
            ),
            MountError::State { what, path, errno } => write!(
                f,
                "cannot mount {what} from {path}: {}{}",
                errno_name(*errno),
                match (*what, *errno) {
                    (_, Errno::ROFS) | ("/etc", Errno::INVAL) => {
                        "; the physical root is read-only, but a persistent /etc and a /var bind \
                         keep their state on it: mount it read-write, or set etc: transient and var: none"
                    }
                    _ => "",
                }
            ),
            MountError::StateSymlink { path } => write!(
                f,
                "state directory {path} is a symlink or has one in its path; refusing to follow it"
            ),
            MountError::Attach { target, errno } => {
                write!(f, "cannot attach composed root at {target}: {}", errno_name(*errno))
            }
        }
    }
}

impl std::error::Error for MountError {}

/// The repository directory fd (`<sysroot>/composefs`, `O_PATH`).
pub fn open_repo(sysroot: &Path) -> Result<OwnedFd, ImageError> {
    let path = sysroot.join(REPO_DIR);
    rustix::fs::open(
        &path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| match errno {
        Errno::NOENT => ImageError::File(FileError::Missing {
            path: path.display().to_string(),
        }),
        errno => ImageError::File(FileError::Open {
            path: path.display().to_string(),
            errno,
        }),
    })
}

/// Open the image for `digest` beneath the repository.
pub fn open_image(repo: impl AsFd, digest: &Digest) -> Result<OwnedFd, ImageError> {
    let rel = layout::image_rel(digest);
    Ok(open_beneath(
        repo,
        &rel,
        &layout::shown(&rel),
        Follow::Beneath,
    )?)
}

/// Refuse `fd` unless its filesystem is one of [`VERITY_FILESYSTEMS`].
pub fn check_verity_filesystem(fd: impl AsFd, shown: &str) -> Result<(), ImageError> {
    let st = rustix::fs::fstatfs(fd).map_err(|errno| ImageError::Statfs {
        path: shown.to_string(),
        errno,
    })?;
    // f_type is signed on some targets; the magic is its low 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let magic = (st.f_type as u64) & 0xFFFF_FFFF;
    if VERITY_FILESYSTEMS.iter().any(|&(m, _)| m == magic) {
        Ok(())
    } else {
        Err(ImageError::UntrustedFilesystem {
            path: shown.to_string(),
            magic,
        })
    }
}

/// Measure the image fd and compare the full digest with `expected`.
pub fn measure(image: impl AsFd, expected: &Digest, shown: &str) -> Result<Digest, ImageError> {
    let path = shown.to_string();
    let found = crate::sys::measure_verity(image).map_err(|e| match e {
        VerityError::NotEnabled => ImageError::VerityMissing { path: path.clone() },
        VerityError::Unsupported(errno) => ImageError::VerityUnsupported {
            path: path.clone(),
            errno,
        },
        other => ImageError::Measure {
            path: path.clone(),
            errno: other.errno(),
        },
    })?;
    if &found != expected {
        return Err(ImageError::WrongDigest {
            path,
            expected: Box::new(*expected),
            found: Box::new(found),
        });
    }
    Ok(found)
}

/// How EROFS was mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErofsHow {
    FileBacked,
    Loop(String),
}

/// Which overlay interface the kernel took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverlayHow {
    /// `lowerdir+` / `datadir+` (Linux 6.8+).
    LayerAppend,
    /// `lowerdir=EROFS::OBJECTS` (Linux 6.5-6.7).
    StringForm,
}

/// What [`compose`] did and how long each part took (microseconds).
#[derive(Clone, Debug)]
pub struct Composed {
    pub erofs: ErofsHow,
    pub overlay: OverlayHow,
    pub mount_erofs_us: u64,
    pub mount_overlay_us: u64,
    pub state_us: u64,
}

/// Inputs of [`compose`].
pub struct ComposeRequest<'a> {
    /// Where the physical root is mounted; the composed root ends up on top.
    pub sysroot: &'a Path,
    /// A directory on a tmpfs for the private scratch mount.
    pub scratch: &'a Path,
    /// The measured image fd.
    pub image: OwnedFd,
    pub digest: &'a Digest,
    pub etc: EtcMode,
    pub var: VarMode,
    /// Mount `/var` `noexec` as well.
    pub var_noexec: bool,
}

fn us_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Up to three messages the kernel left in a filesystem context.
fn kernel_messages(fs: impl AsFd) -> String {
    let mut msgs = Vec::new();
    let mut buf = [0u8; 512];
    for _ in 0..3 {
        match rustix::io::read(fs.as_fd(), &mut buf) {
            Ok(n) if n > 0 => msgs.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            _ => break,
        }
    }
    msgs.join("; ")
}

fn cstr_path(p: &Path) -> Result<CString, MountError> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| MountError::UnsafePath {
        path: p.display().to_string(),
    })
}

fn attach(fd: impl AsFd, target: &Path) -> Result<(), Errno> {
    move_mount(
        fd.as_fd(),
        c"",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
}

/// A filesystem context (an `fsopen` fd) being configured. Every step
/// that fails reports which step, the errno, and the messages the kernel
/// queued on the context (read from the fd, up to three), so the caller
/// never has to remember to drain them.
struct FsContext {
    fd: OwnedFd,
}

/// A failed [`FsContext`] step.
struct StepError {
    step: String,
    errno: Errno,
    kernel: String,
}

impl FsContext {
    fn open(fstype: &str) -> Result<FsContext, StepError> {
        let fd = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(|errno| StepError {
            step: "fsopen".into(),
            errno,
            kernel: String::new(),
        })?;
        Ok(FsContext { fd })
    }

    fn failed(&self, step: &str) -> impl FnOnce(Errno) -> StepError + '_ {
        let step = step.to_string();
        move |errno| StepError {
            step,
            errno,
            kernel: kernel_messages(&self.fd),
        }
    }

    /// `fsconfig(FSCONFIG_SET_STRING)`; the step is named `key=value`
    /// for short values and `key` for paths.
    fn set(&self, key: &str, value: &std::ffi::CStr) -> Result<(), StepError> {
        fsconfig_set_string(&self.fd, key, value).map_err(self.failed(key))
    }

    fn flag(&self, key: &str) -> Result<(), StepError> {
        fsconfig_set_flag(&self.fd, key).map_err(self.failed(key))
    }

    /// `FSCONFIG_CMD_CREATE` then `fsmount`: a detached mount fd.
    fn mount(self, attrs: MountAttrFlags) -> Result<OwnedFd, StepError> {
        fsconfig_create(&self.fd).map_err(self.failed("create"))?;
        fsmount(&self.fd, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(self.failed("fsmount"))
    }
}

fn erofs_context(source: &str) -> Result<OwnedFd, StepError> {
    let source = CString::new(source).map_err(|_| StepError {
        step: "source".into(),
        errno: Errno::INVAL,
        kernel: String::new(),
    })?;
    let fs = FsContext::open("erofs")?;
    fs.set("source", &source)?;
    fs.flag("ro")?;
    fs.mount(MountAttrFlags::MOUNT_ATTR_RDONLY | MountAttrFlags::MOUNT_ATTR_NODEV)
}

/// A read-only, auto-clearing loop device bound to `image`.
fn loop_device(image: impl AsFd) -> Result<(OwnedFd, String), MountError> {
    let control = rustix::fs::open(
        "/dev/loop-control",
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| MountError::LoopDevice {
        step: "open /dev/loop-control",
        errno,
    })?;
    let mut last = Errno::BUSY;
    for _ in 0..16 {
        let n =
            crate::sys::loop_ctl_get_free(&control).map_err(|errno| MountError::LoopDevice {
                step: "LOOP_CTL_GET_FREE",
                errno,
            })?;
        let name = format!("/dev/loop{n}");
        let dev = rustix::fs::open(
            name.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| MountError::LoopDevice {
            step: "open loop device",
            errno,
        })?;
        match crate::sys::loop_configure(
            &dev,
            image.as_fd(),
            crate::sys::LO_FLAGS_READ_ONLY | crate::sys::LO_FLAGS_AUTOCLEAR,
        ) {
            Ok(()) => return Ok((dev, name)),
            Err(Errno::BUSY) => last = Errno::BUSY,
            Err(errno) => {
                return Err(MountError::LoopDevice {
                    step: "LOOP_CONFIGURE",
                    errno,
                })
            }
        }
    }
    Err(MountError::LoopDevice {
        step: "LOOP_CONFIGURE",
        errno: last,
    })
}

/// Mount EROFS from the measured fd; detached mount fd.
fn mount_erofs(image: &OwnedFd) -> Result<(OwnedFd, ErofsHow), MountError> {
    let source = format!("/proc/self/fd/{}", image.as_raw_fd());
    let erofs_err = |e: StepError| MountError::Erofs {
        step: e.step,
        errno: e.errno,
        kernel: e.kernel,
    };
    match erofs_context(&source) {
        Ok(m) => Ok((m, ErofsHow::FileBacked)),
        Err(StepError {
            errno: Errno::NOTBLK,
            ..
        }) => {
            let (dev, name) = loop_device(image)?;
            let m = erofs_context(&name).map_err(erofs_err)?;
            // The mount holds the device now; AUTOCLEAR detaches it when
            // the mount goes away.
            drop(dev);
            Ok((m, ErofsHow::Loop(name)))
        }
        Err(e) => Err(erofs_err(e)),
    }
}

fn overlay_err(e: StepError) -> MountError {
    MountError::Overlay {
        step: e.step,
        errno: e.errno,
        kernel: e.kernel,
    }
}

/// The verified overlay: detached mount fd. New kernels take the layers one
/// by one (`lowerdir+`, `datadir+`: Linux 6.8); older ones refuse
/// `lowerdir+` with EINVAL and get the string form `lower::data` in a fresh
/// context (a context that saw a failed step cannot be reused).
fn mount_overlay(lower: &Path, objects: &Path) -> Result<(OwnedFd, OverlayHow), MountError> {
    let lower_c = cstr_path(lower)?;
    let objects_c = cstr_path(objects)?;
    let open = || {
        let fs = FsContext::open("overlay").map_err(overlay_err)?;
        // Only a label in mountinfo; an old kernel that refuses it is fine.
        let _ = fs.set("source", c"composefs");
        Ok::<_, MountError>(fs)
    };
    let fs = open()?;
    let (fs, how) = match fs.set("lowerdir+", &lower_c) {
        Ok(()) => {
            fs.set("datadir+", &objects_c).map_err(overlay_err)?;
            (fs, OverlayHow::LayerAppend)
        }
        Err(StepError {
            errno: Errno::INVAL,
            ..
        }) => {
            drop(fs);
            for p in [lower, objects] {
                let s = p.as_os_str().as_encoded_bytes();
                if s.iter().any(|c| matches!(c, b':' | b',' | b'\\')) {
                    return Err(MountError::UnsafePath {
                        path: p.display().to_string(),
                    });
                }
            }
            let fs = open()?;
            let value = cstr_path(Path::new(&format!(
                "{}::{}",
                lower.display(),
                objects.display()
            )))?;
            fs.set("lowerdir", &value).map_err(overlay_err)?;
            (fs, OverlayHow::StringForm)
        }
        Err(e) => return Err(overlay_err(e)),
    };
    fs.set("metacopy", c"on").map_err(overlay_err)?;
    fs.set("redirect_dir", c"on").map_err(overlay_err)?;
    fs.set("verity", c"require")
        .map_err(|e| MountError::VerityRequireRejected {
            errno: e.errno,
            kernel: e.kernel,
        })?;
    fs.flag("ro").map_err(overlay_err)?;
    let m = fs
        .mount(MountAttrFlags::MOUNT_ATTR_RDONLY | MountAttrFlags::MOUNT_ATTR_NODEV)
        .map_err(overlay_err)?;
    Ok((m, how))
}

/// A private tmpfs at `scratch`: every intermediate mount goes under it so
/// one lazy unmount cleans up after a failure.
struct Scratch {
    path: PathBuf,
    armed: bool,
}

impl Scratch {
    fn new(path: &Path) -> Result<Scratch, MountError> {
        let err = |errno| MountError::Scratch {
            path: path.display().to_string(),
            errno,
        };
        mkdir_all(path, 0o755).map_err(err)?;
        rustix::mount::mount(
            "sealroot",
            path,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            Some(c"mode=0700"),
        )
        .map_err(err)?;
        let s = Scratch {
            path: path.to_path_buf(),
            armed: true,
        };
        rustix::mount::mount_change(path, MountPropagationFlags::PRIVATE).map_err(err)?;
        for d in ["erofs", "root", "etc"] {
            rustix::fs::mkdir(path.join(d), Mode::from_raw_mode(0o700)).map_err(err)?;
        }
        Ok(s)
    }

    fn sub(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.armed {
            let _ = rustix::mount::unmount(&self.path, UnmountFlags::DETACH);
            let _ = rustix::fs::rmdir(&self.path);
        }
    }
}

/// Open (creating what is missing, mode 0755) the directory `rel` beneath
/// the physical root fd, one component at a time, with
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`:
/// a symlink anywhere on the way is refused ([`MountError::StateSymlink`]),
/// so a planted `state -> /` cannot point the writable mounts elsewhere.
/// Returns an `O_PATH` fd; the mounts use that fd (`/proc/self/fd/N`), never
/// the path again.
fn open_state_dir(sysroot: &OwnedFd, rel: &str) -> Result<OwnedFd, MountError> {
    let mut dir: Option<OwnedFd> = None;
    let mut done = String::new();
    for name in rel.split('/') {
        if !done.is_empty() {
            done.push('/');
        }
        done.push_str(name);
        let parent = dir.as_ref().unwrap_or(sysroot);
        let open = || {
            openat2_retrying(|| {
                rustix::fs::openat2(
                    parent,
                    name,
                    // No O_NOFOLLOW: with O_PATH it would return a trailing
                    // symlink itself; without it RESOLVE_NO_SYMLINKS gives ELOOP.
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    Follow::Never.resolve_flags(),
                )
            })
        };
        let fd = match open() {
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(errno) => {
                        return Err(MountError::State {
                            what: "state directory",
                            path: done,
                            errno,
                        })
                    }
                }
                open()
            }
            other => other,
        };
        dir = Some(fd.map_err(|errno| match errno {
            Errno::LOOP => MountError::StateSymlink { path: done.clone() },
            errno => MountError::State {
                what: "state directory",
                path: done.clone(),
                errno,
            },
        })?);
    }
    dir.ok_or(MountError::StateSymlink {
        path: rel.to_string(),
    })
}

/// `/proc/self/fd/N` for `fd`: the kernel resolves it to exactly the
/// directory the fd holds, whatever has been renamed or replaced since.
fn fd_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Flags every writable state mount gets: a setuid binary or device node
/// planted in the unverified state must not work.
const STATE_ATTRS: MountAttrFlags =
    MountAttrFlags::MOUNT_ATTR_NOSUID.union(MountAttrFlags::MOUNT_ATTR_NODEV);

/// Bind `src` over `target`, then make the bind `nosuid,nodev` (+`noexec`).
fn bind_state(
    src: &OwnedFd,
    target: &Path,
    what: &'static str,
    shown: &str,
    noexec: bool,
) -> Result<(), MountError> {
    let err = |errno| MountError::State {
        what,
        path: shown.to_string(),
        errno,
    };
    rustix::mount::mount_bind(fd_path(src).as_c_str(), target).map_err(err)?;
    let mut flags = MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV;
    if noexec {
        flags |= MountFlags::NOEXEC;
    }
    rustix::mount::mount_remount(target, flags, c"").map_err(err)
}

fn need_dir(root: &Path, rel: &str) -> Result<PathBuf, MountError> {
    let p = root.join(rel);
    if !is_dir(&p) {
        return Err(MountError::MissingMountPoint {
            path: format!("/{rel}"),
        });
    }
    Ok(p)
}

/// An `/etc` overlay: the image's `/etc` below, `upper`/`work` given as fds.
fn etc_overlay(etc: &Path, upper: &OwnedFd, work: &OwnedFd, shown: &str) -> Result<(), MountError> {
    let err = |errno| MountError::State {
        what: "/etc",
        path: shown.to_string(),
        errno,
    };
    let step_err = |e: StepError| err(e.errno);
    let fs = FsContext::open("overlay").map_err(step_err)?;
    let _ = fs.set("source", c"sealroot-etc");
    fs.set("lowerdir", &cstr_path(etc)?).map_err(step_err)?;
    fs.set("upperdir", &fd_path(upper)).map_err(step_err)?;
    fs.set("workdir", &fd_path(work)).map_err(step_err)?;
    let m = fs.mount(STATE_ATTRS).map_err(step_err)?;
    attach(&m, etc).map_err(err)
}

fn mount_etc(
    req: &ComposeRequest<'_>,
    sysroot: &OwnedFd,
    scratch: &Scratch,
    root: &Path,
) -> Result<(), MountError> {
    if req.etc == EtcMode::None {
        return Ok(());
    }
    let etc = need_dir(root, "etc")?;
    let deploy = layout::deploy_rel(req.digest);
    let upper_rel = format!("{deploy}/{}", layout::ETC_UPPER);
    match req.etc {
        EtcMode::None => Ok(()),
        EtcMode::Persistent => {
            let upper = open_state_dir(sysroot, &upper_rel)?;
            let work = open_state_dir(sysroot, &format!("{deploy}/{}", layout::ETC_WORK))?;
            etc_overlay(&etc, &upper, &work, &upper_rel)
        }
        EtcMode::Transient => {
            let t = scratch.sub("etc");
            rustix::mount::mount(
                "sealroot-etc",
                &t,
                "tmpfs",
                MountFlags::NOSUID | MountFlags::NODEV,
                Some(c"mode=0755"),
            )
            .map_err(state_err("/etc", &t))?;
            let tmp = rustix::fs::open(
                &t,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(state_err("/etc", &t))?;
            let upper = open_state_dir(&tmp, "upper")?;
            let work = open_state_dir(&tmp, "work")?;
            etc_overlay(&etc, &upper, &work, "tmpfs")?;
            // The overlay holds its own reference to the tmpfs.
            let _ = rustix::mount::unmount(&t, UnmountFlags::DETACH);
            Ok(())
        }
        EtcMode::Bind => {
            let upper = open_state_dir(sysroot, &upper_rel)?;
            bind_state(&upper, &etc, "/etc", &upper_rel, false)
        }
    }
}

fn mount_var(req: &ComposeRequest<'_>, sysroot: &OwnedFd, root: &Path) -> Result<(), MountError> {
    match req.var {
        VarMode::None => Ok(()),
        VarMode::Bind => {
            let var = need_dir(root, "var")?;
            let rel = format!("{}/{}", layout::deploy_rel(req.digest), layout::VAR);
            let src = open_state_dir(sysroot, &rel)?;
            bind_state(&src, &var, "/var", &rel, req.var_noexec)
        }
    }
}

fn state_err(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> MountError {
    let path = path.display().to_string();
    move |errno| MountError::State { what, path, errno }
}

/// Mount the verified root on top of `req.sysroot`. See the module docs.
pub fn compose(req: ComposeRequest<'_>) -> Result<Composed, MountError> {
    let scratch = Scratch::new(req.scratch)?;
    let t = Instant::now();
    let (erofs, erofs_how) = mount_erofs(&req.image)?;
    let erofs_dir = scratch.sub("erofs");
    attach(&erofs, &erofs_dir).map_err(|errno| MountError::Erofs {
        step: "move_mount".into(),
        errno,
        kernel: String::new(),
    })?;
    drop(erofs);
    let mount_erofs_us = us_since(t);

    let t = Instant::now();
    let objects = req.sysroot.join(REPO_DIR).join(layout::OBJECTS_DIR);
    let (overlay, overlay_how) = mount_overlay(&erofs_dir, &objects)?;
    let root = scratch.sub("root");
    attach(&overlay, &root).map_err(|errno| MountError::Overlay {
        step: "move_mount".into(),
        errno,
        kernel: String::new(),
    })?;
    drop(overlay);
    let _ = rustix::mount::unmount(&erofs_dir, UnmountFlags::DETACH);
    let mount_overlay_us = us_since(t);

    let t = Instant::now();
    let sysroot = rustix::fs::open(
        req.sysroot,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(state_err("/sysroot", req.sysroot))?;
    mount_etc(&req, &sysroot, &scratch, &root)?;
    mount_var(&req, &sysroot, &root)?;
    let inner = need_dir(&root, "sysroot")?;
    rustix::mount::mount_bind(fd_path(&sysroot).as_c_str(), &inner)
        .map_err(state_err("/sysroot", req.sysroot))?;
    // The physical root is unverified: nothing on it may run from inside.
    rustix::mount::mount_remount(
        &inner,
        MountFlags::BIND
            | MountFlags::RDONLY
            | MountFlags::NOSUID
            | MountFlags::NODEV
            | MountFlags::NOEXEC,
        c"",
    )
    .map_err(state_err("/sysroot", req.sysroot))?;
    let state_us = us_since(t);

    rustix::mount::mount_move(&root, req.sysroot).map_err(|errno| MountError::Attach {
        target: req.sysroot.display().to_string(),
        errno,
    })?;
    drop(scratch);
    Ok(Composed {
        erofs: erofs_how,
        overlay: overlay_how,
        mount_erofs_us,
        mount_overlay_us,
        state_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mkdir_all_nested_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x/y/z");
        mkdir_all(&p, 0o755).unwrap();
        assert!(is_dir(&p));
        mkdir_all(&p, 0o755).unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        assert_eq!(
            mkdir_all(&dir.path().join("file/sub"), 0o755),
            Err(Errno::NOTDIR)
        );
    }

    #[test]
    fn state_dirs_are_created_beneath_and_never_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = rustix::fs::open(
            dir.path(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let rel = "state/deploy/ab/etc/upper";
        open_state_dir(&root, rel).unwrap();
        assert!(dir.path().join(rel).is_dir());
        // Idempotent.
        open_state_dir(&root, rel).unwrap();

        // A symlink at any level is refused with the path up to it, whether
        // it points inside or (absolute) outside the physical root.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("state/deploy/ab/var")).unwrap();
        assert_eq!(
            open_state_dir(&root, "state/deploy/ab/var").err(),
            Some(MountError::StateSymlink {
                path: "state/deploy/ab/var".into()
            })
        );
        std::fs::rename(dir.path().join("state"), dir.path().join("real-state")).unwrap();
        std::os::unix::fs::symlink("real-state", dir.path().join("state")).unwrap();
        assert_eq!(
            open_state_dir(&root, rel).err(),
            Some(MountError::StateSymlink {
                path: "state".into()
            })
        );
        // Nothing was created through the link.
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // A file in the way is an error too, not a silent skip.
        std::fs::remove_file(dir.path().join("state")).unwrap();
        std::fs::write(dir.path().join("state"), b"").unwrap();
        assert!(matches!(
            open_state_dir(&root, rel),
            Err(MountError::State {
                errno: Errno::NOTDIR,
                ..
            })
        ));
    }

    #[test]
    fn erofs_eio_names_altered_data() {
        let line = |errno| {
            MountError::Erofs {
                step: "create".into(),
                errno,
                kernel: String::new(),
            }
            .to_string()
        };
        assert!(line(Errno::IO).ends_with(
            "EIO; the image's data does not match its fs-verity hashes (altered on disk): reinstall it"
        ));
        assert!(!line(Errno::NODEV).contains("altered"));
    }

    #[test]
    fn measure_maps_unsupported_filesystems() {
        // The host kernel (and tmpfs everywhere) cannot measure: fail closed.
        let f = tempfile::NamedTempFile::new().unwrap();
        let d = Digest::parse_hex_any(&"00".repeat(32)).unwrap();
        match measure(f.as_file(), &d, "x") {
            Err(ImageError::VerityUnsupported { .. }) | Err(ImageError::VerityMissing { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
