//! The only module with `unsafe`: ioctls and raw syscalls rustix lacks.
//!
//! Every block carries a `// SAFETY:` line. Wrappers are thin and typed: they
//! return [`rustix::io::Errno`] and leave the meaning of each errno to callers.
//!
//! Kernel facts relied on (x86-64 numbers; `_IOWR`/`_IOW` encode the size):
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

use std::os::fd::{AsFd, AsRawFd};

use rustix::io::Errno;

use crate::digest::{Digest, HashAlgorithm};

const FS_IOC_ENABLE_VERITY: libc::c_ulong = 0x4080_6685;
const FS_IOC_MEASURE_VERITY: libc::c_ulong = 0xC004_6686;

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
/// holds it. A digest of an algorithm this code does not know is reported as
/// `EINVAL`.
pub fn measure_verity(fd: impl AsFd) -> Result<Digest, Errno> {
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
    errno_of(ret)?;
    let algorithm = HashAlgorithm::from_number(buf.digest_algorithm.into()).ok_or(Errno::INVAL)?;
    let size = usize::from(buf.digest_size);
    if size > buf.digest.len() {
        return Err(Errno::OVERFLOW);
    }
    Digest::from_bytes(algorithm, &buf.digest[..size]).ok_or(Errno::INVAL)
}

/// `FS_IOC_ENABLE_VERITY` on a read-only `fd`, 4096-byte blocks, no salt, no
/// signature.
pub fn enable_verity(fd: impl AsFd, algorithm: HashAlgorithm) -> Result<(), Errno> {
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
    errno_of(ret).map(|_| ())
}

/// The reserved trust area `sealctl embed-keys` patches; layout and reader in
/// [`crate::trust`]. Here only because `link_section` counts as unsafe code to
/// the lint; the section name lets tools find and size-check the area.
#[used]
#[link_section = ".sealroot_trust"]
pub(crate) static TRUST_AREA: [u8; crate::trust::AREA_SIZE] = crate::trust::INITIAL_AREA;
