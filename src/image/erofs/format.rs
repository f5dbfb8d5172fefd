//! On-disk constants of the composefs flavour of EROFS, shared by writer and reader.
//!
//! Layout of an image (all integers little-endian):
//! - bytes 0..32: the composefs header ([`COMPOSEFS_MAGIC`], header version
//!   [`COMPOSEFS_HEADER_VERSION`], flags, composefs format version), zero
//!   padded to 1024;
//! - bytes 1024..1152: the EROFS superblock ([`SUPERBLOCK_SIZE`] bytes);
//! - inodes from 1152, each at a 32-byte slot (nid = offset / 32, the
//!   metadata area starts at block 0), compact (32 bytes) or extended (64),
//!   followed by their inline xattrs and inline tail data;
//! - shared xattrs directly after the last inode;
//! - block-aligned data blocks (directory blocks and in-image file data).
//!
//! Facts from the kernel's `fs/erofs/erofs_fs.h`: block size 4096
//! (`blkszbits` 12), `i_format` bit 0 = extended, bits 1..3 = data layout,
//! dirent = `{nid u64, nameoff u16, file_type u8, reserved u8}`, xattr
//! entry = `{name_len u8, name_index u8, value_size u16}` + name + value
//! padded to 4, in-inode xattr header = `{name_filter u32, shared_count u8,
//! reserved[7]}`, chunk-based files hold one u32 block address per chunk
//! after the inode (`0xFFFFFFFF` = hole).

pub const BLOCK_SIZE: u64 = 4096;
pub const BLOCK_BITS: u32 = 12;
pub const SLOT_SIZE: u64 = 32;

pub const COMPOSEFS_MAGIC: u32 = 0xd078_629a;
pub const COMPOSEFS_HEADER_VERSION: u32 = 1;
pub const COMPOSEFS_FLAGS_HAS_ACL: u32 = 1;
pub const COMPOSEFS_HEADER_SIZE: usize = 32;

pub const SUPER_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: u64 = 128;
pub const EROFS_MAGIC: u32 = 0xe0f5_e1e2;
pub const FEATURE_COMPAT_MTIME: u32 = 0x2;
pub const FEATURE_COMPAT_XATTR_FILTER: u32 = 0x4;

pub const COMPACT_INODE_SIZE: u64 = 32;
pub const EXTENDED_INODE_SIZE: u64 = 64;
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
pub const LAYOUT_FLAT_INLINE: u16 = 2;
pub const LAYOUT_CHUNK_BASED: u16 = 4;
pub const CHUNK_FORMAT_BLKBITS_MASK: u32 = 0x1f;
pub const NULL_ADDR: u32 = 0xffff_ffff;

pub const DIRENT_SIZE: u64 = 12;
pub const FT_UNKNOWN: u8 = 0;
pub const FT_REG_FILE: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHRDEV: u8 = 3;
pub const FT_BLKDEV: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;

pub const XATTR_IBODY_HEADER_SIZE: u64 = 12;
pub const XATTR_ENTRY_SIZE: u64 = 4;
/// At most this many shared xattr references per inode (`EROFS_XATTR_LONG_PREFIX`).
pub const MAX_SHARED_PER_INODE: usize = 0x80;
pub const XATTR_FILTER_SEED: u32 = 0x25bb_e08f;
pub const XATTR_FILTER_DEFAULT: u32 = 0xffff_ffff;

pub const XATTR_INDEX_USER: u8 = 1;
pub const XATTR_INDEX_POSIX_ACL_ACCESS: u8 = 2;
pub const XATTR_INDEX_POSIX_ACL_DEFAULT: u8 = 3;
pub const XATTR_INDEX_TRUSTED: u8 = 4;
pub const XATTR_INDEX_LUSTRE: u8 = 5;
pub const XATTR_INDEX_SECURITY: u8 = 6;

/// Xattr name prefixes with their EROFS index, in the order the reference
/// writer tries them (first match wins).
pub const XATTR_PREFIXES: [(&[u8], u8); 5] = [
    (b"user.", XATTR_INDEX_USER),
    (b"system.posix_acl_access", XATTR_INDEX_POSIX_ACL_ACCESS),
    (b"system.posix_acl_default", XATTR_INDEX_POSIX_ACL_DEFAULT),
    (b"trusted.", XATTR_INDEX_TRUSTED),
    (b"security.", XATTR_INDEX_SECURITY),
];

/// Full prefix for an EROFS xattr name index (reader side).
pub fn xattr_prefix(index: u8) -> Option<&'static [u8]> {
    match index {
        0 => Some(b""),
        XATTR_INDEX_USER => Some(b"user."),
        XATTR_INDEX_POSIX_ACL_ACCESS => Some(b"system.posix_acl_access"),
        XATTR_INDEX_POSIX_ACL_DEFAULT => Some(b"system.posix_acl_default"),
        XATTR_INDEX_TRUSTED => Some(b"trusted."),
        // Never written by composefs, but a valid EROFS index the kernel
        // decodes, so a reader accepts it.
        XATTR_INDEX_LUSTRE => Some(b"lustre."),
        XATTR_INDEX_SECURITY => Some(b"security."),
        _ => None,
    }
}

/// Split an xattr name into (EROFS index, suffix).
pub fn xattr_split(name: &[u8]) -> (u8, &[u8]) {
    for (prefix, index) in XATTR_PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            return (index, rest);
        }
    }
    (0, name)
}

/// xxHash32, as the kernel's `xxh32()` (used for the xattr bloom filter).
pub fn xxh32(input: &[u8], seed: u32) -> u32 {
    const P1: u32 = 2_654_435_761;
    const P2: u32 = 2_246_822_519;
    const P3: u32 = 3_266_489_917;
    const P4: u32 = 668_265_263;
    const P5: u32 = 374_761_393;
    let rd = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let round = |acc: u32, v: u32| {
        acc.wrapping_add(v.wrapping_mul(P2))
            .rotate_left(13)
            .wrapping_mul(P1)
    };
    let len = input.len();
    let mut p = input;
    let mut h = if len >= 16 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while p.len() >= 16 {
            for (i, lane) in v.iter_mut().enumerate() {
                *lane = round(*lane, rd(&p[i * 4..]));
            }
            p = &p[16..];
        }
        v[0].rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18))
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len as u32);
    while p.len() >= 4 {
        h = h
            .wrapping_add(rd(p).wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
        p = &p[4..];
    }
    for &b in p {
        h = h
            .wrapping_add(u32::from(b).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh32_known_values() {
        // Published xxHash32 test values.
        assert_eq!(xxh32(b"", 0), 0x02cc_5d05);
        assert_eq!(xxh32(b"a", 0), 0x550d_7456);
        assert_eq!(xxh32(b"abc", 0), 0x32d1_53ff);
        assert_eq!(
            xxh32(b"Nobody inspects the spammish repetition", 0),
            0xe229_3b2f
        );
    }

    #[test]
    fn prefixes_match_first() {
        assert_eq!(xattr_split(b"user.foo"), (1, &b"foo"[..]));
        assert_eq!(xattr_split(b"system.posix_acl_access"), (2, &b""[..]));
        assert_eq!(xattr_split(b"trusted.overlay.x"), (4, &b"overlay.x"[..]));
        assert_eq!(xattr_split(b"security.selinux"), (6, &b"selinux"[..]));
        assert_eq!(xattr_split(b"system.other"), (0, &b"system.other"[..]));
    }
}
