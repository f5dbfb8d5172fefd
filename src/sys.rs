//! The only module with `unsafe`: ioctls and raw syscalls rustix lacks.
//!
//! Every block carries a `// SAFETY:` line. Wrappers are thin and typed: the
//! fs-verity ioctls return [`VerityError`], whose variants name the errno
//! conditions the kernel documents; the loop ioctls return the
//! [`rustix::io::Errno`] and leave its meaning to the mount sequence.
//!
//! Ioctl numbers are derived here from the kernel's generic `_IOC`
//! encoding (`include/uapi/asm-generic/ioctl.h`: number bits 0–7, type bits
//! 8–15, argument size bits 16–29, direction bits 30–31 with write = 1 and
//! read = 2), which x86-64 and arm64 share; unit tests pin the x86-64
//! values below. Kernel facts relied on:
//! - `FS_IOC_MEASURE_VERITY` = `_IOWR('f', 134, struct fsverity_digest)` =
//!   0xC0046686. `struct fsverity_digest { u16 digest_algorithm; u16
//!   digest_size; u8 digest[]; }`: `digest_size` is the buffer size in, the
//!   digest size out. ENODATA: the file has no verity. ENOTTY: the filesystem
//!   cannot do it. EOPNOTSUPP: kernel without fs-verity or superblock without
//!   the feature. EOVERFLOW: buffer too small.
//! - `FS_IOC_ENABLE_VERITY` = `_IOW('f', 133, struct fsverity_enable_arg)` =
//!   0x40806685, 128-byte argument (version 1, hash algorithm, block size,
//!   salt and signature pointers, reserved). The fd must be read-only and no
//!   writable fd may be open on the file (ETXTBSY). EEXIST: already enabled.
//! - Loop devices (`<linux/loop.h>`): `LOOP_CTL_GET_FREE` = 0x4C82 on
//!   `/dev/loop-control` returns a free device number; `LOOP_CONFIGURE` =
//!   0x4C0A (Linux 5.8+) binds a backing fd and sets flags in one call,
//!   taking `struct loop_config { u32 fd; u32 block_size; struct loop_info64
//!   info; u64 reserved[8]; }` (304 bytes; `loop_info64` is 232). The device
//!   keeps its own reference to the backing *open file*, so the file measured
//!   through an fd is the file the device reads. `LO_FLAGS_READ_ONLY` = 1,
//!   `LO_FLAGS_AUTOCLEAR` = 4 (detach when the last user goes away). EBUSY
//!   from `LOOP_CONFIGURE`: someone else took the device first.

use std::os::fd::{AsFd, AsRawFd};

use rustix::io::Errno;

use crate::digest::{Digest, HashAlgorithm};

/// `_IOC(dir, type, nr, size)` of the generic ioctl encoding.
const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    const SIZE_BITS: u32 = 14;
    assert!(
        size < (1 << SIZE_BITS),
        "ioctl argument too large to encode"
    );
    ((dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32) as libc::c_ulong
}
const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IO(type, nr)`: no argument.
const fn io(ty: u8, nr: u8) -> libc::c_ulong {
    ioc(IOC_NONE, ty, nr, 0)
}
/// `_IOW(type, nr, T)`: the kernel reads a `T`.
const fn iow<T>(ty: u8, nr: u8) -> libc::c_ulong {
    ioc(IOC_WRITE, ty, nr, std::mem::size_of::<T>())
}
/// `_IOWR(type, nr, T)`: the kernel reads and writes a `T`.
const fn iowr<T>(ty: u8, nr: u8) -> libc::c_ulong {
    ioc(IOC_READ | IOC_WRITE, ty, nr, std::mem::size_of::<T>())
}

/// `struct fsverity_digest` without its flexible array: what `_IOWR` sizes.
#[repr(C)]
struct FsverityDigestHeader {
    digest_algorithm: u16,
    digest_size: u16,
}

const FS_IOC_ENABLE_VERITY: libc::c_ulong = iow::<FsverityEnableArg>(b'f', 133);
const FS_IOC_MEASURE_VERITY: libc::c_ulong = iowr::<FsverityDigestHeader>(b'f', 134);

/// Why an fs-verity ioctl did not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerityError {
    /// `ENODATA` from measuring: the file has no fs-verity.
    NotEnabled,
    /// `EEXIST` from enabling: the file already has fs-verity.
    AlreadyEnabled,
    /// `EOPNOTSUPP` / `ENOTTY`: the kernel or filesystem cannot do fs-verity.
    Unsupported(Errno),
    /// The kernel reported a digest algorithm number this code does not know.
    UnknownAlgorithm(u16),
    /// The kernel reported a digest size that does not fit its algorithm.
    BadDigestSize(u16),
    /// Any other errno.
    Os(Errno),
}

impl VerityError {
    fn from_errno(errno: Errno) -> Self {
        match errno {
            Errno::NODATA => VerityError::NotEnabled,
            Errno::EXIST => VerityError::AlreadyEnabled,
            Errno::OPNOTSUPP | Errno::NOTTY => VerityError::Unsupported(errno),
            errno => VerityError::Os(errno),
        }
    }

    /// The errno this condition came from (`EINVAL` for the two that the
    /// kernel did not report but this code found).
    pub fn errno(self) -> Errno {
        match self {
            VerityError::NotEnabled => Errno::NODATA,
            VerityError::AlreadyEnabled => Errno::EXIST,
            VerityError::Unsupported(e) | VerityError::Os(e) => e,
            VerityError::UnknownAlgorithm(_) | VerityError::BadDigestSize(_) => Errno::INVAL,
        }
    }
}

#[repr(C)]
struct FsverityEnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}

const _: () = assert!(std::mem::size_of::<FsverityEnableArg>() == 128);

#[repr(C)]
struct FsverityDigestBuf {
    digest_algorithm: u16,
    digest_size: u16,
    digest: [u8; 64],
}

fn errno_of(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret < 0 {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        Ok(ret)
    }
}

/// `FS_IOC_MEASURE_VERITY` on `fd`: the file's fs-verity digest as the kernel
/// holds it.
pub fn measure_verity(fd: impl AsFd) -> Result<Digest, VerityError> {
    let mut buf = FsverityDigestBuf {
        digest_algorithm: 0,
        digest_size: 64,
        digest: [0; 64],
    };
    // SAFETY: `buf` is a live, writable struct whose `digest_size` field tells
    // the kernel it may write at most 64 digest bytes, which `digest` holds.
    let ret = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            FS_IOC_MEASURE_VERITY as _,
            &mut buf as *mut FsverityDigestBuf,
        )
    };
    errno_of(ret).map_err(VerityError::from_errno)?;
    let algorithm = HashAlgorithm::from_number(buf.digest_algorithm.into())
        .ok_or(VerityError::UnknownAlgorithm(buf.digest_algorithm))?;
    let digest = buf
        .digest
        .get(..usize::from(buf.digest_size))
        .ok_or(VerityError::BadDigestSize(buf.digest_size))?;
    Digest::from_bytes(algorithm, digest).ok_or(VerityError::BadDigestSize(buf.digest_size))
}

/// `FS_IOC_ENABLE_VERITY` on a read-only `fd`, 4096-byte blocks, no salt, no
/// signature.
pub fn enable_verity(fd: impl AsFd, algorithm: HashAlgorithm) -> Result<(), VerityError> {
    let arg = FsverityEnableArg {
        version: 1,
        hash_algorithm: algorithm.number().into(),
        block_size: 4096,
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    // SAFETY: `arg` is a fully initialised 128-byte struct matching
    // `struct fsverity_enable_arg`; its salt and signature pointers are null
    // with zero sizes, so the kernel reads nothing else.
    let ret = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            FS_IOC_ENABLE_VERITY as _,
            &arg as *const FsverityEnableArg,
        )
    };
    errno_of(ret).map(|_| ()).map_err(VerityError::from_errno)
}

const LOOP_CTL_GET_FREE: libc::c_ulong = io(b'L', 0x82);
const LOOP_CONFIGURE: libc::c_ulong = io(b'L', 0x0A);
/// `LO_FLAGS_READ_ONLY`
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR`
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// `LOOP_CTL_GET_FREE` on an open `/dev/loop-control`: a free loop number.
pub fn loop_ctl_get_free(control: impl AsFd) -> Result<u32, Errno> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument pointer; the kernel ignores
    // the third argument.
    let ret = unsafe { libc::ioctl(control.as_fd().as_raw_fd(), LOOP_CTL_GET_FREE as _, 0) };
    let n = errno_of(ret)?;
    u32::try_from(n).map_err(|_| Errno::INVAL)
}

/// `LOOP_CONFIGURE` on an open loop device: back it by `backing` with
/// `flags` (`LO_FLAGS_*`), 512-byte logical blocks (the kernel default).
pub fn loop_configure(device: impl AsFd, backing: impl AsFd, flags: u32) -> Result<(), Errno> {
    let raw = backing.as_fd().as_raw_fd();
    let fd = u32::try_from(raw).map_err(|_| Errno::BADF)?;
    let config = LoopConfig {
        fd,
        block_size: 0,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: `config` is a fully initialised `struct loop_config` that lives
    // across the call; the kernel only reads it.
    let ret = unsafe {
        libc::ioctl(
            device.as_fd().as_raw_fd(),
            LOOP_CONFIGURE as _,
            &config as *const LoopConfig,
        )
    };
    errno_of(ret).map(|_| ())
}

/// The reserved trust area `sealctl embed-keys` patches; layout and reader in
/// [`crate::boot::trust`]. Here only because `link_section` counts as unsafe code to
/// the lint; the section name lets tools find and size-check the area.
#[used]
#[link_section = ".sealroot_trust"]
pub(crate) static TRUST_AREA: [u8; crate::boot::trust::AREA_SIZE] =
    crate::boot::trust::INITIAL_AREA;

/// `execve(path, argv, envp)`: replace this process image with exactly
/// the given arguments and environment (nothing inherited). Returns only on
/// failure. (std's `Command::exec` would do, but drags its environment and
/// fork machinery into the size-bound boot binary.)
pub fn execve(
    path: &std::ffi::CStr,
    argv: &[std::ffi::CString],
    envp: &[std::ffi::CString],
) -> Errno {
    let mut arg_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    // SAFETY: `path` and every `argv`/`envp` string are NUL-terminated and
    // outlive the call; both pointer arrays are NULL-terminated and point to
    // them. On success the call does not return.
    unsafe { libc::execve(path.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // The values <linux/fsverity.h> and <linux/loop.h> give on x86-64.
        assert_eq!(FS_IOC_ENABLE_VERITY, 0x4080_6685);
        assert_eq!(FS_IOC_MEASURE_VERITY, 0xC004_6686);
        assert_eq!(LOOP_CTL_GET_FREE, 0x4C82);
        assert_eq!(LOOP_CONFIGURE, 0x4C0A);
    }

    #[test]
    fn verity_errors_name_the_condition() {
        assert_eq!(
            VerityError::from_errno(Errno::NODATA),
            VerityError::NotEnabled
        );
        assert_eq!(
            VerityError::from_errno(Errno::EXIST),
            VerityError::AlreadyEnabled
        );
        assert_eq!(
            VerityError::from_errno(Errno::NOTTY),
            VerityError::Unsupported(Errno::NOTTY)
        );
        assert_eq!(
            VerityError::from_errno(Errno::IO),
            VerityError::Os(Errno::IO)
        );
        assert_eq!(VerityError::UnknownAlgorithm(9).errno(), Errno::INVAL);
    }

    #[test]
    fn measuring_a_file_without_verity_fails_closed() {
        // tmpfs (and the host kernel) cannot do fs-verity: never a digest.
        let f = tempfile::tempfile().unwrap();
        assert!(matches!(
            measure_verity(&f),
            Err(VerityError::Unsupported(_) | VerityError::NotEnabled)
        ));
    }
}
