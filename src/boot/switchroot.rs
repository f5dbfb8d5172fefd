//! PID 1 plumbing: API filesystems, kernel modules, the physical root
//! device, and the final switch into the composed root.
//!
//! Contract:
//! - [`mount_api_filesystems`] mounts proc, sysfs, devtmpfs and a tmpfs
//!   `/run` in the initramfs (EBUSY: already mounted, fine).
//! - [`load_modules`] loads the modules named in a list file, one per line,
//!   in the order given (the harness/dracut writes dependencies first).
//!   Relative lines are taken under `/lib/modules/<uname -r>/`. Compressed
//!   modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are handed to the kernel as they
//!   are with `MODULE_INIT_COMPRESSED_FILE`. EEXIST (already loaded or built
//!   in) counts as success. A failure is logged and the boot goes on: a
//!   module that was really needed makes a later step fail with its own
//!   specific message.
//! - [`mount_physical_root`] waits (bounded) for `root=` to appear as a
//!   block device and mounts it read-write (the state directory lives there)
//!   with `rootfstype=` (comma-separated list; default ext4, btrfs, f2fs) and
//!   `rootflags=`. Only `/dev/...` paths are supported: without udev there is
//!   no `/dev/disk/by-uuid`; `UUID=`/`LABEL=`/`PARTUUID=` forms are looked up
//!   under `/dev/disk/by-*` and therefore only work where something populates
//!   it.
//! - [`switch_root`] moves /dev, /proc, /sys, /run into the new root, deletes
//!   the initramfs's files (only when `/` is a ramfs/tmpfs, never crossing
//!   into another filesystem), moves the new root onto `/`, chroots, checks
//!   that init is a regular executable file on the sealed root mount
//!   itself (same mount ID as `/`) (not on the writable `/etc`, `/var` or `/sysroot` mounts, so
//!   `init=` cannot run unverified code), and execs it with argv `[init]`
//!   and exactly the environment it is given (the boot policy's), nothing
//!   inherited from the kernel.
//!
//! Kernel facts relied on: `finit_module` flag `MODULE_INIT_COMPRESSED_FILE`
//! = 4 (Linux 6.4+, needs `CONFIG_MODULE_DECOMPRESS`); ramfs magic
//! 0x858458f6, tmpfs magic 0x01021994; `MS_MOVE` of the new root onto `/`
//! followed by `chroot(".")` is how an initramfs hands over (pivot_root does
//! not work on the rootfs).

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::MountFlags;

use crate::boot::io::errno_name;
use crate::boot::log;

/// `MODULE_INIT_COMPRESSED_FILE`
const MODULE_INIT_COMPRESSED_FILE: i32 = 4;
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Largest module list accepted.
const MAX_MODULE_LIST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchError {
    ApiMount {
        path: &'static str,
        errno: Errno,
    },
    NoRootParameter,
    RootDeviceTimeout {
        device: String,
        seconds: u32,
    },
    RootNotBlockDevice {
        device: String,
    },
    RootMount {
        device: String,
        fstypes: String,
        errno: Errno,
    },
    MissingMountPoint {
        path: String,
    },
    MoveMount {
        what: String,
        errno: Errno,
    },
    Chroot {
        errno: Errno,
    },
    InitNotAbsolute {
        init: String,
    },
    InitMissing {
        init: String,
    },
    InitNotOnSealedRoot {
        init: String,
    },
    InitNotExecutable {
        init: String,
    },
    Exec {
        init: String,
        error: String,
    },
}

impl fmt::Display for SwitchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchError::ApiMount { path, errno } => {
                write!(f, "cannot mount {path}: {}", errno_name(*errno))
            }
            SwitchError::NoRootParameter => {
                write!(f, "no root= on the kernel command line")
            }
            SwitchError::RootDeviceTimeout { device, seconds } => write!(
                f,
                "root device {device} did not appear within {seconds} s"
            ),
            SwitchError::RootNotBlockDevice { device } => {
                write!(f, "root device {device} is not a block device")
            }
            SwitchError::RootMount {
                device,
                fstypes,
                errno,
            } => write!(
                f,
                "cannot mount root device {device} as {fstypes}: {}",
                errno_name(*errno)
            ),
            SwitchError::MissingMountPoint { path } => {
                write!(f, "the sealed image has no directory {path} to mount on")
            }
            SwitchError::MoveMount { what, errno } => {
                write!(f, "cannot move {what}: {}", errno_name(*errno))
            }
            SwitchError::Chroot { errno } => {
                write!(f, "cannot chroot into the new root: {}", errno_name(*errno))
            }
            SwitchError::InitNotAbsolute { init } => {
                write!(f, "init={init} is not an absolute path")
            }
            SwitchError::InitMissing { init } => {
                write!(f, "init {init} does not exist in the sealed root")
            }
            SwitchError::InitNotOnSealedRoot { init } => write!(
                f,
                "init {init} is not on the sealed root filesystem (it resolves into a writable mount)"
            ),
            SwitchError::InitNotExecutable { init } => {
                write!(f, "init {init} is not an executable regular file")
            }
            SwitchError::Exec { init, error } => write!(f, "cannot execute {init}: {error}"),
        }
    }
}

impl std::error::Error for SwitchError {}

fn mount_one(
    source: &str,
    path: &'static str,
    fstype: &str,
    flags: MountFlags,
    data: Option<&std::ffi::CStr>,
) -> Result<(), SwitchError> {
    let _ = crate::boot::io::mkdir_all(Path::new(path), 0o755);
    match rustix::mount::mount(source, path, fstype, flags, data) {
        Ok(()) | Err(Errno::BUSY) => Ok(()),
        Err(errno) => Err(SwitchError::ApiMount { path, errno }),
    }
}

/// Mount /proc, /sys, /dev and /run in the initramfs.
pub fn mount_api_filesystems() -> Result<(), SwitchError> {
    let nse = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_one("proc", "/proc", "proc", nse, None)?;
    mount_one("sysfs", "/sys", "sysfs", nse, None)?;
    mount_one(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MountFlags::NOSUID,
        Some(c"mode=0755"),
    )?;
    mount_one(
        "tmpfs",
        "/run",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"mode=0755"),
    )?;
    Ok(())
}

fn is_compressed(path: &str) -> bool {
    [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| path.ends_with(s))
}

/// Load the modules named in `list` (see the module docs). Returns the
/// number loaded and already present.
pub fn load_modules(list: &Path) -> (usize, usize) {
    let text = match crate::boot::io::read_file_limited(list, MAX_MODULE_LIST) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(None) => {
            log::warning(&format!(
                "module list {} is larger than {MAX_MODULE_LIST} bytes; loading none",
                list.display()
            ));
            return (0, 0);
        }
        Err(_) => return (0, 0),
    };
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let base = PathBuf::from("/lib/modules").join(release);
    let (mut loaded, mut present) = (0, 0);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let path = if line.starts_with('/') {
            PathBuf::from(line)
        } else {
            base.join(line)
        };
        let fd = match rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(errno) => {
                log::warning(&format!(
                    "cannot open module {}: {}",
                    path.display(),
                    errno_name(errno)
                ));
                continue;
            }
        };
        let flags = if is_compressed(line) {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        match rustix::system::finit_module(&fd, c"", flags) {
            Ok(()) => {
                loaded += 1;
                log::info(&format!("loaded module {}", path.display()));
            }
            Err(Errno::EXIST) => present += 1,
            Err(errno) => log::warning(&format!(
                "cannot load module {}: {}",
                path.display(),
                errno_name(errno)
            )),
        }
    }
    (loaded, present)
}

/// The device path `root=` names.
pub fn root_device_path(root: &str) -> String {
    for (prefix, dir) in [
        ("UUID=", "/dev/disk/by-uuid/"),
        ("LABEL=", "/dev/disk/by-label/"),
        ("PARTUUID=", "/dev/disk/by-partuuid/"),
        ("PARTLABEL=", "/dev/disk/by-partlabel/"),
    ] {
        if let Some(rest) = root.strip_prefix(prefix) {
            return format!("{dir}{rest}");
        }
    }
    root.to_string()
}

/// Wait for `root=` and mount it at `target`.
pub fn mount_physical_root(
    root: Option<&str>,
    rootfstype: Option<&str>,
    rootflags: Option<&str>,
    wait_seconds: u32,
    target: &Path,
) -> Result<String, SwitchError> {
    let root = root.ok_or(SwitchError::NoRootParameter)?;
    let device = root_device_path(root);
    let start = Instant::now();
    let limit = Duration::from_secs(wait_seconds.into());
    let mut announced = false;
    let st = loop {
        if let Ok(st) = rustix::fs::stat(device.as_str()) {
            break st;
        }
        if start.elapsed() >= limit {
            return Err(SwitchError::RootDeviceTimeout {
                device,
                seconds: wait_seconds,
            });
        }
        if !announced {
            log::info(&format!(
                "waiting up to {wait_seconds} s for root device {device}"
            ));
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::BlockDevice {
        return Err(SwitchError::RootNotBlockDevice { device });
    }
    let _ = crate::boot::io::mkdir_all(target, 0o755);
    let types: Vec<&str> = match rootfstype {
        Some(t) => t.split(',').filter(|s| !s.is_empty()).collect(),
        None => vec!["ext4", "btrfs", "f2fs"],
    };
    let data = rootflags
        .map(|f| std::ffi::CString::new(f).unwrap_or_default())
        .unwrap_or_default();
    let mut last = Errno::NODEV;
    for fstype in &types {
        match rustix::mount::mount(
            device.as_str(),
            target,
            *fstype,
            // The disk is the attacker's: a device node on it must not
            // reach a device, and no set-id bit may count.
            MountFlags::NODEV | MountFlags::NOSUID,
            data.as_c_str(),
        ) {
            Ok(()) => {
                log::info(&format!(
                    "mounted root device {device} ({fstype}) at {} after {} ms",
                    target.display(),
                    start.elapsed().as_millis()
                ));
                return Ok(fstype.to_string());
            }
            Err(errno) => last = errno,
        }
    }
    Err(SwitchError::RootMount {
        device,
        fstypes: types.join(","),
        errno: last,
    })
}

/// Delete every file of the filesystem `dir` is on, below `dir`, without
/// crossing into other filesystems. Errors are ignored: this only frees
/// memory.
fn delete_tree_same_fs(dir: &Path, dev: u64) {
    let Ok(fd) = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let Ok(mut entries) = rustix::fs::Dir::read_from(&fd) else {
        return;
    };
    let mut names = Vec::new();
    while let Some(Ok(entry)) = entries.read() {
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(std::ffi::OsStr::from_bytes(name).to_os_string());
        }
    }
    for name in names {
        let path = dir.join(&name);
        let Ok(st) = rustix::fs::lstat(&path) else {
            continue;
        };
        #[allow(clippy::unnecessary_cast)]
        if st.st_dev as u64 != dev {
            continue;
        }
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            delete_tree_same_fs(&path, dev);
            let _ = rustix::fs::rmdir(&path);
        } else {
            let _ = rustix::fs::unlink(&path);
        }
    }
}

/// Free the initramfs contents (only if `/` is ramfs or tmpfs).
fn free_initramfs() {
    let Ok(st) = rustix::fs::statfs("/") else {
        return;
    };
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        return;
    }
    let Ok(root) = rustix::fs::lstat("/") else {
        return;
    };
    #[allow(clippy::unnecessary_cast)]
    delete_tree_same_fs(Path::new("/"), root.st_dev as u64);
}

/// The mount ID of the file `path` resolves to (symlinks followed).
/// Mount IDs, unlike `st_dev`, are reliable here: overlayfs reports the
/// underlying layer's (pseudo) device for non-directories.
fn mount_id(path: &str) -> Option<u64> {
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::MNT_ID | rustix::fs::StatxFlags::TYPE,
    )
    .ok()?;
    if st.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() == 0 {
        return None;
    }
    Some(st.stx_mnt_id)
}

/// Check `init` inside the (already chrooted) new root.
fn check_init(init: &str) -> Result<(), SwitchError> {
    let err_missing = || SwitchError::InitMissing {
        init: init.to_string(),
    };
    if !init.starts_with('/') {
        return Err(SwitchError::InitNotAbsolute {
            init: init.to_string(),
        });
    }
    let st = rustix::fs::stat(init).map_err(|_| err_missing())?;
    let (Some(init_mnt), Some(root_mnt)) = (mount_id(init), mount_id("/")) else {
        return Err(err_missing());
    };
    if init_mnt != root_mnt {
        return Err(SwitchError::InitNotOnSealedRoot {
            init: init.to_string(),
        });
    }
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_mode & 0o111 == 0 {
        return Err(SwitchError::InitNotExecutable {
            init: init.to_string(),
        });
    }
    Ok(())
}

/// Move the API filesystems into `new_root`, free the initramfs, make
/// `new_root` the root, and exec `init` with argv `[init]` and environment
/// `env`. Returns only on error.
pub fn switch_root(new_root: &Path, init: &str, env: &[&str]) -> SwitchError {
    match switch_root_inner(new_root, init, env) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn switch_root_inner(new_root: &Path, init: &str, env: &[&str]) -> Result<Never, SwitchError> {
    for api in ["/dev", "/proc", "/sys", "/run"] {
        let target = new_root.join(&api[1..]);
        if !crate::boot::io::is_dir(&target) {
            return Err(SwitchError::MissingMountPoint {
                path: api.to_string(),
            });
        }
    }
    for api in ["/dev", "/proc", "/sys", "/run"] {
        let target = new_root.join(&api[1..]);
        rustix::mount::mount_move(api, &target).map_err(|errno| SwitchError::MoveMount {
            what: format!("{api} into the new root"),
            errno,
        })?;
    }
    free_initramfs();
    rustix::process::chdir(new_root).map_err(|errno| SwitchError::Chroot { errno })?;
    rustix::mount::mount_move(".", "/").map_err(|errno| SwitchError::MoveMount {
        what: "the new root onto /".to_string(),
        errno,
    })?;
    rustix::process::chroot(".").map_err(|errno| SwitchError::Chroot { errno })?;
    rustix::process::chdir("/").map_err(|errno| SwitchError::Chroot { errno })?;
    check_init(init)?;
    log::notice(&format!("switching root to {init}"));
    let to_c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let path = to_c(init);
    let argv = [to_c(init)];
    let envp: Vec<std::ffi::CString> = env.iter().map(|e| to_c(e)).collect();
    let errno = crate::sys::execve(&path, &argv, &envp);
    Err(SwitchError::Exec {
        init: init.to_string(),
        error: errno_name(errno),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_ids_tell_mounts_apart() {
        // /proc is always a different mount from /.
        let root = mount_id("/").unwrap();
        assert_eq!(mount_id("/"), Some(root));
        assert_ne!(mount_id("/proc/self/status"), Some(root));
        assert_eq!(mount_id("/no/such/file"), None);
    }

    #[test]
    fn delete_tree_stays_on_its_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("a/b/c")).unwrap();
        std::fs::write(d.join("a/b/c/f"), b"x").unwrap();
        std::fs::write(d.join("top"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", d.join("link")).unwrap();
        let dev = rustix::fs::lstat(d).unwrap().st_dev as u64;
        // A device number that matches nothing: nothing may be deleted.
        delete_tree_same_fs(d, dev.wrapping_add(1));
        assert!(d.join("a/b/c/f").exists() && d.join("top").exists());
        delete_tree_same_fs(d, dev);
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0);
        // The symlink itself went, not what it points to.
        assert!(Path::new("/etc").is_dir());
    }

    #[test]
    fn root_forms() {
        assert_eq!(root_device_path("/dev/vda"), "/dev/vda");
        assert_eq!(root_device_path("UUID=abc"), "/dev/disk/by-uuid/abc");
        assert_eq!(root_device_path("LABEL=r"), "/dev/disk/by-label/r");
        assert_eq!(root_device_path("PARTUUID=p"), "/dev/disk/by-partuuid/p");
    }

    #[test]
    fn compressed_module_names() {
        assert!(is_compressed("kernel/fs/erofs/erofs.ko.xz"));
        assert!(is_compressed("a.ko.zst"));
        assert!(!is_compressed("a.ko"));
        assert!(!is_compressed("a.xz"));
    }

    #[test]
    fn missing_root_parameter() {
        assert_eq!(
            mount_physical_root(None, None, None, 1, Path::new("/nonexistent")),
            Err(SwitchError::NoRootParameter)
        );
    }

    #[test]
    fn root_device_wait_is_bounded() {
        let t = Instant::now();
        let r = mount_physical_root(
            Some("/dev/sealroot-test-no-such-device"),
            None,
            None,
            1,
            Path::new("/nonexistent"),
        );
        assert_eq!(
            r,
            Err(SwitchError::RootDeviceTimeout {
                device: "/dev/sealroot-test-no-such-device".into(),
                seconds: 1
            })
        );
        assert!(t.elapsed() >= Duration::from_secs(1));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn regular_file_is_not_a_root_device() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let p = f.path().to_str().unwrap().to_string();
        assert_eq!(
            mount_physical_root(Some(&p), None, None, 1, Path::new("/nonexistent")),
            Err(SwitchError::RootNotBlockDevice { device: p })
        );
    }
}
