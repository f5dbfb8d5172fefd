//! The composefs dumpfile text format (composefs-dump(5)): parse and print.
//!
//! One line per file: `PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT
//! DIGEST [XATTR...]`, fields separated by one space. Strings use `\\`, `\n`,
//! `\r`, `\t` and `\xHH` escapes; a lone `-` means "unset". `MODE` is octal
//! and starts with `@` for a hard link, whose PAYLOAD names the target path
//! (all its other fields are ignored). `MTIME` is `SEC.NSEC`. Each xattr is
//! `KEY=VALUE`, split at the first `=`.
//!
//! Semantics follow the reference `mkcomposefs --from-file`:
//! - The root (`/`) comes first; parents come before children; names are
//!   unique. A repeated xattr key replaces the earlier value in place.
//! - For non-directories NLINK is kept as given (the image stores it); for
//!   directories it is recomputed by the writer. A hard link does not change
//!   the target's NLINK.
//! - Symlink targets are 1..=4095 bytes; the SIZE of a symlink is ignored
//!   (the target length is used). Content must match SIZE.
//!
//! Limits refused in both modes (fail closed): names > 255 bytes, payload or
//! target > 4095 bytes, inline content > 5000 bytes, xattr names > 255 bytes
//! or empty, values > 65535 bytes, an inode's xattrs beyond half of EROFS'
//! 16-bit xattr area (the reference's cap, leaving room for the overlay xattrs
//! the writer adds), modes of unknown type, MODE values beyond 64 bits, ids
//! beyond 32 bits, directory hard links, dangling or cyclic hard links.
//!
//! `strict` additionally refuses what the reference merely tolerates: a
//! line that ends right after its PAYLOAD (lenient parsing takes the
//! missing CONTENT and DIGEST as `-`, as mkcomposefs 1.0 does; a line
//! shorter than that is an error either way), a missing final newline, a symlink SIZE that disagrees with its target,
//! RDEV on anything but a device, CONTENT or DIGEST on anything but a
//! regular file, an xattr without `=`, nanoseconds ≥ 10⁹, and a MODE with
//! bits beyond 16 (lenient parsing keeps its low 16 bits, type included,
//! as mkcomposefs 1.0.8 does: it is `strtoull`'d, stored as a 32-bit
//! `st_mode` whose type bits are checked, and written as the 16-bit
//! `i_mode`; a fuzzer-found composefs test input has MODE `20720777`, a
//! symlink `0120777`).

use std::collections::HashMap;
use std::io::{self, Write};

use crate::digest::{Digest, HashAlgorithm};
use crate::image::tree::{
    DirEntry, Inode, InodeId, InodeKind, RegularFile, Timespec, Tree, TreeError, Xattr,
    MAX_NAME_LEN, MAX_PATH_LEN, MAX_XATTR_NAME_LEN, MAX_XATTR_VALUE_LEN, ROOT, S_IFBLK, S_IFCHR,
    S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
};

/// Largest inline content a dumpfile may carry (the reference's limit).
pub const MAX_DUMP_INLINE: usize = 5000;
/// Cap on one inode's xattrs from input: each counts name + value + entry
/// header + worst-case alignment, against half of EROFS' 16-bit limit.
pub const MAX_XATTR_TOTAL: usize = u16::MAX as usize / 2;

/// Why a dumpfile was refused. `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpfileError {
    /// The input has no lines.
    #[error("dumpfile is empty")]
    Empty,
    /// Fewer than the 11 fixed fields.
    #[error("line {line}: missing field {field}")]
    MissingField { line: usize, field: &'static str },
    /// A field failed to parse.
    #[error("line {line}: invalid {field}: {reason}")]
    BadField {
        line: usize,
        field: &'static str,
        reason: String,
    },
    /// Bad escape sequence.
    #[error("line {line}: invalid escape in {field}")]
    BadEscape { line: usize, field: &'static str },
    /// Path not absolute/canonical (empty component, `.` or `..`).
    #[error("line {line}: invalid path {path:?}")]
    BadPath { line: usize, path: String },
    /// The first line must be the root directory.
    #[error("line {line}: the root directory must come first")]
    RootNotFirst { line: usize },
    /// The root appears twice, or is not a directory.
    #[error("line {line}: duplicate or non-directory root")]
    BadRoot { line: usize },
    /// Parent directory missing or not a directory.
    #[error("line {line}: parent directory missing for {path:?}")]
    NoParent { line: usize, path: String },
    /// Duplicate path.
    #[error("line {line}: path {path:?} already exists")]
    Exists { line: usize, path: String },
    /// A length limit was exceeded.
    #[error("line {line}: {what} is {len} bytes, limit {max}")]
    TooLong {
        line: usize,
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// Content length differs from SIZE.
    #[error("line {line}: content is {content} bytes but SIZE is {size}")]
    ContentSize {
        line: usize,
        content: usize,
        size: u64,
    },
    /// Symlink without target.
    #[error("line {line}: symlink without target")]
    EmptySymlink { line: usize },
    /// Empty xattr name.
    #[error("line {line}: empty xattr name")]
    EmptyXattrName { line: usize },
    /// Hard link to a directory, or with a directory mode.
    #[error("line {line}: directories can't be hardlinked")]
    DirectoryHardlink { line: usize },
    /// Hard link whose target does not exist.
    #[error("line {line}: no target at {target:?} for hardlink")]
    NoHardlinkTarget { line: usize, target: String },
    /// Hard link chain that loops (including a link to itself).
    #[error("line {line}: hardlink loops back to itself")]
    HardlinkCycle { line: usize },
    /// Strict mode: something the reference only tolerates.
    #[error("line {line}: {reason} (strict mode)")]
    Strict { line: usize, reason: &'static str },
}

/// The bits of MODE an image keeps (EROFS' `i_mode` is 16 bits).
const MODE_BITS: u32 = 0o177777;

/// Index of CONTENT, the first field a lenient parse lets a line omit.
const FIRST_OPTIONAL_FIELD: usize = 9;

const FIELDS: [&str; 11] = [
    "PATH", "SIZE", "MODE", "NLINK", "UID", "GID", "RDEV", "MTIME", "PAYLOAD", "CONTENT", "DIGEST",
];

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Unescape into `out` (cleared first). Fails on bad escapes or if the
/// result would exceed `max`.
fn unescape_into(
    s: &[u8],
    out: &mut Vec<u8>,
    max: usize,
    line: usize,
    field: &'static str,
) -> Result<(), DumpfileError> {
    out.clear();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        i += 1;
        let b = if c == b'\\' {
            let e = *s.get(i).ok_or(DumpfileError::BadEscape { line, field })?;
            i += 1;
            match e {
                b'\\' => b'\\',
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'x' => {
                    let hi = s.get(i).copied().and_then(hexval);
                    let lo = s.get(i + 1).copied().and_then(hexval);
                    i += 2;
                    match (hi, lo) {
                        (Some(h), Some(l)) => (h << 4) | l,
                        _ => return Err(DumpfileError::BadEscape { line, field }),
                    }
                }
                _ => return Err(DumpfileError::BadEscape { line, field }),
            }
        } else {
            c
        };
        if out.len() >= max {
            return Err(DumpfileError::TooLong {
                line,
                what: field,
                len: out.len() + 1,
                max,
            });
        }
        out.push(b);
    }
    Ok(())
}

fn unescape(
    s: &[u8],
    max: usize,
    line: usize,
    field: &'static str,
) -> Result<Vec<u8>, DumpfileError> {
    let mut v = Vec::with_capacity(s.len().min(max));
    unescape_into(s, &mut v, max, line, field)?;
    Ok(v)
}

fn optional(s: &[u8]) -> Option<&[u8]> {
    if s == b"-" {
        None
    } else {
        Some(s)
    }
}

fn parse_u64(s: &[u8], radix: u32, line: usize, field: &'static str) -> Result<u64, DumpfileError> {
    let bad = |reason: &str| DumpfileError::BadField {
        line,
        field,
        reason: reason.to_string(),
    };
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let mut v: u64 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            _ => {
                return Err(bad(&format!(
                    "not a number: {:?}",
                    String::from_utf8_lossy(s)
                )))
            }
        };
        if d >= radix {
            return Err(bad(&format!(
                "not a number: {:?}",
                String::from_utf8_lossy(s)
            )));
        }
        v = v
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or_else(|| bad("out of range"))?;
    }
    Ok(v)
}

fn parse_u32(s: &[u8], line: usize, field: &'static str) -> Result<u32, DumpfileError> {
    let v = parse_u64(s, 10, line, field)?;
    u32::try_from(v).map_err(|_| DumpfileError::BadField {
        line,
        field,
        reason: format!("{v} does not fit in 32 bits"),
    })
}

fn parse_mtime(s: &[u8], line: usize, strict: bool) -> Result<Timespec, DumpfileError> {
    let dot = s
        .iter()
        .position(|&c| c == b'.')
        .ok_or(DumpfileError::BadField {
            line,
            field: "MTIME",
            reason: "missing '.'".into(),
        })?;
    let (sec_s, nsec_s) = (&s[..dot], &s[dot + 1..]);
    let (neg, digits) = match sec_s.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, sec_s),
    };
    let sec = parse_u64(digits, 10, line, "MTIME")?;
    let sec = i64::try_from(sec).map_err(|_| DumpfileError::BadField {
        line,
        field: "MTIME",
        reason: "seconds out of range".into(),
    })?;
    let nsec = parse_u32(nsec_s, line, "MTIME")?;
    if strict && nsec >= 1_000_000_000 {
        return Err(DumpfileError::Strict {
            line,
            reason: "nanoseconds out of range",
        });
    }
    Ok(Timespec {
        sec: if neg { -sec } else { sec },
        nsec,
    })
}

/// Split a canonical absolute path into components.
fn split_path(p: &[u8], line: usize) -> Result<Vec<&[u8]>, DumpfileError> {
    let bad = || DumpfileError::BadPath {
        line,
        path: String::from_utf8_lossy(p).into_owned(),
    };
    let rest = p.strip_prefix(b"/").ok_or_else(bad)?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut comps = Vec::new();
    for c in rest.split(|&b| b == b'/') {
        if c.is_empty() || c == b"." || c == b".." || c.contains(&0) {
            return Err(bad());
        }
        if c.len() > MAX_NAME_LEN {
            return Err(DumpfileError::TooLong {
                line,
                what: "file name",
                len: c.len(),
                max: MAX_NAME_LEN,
            });
        }
        comps.push(c);
    }
    Ok(comps)
}

fn xattr_cost(name: usize, value: usize) -> usize {
    4 + name + value + 3
}

struct PendingLink {
    line: usize,
    dir: InodeId,
    name: Vec<u8>,
    target: Vec<u8>,
}

/// Resolve a path (already split) to an inode id.
fn lookup(tree: &Tree, comps: &[&[u8]]) -> Option<InodeId> {
    let mut cur = ROOT;
    for c in comps {
        cur = tree.lookup(cur, c)?;
    }
    Some(cur)
}

/// Parse a dumpfile into a tree. `strict` refuses inputs the reference
/// parser only tolerates (see module docs).
pub fn parse(input: &[u8], strict: bool) -> Result<Tree, DumpfileError> {
    if input.is_empty() {
        return Err(DumpfileError::Empty);
    }
    let body = match input.strip_suffix(b"\n") {
        Some(b) => b,
        None => {
            if strict {
                let line = input.iter().filter(|&&c| c == b'\n').count() + 1;
                return Err(DumpfileError::Strict {
                    line,
                    reason: "last line has no newline",
                });
            }
            input
        }
    };
    let mut tree: Option<Tree> = None;
    // Hard link entries are placeholders until every path is known.
    let mut pending: Vec<PendingLink> = Vec::new();
    let mut placeholder_of: HashMap<(InodeId, Vec<u8>), usize> = HashMap::new();
    let mut scratch = Vec::new();

    for (idx, raw) in body.split(|&c| c == b'\n').enumerate() {
        let line = idx + 1;
        let mut fields = raw.split(|&c| c == b' ');
        let mut f: [&[u8]; 11] = [&[]; 11];
        for (i, name) in FIELDS.iter().enumerate() {
            f[i] = match fields.next() {
                Some(field) => field,
                // Lenient, as the reference: a line may end right after
                // its PAYLOAD; the missing CONTENT and DIGEST are unset.
                // Any earlier missing field stays an error.
                None if !strict && i >= FIRST_OPTIONAL_FIELD => b"-",
                None => return Err(DumpfileError::MissingField { line, field: name }),
            };
        }
        let path = unescape(f[0], MAX_PATH_LEN + 1, line, "PATH")?;
        let comps = split_path(&path, line)?;

        let (is_link, mode_s) = match f[2].strip_prefix(b"@") {
            Some(m) => (true, m),
            None => (false, f[2]),
        };
        let mode = parse_u64(mode_s, 8, line, "MODE")?;
        let mode = if mode > u64::from(MODE_BITS) {
            if strict {
                return Err(DumpfileError::Strict {
                    line,
                    reason: "MODE has bits beyond the 16-bit st_mode",
                });
            }
            // The reference keeps what fits: it passes the value on as a
            // 32-bit st_mode, checks the type bits, and the image's i_mode
            // is its low 16 bits; nothing else reads the bits above.
            mode & u64::from(MODE_BITS)
        } else {
            mode
        };
        let mode = mode as u32;
        let ftype = mode & S_IFMT;
        if ![
            S_IFREG, S_IFDIR, S_IFLNK, S_IFBLK, S_IFCHR, S_IFSOCK, S_IFIFO,
        ]
        .contains(&ftype)
        {
            return Err(DumpfileError::BadField {
                line,
                field: "MODE",
                reason: format!("unknown file type in {mode:o}"),
            });
        }

        // Locate parent.
        let (parent, name) = match comps.split_last() {
            None => {
                if tree.is_some() || ftype != S_IFDIR || is_link {
                    return Err(DumpfileError::BadRoot { line });
                }
                (None, &b""[..])
            }
            Some((name, dirs)) => {
                let t = tree.as_ref().ok_or(DumpfileError::RootNotFirst { line })?;
                let p = lookup(t, dirs)
                    .filter(|&p| t.inodes[p].kind.is_dir())
                    .ok_or_else(|| DumpfileError::NoParent {
                        line,
                        path: String::from_utf8_lossy(&path).into_owned(),
                    })?;
                if t.lookup(p, name).is_some() {
                    return Err(DumpfileError::Exists {
                        line,
                        path: String::from_utf8_lossy(&path).into_owned(),
                    });
                }
                (Some(p), *name)
            }
        };

        if is_link {
            if ftype == S_IFDIR {
                return Err(DumpfileError::DirectoryHardlink { line });
            }
            let target = optional(f[8]).ok_or(DumpfileError::NoHardlinkTarget {
                line,
                target: "-".into(),
            })?;
            let target = unescape(target, MAX_PATH_LEN + 1, line, "PAYLOAD")?;
            let t = tree.as_mut().ok_or(DumpfileError::RootNotFirst { line })?;
            let dir = parent.unwrap_or(ROOT);
            // Placeholder inode so the name is taken and later lines see it.
            let id = t
                .add(dir, name, Inode::new(InodeKind::Fifo, 0))
                .map_err(|e| tree_err(e, line, &path))?;
            placeholder_of.insert((dir, name.to_vec()), id);
            pending.push(PendingLink {
                line,
                dir,
                name: name.to_vec(),
                target,
            });
            continue;
        }

        let size = parse_u64(f[1], 10, line, "SIZE")?;
        let nlink = parse_u32(f[3], line, "NLINK")?;
        let uid = parse_u32(f[4], line, "UID")?;
        let gid = parse_u32(f[5], line, "GID")?;
        let rdev = parse_u64(f[6], 10, line, "RDEV")?;
        let rdev = u32::try_from(rdev).map_err(|_| DumpfileError::BadField {
            line,
            field: "RDEV",
            reason: "does not fit in 32 bits".into(),
        })?;
        let mtime = parse_mtime(f[7], line, strict)?;
        let payload = match optional(f[8]) {
            Some(p) => {
                let p = unescape(p, MAX_PATH_LEN, line, "PAYLOAD")?;
                if p.contains(&0) {
                    return Err(DumpfileError::BadField {
                        line,
                        field: "PAYLOAD",
                        reason: "embedded NUL".into(),
                    });
                }
                Some(p)
            }
            None => None,
        };
        let content = match optional(f[9]) {
            Some(c) => Some(unescape(c, MAX_DUMP_INLINE, line, "CONTENT")?),
            None => None,
        };
        if let Some(c) = &content {
            if c.len() as u64 != size {
                return Err(DumpfileError::ContentSize {
                    line,
                    content: c.len(),
                    size,
                });
            }
        }
        let digest = match optional(f[10]) {
            Some(d) => {
                let d = unescape(d, 128, line, "DIGEST")?;
                let s = std::str::from_utf8(&d).unwrap_or("").to_ascii_lowercase();
                Some(Digest::parse_hex(HashAlgorithm::Sha256, &s).map_err(|e| {
                    DumpfileError::BadField {
                        line,
                        field: "DIGEST",
                        reason: e.to_string(),
                    }
                })?)
            }
            None => None,
        };

        if strict {
            let device = ftype == S_IFCHR || ftype == S_IFBLK;
            if rdev != 0 && !device {
                return Err(DumpfileError::Strict {
                    line,
                    reason: "RDEV set on a file that is not a device",
                });
            }
            if ftype != S_IFREG && (content.is_some() || digest.is_some()) {
                return Err(DumpfileError::Strict {
                    line,
                    reason: "CONTENT or DIGEST on a file that is not regular",
                });
            }
        }

        let kind = match ftype {
            S_IFDIR => InodeKind::Directory(Vec::new()),
            S_IFREG => InodeKind::Regular(RegularFile {
                size,
                inline: content.map(Vec::into_boxed_slice),
                payload: payload.map(Vec::into_boxed_slice),
                digest,
            }),
            S_IFLNK => {
                let target = payload.ok_or(DumpfileError::EmptySymlink { line })?;
                if target.is_empty() {
                    return Err(DumpfileError::EmptySymlink { line });
                }
                if strict && target.len() as u64 != size {
                    return Err(DumpfileError::Strict {
                        line,
                        reason: "symlink SIZE differs from the target length",
                    });
                }
                InodeKind::Symlink(target.into_boxed_slice())
            }
            S_IFCHR => InodeKind::CharDevice(u64::from(rdev)),
            S_IFBLK => InodeKind::BlockDevice(u64::from(rdev)),
            S_IFIFO => InodeKind::Fifo,
            _ => InodeKind::Socket,
        };

        let mut inode = Inode::new(kind, mode);
        inode.uid = uid;
        inode.gid = gid;
        inode.mtime = mtime;
        inode.nlink = nlink;

        // Trailing xattrs.
        let mut total = 0usize;
        for x in fields {
            let (k, v) = match x.iter().position(|&c| c == b'=') {
                Some(p) => (&x[..p], &x[p + 1..]),
                None => {
                    if strict {
                        return Err(DumpfileError::Strict {
                            line,
                            reason: "xattr without '='",
                        });
                    }
                    (x, &b""[..])
                }
            };
            let key = unescape(k, MAX_XATTR_NAME_LEN, line, "xattr name")?;
            if key.is_empty() {
                return Err(DumpfileError::EmptyXattrName { line });
            }
            if key.contains(&0) {
                return Err(DumpfileError::BadField {
                    line,
                    field: "xattr name",
                    reason: "embedded NUL".into(),
                });
            }
            unescape_into(v, &mut scratch, MAX_XATTR_VALUE_LEN, line, "xattr value")?;
            if let Some(old) = inode.xattrs.iter_mut().find(|x| *x.name == *key) {
                total -= xattr_cost(old.name.len(), old.value.len());
                old.value = scratch.as_slice().into();
            } else {
                inode.xattrs.push(Xattr {
                    name: key.clone().into_boxed_slice(),
                    value: scratch.as_slice().into(),
                });
            }
            total += xattr_cost(key.len(), scratch.len());
            if total > MAX_XATTR_TOTAL {
                return Err(DumpfileError::TooLong {
                    line,
                    what: "xattrs of one file",
                    len: total,
                    max: MAX_XATTR_TOTAL,
                });
            }
        }

        match parent {
            None => tree = Some(Tree::with_root(inode)),
            Some(p) => {
                let t = tree.as_mut().ok_or(DumpfileError::RootNotFirst { line })?;
                t.add(p, name, inode)
                    .map_err(|e| tree_err(e, line, &path))?;
            }
        }
    }

    let mut tree = tree.ok_or(DumpfileError::Empty)?;
    resolve_links(&mut tree, pending, &placeholder_of)?;
    Ok(tree)
}

fn tree_err(e: TreeError, line: usize, path: &[u8]) -> DumpfileError {
    let path = String::from_utf8_lossy(path).into_owned();
    match e {
        TreeError::Exists(_) => DumpfileError::Exists { line, path },
        TreeError::InvalidName(_) => DumpfileError::BadPath { line, path },
        _ => DumpfileError::NoParent { line, path },
    }
}

/// Point every hard-link entry at its final target inode and drop the
/// placeholder inodes (renumbering the arena).
fn resolve_links(
    tree: &mut Tree,
    pending: Vec<PendingLink>,
    placeholder_of: &HashMap<(InodeId, Vec<u8>), usize>,
) -> Result<(), DumpfileError> {
    if pending.is_empty() {
        return Ok(());
    }
    // placeholder id -> pending index
    let mut link_of: HashMap<InodeId, usize> = HashMap::new();
    for (i, p) in pending.iter().enumerate() {
        if let Some(&id) = placeholder_of.get(&(p.dir, p.name.clone())) {
            link_of.insert(id, i);
        }
    }
    let mut resolved: Vec<Option<InodeId>> = vec![None; pending.len()];
    for start in 0..pending.len() {
        let mut seen = Vec::new();
        let mut cur = start;
        let final_id = loop {
            if let Some(id) = resolved[cur] {
                break id;
            }
            if seen.contains(&cur) {
                return Err(DumpfileError::HardlinkCycle {
                    line: pending[start].line,
                });
            }
            seen.push(cur);
            let p = &pending[cur];
            let comps = split_path(&p.target, p.line)?;
            let id = lookup(tree, &comps).ok_or_else(|| DumpfileError::NoHardlinkTarget {
                line: p.line,
                target: String::from_utf8_lossy(&p.target).into_owned(),
            })?;
            match link_of.get(&id) {
                Some(&next) => cur = next,
                None => break id,
            }
        };
        if tree.inodes[final_id].kind.is_dir() {
            return Err(DumpfileError::DirectoryHardlink {
                line: pending[start].line,
            });
        }
        for s in seen {
            resolved[s] = Some(final_id);
        }
    }
    // Rewrite entries, then compact the arena without the placeholders.
    let mut remap: Vec<Option<InodeId>> = Vec::with_capacity(tree.inodes.len());
    let mut next = 0;
    for id in 0..tree.inodes.len() {
        if link_of.contains_key(&id) {
            remap.push(None);
        } else {
            remap.push(Some(next));
            next += 1;
        }
    }
    let target_of = |id: InodeId| -> InodeId {
        match link_of.get(&id) {
            Some(&i) => resolved[i].unwrap_or(id),
            None => id,
        }
    };
    for inode in tree.inodes.iter_mut() {
        if let InodeKind::Directory(entries) = &mut inode.kind {
            for DirEntry { inode: child, .. } in entries.iter_mut() {
                let t = target_of(*child);
                *child = remap[t].unwrap_or(t);
            }
        }
    }
    for p in &pending {
        let dir = remap[p.dir].unwrap_or(p.dir);
        tree.secondary_links
            .push((dir, p.name.clone().into_boxed_slice()));
    }
    let old = std::mem::take(&mut tree.inodes);
    tree.inodes = old
        .into_iter()
        .enumerate()
        .filter(|(id, _)| !link_of.contains_key(id))
        .map(|(_, i)| i)
        .collect();
    Ok(())
}

/// How a string field is escaped when printed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Esc {
    /// Path/payload/content: a lone `-` is hex-escaped, empty prints `-`.
    Field,
    /// Xattr name: `=` is hex-escaped too.
    XattrName,
    /// Xattr value: `=` hex-escaped; empty stays empty.
    XattrValue,
}

fn escape(out: &mut Vec<u8>, s: &[u8], mode: Esc) {
    if mode == Esc::Field {
        if s.is_empty() {
            out.push(b'-');
            return;
        }
        if s == b"-" {
            out.extend_from_slice(b"\\x2d");
            return;
        }
    }
    for &c in s {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'=' if mode != Esc::Field => out.extend_from_slice(b"\\x3d"),
            0x21..=0x7e => out.push(c),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'x',
                    HEX[(c >> 4) as usize],
                    HEX[(c & 15) as usize],
                ]);
            }
        }
    }
}

/// Print `tree` as a dumpfile: depth-first, entries in name order. The first
/// entry reaching a non-directory inode prints it in full; later ones print
/// as hard links (`@MODE`, PAYLOAD = the first path). Directory SIZE is
/// printed as 0 and directory NLINK as 2 + subdirectories.
pub fn write(tree: &Tree, out: &mut impl Write) -> io::Result<()> {
    let mut first_path: Vec<Option<Box<[u8]>>> = vec![None; tree.inodes.len()];
    let mut buf = Vec::with_capacity(1 << 16);
    let mut path = Vec::with_capacity(256);
    // Explicit stack: (dir, next entry index, path length before this dir's name)
    let mut stack: Vec<(InodeId, usize, usize)> = Vec::new();
    write_line(tree, ROOT, b"/", None, &mut buf);
    stack.push((ROOT, 0, 0));
    path.push(b'/');
    while let Some(top) = stack.last_mut() {
        let (dir, idx, base) = *top;
        let entries = tree.entries(dir);
        let Some(e) = entries.get(idx) else {
            path.truncate(base);
            stack.pop();
            continue;
        };
        top.1 += 1;
        let child_base = path.len();
        if path.last() != Some(&b'/') {
            path.push(b'/');
        }
        path.extend_from_slice(&e.name);
        let Some(child) = tree.get(e.inode) else {
            path.truncate(child_base);
            continue;
        };
        if child.kind.is_dir() {
            write_line(tree, e.inode, &path, None, &mut buf);
            stack.push((e.inode, 0, child_base));
        } else {
            match &first_path[e.inode] {
                Some(first) => write_line(tree, e.inode, &path, Some(first), &mut buf),
                None => {
                    write_line(tree, e.inode, &path, None, &mut buf);
                    first_path[e.inode] = Some(path.as_slice().into());
                }
            }
            path.truncate(child_base);
        }
        if buf.len() > (1 << 16) {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)
}

fn write_line(tree: &Tree, id: InodeId, path: &[u8], link_to: Option<&[u8]>, out: &mut Vec<u8>) {
    let inode = &tree.inodes[id];
    escape(out, path, Esc::Field);
    if let Some(target) = link_to {
        let _ = write!(out, " 0 @{:o} 0 0 0 0 0.0 ", inode.mode());
        escape(out, target, Esc::Field);
        out.extend_from_slice(b" - -\n");
        return;
    }
    let (size, rdev) = match &inode.kind {
        InodeKind::Regular(r) => (r.size, 0),
        InodeKind::Symlink(t) => (t.len() as u64, 0),
        InodeKind::CharDevice(r) | InodeKind::BlockDevice(r) => (0, *r),
        _ => (0, 0),
    };
    let nlink = match &inode.kind {
        InodeKind::Directory(entries) => {
            2 + entries
                .iter()
                .filter(|e| tree.get(e.inode).is_some_and(|c| c.kind.is_dir()))
                .count() as u64
        }
        _ => u64::from(inode.nlink),
    };
    let _ = write!(
        out,
        " {size} {:o} {nlink} {} {} {rdev} {}.{} ",
        inode.mode(),
        inode.uid,
        inode.gid,
        inode.mtime.sec,
        inode.mtime.nsec
    );
    match &inode.kind {
        InodeKind::Regular(r) => {
            match &r.payload {
                Some(p) => escape(out, p, Esc::Field),
                None => out.push(b'-'),
            }
            out.push(b' ');
            match &r.inline {
                Some(c) if !c.is_empty() => escape(out, c, Esc::Field),
                _ => out.push(b'-'),
            }
            out.push(b' ');
            match &r.digest {
                Some(d) => out.extend_from_slice(d.to_hex().as_bytes()),
                None => out.push(b'-'),
            }
        }
        InodeKind::Symlink(t) => {
            escape(out, t, Esc::Field);
            out.extend_from_slice(b" - -");
        }
        _ => out.extend_from_slice(b"- - -"),
    }
    for x in &inode.xattrs {
        out.push(b' ');
        escape(out, &x.name, Esc::XattrName);
        out.push(b'=');
        escape(out, &x.value, Esc::XattrValue);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &[u8]) -> Vec<u8> {
        let t = parse(text, true).unwrap();
        let mut out = Vec::new();
        write(&t, &mut out).unwrap();
        out
    }

    #[test]
    fn parses_fields_escapes_and_xattrs() {
        let d = b"/ 4096 40755 2 0 0 0 5.7 - - - user.a=1\n\
/a\\x20b 3 100644 1 10 20 0 1.2 - x\\ny - trusted.k\\x3dq=v=w\n\
/l 3 120777 1 0 0 0 0.0 abc - -\n";
        let t = parse(d, true).unwrap();
        let f = t.lookup(ROOT, b"a b").unwrap();
        let i = &t.inodes[f];
        assert_eq!(i.mode(), 0o100644);
        assert_eq!((i.uid, i.gid), (10, 20));
        assert_eq!(i.mtime, Timespec { sec: 1, nsec: 2 });
        match &i.kind {
            InodeKind::Regular(r) => assert_eq!(r.inline.as_deref(), Some(&b"x\ny"[..])),
            k => panic!("{k:?}"),
        }
        assert_eq!(i.xattr(b"trusted.k=q"), Some(&b"v=w"[..]));
        assert_eq!(t.root().xattr(b"user.a"), Some(&b"1"[..]));
    }

    #[test]
    fn printer_output_reparses_to_same_tree() {
        let d = b"/ 0 40755 3 0 0 0 0.0 - - -\n\
/d 0 40700 2 1 1 0 3.4 - - - user.x=\n\
/d/f 70 100600 2 0 0 0 0.0 ab/cdef - 0000000000000000000000000000000000000000000000000000000000000001 user.y=\\x00\\x3d\n\
/d/h 70 @100600 2 0 0 0 0.0 /d/f - -\n\
/-x 1 100644 1 0 0 0 0.0 - \\x2d -\n";
        let t1 = parse(d, true).unwrap();
        let out = roundtrip(d);
        assert_eq!(out, roundtrip(&out), "printing is stable");
        let mut again = Vec::new();
        write(&parse(&out, true).unwrap(), &mut again).unwrap();
        assert_eq!(out, again);
        let d_id = t1.lookup(ROOT, b"d").unwrap();
        assert_eq!(t1.lookup(d_id, b"f"), t1.lookup(d_id, b"h"));
    }

    #[test]
    fn rejects_bad_inputs() {
        let cases: &[&[u8]] = &[
            b"/a 0 100644 1 0 0 0 0.0 - - -\n",                          // root not first
            b"/ 0 100644 1 0 0 0 0.0 - - -\n",                           // root not dir
            b"/ 0 40755 2 0 0 0 0.0 - - -\n/x/y 0 100644 1 0 0 0 0.0 - - -\n", // no parent
            b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n",
            b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 2 100644 1 0 0 0 0.0 - abc -\n", // content size
            b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - - =v\n",
            b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - \\q -\n",
            b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /b - -\n",
            b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /a - -\n",
            b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0\n", // no PAYLOAD
            b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 200000644 1 0 0 0 0.0 - - -\n", // no type in 16 bits
            b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 1777777777777777777777 1 0 0 0 0.0 - - -\n",
            b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 2000000000000000000000 1 0 0 0 0.0 - - -\n",
            b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0 - - -\n",
        ];
        for c in cases {
            assert!(parse(c, false).is_err(), "{}", String::from_utf8_lossy(c));
        }
    }

    #[test]
    fn strictness() {
        let no_nl = b"/ 0 40755 2 0 0 0 0.0 - - -";
        assert!(parse(no_nl, true).is_err());
        assert!(parse(no_nl, false).is_ok());
        let link = b"/ 0 40755 2 0 0 0 0.0 - - -\n/l 9 120777 1 0 0 0 0.0 abc - -\n";
        assert!(parse(link, true).is_err());
        let t = parse(link, false).unwrap();
        let l = t.lookup(ROOT, b"l").unwrap();
        assert_eq!(t.inodes[l].kind, InodeKind::Symlink(b"abc".to_vec().into()));

        // A line ending right after its PAYLOAD: lenient takes CONTENT and
        // DIGEST as unset and builds what the full line builds.
        let short = b"/ 0 40755 2 0 0 0 0.0 -\n/f 100 100644 1 0 0 0 0.0 ab/cdef\n";
        let full = b"/ 0 40755 2 0 0 0 0.0 - - -\n/f 100 100644 1 0 0 0 0.0 ab/cdef - -\n";
        assert_eq!(
            parse(short, true),
            Err(DumpfileError::MissingField {
                line: 1,
                field: "CONTENT"
            })
        );
        let mut a = Vec::new();
        write(&parse(short, false).unwrap(), &mut a).unwrap();
        let mut b = Vec::new();
        write(&parse(full, true).unwrap(), &mut b).unwrap();
        assert_eq!(a, b);
        // Shorter than that is an error in both modes.
        for lenient in [false, true] {
            assert_eq!(
                parse(b"/ 0 40755 2 0 0 0 0.0\n", !lenient),
                Err(DumpfileError::MissingField {
                    line: 1,
                    field: "PAYLOAD"
                })
            );
        }
    }

    /// Every MODE with bits beyond 16 (types directory, char device,
    /// regular file with content and an xattr, a hard link, a symlink, a
    /// regular file with a bit beyond 32), and the same tree with those bits
    /// cleared.
    const HIGH_MODES: &[u8] = b"/ 0 40755 3 0 0 0 1700000000.0 - - -
/d 0 240755 2 0 0 0 1700000000.0 - - -
/d/c 0 7020644 1 0 0 259 1700000000.0 - - -
/f 5 1100644 2 0 0 0 1700000000.0 - hello - user.k=v
/h 0 @20100600 0 0 0 0 0.0 /f - -
/l 6 20720777 1 0 0 0 1700000000.0 target - -
/w 0 4000000100640 1 7 7 0 1700000000.0 - - -
";
    const LOW_MODES: &[u8] = b"/ 0 40755 3 0 0 0 1700000000.0 - - -
/d 0 40755 2 0 0 0 1700000000.0 - - -
/d/c 0 20644 1 0 0 259 1700000000.0 - - -
/f 5 100644 2 0 0 0 1700000000.0 - hello - user.k=v
/h 0 @100600 0 0 0 0 0.0 /f - -
/l 6 120777 1 0 0 0 1700000000.0 target - -
/w 0 100640 1 7 7 0 1700000000.0 - - -
";

    #[test]
    fn lenient_mode_keeps_the_low_16_bits_as_mkcomposefs_does() {
        use crate::digest::hex_encode;
        use crate::image::erofs::{write_image, WriteOptions};
        use sha2::{Digest as _, Sha256};

        let high = parse(HIGH_MODES, false).unwrap();
        assert_eq!(high, parse(LOW_MODES, false).unwrap());
        let kinds: Vec<u32> = [&b"d"[..], b"f", b"h", b"l", b"w"]
            .iter()
            .map(|n| high.inodes[high.lookup(ROOT, n).unwrap()].mode())
            .collect();
        assert_eq!(kinds, [0o40755, 0o100644, 0o100644, 0o120777, 0o100640]);
        // The image and its fs-verity digest as C mkcomposefs 1.0.8 writes
        // them (`mkcomposefs --print-digest --from-file`, lenient parsing)
        // for HIGH_MODES, and for LOW_MODES alike.
        let image = write_image(&high, &WriteOptions::default()).unwrap();
        assert_eq!(
            hex_encode(&Sha256::digest(&image)),
            "54c75b076558eb7b4d76c0b479538a7231cf1b9ba5cae4f8acf453eb4c948f4c"
        );
        assert_eq!(
            crate::image::fsverity::digest_bytes(HashAlgorithm::Sha256, &image).to_hex(),
            "8741b7f71e3f2856e952ce232dd36d8e5e007b8148eb8ff8eb5cf90970ca7ce2"
        );
        // Printing gives the kept mode, and that parses again strictly.
        let mut out = Vec::new();
        write(&high, &mut out).unwrap();
        assert_eq!(parse(&out, true).unwrap(), high);
    }

    #[test]
    fn strict_mode_refuses_mode_bits_beyond_16() {
        // Strict parsing accepts the low form but refuses each high line.
        parse(LOW_MODES, true).unwrap();
        let lines: Vec<&[u8]> = HIGH_MODES.split_inclusive(|&c| c == b'\n').collect();
        let low: Vec<&[u8]> = LOW_MODES.split_inclusive(|&c| c == b'\n').collect();
        for n in 1..lines.len() {
            let mut d = low[..n].concat();
            d.extend_from_slice(lines[n]);
            d.extend(low[n + 1..].concat());
            assert!(parse(&d, false).is_ok());
            assert_eq!(
                parse(&d, true),
                Err(DumpfileError::Strict {
                    line: n + 1,
                    reason: "MODE has bits beyond the 16-bit st_mode"
                }),
                "{}",
                String::from_utf8_lossy(lines[n])
            );
        }
    }

    #[test]
    fn duplicate_xattr_replaces_in_place() {
        let d = b"/ 0 40755 2 0 0 0 0.0 - - - user.a=1 user.b=2 user.a=3\n";
        let t = parse(d, true).unwrap();
        let names: Vec<&[u8]> = t.root().xattrs.iter().map(|x| &*x.name).collect();
        assert_eq!(names, vec![&b"user.a"[..], b"user.b"]);
        assert_eq!(t.root().xattr(b"user.a"), Some(&b"3"[..]));
    }
}
