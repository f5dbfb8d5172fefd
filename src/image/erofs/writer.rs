//! The composefs EROFS image writer, bit-for-bit compatible with `mkcomposefs` 1.0.x.
//!
//! Contract: [`write_image`] turns a [`Tree`] into the exact bytes the
//! reference writer produces for the same tree and format version, or a
//! typed error (nothing partial is returned).
//!
//! What the reference does, and so this writer does, in order:
//! 1. Version: start at `min_version`; if `max_version >= 1` and the tree has
//!    a whiteout (character device 0:0), use version 1.
//! 2. Rewrite for overlayfs: existing `trusted.overlay.*` xattrs become
//!    `trusted.overlay.overlay.*`; external regular files (size > 0, no inline
//!    content) get `trusted.overlay.metacopy` (`00 24 00 01` + SHA-256 digest,
//!    or empty without digest) and `trusted.overlay.redirect` (`/` + payload);
//!    whiteouts become regular files marked with escaped whiteout xattrs and
//!    their directory is marked; the root gets `trusted.overlay.opaque=y` and
//!    256 whiteout stubs `00`..`ff` (unless a name is taken) inheriting the
//!    root's owner, mtime and `security.selinux`.
//! 3. Inodes are numbered breadth-first, children in byte order; every
//!    directory lists `.` and `..`. Directory link counts are 2 + subdirs;
//!    other link counts are kept. Xattrs are sorted by name; an xattr
//!    (name, value) used by more than one inode is stored once in the shared
//!    area (at most 128 shared references per inode).
//! 4. Inodes are compact (32 bytes) when mtime equals the image's minimum
//!    mtime (stored as the superblock build time) and nlink/uid/gid fit 16
//!    bits and size fits 32 bits; otherwise extended (64 bytes). Inline tails
//!    (directory entries ≤ 2048 bytes, file data tails ≤ 2048 bytes, symlink
//!    targets, chunk tables) must not cross a block: the inode is padded to
//!    a later slot, or the tail is moved to a full block. A symlink whose
//!    inode + xattrs + target reach 4096 bytes keeps its target in a data
//!    block; a chunk table that cannot fit after slot padding is replaced by
//!    a data block of 1024 null chunk entries (the chunk format then shares
//!    the `i_u` field with the block address's high 16 bits).
//! 5. External files are chunk-based with the smallest chunk size ≥ the file
//!    size (capped at 2^43 bytes) and null block addresses: the kernel sees
//!    a sparse file of the right size whose data overlayfs redirects.

use std::borrow::Cow;
use std::collections::HashMap;

use super::format::*;
use crate::image::tree::{InodeId, InodeKind, Timespec, Tree, TreeError, ROOT};

/// Highest composefs format version this writer knows.
pub const MAX_FORMAT_VERSION: u32 = 1;
/// The chunk table of an external file must fit one block: 1024 chunks of at
/// most 2^43 bytes.
pub const MAX_EXTERNAL_FILE_SIZE: u64 = 1 << 53;

/// Options for [`write_image`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    pub min_version: u32,
    pub max_version: u32,
}

impl Default for WriteOptions {
    /// The reference defaults: version 0, moving to 1 when the tree needs it.
    fn default() -> Self {
        WriteOptions {
            min_version: 0,
            max_version: 1,
        }
    }
}

/// Why an image could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// A version above [`MAX_FORMAT_VERSION`] was asked for.
    #[error("format version {version} is not supported (maximum {MAX_FORMAT_VERSION})")]
    UnsupportedVersion { version: u32 },
    /// The tree breaks its own invariants.
    #[error("invalid tree: {0}")]
    InvalidTree(TreeError),
    /// An external file is larger than the format can describe.
    #[error(
        "file (inode {inode}) of {size} bytes is too large (maximum {MAX_EXTERNAL_FILE_SIZE})"
    )]
    FileTooLarge { inode: InodeId, size: u64 },
    /// Inline content is longer than the file size says, or vice versa.
    #[error("inline content of inode {inode} does not match its size")]
    InlineSizeMismatch { inode: InodeId },
    /// One inode's xattrs exceed what EROFS can store (`node` is its
    /// breadth-first inode number in the image).
    #[error("xattrs of image inode {node} do not fit in an EROFS inode")]
    XattrsTooLarge { node: usize },
    /// The image would need more than 2^32 blocks or inodes.
    #[error("image too large for EROFS")]
    ImageTooLarge,
}

const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";

/// Names of the root whiteout stubs: `00`..`ff`.
static STUB_NAMES: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};
const OVERLAY_ESCAPED_PREFIX: &[u8] = b"trusted.overlay.overlay.";

/// What the writer stores for one node (an inode or a root whiteout stub).
enum Body<'a> {
    Dir,
    /// In-image data (possibly empty).
    Inline(&'a [u8]),
    /// Chunk-based external data (size > 0).
    External,
    Symlink(&'a [u8]),
    Device(u32),
    Other,
}

type XattrList<'a> = Vec<(Cow<'a, [u8]>, Cow<'a, [u8]>)>;
type Dirents<'a> = [(&'a [u8], u32)];

struct Node<'a> {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    nlink: u32,
    size: u64,
    body: Body<'a>,
    xattrs: XattrList<'a>,
    /// Directory entries incl. `.` and `..`, sorted: (name, node index).
    dirents: Vec<(&'a [u8], u32)>,
    // Layout.
    compact: bool,
    n_blocks: u64,
    tail: u64,
    ipad: u64,
    nid: u64,
    /// Per xattr: shared offset (bytes from the start of the shared area) or None.
    shared: Vec<Option<u64>>,
}

impl Node<'_> {
    fn ftype(&self) -> u8 {
        match self.mode & 0o170000 {
            0o040000 => FT_DIR,
            0o100000 => FT_REG_FILE,
            0o120000 => FT_SYMLINK,
            0o020000 => FT_CHRDEV,
            0o060000 => FT_BLKDEV,
            0o010000 => FT_FIFO,
            0o140000 => FT_SOCK,
            _ => FT_UNKNOWN,
        }
    }

    fn set_xattr(&mut self, name: &'static [u8], value: Cow<'static, [u8]>) {
        if let Some(x) = self.xattrs.iter_mut().find(|x| &*x.0 == name) {
            x.1 = value;
        } else {
            self.xattrs.push((Cow::Borrowed(name), value));
        }
    }
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

fn entry_size(name: &[u8], value: &[u8]) -> u64 {
    let (_, suffix) = xattr_split(name);
    round_up(
        XATTR_ENTRY_SIZE + suffix.len() as u64 + value.len() as u64,
        4,
    )
}

fn chunk_bits(size: u64) -> u32 {
    // ilog2(size - 1) + 1, at least one block, at most the format's maximum.
    let bits = if size <= 1 {
        0
    } else {
        64 - (size - 1).leading_zeros()
    };
    bits.clamp(BLOCK_BITS, BLOCK_BITS + CHUNK_FORMAT_BLKBITS_MASK)
}

fn chunk_count(size: u64) -> u64 {
    size.div_ceil(1u64 << chunk_bits(size))
}

/// Build the image for `tree`.
pub fn write_image(tree: &Tree, opts: &WriteOptions) -> Result<Vec<u8>, WriteError> {
    tree.validate().map_err(WriteError::InvalidTree)?;
    if opts.min_version > MAX_FORMAT_VERSION || opts.max_version > MAX_FORMAT_VERSION {
        return Err(WriteError::UnsupportedVersion {
            version: opts.min_version.max(opts.max_version),
        });
    }
    let max_version = opts.max_version.max(opts.min_version);
    let mut version = opts.min_version;
    if version < 1 && max_version >= 1 && tree.inodes.iter().any(|i| i.kind.is_whiteout()) {
        version = 1;
    }

    let mut nodes = build_nodes(tree, version)?;
    let layout = layout(&mut nodes)?;
    Ok(emit(&nodes, &layout, version))
}

/// Steps 2 and 3: breadth-first node list with overlay rewrites applied.
fn build_nodes(tree: &Tree, version: u32) -> Result<Vec<Node<'_>>, WriteError> {
    let n = tree.inodes.len();
    let mut secondary: std::collections::HashSet<(InodeId, &[u8])> = tree
        .secondary_links
        .iter()
        .map(|(d, name)| (*d, &**name))
        .collect();
    if secondary.is_empty() {
        // Without explicit marks, an inode is defined by its first entry in
        // depth-first name order (the order dumpfiles list hard links in).
        let refs = tree.reference_counts();
        if refs.iter().any(|&r| r > 1) {
            let mut seen = vec![false; n];
            let mut stack = vec![(ROOT, 0usize)];
            while let Some((dir, i)) = stack.pop() {
                let entries = tree.entries(dir);
                let Some(e) = entries.get(i) else { continue };
                stack.push((dir, i + 1));
                if tree.inodes[e.inode].kind.is_dir() {
                    stack.push((e.inode, 0));
                } else if refs[e.inode] > 1 {
                    if seen[e.inode] {
                        secondary.insert((dir, &*e.name));
                    }
                    seen[e.inode] = true;
                }
            }
        }
    }

    // Breadth-first assignment of node indices; stub whiteouts are inserted
    // into the root's entries by name.
    const NONE: u32 = u32::MAX;
    let mut node_of = vec![NONE; n];
    let mut order: Vec<Option<InodeId>> = Vec::with_capacity(n + 256); // None = stub
    let mut parent_of: Vec<u32> = Vec::with_capacity(n + 256);
    let root_entries = tree.entries(ROOT);
    let stub_names: Vec<&'static [u8]> = STUB_NAMES
        .iter()
        .map(|n| &n[..])
        .filter(|nm| tree.lookup(ROOT, nm).is_none())
        .collect();
    node_of[ROOT] = 0;
    order.push(Some(ROOT));
    parent_of.push(0);
    // Per node: its children as (name, Child) in sorted order (without . and ..).
    enum Child {
        Inode(InodeId),
        Stub,
    }
    let mut children_of: Vec<Vec<(&[u8], Child)>> = Vec::with_capacity(n + 256);
    let mut head = 0;
    while head < order.len() {
        let me = head as u32;
        let mut kids: Vec<(&[u8], Child)> = Vec::new();
        if let Some(id) = order[head] {
            let entries = tree.entries(id);
            if id == ROOT {
                // Merge root entries and stubs by name.
                let (mut a, mut b) = (0, 0);
                while a < root_entries.len() || b < stub_names.len() {
                    let take_stub = match (root_entries.get(a), stub_names.get(b)) {
                        (Some(e), Some(s)) => *s < &*e.name,
                        (None, Some(_)) => true,
                        _ => false,
                    };
                    if take_stub {
                        kids.push((stub_names[b], Child::Stub));
                        b += 1;
                    } else {
                        kids.push((&root_entries[a].name, Child::Inode(root_entries[a].inode)));
                        a += 1;
                    }
                }
            } else {
                kids.extend(entries.iter().map(|e| (&*e.name, Child::Inode(e.inode))));
            }
            for (name, child) in &kids {
                match child {
                    Child::Stub => {
                        order.push(None);
                        parent_of.push(me);
                    }
                    Child::Inode(c) => {
                        let c = *c;
                        if node_of[c] != NONE || secondary.contains(&(id, *name)) {
                            continue;
                        }
                        node_of[c] = order.len() as u32;
                        order.push(Some(c));
                        parent_of.push(me);
                    }
                }
            }
        }
        children_of.push(kids);
        head += 1;
    }
    // Inodes reachable only through secondary links (their definition was
    // elsewhere but unreachable) still need a node: give them one at the end.
    let refs = tree.reference_counts();
    for id in 0..n {
        if node_of[id] == NONE && refs[id] > 0 {
            node_of[id] = order.len() as u32;
            order.push(Some(id));
            parent_of.push(0);
            children_of.push(Vec::new());
        }
    }
    if order.len() >= u32::MAX as usize {
        return Err(WriteError::ImageTooLarge);
    }

    // Materialise nodes with the overlay rewrite.
    let root = tree.root();
    let mut nodes: Vec<Node> = Vec::with_capacity(order.len());
    let mut whiteout_parents: Vec<u32> = Vec::new();
    for (idx, slot) in order.iter().enumerate() {
        let node = match slot {
            None => {
                let mut xattrs = Vec::new();
                if let Some(v) = root.xattr(b"security.selinux") {
                    xattrs.push((Cow::Borrowed(&b"security.selinux"[..]), Cow::Borrowed(v)));
                }
                Node {
                    mode: 0o020644,
                    uid: root.uid,
                    gid: root.gid,
                    mtime: root.mtime,
                    nlink: 1,
                    size: 0,
                    body: Body::Device(0),
                    xattrs,
                    dirents: Vec::new(),
                    compact: false,
                    n_blocks: 0,
                    tail: 0,
                    ipad: 0,
                    nid: 0,
                    shared: Vec::new(),
                }
            }
            Some(id) => {
                let inode = &tree.inodes[*id];
                let mut mode = inode.mode();
                let mut xattrs: XattrList = inode
                    .xattrs
                    .iter()
                    .map(|x| {
                        let name: Cow<[u8]> = match x.name.strip_prefix(OVERLAY_PREFIX) {
                            Some(rest) => Cow::Owned([OVERLAY_ESCAPED_PREFIX, rest].concat()),
                            None => Cow::Borrowed(&x.name[..]),
                        };
                        (name, Cow::Borrowed(&x.value[..]))
                    })
                    .collect();
                let mut size = 0;
                let body = match &inode.kind {
                    InodeKind::Directory(_) => Body::Dir,
                    InodeKind::Regular(r) => {
                        size = r.size;
                        match &r.inline {
                            _ if r.size == 0 => Body::Inline(&[]),
                            Some(c) => {
                                if c.len() as u64 != r.size {
                                    return Err(WriteError::InlineSizeMismatch { inode: *id });
                                }
                                Body::Inline(c)
                            }
                            None => {
                                if r.size > MAX_EXTERNAL_FILE_SIZE {
                                    return Err(WriteError::FileTooLarge {
                                        inode: *id,
                                        size: r.size,
                                    });
                                }
                                let metacopy: Cow<[u8]> = match &r.digest {
                                    Some(d) => {
                                        // version 0, total length, flags 0,
                                        // fs-verity algorithm, digest bytes.
                                        let len = 4 + d.as_bytes().len() as u8;
                                        let mut v = vec![0u8, len, 0, d.algorithm().number()];
                                        v.extend_from_slice(d.as_bytes());
                                        Cow::Owned(v)
                                    }
                                    None => Cow::Borrowed(&[]),
                                };
                                set(&mut xattrs, b"trusted.overlay.metacopy", metacopy);
                                if let Some(p) = r.payload.as_ref().filter(|p| !p.is_empty()) {
                                    let mut v = Vec::with_capacity(p.len() + 1);
                                    v.push(b'/');
                                    v.extend_from_slice(p);
                                    set(&mut xattrs, b"trusted.overlay.redirect", Cow::Owned(v));
                                }
                                Body::External
                            }
                        }
                    }
                    InodeKind::Symlink(t) => {
                        size = t.len() as u64;
                        Body::Symlink(t)
                    }
                    InodeKind::CharDevice(0) => {
                        // Escaped whiteout: a regular empty file the outer
                        // overlay sees as a whiteout.
                        mode = 0o100000 | (mode & 0o7777);
                        set(
                            &mut xattrs,
                            b"trusted.overlay.overlay.whiteout",
                            Cow::Borrowed(&[]),
                        );
                        set(&mut xattrs, b"user.overlay.whiteout", Cow::Borrowed(&[]));
                        whiteout_parents.push(parent_of[idx]);
                        Body::Inline(&[])
                    }
                    InodeKind::CharDevice(r) | InodeKind::BlockDevice(r) => Body::Device(*r as u32),
                    InodeKind::Fifo | InodeKind::Socket => Body::Other,
                };
                Node {
                    mode,
                    uid: inode.uid,
                    gid: inode.gid,
                    mtime: inode.mtime,
                    nlink: inode.nlink,
                    size,
                    body,
                    xattrs,
                    dirents: Vec::new(),
                    compact: false,
                    n_blocks: 0,
                    tail: 0,
                    ipad: 0,
                    nid: 0,
                    shared: Vec::new(),
                }
            }
        };
        nodes.push(node);
    }
    for p in whiteout_parents {
        let parent = &mut nodes[p as usize];
        if version >= 1 {
            // Linux 6.8 xwhiteouts: the directory is marked opaque "x".
            parent.set_xattr(b"trusted.overlay.overlay.opaque", Cow::Borrowed(b"x"));
            parent.set_xattr(b"user.overlay.opaque", Cow::Borrowed(b"x"));
        }
        {
            parent.set_xattr(b"trusted.overlay.overlay.whiteouts", Cow::Borrowed(&[]));
            parent.set_xattr(b"user.overlay.whiteouts", Cow::Borrowed(&[]));
        }
    }
    nodes[0].set_xattr(b"trusted.overlay.opaque", Cow::Borrowed(b"y"));

    // Directory entries with . and .., and directory link counts.
    for (idx, kids) in children_of.iter().enumerate() {
        if !matches!(nodes[idx].body, Body::Dir) {
            continue;
        }
        let mut stub_i = 0usize;
        let mut dirents: Vec<(&[u8], u32)> = Vec::with_capacity(kids.len() + 2);
        let mut subdirs = 0u32;
        for (name, child) in kids {
            let target = match child {
                Child::Stub => {
                    // Stubs are numbered in BFS order: find by scanning.
                    stub_i += 1;
                    u32::MAX
                }
                Child::Inode(c) => node_of[*c],
            };
            dirents.push((name, target));
        }
        // Resolve stub targets: they were appended to `order` in kid order.
        if stub_i > 0 {
            let mut stubs = order
                .iter()
                .enumerate()
                .filter(|(i, s)| s.is_none() && parent_of[*i] as usize == idx)
                .map(|(i, _)| i as u32);
            for d in dirents.iter_mut().filter(|d| d.1 == u32::MAX) {
                d.1 = stubs.next().unwrap_or(0);
            }
        }
        for (_, t) in &dirents {
            if matches!(nodes[*t as usize].body, Body::Dir) {
                subdirs += 1;
            }
        }
        dirents.push((b".", idx as u32));
        dirents.push((b"..", parent_of[idx]));
        dirents.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let node = &mut nodes[idx];
        node.nlink = 2 + subdirs;
        node.dirents = dirents;
    }
    for node in nodes.iter_mut() {
        node.xattrs.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(nodes)
}

fn set<'a>(xattrs: &mut XattrList<'a>, name: &'static [u8], value: Cow<'a, [u8]>) {
    if let Some(x) = xattrs.iter_mut().find(|x| &*x.0 == name) {
        x.1 = value;
    } else {
        xattrs.push((Cow::Borrowed(name), value));
    }
}

struct Layout {
    min_mtime: Timespec,
    has_acl: bool,
    inodes_end: u64,
    shared: Vec<(Vec<u8>, Vec<u8>)>,
    shared_size: u64,
    n_data_blocks: u64,
}

/// Step 4: shared xattrs, inode sizes, padding and nids.
fn layout(nodes: &mut [Node]) -> Result<Layout, WriteError> {
    let mut min_mtime = nodes[0].mtime;
    let mut has_acl = false;
    for n in nodes.iter() {
        if n.mtime < min_mtime {
            min_mtime = n.mtime;
        }
        if n.xattrs
            .iter()
            .any(|x| &*x.0 == b"system.posix_acl_access" || &*x.0 == b"system.posix_acl_default")
        {
            has_acl = true;
        }
    }

    // Count (name, value) uses.
    let mut counts: HashMap<(&[u8], &[u8]), u32> = HashMap::new();
    for n in nodes.iter() {
        for (k, v) in &n.xattrs {
            *counts.entry((&**k, &**v)).or_insert(0) += 1;
        }
    }
    let mut multi: Vec<(&[u8], &[u8])> = counts
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(&kv, _)| kv)
        .collect();
    // Reference order: name descending, then value length descending, then
    // value bytes descending.
    multi.sort_unstable_by(|a, b| {
        b.0.cmp(a.0)
            .then(b.1.len().cmp(&a.1.len()))
            .then_with(|| b.1.cmp(a.1))
    });
    let mut offsets: HashMap<(&[u8], &[u8]), u64> = HashMap::with_capacity(multi.len());
    let mut shared_size = 0u64;
    for kv in &multi {
        offsets.insert(*kv, shared_size);
        shared_size += entry_size(kv.0, kv.1);
    }
    let shared: Vec<(Vec<u8>, Vec<u8>)> = multi
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    drop(multi);

    let mut shared_of: Vec<Vec<Option<u64>>> = Vec::with_capacity(nodes.len());
    for n in nodes.iter() {
        let mut n_shared = 0;
        let v = n
            .xattrs
            .iter()
            .map(|(k, val)| match offsets.get(&(&**k, &**val)) {
                Some(&off) if n_shared < MAX_SHARED_PER_INODE => {
                    n_shared += 1;
                    Some(off)
                }
                _ => None,
            })
            .collect();
        shared_of.push(v);
    }
    drop(offsets);
    drop(counts);

    let mut pos = SUPER_OFFSET + SUPERBLOCK_SIZE;
    let meta_start = pos - pos % BLOCK_SIZE;
    let mut n_data_blocks = 0u64;
    for (node_index, (n, shared)) in nodes.iter_mut().zip(shared_of).enumerate() {
        n.shared = shared;
        // Inode data size.
        let (mut n_blocks, mut tail) = match &n.body {
            Body::Dir => dir_size(&n.dirents),
            Body::Symlink(t) => (0, t.len() as u64),
            Body::Inline(c) if !c.is_empty() => {
                let (b, t) = (c.len() as u64 / BLOCK_SIZE, c.len() as u64 % BLOCK_SIZE);
                if t > BLOCK_SIZE / 2 {
                    (b + 1, 0)
                } else {
                    (b, t)
                }
            }
            Body::External => (0, chunk_count(n.size) * 4),
            _ => (0, 0),
        };
        let isize_field = match &n.body {
            Body::Dir => n_blocks * BLOCK_SIZE + tail,
            _ => n.size,
        };
        n.compact = n.mtime == min_mtime
            && n.nlink <= u32::from(u16::MAX)
            && n.uid <= u32::from(u16::MAX)
            && n.gid <= u32::from(u16::MAX)
            && isize_field <= u64::from(u32::MAX);
        let inode_size = if n.compact {
            COMPACT_INODE_SIZE
        } else {
            EXTENDED_INODE_SIZE
        };
        let xattr_size = xattr_ibody_size(n);
        if xattr_size > XATTR_IBODY_HEADER_SIZE + 4 * u64::from(u16::MAX - 1) {
            return Err(WriteError::XattrsTooLarge { node: node_index });
        }
        let ppos = pos;
        pos = round_up(pos, SLOT_SIZE);
        let mut ipad = pos - ppos;
        // Keep the inline tail inside one block.
        let non_tail = inode_size + xattr_size;
        if matches!(n.body, Body::Symlink(_)) {
            // Inode, xattrs and target must share one block (old kernels
            // refuse fast symlinks that cross); pad the inode to a block
            // start if they would cross. A symlink that cannot fit in a
            // block at all has its target moved to a data block instead.
            let total = non_tail + tail;
            if pos / BLOCK_SIZE != (pos + total - 1) / BLOCK_SIZE {
                let extra = round_up(pos, BLOCK_SIZE) - pos;
                ipad += extra;
                pos += extra;
            }
            if total >= BLOCK_SIZE {
                n_blocks = 1;
                tail = 0;
            }
        } else if matches!(n.body, Body::External) && tail + xattr_size % SLOT_SIZE > BLOCK_SIZE {
            // A chunk table that cannot fit in the inode's block even after
            // slot padding goes to a data block of 1024 null entries.
            let extra = round_up(pos, BLOCK_SIZE) - pos;
            ipad += extra;
            pos += extra;
            n_blocks = 1;
            tail = 0;
        } else {
            let remainder = BLOCK_SIZE - (pos + non_tail) % BLOCK_SIZE;
            if remainder < tail {
                let extra = round_up(remainder, SLOT_SIZE);
                let remainder2 = BLOCK_SIZE - (pos + non_tail + extra) % BLOCK_SIZE;
                if tail <= remainder2 {
                    ipad += extra;
                    pos += extra;
                } else {
                    // Did not fit even after padding: move the tail to a block.
                    n_blocks += 1;
                    tail = 0;
                }
            }
        }
        n.n_blocks = n_blocks;
        n.tail = tail;
        n.ipad = ipad;
        n_data_blocks += n_blocks;
        n.nid = (pos - meta_start) / SLOT_SIZE;
        pos += non_tail + tail;
    }
    if nodes[0].nid > u64::from(u16::MAX) {
        return Err(WriteError::ImageTooLarge);
    }
    let inodes_end = round_up(pos, SLOT_SIZE);
    let data_start = round_up(inodes_end + shared_size, BLOCK_SIZE);
    if data_start / BLOCK_SIZE + n_data_blocks > u64::from(u32::MAX) {
        return Err(WriteError::ImageTooLarge);
    }
    Ok(Layout {
        min_mtime,
        has_acl,
        inodes_end,
        shared,
        shared_size,
        n_data_blocks,
    })
}

fn dir_size(dirents: &[(&[u8], u32)]) -> (u64, u64) {
    let mut n_blocks = 0;
    let mut block = 0;
    for (name, _) in dirents {
        let len = DIRENT_SIZE + name.len() as u64;
        if block + len > BLOCK_SIZE {
            n_blocks += 1;
            block = 0;
        }
        block += len;
    }
    if block > BLOCK_SIZE / 2 {
        n_blocks += 1;
        block = 0;
    }
    (n_blocks, block)
}

fn xattr_ibody_size(n: &Node) -> u64 {
    if n.xattrs.is_empty() {
        return 0;
    }
    let mut size = XATTR_IBODY_HEADER_SIZE;
    for ((k, v), s) in n.xattrs.iter().zip(&n.shared) {
        size += match s {
            Some(_) => 4,
            None => entry_size(k, v),
        };
    }
    round_up(size, 4)
}

fn put_xattr(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let (index, suffix) = xattr_split(name);
    out.push(suffix.len() as u8);
    out.push(index);
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(suffix);
    out.extend_from_slice(value);
    pad_to(out, 4);
}

fn pad_to(out: &mut Vec<u8>, align: u64) {
    let len = out.len() as u64;
    let target = round_up(len, align);
    out.resize(target as usize, 0);
}

fn put_dirents(out: &mut Vec<u8>, nodes: &[Node], entries: &[(&[u8], u32)]) {
    let mut nameoff = (entries.len() as u64 * DIRENT_SIZE) as u16;
    for (name, target) in entries {
        let t = &nodes[*target as usize];
        out.extend_from_slice(&t.nid.to_le_bytes());
        out.extend_from_slice(&nameoff.to_le_bytes());
        out.push(t.ftype());
        out.push(0);
        nameoff = nameoff.wrapping_add(name.len() as u16);
    }
    for (name, _) in entries {
        out.extend_from_slice(name);
    }
}

/// Split directory entries the way they are laid out: full blocks, then the
/// rest (a block if `n_blocks` says so, else the inline tail).
fn dir_chunks<'a, 'b>(
    dirents: &'b Dirents<'a>,
    n_blocks: u64,
) -> (Vec<&'b Dirents<'a>>, &'b Dirents<'a>) {
    let mut blocks = Vec::new();
    let mut first = 0;
    let mut size = 0;
    for (i, (name, _)) in dirents.iter().enumerate() {
        let len = DIRENT_SIZE + name.len() as u64;
        if size + len > BLOCK_SIZE {
            blocks.push(&dirents[first..i]);
            size = 0;
            first = i;
        }
        size += len;
    }
    if (blocks.len() as u64) < n_blocks {
        blocks.push(&dirents[first..]);
        first = dirents.len();
    }
    (blocks, &dirents[first..])
}

/// Step 5: serialise.
fn emit(nodes: &[Node], l: &Layout, version: u32) -> Vec<u8> {
    let data_start = round_up(l.inodes_end + l.shared_size, BLOCK_SIZE);
    let total = data_start + l.n_data_blocks * BLOCK_SIZE;
    let mut out: Vec<u8> = Vec::with_capacity(total as usize);

    // composefs header
    out.extend_from_slice(&COMPOSEFS_MAGIC.to_le_bytes());
    out.extend_from_slice(&COMPOSEFS_HEADER_VERSION.to_le_bytes());
    let flags = if l.has_acl {
        COMPOSEFS_FLAGS_HAS_ACL
    } else {
        0
    };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.resize(SUPER_OFFSET as usize, 0);

    // superblock
    let sb_start = out.len();
    out.extend_from_slice(&EROFS_MAGIC.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // checksum
    out.extend_from_slice(&(FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER).to_le_bytes());
    out.push(BLOCK_BITS as u8);
    out.push(0); // sb_extslots
    out.extend_from_slice(&(nodes[0].nid as u16).to_le_bytes());
    out.extend_from_slice(&(nodes.len() as u64).to_le_bytes());
    out.extend_from_slice(&(l.min_mtime.sec as u64).to_le_bytes());
    out.extend_from_slice(&l.min_mtime.nsec.to_le_bytes());
    out.extend_from_slice(&((data_start / BLOCK_SIZE + l.n_data_blocks) as u32).to_le_bytes());
    out.extend_from_slice(&(((SUPER_OFFSET + SUPERBLOCK_SIZE) / BLOCK_SIZE) as u32).to_le_bytes());
    out.extend_from_slice(&((l.inodes_end / BLOCK_SIZE) as u32).to_le_bytes());
    out.resize(sb_start + SUPERBLOCK_SIZE as usize, 0);

    // inodes
    let mut current_end = data_start;
    for (ino, n) in nodes.iter().enumerate() {
        out.resize(out.len() + n.ipad as usize, 0);
        let xattr_size = xattr_ibody_size(n);
        let icount: u16 = if xattr_size == 0 {
            0
        } else {
            ((xattr_size - XATTR_IBODY_HEADER_SIZE) / 4 + 1) as u16
        };
        let mut layout = if n.tail > 0 {
            LAYOUT_FLAT_INLINE
        } else {
            LAYOUT_FLAT_PLAIN
        };
        let mut u: u32 = 0;
        let size = match &n.body {
            Body::Dir => n.n_blocks * BLOCK_SIZE + n.tail,
            Body::Symlink(t) => t.len() as u64,
            Body::Inline(_) | Body::External => n.size,
            _ => 0,
        };
        match &n.body {
            Body::Dir | Body::Inline(_) | Body::Symlink(_) if n.n_blocks > 0 => {
                u = (current_end / BLOCK_SIZE) as u32;
                current_end += n.n_blocks * BLOCK_SIZE;
            }
            Body::External => {
                layout = LAYOUT_CHUNK_BASED;
                // The chunk format shares the 32-bit field with the block
                // address: only its low 16 bits are overwritten.
                let fmt = chunk_bits(n.size) - BLOCK_BITS;
                if n.n_blocks > 0 {
                    u = ((current_end / BLOCK_SIZE) as u32 & 0xffff_0000) | fmt;
                    current_end += n.n_blocks * BLOCK_SIZE;
                } else {
                    u = fmt;
                }
            }
            Body::Device(rdev) => u = *rdev,
            _ => {}
        }
        let format = (layout << 1) | u16::from(!n.compact);
        out.extend_from_slice(&format.to_le_bytes());
        out.extend_from_slice(&icount.to_le_bytes());
        out.extend_from_slice(&(n.mode as u16).to_le_bytes());
        if n.compact {
            out.extend_from_slice(&(n.nlink as u16).to_le_bytes());
            out.extend_from_slice(&(size as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&u.to_le_bytes());
            out.extend_from_slice(&(ino as u32).to_le_bytes());
            out.extend_from_slice(&(n.uid as u16).to_le_bytes());
            out.extend_from_slice(&(n.gid as u16).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        } else {
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&u.to_le_bytes());
            out.extend_from_slice(&(ino as u32).to_le_bytes());
            out.extend_from_slice(&n.uid.to_le_bytes());
            out.extend_from_slice(&n.gid.to_le_bytes());
            out.extend_from_slice(&(n.mtime.sec as u64).to_le_bytes());
            out.extend_from_slice(&n.mtime.nsec.to_le_bytes());
            out.extend_from_slice(&n.nlink.to_le_bytes());
            out.extend_from_slice(&[0u8; 16]);
        }
        if xattr_size > 0 {
            let mut filter = 0u32;
            for (k, _) in &n.xattrs {
                let (index, suffix) = xattr_split(k);
                let bit = xxh32(suffix, XATTR_FILTER_SEED.wrapping_add(u32::from(index))) & 31;
                filter |= 1 << bit;
            }
            let n_shared = n.shared.iter().filter(|s| s.is_some()).count();
            out.extend_from_slice(&(XATTR_FILTER_DEFAULT & !filter).to_le_bytes());
            out.push(n_shared as u8);
            out.extend_from_slice(&[0u8; 7]);
            for s in n.shared.iter().flatten() {
                let off = (l.inodes_end % BLOCK_SIZE + s) / 4;
                out.extend_from_slice(&(off as u32).to_le_bytes());
            }
            for ((k, v), s) in n.xattrs.iter().zip(&n.shared) {
                if s.is_none() {
                    put_xattr(&mut out, k, v);
                }
            }
        }
        match &n.body {
            Body::Dir => {
                let (_, tail) = dir_chunks(&n.dirents, n.n_blocks);
                if n.tail > 0 {
                    put_dirents(&mut out, nodes, tail);
                }
            }
            Body::Symlink(t) if n.n_blocks == 0 => out.extend_from_slice(t),
            Body::Inline(c) if n.tail > 0 => {
                out.extend_from_slice(&c[c.len().saturating_sub(n.tail as usize)..]);
            }
            Body::External if n.n_blocks == 0 => {
                for _ in 0..chunk_count(n.size) {
                    out.extend_from_slice(&NULL_ADDR.to_le_bytes());
                }
            }
            _ => {}
        }
    }
    pad_to(&mut out, SLOT_SIZE);

    // shared xattrs
    for (k, v) in &l.shared {
        put_xattr(&mut out, k, v);
    }
    pad_to(&mut out, BLOCK_SIZE);

    // data blocks
    for n in nodes {
        match &n.body {
            Body::Dir => {
                let (blocks, _) = dir_chunks(&n.dirents, n.n_blocks);
                for b in blocks {
                    put_dirents(&mut out, nodes, b);
                    pad_to(&mut out, BLOCK_SIZE);
                }
            }
            Body::Inline(c) | Body::Symlink(c) if n.n_blocks > 0 => {
                let full = (n.n_blocks * BLOCK_SIZE).min(c.len() as u64) as usize;
                out.extend_from_slice(&c[..full]);
                pad_to(&mut out, BLOCK_SIZE);
            }
            Body::External if n.n_blocks > 0 => {
                for _ in 0..BLOCK_SIZE / 4 {
                    out.extend_from_slice(&NULL_ADDR.to_le_bytes());
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::dumpfile;
    use crate::image::tree::S_IFMT;

    fn build(dump: &[u8], opts: WriteOptions) -> Vec<u8> {
        write_image(&dumpfile::parse(dump, true).unwrap(), &opts).unwrap()
    }

    #[test]
    fn header_superblock_and_root_facts() {
        let img = build(b"/ 0 40755 2 0 0 0 7.0 - - -\n", WriteOptions::default());
        assert_eq!(img.len() % 4096, 0);
        assert_eq!(&img[0..4], &COMPOSEFS_MAGIC.to_le_bytes());
        assert_eq!(&img[12..16], &0u32.to_le_bytes(), "no whiteout: version 0");
        assert_eq!(&img[1024..1028], &EROFS_MAGIC.to_le_bytes());
        assert_eq!(img[1024 + 12], 12, "blkszbits");
        // root nid: first slot after the superblock (1152 / 32).
        assert_eq!(u16::from_le_bytes([img[1038], img[1039]]), 36);
        // inodes: root + 256 whiteout stubs.
        assert_eq!(u64::from_le_bytes(img[1040..1048].try_into().unwrap()), 257);
        // build time = minimum mtime.
        assert_eq!(u64::from_le_bytes(img[1048..1056].try_into().unwrap()), 7);
    }

    #[test]
    fn whiteout_raises_version_within_max() {
        let d = b"/ 0 40755 2 0 0 0 0.0 - - -\n/w 0 20644 1 0 0 0 0.0 - - -\n";
        let v1 = build(d, WriteOptions::default());
        assert_eq!(&v1[12..16], &1u32.to_le_bytes());
        let v0 = build(
            d,
            WriteOptions {
                min_version: 0,
                max_version: 0,
            },
        );
        assert_eq!(&v0[12..16], &0u32.to_le_bytes());
        assert_ne!(v0, v1);
        let t = dumpfile::parse(d, true).unwrap();
        assert!(matches!(
            write_image(
                &t,
                &WriteOptions {
                    min_version: 2,
                    max_version: 2
                }
            ),
            Err(WriteError::UnsupportedVersion { version: 2 })
        ));
    }

    #[test]
    fn image_reads_back_with_hardlinks_overlay_xattrs_and_nlink() {
        let d = b"/ 0 40755 2 0 0 0 0.0 - - -\n\
/a 0 40755 2 0 0 0 0.0 - - -\n\
/a/f 100 100644 3 5 6 0 9.1 ab/cdef - 00000000000000000000000000000000000000000000000000000000000000ff user.x=1\n\
/b 100 @100644 3 5 6 0 9.1 /a/f - -\n\
/c 4 100600 1 0 0 0 0.0 - abcd - trusted.overlay.k=v\n";
        let img = build(d, WriteOptions::default());
        let t = crate::image::erofs::reader::read_image(&img).unwrap();
        let a = t.lookup(ROOT, b"a").unwrap();
        let f = t.lookup(a, b"f").unwrap();
        assert_eq!(t.lookup(ROOT, b"b"), Some(f), "hard link shares the inode");
        let inode = &t.inodes[f];
        assert_eq!(inode.nlink, 3, "non-directory nlink kept from the source");
        assert_eq!(inode.mode() & S_IFMT, 0o100000);
        match &inode.kind {
            InodeKind::Regular(r) => {
                assert_eq!(r.size, 100);
                assert_eq!(r.payload.as_deref(), Some(&b"ab/cdef"[..]));
                assert_eq!(r.digest.map(|d| d.as_bytes()[31]), Some(0xff));
            }
            k => panic!("{k:?}"),
        }
        let c = t.lookup(ROOT, b"c").unwrap();
        assert_eq!(t.inodes[c].xattr(b"trusted.overlay.k"), Some(&b"v"[..]));
    }
}
