//! Reading composefs EROFS images back into a [`Tree`]: `sealctl dump`, offline
//! verification and installation all start here, and all of them read images
//! that may have been tampered with.
//!
//! # Contract
//! - [`read_image`] turns image bytes into the tree the writer was given:
//!   hardlinks are rebuilt (a non-directory nid reached twice), escaped
//!   `trusted.overlay.overlay.*` xattrs become `trusted.overlay.*` again, the
//!   `trusted.overlay.metacopy` / `redirect` pair becomes the file's external
//!   digest and payload, escaped whiteouts become character devices 0:0 again,
//!   and the writer's own additions (the root's `00`..`ff` whiteout stubs,
//!   `trusted.overlay.opaque` on the root, the whiteout markers on directories)
//!   are dropped. Which entry of a hard-linked inode defined it is inferred
//!   from where the writer placed the inode (`Tree::secondary_links`), so
//!   image -> tree -> image reproduces the same bytes.
//! - [`referenced_objects`] lists the distinct object digests the image's
//!   regular files point at, sorted.
//! - Neither ever panics on any input. Every offset and length read from the
//!   image is checked against the image; directories may be reached only once
//!   (no cycles, no directory hardlinks); nesting is limited; the number of
//!   directory entries, bytes of inline content and bytes of xattr values the
//!   reader materialises are bounded by budgets proportional to the image
//!   size, so a small hostile image cannot make it allocate without bound.
//!   Errors are typed ([`ReadError`]) and name the nid or offset at fault.
//!
//! # On-disk facts relied on (Linux `fs/erofs/erofs_fs.h`, composefs 1.0.x)
//! - Bytes 0..32: the composefs header (magic `0xd078629a`, header version 1,
//!   flags, composefs format version). The EROFS superblock sits at offset
//!   1024 (magic `0xE0F5E1E2`, `blkszbits` = 12 for composefs, `root_nid`,
//!   `meta_blkaddr`, `xattr_blkaddr`, `build_time`).
//! - Inode `nid` lives at `meta_blkaddr * 4096 + nid * 32`. Bit 0 of `i_format`
//!   selects compact (32 bytes, no mtime: it is the superblock's build time) or
//!   extended (64 bytes); bits 1..3 are the data layout (0 flat plain,
//!   2 flat inline, 4 chunk based; 1 and 3 are compressed, never composefs).
//! - The xattr body follows the inode: `12 + 4 * (icount - 1)` bytes when
//!   `icount != 0`: a 12-byte header whose byte 4 is the number of shared
//!   xattr ids (u32, each pointing at `xattr_blkaddr * 4096 + id * 4`), then
//!   inline entries `{name_len u8, name_index u8, value_size le16, name, value}`
//!   padded to 4 bytes. Name indexes 1 `user.`, 2 `system.posix_acl_access`,
//!   3 `system.posix_acl_default`, 4 `trusted.`, 6 `security.`; 0 = full name.
//! - Flat data: whole blocks at `raw_blkaddr`; with the inline layout the last
//!   (partial) block follows the xattr body inside the metadata, and must not
//!   cross a block boundary (the kernel refuses that too).
//! - Directory blocks: 12-byte dirents `{nid le64, nameoff le16, file_type u8,
//!   reserved u8}`; the first `nameoff / 12` is the entry count; names are not
//!   terminated except that the last one ends at the block end or a NUL.
//! - composefs stores external files as chunk-based inodes whose chunk map is
//!   all holes; the content comes from the overlay data layer through
//!   `trusted.overlay.redirect` (`/XX/rest`) and is checked against
//!   `trusted.overlay.metacopy` (`00 24 00 01` + SHA-256 digest).

use std::collections::{BTreeSet, HashMap, HashSet};

use super::format::{self, xattr_prefix};
use crate::digest::{Digest, HashAlgorithm};
use crate::image::tree::{
    self, DirEntry, InodeId, InodeKind, RegularFile, Timespec, Tree, Xattr, S_IFBLK, S_IFCHR,
    S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
};

// The on-disk numbers come from [`format`], shared with the writer; here
// they are only given the integer types the bounds-checked parsing uses.
const SUPERBLOCK_OFFSET: usize = format::SUPER_OFFSET as usize;
const SUPERBLOCK_SIZE: usize = format::SUPERBLOCK_SIZE as usize;
const COMPOSEFS_MAGIC: u32 = format::COMPOSEFS_MAGIC;
const COMPOSEFS_HEADER_VERSION: u32 = format::COMPOSEFS_HEADER_VERSION;
const EROFS_MAGIC: u32 = format::EROFS_MAGIC;
/// composefs always writes 4096-byte blocks.
const BLOCK_BITS: u8 = format::BLOCK_BITS as u8;
const BLOCK_SIZE: usize = format::BLOCK_SIZE as usize;
const SLOT_SIZE: usize = format::SLOT_SIZE as usize;
const COMPACT_INODE_SIZE: usize = format::COMPACT_INODE_SIZE as usize;
const EXTENDED_INODE_SIZE: usize = format::EXTENDED_INODE_SIZE as usize;
const DIRENT_SIZE: usize = format::DIRENT_SIZE as usize;
const XATTR_IBODY_HEADER_SIZE: usize = format::XATTR_IBODY_HEADER_SIZE as usize;
const XATTR_ENTRY_HEADER_SIZE: usize = format::XATTR_ENTRY_SIZE as usize;

const LAYOUT_FLAT_PLAIN: u8 = format::LAYOUT_FLAT_PLAIN as u8;
const LAYOUT_FLAT_INLINE: u8 = format::LAYOUT_FLAT_INLINE as u8;
const LAYOUT_CHUNK_BASED: u8 = format::LAYOUT_CHUNK_BASED as u8;

/// Longest symlink target (PATH_MAX without its NUL).
const MAX_SYMLINK: u64 = 4095;
/// Longest file name.
const MAX_NAME: usize = 255;
/// Deepest directory nesting: a path of PATH_MAX bytes holds at most this many
/// components of one character plus a slash.
pub const MAX_DEPTH: usize = 4096 / 2;

const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const OVERLAY_ESCAPED_PREFIX: &[u8] = b"trusted.overlay.overlay.";
const XATTR_METACOPY: &[u8] = b"trusted.overlay.metacopy";
const XATTR_REDIRECT: &[u8] = b"trusted.overlay.redirect";
const XATTR_ESCAPED_WHITEOUT: &[u8] = b"trusted.overlay.overlay.whiteout";
const XATTR_ESCAPED_WHITEOUTS: &[u8] = b"trusted.overlay.overlay.whiteouts";
const XATTR_ESCAPED_OPAQUE: &[u8] = b"trusted.overlay.overlay.opaque";
const XATTR_USER_WHITEOUT: &[u8] = b"user.overlay.whiteout";
const XATTR_USER_WHITEOUTS: &[u8] = b"user.overlay.whiteouts";
const XATTR_USER_OPAQUE: &[u8] = b"user.overlay.opaque";

/// Why an image could not be read. Offsets are byte offsets into the image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The image is shorter than the composefs header plus superblock.
    #[error("image is {len} bytes, too small for a composefs header and EROFS superblock")]
    TooSmall { len: usize },
    #[error("not a composefs image: header magic {found:#010x}, expected {COMPOSEFS_MAGIC:#010x}")]
    BadComposefsMagic { found: u32 },
    #[error("unsupported composefs header version {found} (expected {COMPOSEFS_HEADER_VERSION})")]
    UnsupportedComposefsVersion { found: u32 },
    #[error(
        "no EROFS superblock: magic {found:#010x} at offset 1024, expected {EROFS_MAGIC:#010x}"
    )]
    BadErofsMagic { found: u32 },
    #[error("unsupported block size 2^{blkszbits} (composefs uses 4096-byte blocks)")]
    UnsupportedBlockSize { blkszbits: u8 },
    /// A region the image points at lies (partly) outside the image.
    #[error("{what} at offset {offset}, {len} bytes, lies outside the {image_len}-byte image")]
    OutOfBounds {
        what: &'static str,
        offset: u64,
        len: u64,
        image_len: usize,
    },
    /// A nid whose inode would lie outside the image.
    #[error("inode nid {nid} lies outside the image")]
    InodeOutOfBounds { nid: u64 },
    #[error("inode nid {nid}: unsupported data layout {layout} (compressed or unknown)")]
    UnsupportedLayout { nid: u64, layout: u8 },
    /// The inode's data layout does not fit its file type.
    #[error("inode nid {nid}: data layout {layout} is not valid for mode {mode:o}")]
    LayoutMismatch { nid: u64, mode: u32, layout: u8 },
    #[error("inode nid {nid}: invalid file type in mode {mode:o}")]
    BadFileType { nid: u64, mode: u32 },
    #[error("root inode nid {nid} is not a directory (mode {mode:o})")]
    RootNotDirectory { nid: u64, mode: u32 },
    /// Inline (tail-packed) data crossing a block boundary.
    #[error(
        "inode nid {nid}: {len} bytes of inline data at offset {offset} cross a block boundary"
    )]
    InlineCrossesBlock { nid: u64, offset: u64, len: u64 },
    #[error("inode nid {nid}: bad xattr at offset {offset}: {reason}")]
    BadXattr {
        nid: u64,
        offset: u64,
        reason: &'static str,
    },
    #[error("inode nid {nid}: unknown xattr name index {index}")]
    BadXattrPrefix { nid: u64, index: u8 },
    #[error("directory nid {nid}: bad directory block at offset {offset}: {reason}")]
    BadDirectoryBlock {
        nid: u64,
        offset: u64,
        reason: &'static str,
    },
    #[error("directory nid {nid}: invalid entry name {:?}", String::from_utf8_lossy(.name))]
    BadName { nid: u64, name: Vec<u8> },
    #[error("directory nid {nid}: duplicate entry {:?}", String::from_utf8_lossy(.name))]
    DuplicateName { nid: u64, name: Vec<u8> },
    /// A directory's `.` entry does not point at itself (or is missing).
    #[error("directory nid {nid}: {}", bad_dot(.found))]
    BadDotEntry { nid: u64, found: Option<u64> },
    /// A directory's `..` entry does not point at its parent (or is missing).
    #[error("directory nid {nid}: {}", bad_dot_dot(.expected, .found))]
    BadDotDotEntry {
        nid: u64,
        expected: u64,
        found: Option<u64>,
    },
    /// The directory entry's file type disagrees with the inode's mode.
    #[error("nid {nid}: directory entry type {dirent_type} disagrees with inode mode {mode:o}")]
    FileTypeMismatch {
        nid: u64,
        dirent_type: u8,
        mode: u32,
    },
    /// A directory reached a second time: a cycle or a directory hardlink.
    #[error("directory nid {nid} is reached twice (a cycle or a directory hardlink)")]
    DirectoryRevisited { nid: u64 },
    /// A whiteout (char device 0:0) that is hardlinked.
    #[error("whiteout nid {nid} is hardlinked")]
    HardlinkedWhiteout { nid: u64 },
    #[error("directory nid {nid} is nested {depth} levels deep (limit {MAX_DEPTH})")]
    DepthExceeded { nid: u64, depth: usize },
    /// More directory entries than the image's size can hold honestly.
    #[error("more than {limit} directory entries: more than the image size can hold")]
    TooManyEntries { limit: u64 },
    /// More inline content than the image's size can hold honestly.
    #[error("inode nid {nid}: inline file content exceeds {limit} bytes in total, more than the image holds")]
    ContentBudgetExceeded { nid: u64, limit: u64 },
    /// More xattr bytes than the image's size justifies.
    #[error(
        "inode nid {nid}: xattrs exceed {limit} bytes in total, more than the image justifies"
    )]
    XattrBudgetExceeded { nid: u64, limit: u64 },
    #[error("symlink nid {nid} ({size} bytes): {reason}")]
    BadSymlink {
        nid: u64,
        size: u64,
        reason: &'static str,
    },
    #[error("inode nid {nid}: malformed trusted.overlay.metacopy xattr ({len} bytes)")]
    BadMetacopy { nid: u64, len: usize },
    /// An external file (chunk-based) whose metacopy xattr is missing.
    #[error("inode nid {nid}: external file without a trusted.overlay.metacopy xattr")]
    MissingMetacopy { nid: u64 },
    /// The rebuilt tree was refused by the tree module.
    #[error("inode nid {nid}: {message}")]
    Tree { nid: u64, message: String },
}

/// The end of [`ReadError::BadDotEntry`]'s message.
fn bad_dot(found: &Option<u64>) -> String {
    match found {
        Some(n) => format!("'.' points at nid {n}"),
        None => "no '.' entry".to_string(),
    }
}

/// The end of [`ReadError::BadDotDotEntry`]'s message.
fn bad_dot_dot(expected: &u64, found: &Option<u64>) -> String {
    match found {
        Some(n) => format!("'..' points at nid {n}, expected its parent {expected}"),
        None => "no '..' entry".to_string(),
    }
}

fn le16(b: &[u8], off: usize) -> u16 {
    // Callers pass slices already checked to hold `off + 2` bytes.
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// The superblock fields the reader uses.
#[derive(Debug, Clone, Copy)]
pub struct Superblock {
    pub composefs_version: u32,
    pub composefs_flags: u32,
    pub root_nid: u64,
    pub inos: u64,
    pub build_time: u64,
    pub build_time_nsec: u32,
    pub meta_blkaddr: u32,
    pub xattr_blkaddr: u32,
}

/// A parsed, bounds-checked view of an image.
pub struct Image<'a> {
    data: &'a [u8],
    pub sb: Superblock,
    meta_start: u64,
    xattr_start: u64,
}

/// One decoded inode (compact and extended unified).
#[derive(Debug, Clone)]
pub struct Inode {
    pub nid: u64,
    pub extended: bool,
    pub layout: u8,
    pub mode: u32,
    pub nlink: u32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
    /// `i_u`: raw block address, rdev or chunk format depending on type.
    pub i_u: u32,
    /// Absolute offset of the inode.
    offset: usize,
    inode_size: usize,
    xattr_size: usize,
}

impl Inode {
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }
    fn is_dir(&self) -> bool {
        self.file_type() == S_IFDIR
    }
}

/// One xattr as stored: full name (prefix expanded) and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawXattr<'a> {
    pub name: Vec<u8>,
    pub value: &'a [u8],
}

/// One directory entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDirent<'a> {
    pub nid: u64,
    pub file_type: u8,
    pub name: &'a [u8],
}

impl<'a> Image<'a> {
    /// Check the headers and the superblock.
    pub fn open(data: &'a [u8]) -> Result<Self, ReadError> {
        if data.len() < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE {
            return Err(ReadError::TooSmall { len: data.len() });
        }
        let magic = le32(data, 0);
        if magic != COMPOSEFS_MAGIC {
            return Err(ReadError::BadComposefsMagic { found: magic });
        }
        let version = le32(data, 4);
        if version != COMPOSEFS_HEADER_VERSION {
            return Err(ReadError::UnsupportedComposefsVersion { found: version });
        }
        let sb = &data[SUPERBLOCK_OFFSET..SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE];
        let emagic = le32(sb, 0);
        if emagic != EROFS_MAGIC {
            return Err(ReadError::BadErofsMagic { found: emagic });
        }
        let blkszbits = sb[12];
        if blkszbits != BLOCK_BITS {
            return Err(ReadError::UnsupportedBlockSize { blkszbits });
        }
        let sb = Superblock {
            composefs_flags: le32(data, 8),
            composefs_version: le32(data, 12),
            root_nid: u64::from(le16(sb, 14)),
            inos: le64(sb, 16),
            build_time: le64(sb, 24),
            build_time_nsec: le32(sb, 32),
            meta_blkaddr: le32(sb, 40),
            xattr_blkaddr: le32(sb, 44),
        };
        let meta_start = u64::from(sb.meta_blkaddr) * BLOCK_SIZE as u64;
        let xattr_start = u64::from(sb.xattr_blkaddr) * BLOCK_SIZE as u64;
        let image = Image {
            data,
            sb,
            meta_start,
            xattr_start,
        };
        image.range("metadata area", meta_start, 1)?;
        Ok(image)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The bytes `[offset, offset + len)`, or an error naming `what`.
    fn range(&self, what: &'static str, offset: u64, len: u64) -> Result<&'a [u8], ReadError> {
        let oob = || ReadError::OutOfBounds {
            what,
            offset,
            len,
            image_len: self.data.len(),
        };
        let end = offset.checked_add(len).ok_or_else(oob)?;
        if end > self.data.len() as u64 {
            return Err(oob());
        }
        // Both fit in usize: they are at most data.len().
        Ok(&self.data[offset as usize..end as usize])
    }

    /// Decode inode `nid`.
    pub fn inode(&self, nid: u64) -> Result<Inode, ReadError> {
        let offset = nid
            .checked_mul(SLOT_SIZE as u64)
            .and_then(|o| o.checked_add(self.meta_start))
            .ok_or(ReadError::InodeOutOfBounds { nid })?;
        let head = self
            .range("inode", offset, COMPACT_INODE_SIZE as u64)
            .map_err(|_| ReadError::InodeOutOfBounds { nid })?;
        let format = le16(head, 0);
        let extended = format & 1 == 1;
        let layout = ((format >> 1) & 0x7) as u8;
        let xattr_icount = le16(head, 2);
        let mode = u32::from(le16(head, 4));
        let mut ino = if extended {
            let b = self
                .range("inode", offset, EXTENDED_INODE_SIZE as u64)
                .map_err(|_| ReadError::InodeOutOfBounds { nid })?;
            Inode {
                nid,
                extended,
                layout,
                mode,
                size: le64(b, 8),
                i_u: le32(b, 16),
                uid: le32(b, 24),
                gid: le32(b, 28),
                mtime: le64(b, 32),
                mtime_nsec: le32(b, 40),
                nlink: le32(b, 44),
                offset: offset as usize,
                inode_size: EXTENDED_INODE_SIZE,
                xattr_size: 0,
            }
        } else {
            Inode {
                nid,
                extended,
                layout,
                mode,
                nlink: u32::from(le16(head, 6)),
                size: u64::from(le32(head, 8)),
                i_u: le32(head, 16),
                uid: u32::from(le16(head, 24)),
                gid: u32::from(le16(head, 26)),
                mtime: self.sb.build_time,
                mtime_nsec: self.sb.build_time_nsec,
                offset: offset as usize,
                inode_size: COMPACT_INODE_SIZE,
                xattr_size: 0,
            }
        };
        if xattr_icount != 0 {
            ino.xattr_size = XATTR_IBODY_HEADER_SIZE + (usize::from(xattr_icount) - 1) * 4;
        }
        // The inode and its xattr body must lie inside the image.
        self.range(
            "inode xattr body",
            offset,
            (ino.inode_size + ino.xattr_size) as u64,
        )?;
        match ino.file_type() {
            S_IFREG | S_IFDIR | S_IFLNK | S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK => {}
            _ => return Err(ReadError::BadFileType { nid, mode }),
        }
        match layout {
            LAYOUT_FLAT_PLAIN | LAYOUT_FLAT_INLINE | LAYOUT_CHUNK_BASED => {}
            _ => return Err(ReadError::UnsupportedLayout { nid, layout }),
        }
        if layout == LAYOUT_CHUNK_BASED && ino.file_type() != S_IFREG {
            return Err(ReadError::LayoutMismatch { nid, mode, layout });
        }
        Ok(ino)
    }

    fn xattr_entry(
        &self,
        nid: u64,
        offset: u64,
        limit: u64,
    ) -> Result<(RawXattr<'a>, u64), ReadError> {
        let bad = |reason| ReadError::BadXattr {
            nid,
            offset,
            reason,
        };
        if offset + XATTR_ENTRY_HEADER_SIZE as u64 > limit {
            return Err(bad("entry header runs past the xattr area"));
        }
        let h = self.range("xattr entry", offset, XATTR_ENTRY_HEADER_SIZE as u64)?;
        let name_len = u64::from(h[0]);
        let index = h[1];
        let value_len = u64::from(le16(h, 2));
        let body_len = name_len + value_len;
        let total = XATTR_ENTRY_HEADER_SIZE as u64 + body_len;
        if offset + total > limit {
            return Err(bad("entry runs past the xattr area"));
        }
        let body = self.range(
            "xattr entry",
            offset + XATTR_ENTRY_HEADER_SIZE as u64,
            body_len,
        )?;
        let prefix = xattr_prefix(index).ok_or(ReadError::BadXattrPrefix { nid, index })?;
        let (suffix, value) = body.split_at(name_len as usize);
        let mut name = Vec::with_capacity(prefix.len() + suffix.len());
        name.extend_from_slice(prefix);
        name.extend_from_slice(suffix);
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        if name.contains(&0) {
            return Err(bad("NUL byte in name"));
        }
        Ok((RawXattr { name, value }, total.div_ceil(4) * 4))
    }

    /// All xattrs of an inode as stored: shared ones first, then inline ones.
    pub fn xattrs(&self, ino: &Inode) -> Result<Vec<RawXattr<'a>>, ReadError> {
        let mut out = Vec::new();
        if ino.xattr_size == 0 {
            return Ok(out);
        }
        let start = (ino.offset + ino.inode_size) as u64;
        let end = start + ino.xattr_size as u64;
        let body = self.range("xattr body", start, ino.xattr_size as u64)?;
        let shared_count = usize::from(body[4]);
        let inline_start = XATTR_IBODY_HEADER_SIZE + shared_count * 4;
        if inline_start > body.len() {
            return Err(ReadError::BadXattr {
                nid: ino.nid,
                offset: start,
                reason: "shared xattr count exceeds the xattr body",
            });
        }
        for i in 0..shared_count {
            let id = le32(body, XATTR_IBODY_HEADER_SIZE + i * 4);
            let off = self.xattr_start + u64::from(id) * 4;
            let (x, _) = self.xattr_entry(ino.nid, off, self.data.len() as u64)?;
            out.push(x);
        }
        let mut off = start + inline_start as u64;
        // Entries are 4-byte aligned; trailing room smaller than a header is padding.
        while off + XATTR_ENTRY_HEADER_SIZE as u64 <= end {
            let (x, step) = self.xattr_entry(ino.nid, off, end)?;
            out.push(x);
            off += step;
        }
        Ok(out)
    }

    /// The inode's flat data as (out-of-line blocks, inline tail).
    pub fn flat_data(&self, ino: &Inode) -> Result<(&'a [u8], &'a [u8]), ReadError> {
        let bs = BLOCK_SIZE as u64;
        let size = ino.size;
        if size == 0 {
            return Ok((&[], &[]));
        }
        match ino.layout {
            LAYOUT_FLAT_PLAIN => {
                let head = self.range("data blocks", u64::from(ino.i_u) * bs, size)?;
                Ok((head, &[]))
            }
            LAYOUT_FLAT_INLINE => {
                let nblocks = size.div_ceil(bs);
                let head_len = (nblocks - 1) * bs;
                let tail_len = size - head_len;
                let head = if head_len > 0 {
                    self.range("data blocks", u64::from(ino.i_u) * bs, head_len)?
                } else {
                    &[]
                };
                let tail_off = (ino.offset + ino.inode_size + ino.xattr_size) as u64;
                let tail = self.range("inline data", tail_off, tail_len)?;
                if tail_off / bs != (tail_off + tail_len - 1) / bs {
                    return Err(ReadError::InlineCrossesBlock {
                        nid: ino.nid,
                        offset: tail_off,
                        len: tail_len,
                    });
                }
                Ok((head, tail))
            }
            layout => Err(ReadError::LayoutMismatch {
                nid: ino.nid,
                mode: ino.mode,
                layout,
            }),
        }
    }

    /// Every entry of a directory, `.` and `..` included, in stored order.
    /// `budget` is decremented per entry; running out is an error.
    pub fn dir_entries(
        &self,
        ino: &Inode,
        budget: &mut u64,
        budget_limit: u64,
    ) -> Result<Vec<RawDirent<'a>>, ReadError> {
        let (head, tail) = self.flat_data(ino)?;
        let mut out = Vec::new();
        let head_base = u64::from(ino.i_u) * BLOCK_SIZE as u64;
        for (i, block) in head.chunks(BLOCK_SIZE).enumerate() {
            let off = head_base + (i * BLOCK_SIZE) as u64;
            self.dir_block(ino.nid, off, block, &mut out, budget, budget_limit)?;
        }
        if !tail.is_empty() {
            let off = (ino.offset + ino.inode_size + ino.xattr_size) as u64;
            self.dir_block(ino.nid, off, tail, &mut out, budget, budget_limit)?;
        }
        Ok(out)
    }

    fn dir_block(
        &self,
        nid: u64,
        offset: u64,
        block: &'a [u8],
        out: &mut Vec<RawDirent<'a>>,
        budget: &mut u64,
        budget_limit: u64,
    ) -> Result<(), ReadError> {
        let bad = |reason| ReadError::BadDirectoryBlock {
            nid,
            offset,
            reason,
        };
        if block.len() < DIRENT_SIZE {
            return Err(bad("block shorter than one entry"));
        }
        let first = usize::from(le16(block, 8));
        if first < DIRENT_SIZE || first % DIRENT_SIZE != 0 || first > block.len() {
            return Err(bad("first name offset is not a valid entry table size"));
        }
        let count = first / DIRENT_SIZE;
        if *budget < count as u64 {
            return Err(ReadError::TooManyEntries {
                limit: budget_limit,
            });
        }
        *budget -= count as u64;
        for i in 0..count {
            let d = &block[i * DIRENT_SIZE..(i + 1) * DIRENT_SIZE];
            let child = le64(d, 0);
            let start = usize::from(le16(d, 8));
            let file_type = d[10];
            let end = if i + 1 < count {
                usize::from(le16(block, (i + 1) * DIRENT_SIZE + 8))
            } else {
                block.len()
            };
            if start < first || start > end || end > block.len() {
                return Err(bad("name offsets out of order or out of the block"));
            }
            let mut name = &block[start..end];
            if i + 1 == count {
                // The last name ends at the block end or at a NUL pad.
                if let Some(p) = name.iter().position(|&c| c == 0) {
                    name = &name[..p];
                }
            }
            out.push(RawDirent {
                nid: child,
                file_type,
                name,
            });
        }
        Ok(())
    }
}

/// The EROFS dirent file type for an inode mode.
fn dirent_type_for(mode: u32) -> u8 {
    match mode & S_IFMT {
        S_IFREG => 1,
        S_IFDIR => 2,
        S_IFCHR => 3,
        S_IFBLK => 4,
        S_IFIFO => 5,
        S_IFSOCK => 6,
        S_IFLNK => 7,
        _ => 0,
    }
}

fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

struct Budgets {
    entries: u64,
    entries_limit: u64,
    content: u64,
    content_limit: u64,
    xattrs: u64,
    xattrs_limit: u64,
}

impl Budgets {
    fn new(image_len: usize) -> Self {
        let len = image_len as u64;
        // Honest images store every entry once (at least 13 bytes each), every
        // inline byte once, and xattr values either inline or shared; sharing
        // legitimately multiplies them, but not past a generous factor.
        let entries = len / 12 + 16;
        let content = len;
        let xattrs = len.saturating_mul(16).saturating_add(1 << 20);
        Budgets {
            entries,
            entries_limit: entries,
            content,
            content_limit: content,
            xattrs,
            xattrs_limit: xattrs,
        }
    }
}

/// Decode an inode's xattrs, reversing the writer's overlay rewrites.
/// Returns (visible xattrs, metacopy value, redirect value, escaped-whiteout flag).
#[allow(clippy::type_complexity)]
fn decode_xattrs(
    img: &Image<'_>,
    ino: &Inode,
    budgets: &mut Budgets,
) -> Result<
    (
        Vec<(Vec<u8>, Vec<u8>)>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        bool,
    ),
    ReadError,
> {
    let raw = img.xattrs(ino)?;
    let mut visible: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut metacopy = None;
    let mut redirect = None;
    let mut whiteout = false;
    for x in raw {
        let cost = (x.name.len() + x.value.len()) as u64;
        if budgets.xattrs < cost {
            return Err(ReadError::XattrBudgetExceeded {
                nid: ino.nid,
                limit: budgets.xattrs_limit,
            });
        }
        budgets.xattrs -= cost;
        let name = x.name;
        if name == XATTR_METACOPY {
            metacopy = Some(x.value.to_vec());
            continue;
        }
        if name == XATTR_REDIRECT {
            redirect = Some(x.value.to_vec());
            continue;
        }
        if name == XATTR_ESCAPED_WHITEOUT && ino.file_type() == S_IFREG {
            whiteout = true;
            continue;
        }
        let name = if let Some(rest) = name.strip_prefix(OVERLAY_ESCAPED_PREFIX) {
            let mut n = OVERLAY_PREFIX.to_vec();
            n.extend_from_slice(rest);
            n
        } else if name.starts_with(OVERLAY_PREFIX) {
            // The writer's own overlay xattrs (opaque on the root, ...).
            continue;
        } else {
            name
        };
        visible.push((name, x.value.to_vec()));
    }
    if whiteout {
        // The escape markers the writer put on the whiteout itself.
        visible.retain(|(n, _)| n != XATTR_USER_WHITEOUT);
    }
    visible.sort();
    if visible.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(ReadError::BadXattr {
            nid: ino.nid,
            offset: ino.offset as u64,
            reason: "duplicate xattr name",
        });
    }
    Ok((visible, metacopy, redirect, whiteout))
}

fn parse_metacopy(nid: u64, value: &[u8]) -> Result<Option<Digest>, ReadError> {
    if value.is_empty() {
        // The writer stores an empty metacopy when it had no digest.
        return Ok(None);
    }
    let bad = ReadError::BadMetacopy {
        nid,
        len: value.len(),
    };
    if value.len() < 4 || usize::from(value[1]) != value.len() || value[0] != 0 || value[2] != 0 {
        return Err(bad);
    }
    let alg = HashAlgorithm::from_number(u32::from(value[3])).ok_or(bad.clone())?;
    Digest::from_bytes(alg, &value[4..]).map(Some).ok_or(bad)
}

/// Read a composefs image into the tree it was built from.
pub fn read_image(image: &[u8]) -> Result<Tree, ReadError> {
    let img = Image::open(image)?;
    let mut budgets = Budgets::new(image.len());
    let root_nid = img.sb.root_nid;
    let root = img.inode(root_nid)?;
    if !root.is_dir() {
        return Err(ReadError::RootNotDirectory {
            nid: root_nid,
            mode: root.mode,
        });
    }
    let mut tree = Tree {
        inodes: Vec::new(),
        secondary_links: Vec::new(),
    };
    // The root is built first, so it gets id 0 (tree::ROOT).
    let mut nids: Vec<u64> = Vec::new();
    let root_id = build_inode(&img, &root, &mut budgets, &mut tree)?;
    nids.push(root_nid);
    let mut by_nid: HashMap<u64, InodeId> = HashMap::new();
    // Directories still to list: (inode id, nid, parent nid, depth).
    let mut work: Vec<(InodeId, u64, u64, usize)> = vec![(root_id, root_nid, root_nid, 0)];
    let mut dirs_seen: HashSet<u64> = HashSet::new();
    dirs_seen.insert(root_nid);
    while let Some((id, nid, parent, depth)) = work.pop() {
        let ino = img.inode(nid)?;
        let entries = img.dir_entries(&ino, &mut budgets.entries, budgets.entries_limit)?;
        let mut dot = None;
        let mut dotdot = None;
        let mut children: Vec<DirEntry> = Vec::new();
        let mut has_whiteout = false;
        let mut prev: Option<&[u8]> = None;
        for e in entries {
            // EROFS looks names up by binary search: entries (`.` and `..`
            // included) must be strictly increasing, which also rules out
            // duplicates.
            if prev.is_some_and(|p| p >= e.name) {
                return Err(if prev == Some(e.name) {
                    ReadError::DuplicateName {
                        nid,
                        name: e.name.to_vec(),
                    }
                } else {
                    ReadError::BadDirectoryBlock {
                        nid,
                        offset: ino.offset as u64,
                        reason: "entries are not sorted by name",
                    }
                });
            }
            prev = Some(e.name);
            if e.name == b"." {
                dot = Some(e.nid);
                continue;
            }
            if e.name == b".." {
                dotdot = Some(e.nid);
                continue;
            }
            if !valid_name(e.name) {
                return Err(ReadError::BadName {
                    nid,
                    name: e.name.to_vec(),
                });
            }
            let child = img.inode(e.nid)?;
            if e.file_type != dirent_type_for(child.mode) {
                return Err(ReadError::FileTypeMismatch {
                    nid: e.nid,
                    dirent_type: e.file_type,
                    mode: child.mode,
                });
            }
            let is_chr0 = child.file_type() == S_IFCHR && child.i_u == 0;
            if is_chr0
                && nid == root_nid
                && e.name.len() == 2
                && e.name
                    .iter()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            {
                // The writer's whiteout stubs that hide the object store's
                // XX/ directories; not part of the tree.
                if child.nlink > 1 {
                    return Err(ReadError::HardlinkedWhiteout { nid: e.nid });
                }
                continue;
            }
            let child_id = if child.is_dir() {
                if !dirs_seen.insert(e.nid) {
                    return Err(ReadError::DirectoryRevisited { nid: e.nid });
                }
                if depth + 1 > MAX_DEPTH {
                    return Err(ReadError::DepthExceeded {
                        nid: e.nid,
                        depth: depth + 1,
                    });
                }
                let ci = build_inode(&img, &child, &mut budgets, &mut tree)?;
                nids.push(e.nid);
                work.push((ci, e.nid, nid, depth + 1));
                ci
            } else if let Some(&ci) = by_nid.get(&e.nid) {
                if tree.inodes.get(ci).is_some_and(|i| i.kind.is_whiteout()) {
                    return Err(ReadError::HardlinkedWhiteout { nid: e.nid });
                }
                ci
            } else {
                let ci = build_inode(&img, &child, &mut budgets, &mut tree)?;
                nids.push(e.nid);
                by_nid.insert(e.nid, ci);
                ci
            };
            if tree
                .inodes
                .get(child_id)
                .is_some_and(|i| i.kind.is_whiteout())
            {
                has_whiteout = true;
            }
            children.push(DirEntry {
                name: e.name.into(),
                inode: child_id,
            });
        }
        if dot != Some(nid) {
            return Err(ReadError::BadDotEntry { nid, found: dot });
        }
        if dotdot != Some(parent) {
            return Err(ReadError::BadDotDotEntry {
                nid,
                expected: parent,
                found: dotdot,
            });
        }
        if let Some(node) = tree.inodes.get_mut(id) {
            if has_whiteout {
                // Markers the writer adds to directories holding whiteouts.
                node.xattrs.retain(|x| {
                    let n = &*x.name;
                    let marker = n == XATTR_USER_WHITEOUTS
                        || n == unescaped(XATTR_ESCAPED_WHITEOUTS).as_slice()
                        || ((n == XATTR_USER_OPAQUE
                            || n == unescaped(XATTR_ESCAPED_OPAQUE).as_slice())
                            && &*x.value == b"x");
                    !marker
                });
            }
            node.kind = InodeKind::Directory(children);
        }
    }
    tree.validate().map_err(|e| ReadError::Tree {
        nid: root_nid,
        message: e.to_string(),
    })?;
    tree.secondary_links = infer_secondary_links(&tree, &nids);
    Ok(tree)
}

/// Which entries of hard-linked inodes are links rather than definitions.
///
/// The writer numbers inodes in breadth-first order of their defining
/// entries (directories queued as they are defined, entries in name order),
/// so nids increase along that order. Walking the tree the same way, an
/// inode is defined at the entry where it is the next nid due; its other
/// entries are links. Recording that lets the writer place the inode where
/// it was, so image -> tree -> image gives the same bytes. An image not laid
/// out that way (another writer) gets no marks: plain breadth-first order.
fn infer_secondary_links(tree: &Tree, nids: &[u64]) -> Vec<(InodeId, Box<[u8]>)> {
    let counts = tree.reference_counts();
    if counts.iter().all(|&c| c <= 1) || nids.len() != tree.inodes.len() {
        return Vec::new();
    }
    let mut order: Vec<InodeId> = (0..tree.inodes.len())
        .filter(|&i| i != tree::ROOT)
        .collect();
    order.sort_by_key(|&i| nids.get(i).copied().unwrap_or(u64::MAX));
    let mut next = 0;
    let mut defined = vec![false; tree.inodes.len()];
    if let Some(r) = defined.get_mut(tree::ROOT) {
        *r = true;
    }
    let mut secondary = Vec::new();
    let mut queue = std::collections::VecDeque::from([tree::ROOT]);
    while let Some(dir) = queue.pop_front() {
        for e in tree.entries(dir) {
            let c = e.inode;
            if defined.get(c).copied().unwrap_or(true) {
                secondary.push((dir, e.name.clone()));
            } else if order.get(next) == Some(&c) {
                defined[c] = true;
                next += 1;
                if tree.inodes.get(c).is_some_and(|i| i.kind.is_dir()) {
                    queue.push_back(c);
                }
            } else if counts.get(c).copied().unwrap_or(0) > 1 {
                // Defined by a later entry.
                secondary.push((dir, e.name.clone()));
            } else {
                return Vec::new();
            }
        }
    }
    if next != order.len() {
        return Vec::new();
    }
    secondary
}

/// `trusted.overlay.overlay.X` -> `trusted.overlay.X`.
fn unescaped(name: &[u8]) -> Vec<u8> {
    match name.strip_prefix(OVERLAY_ESCAPED_PREFIX) {
        Some(rest) => {
            let mut n = OVERLAY_PREFIX.to_vec();
            n.extend_from_slice(rest);
            n
        }
        None => name.to_vec(),
    }
}

/// Decode one inode (directories get their entries from the caller).
fn build_inode(
    img: &Image<'_>,
    ino: &Inode,
    budgets: &mut Budgets,
    tree: &mut Tree,
) -> Result<InodeId, ReadError> {
    let nid = ino.nid;
    let (xattrs, metacopy, redirect, whiteout) = decode_xattrs(img, ino, budgets)?;
    let kind = match ino.file_type() {
        S_IFREG if whiteout => InodeKind::CharDevice(0),
        S_IFREG => {
            let mut file = RegularFile {
                size: ino.size,
                ..RegularFile::default()
            };
            if ino.size == 0 {
                // Empty: nothing stored anywhere.
            } else if ino.layout == LAYOUT_CHUNK_BASED {
                file.digest = match &metacopy {
                    Some(v) => parse_metacopy(nid, v)?,
                    None => return Err(ReadError::MissingMetacopy { nid }),
                };
                file.payload = redirect.map(|r| match r.strip_prefix(b"/") {
                    Some(rest) if !rest.is_empty() => rest.into(),
                    _ => r.into(),
                });
            } else {
                if budgets.content < ino.size {
                    return Err(ReadError::ContentBudgetExceeded {
                        nid,
                        limit: budgets.content_limit,
                    });
                }
                let (head, tail) = img.flat_data(ino)?;
                budgets.content -= ino.size;
                let mut data = Vec::with_capacity(head.len() + tail.len());
                data.extend_from_slice(head);
                data.extend_from_slice(tail);
                file.inline = Some(data.into());
            }
            InodeKind::Regular(file)
        }
        S_IFLNK => {
            if ino.size == 0 {
                return Err(ReadError::BadSymlink {
                    nid,
                    size: ino.size,
                    reason: "empty target",
                });
            }
            if ino.size > MAX_SYMLINK {
                return Err(ReadError::BadSymlink {
                    nid,
                    size: ino.size,
                    reason: "target longer than 4095 bytes",
                });
            }
            let (head, tail) = img.flat_data(ino)?;
            let mut t = Vec::with_capacity(head.len() + tail.len());
            t.extend_from_slice(head);
            t.extend_from_slice(tail);
            if t.contains(&0) {
                return Err(ReadError::BadSymlink {
                    nid,
                    size: ino.size,
                    reason: "NUL byte in target",
                });
            }
            InodeKind::Symlink(t.into())
        }
        S_IFCHR => InodeKind::CharDevice(u64::from(ino.i_u)),
        S_IFBLK => InodeKind::BlockDevice(u64::from(ino.i_u)),
        S_IFDIR => {
            // Listed by the caller; check now that the data is addressable.
            img.flat_data(ino)?;
            InodeKind::Directory(Vec::new())
        }
        S_IFIFO => InodeKind::Fifo,
        _ => InodeKind::Socket,
    };
    let inode = tree::Inode {
        perm: ino.mode & 0o7777,
        uid: ino.uid,
        gid: ino.gid,
        // Times past i64::MAX keep their bits; the writer stores them back
        // as the same u64.
        mtime: Timespec {
            sec: ino.mtime as i64,
            nsec: ino.mtime_nsec,
        },
        nlink: ino.nlink,
        xattrs: xattrs
            .into_iter()
            .map(|(name, value)| Xattr {
                name: name.into(),
                value: value.into(),
            })
            .collect(),
        kind,
    };
    Ok(tree.push(inode))
}

/// The distinct digests of every external file in the image, sorted.
pub fn referenced_objects(image: &[u8]) -> Result<Vec<Digest>, ReadError> {
    let tree = read_image(image)?;
    let set: BTreeSet<Digest> = tree
        .inodes
        .iter()
        .filter_map(|i| match &i.kind {
            InodeKind::Regular(f) if !f.is_inline() => f.digest,
            _ => None,
        })
        .collect();
    Ok(set.into_iter().collect())
}
