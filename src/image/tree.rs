//! The in-memory filesystem tree that composefs images are built from and read into.
//!
//! Contract:
//! - A [`Tree`] is an arena of [`Inode`]s addressed by [`InodeId`]; inode 0 is
//!   always the root directory. Directory entries name an inode by id, so a
//!   hard link is simply two entries naming the same non-directory inode.
//!   Directories are never hard-linked (each directory inode has exactly one
//!   entry naming it, except the root, which has none).
//! - Directory entries are kept sorted by name bytes (`memcmp` order, the order
//!   the reference writer stores them in) and names are unique within a
//!   directory. Names are 1..=255 bytes, contain no `/` or NUL, and are never
//!   `.` or `..` (the writer adds those itself).
//! - Inode metadata is what the dumpfile carries: permission bits (the file
//!   type comes from [`InodeKind`]), uid, gid, mtime, and the xattrs in the
//!   order they were given (the writer sorts them). `nlink` is informational:
//!   it records what the source said; the writer derives link counts from the
//!   tree itself, as the reference writer does.
//! - A regular file carries its size plus, independently, inline content
//!   (stored in the image), a payload (the backing path in the object store,
//!   written as the `trusted.overlay.redirect` xattr) and an fs-verity digest
//!   (written as `trusted.overlay.metacopy`). The reference format allows any
//!   combination, so the tree does too; [`RegularFile::is_inline`] is the rule
//!   the writer uses.
//! - [`Tree::secondary_links`] optionally marks which entries of a hard-linked
//!   inode are links rather than its definition (it decides where the
//!   reference writer places the inode).
//!
//! Memory is linear in the metadata: no file data is held except inline
//! content (at most 64 bytes per file from a directory scan; dumpfiles may
//! carry up to 4096 bytes, the format's limit).

use crate::digest::Digest;

/// Index of an inode in [`Tree::inodes`].
pub type InodeId = usize;

/// The root directory's id.
pub const ROOT: InodeId = 0;

/// Longest file name the format stores (`LCFS_MAX_NAME_LENGTH`, `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
/// Longest xattr name (`XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME_LEN: usize = 255;
/// Longest xattr value (EROFS stores the size in 16 bits).
pub const MAX_XATTR_VALUE_LEN: usize = u16::MAX as usize;
/// Longest symlink target or payload path (`PATH_MAX - 1`).
pub const MAX_PATH_LEN: usize = 4095;
/// Largest inline (in-image) regular file content: one EROFS block.
pub const MAX_INLINE_LEN: usize = 4096;
/// Regular files up to this size are stored inline when scanning a directory.
pub const INLINE_THRESHOLD: u64 = 64;

/// File type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

/// Seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// One extended attribute: full name (`user.foo`) and raw value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    pub name: Box<[u8]>,
    pub value: Box<[u8]>,
}

/// A directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Box<[u8]>,
    pub inode: InodeId,
}

/// A regular file's content description.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegularFile {
    /// `st_size`.
    pub size: u64,
    /// Content stored inside the image (length == `size`).
    pub inline: Option<Box<[u8]>>,
    /// Backing file path relative to the object store (`ab/cdef…`), without
    /// a leading `/`.
    pub payload: Option<Box<[u8]>>,
    /// SHA-256 fs-verity digest of the content.
    pub digest: Option<Digest>,
}

impl RegularFile {
    /// Whether the writer stores this file's data in the image (as opposed to
    /// an external, chunk-based file with overlay xattrs).
    pub fn is_inline(&self) -> bool {
        self.size == 0 || self.inline.is_some()
    }
}

/// What an inode is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InodeKind {
    /// Entries sorted by name, unique.
    Directory(Vec<DirEntry>),
    Regular(RegularFile),
    Symlink(Box<[u8]>),
    CharDevice(u64),
    BlockDevice(u64),
    Fifo,
    Socket,
}

impl InodeKind {
    /// The `S_IFMT` bits for this kind.
    pub fn type_bits(&self) -> u32 {
        match self {
            InodeKind::Directory(_) => S_IFDIR,
            InodeKind::Regular(_) => S_IFREG,
            InodeKind::Symlink(_) => S_IFLNK,
            InodeKind::CharDevice(_) => S_IFCHR,
            InodeKind::BlockDevice(_) => S_IFBLK,
            InodeKind::Fifo => S_IFIFO,
            InodeKind::Socket => S_IFSOCK,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, InodeKind::Directory(_))
    }

    /// Overlayfs whiteout: a character device with device number 0.
    pub fn is_whiteout(&self) -> bool {
        matches!(self, InodeKind::CharDevice(0))
    }
}

/// One inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Permission bits (`mode & 0o7777`); the type is in `kind`.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
    /// Link count as the source recorded it (informational; see module docs).
    pub nlink: u32,
    /// In source order.
    pub xattrs: Vec<Xattr>,
    pub kind: InodeKind,
}

impl Inode {
    /// A fresh inode with zeroed metadata.
    pub fn new(kind: InodeKind, perm: u32) -> Inode {
        Inode {
            perm: perm & 0o7777,
            uid: 0,
            gid: 0,
            mtime: Timespec::default(),
            nlink: 1,
            xattrs: Vec::new(),
            kind,
        }
    }

    /// Full `st_mode`: type bits plus permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.type_bits() | (self.perm & 0o7777)
    }

    /// The value of the xattr `name`, if set.
    pub fn xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.xattrs
            .iter()
            .find(|x| &*x.name == name)
            .map(|x| &*x.value)
    }

    /// Set (replace or append) an xattr.
    pub fn set_xattr(&mut self, name: &[u8], value: &[u8]) {
        if let Some(x) = self.xattrs.iter_mut().find(|x| &*x.name == name) {
            x.value = value.into();
        } else {
            self.xattrs.push(Xattr {
                name: name.into(),
                value: value.into(),
            });
        }
    }
}

/// Why a tree operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The inode id does not exist.
    #[error("inode {0} does not exist")]
    NoSuchInode(InodeId),
    /// Entries can only be added to directories.
    #[error("inode {0} is not a directory")]
    NotADirectory(InodeId),
    /// Empty, `.`, `..`, containing `/` or NUL, or longer than 255 bytes.
    #[error("invalid file name {:?}", String::from_utf8_lossy(.0))]
    InvalidName(Vec<u8>),
    /// An entry with this name already exists in the directory.
    #[error("duplicate directory entry {:?}", String::from_utf8_lossy(.0))]
    Exists(Vec<u8>),
    /// Directories cannot be hard-linked (or linked twice).
    #[error("directory {:?} cannot be hard-linked", String::from_utf8_lossy(.0))]
    DirectoryHardlink(Vec<u8>),
}

/// Whether `name` is a valid single path component for the image.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

/// The filesystem tree: an arena of inodes, inode 0 the root directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    pub inodes: Vec<Inode>,
    /// Directory entries `(directory, name)` that are secondary hard links:
    /// the inode they name was defined by another entry (a dumpfile `@`
    /// line). The writer numbers and places an inode at its defining entry,
    /// as the reference does; entries not listed here are taken in
    /// breadth-first order, the first one defining. Sources without that
    /// information (directory scans, images) leave this empty.
    pub secondary_links: Vec<(InodeId, Box<[u8]>)>,
}

impl Tree {
    /// A tree with only a root directory (mode 0755, everything else zero).
    pub fn new() -> Tree {
        Tree::with_root(Inode::new(InodeKind::Directory(Vec::new()), 0o755))
    }

    /// A tree whose root is `root` (which must be a directory; its entries
    /// are discarded).
    pub fn with_root(mut root: Inode) -> Tree {
        root.kind = InodeKind::Directory(Vec::new());
        Tree {
            inodes: vec![root],
            secondary_links: Vec::new(),
        }
    }

    pub fn root(&self) -> &Inode {
        &self.inodes[ROOT]
    }

    pub fn root_mut(&mut self) -> &mut Inode {
        &mut self.inodes[ROOT]
    }

    pub fn get(&self, id: InodeId) -> Option<&Inode> {
        self.inodes.get(id)
    }

    pub fn get_mut(&mut self, id: InodeId) -> Option<&mut Inode> {
        self.inodes.get_mut(id)
    }

    /// Add an inode to the arena (not yet linked into any directory).
    pub fn push(&mut self, inode: Inode) -> InodeId {
        self.inodes.push(inode);
        self.inodes.len() - 1
    }

    /// The entries of directory `dir` (empty for non-directories).
    pub fn entries(&self, dir: InodeId) -> &[DirEntry] {
        match self.inodes.get(dir).map(|i| &i.kind) {
            Some(InodeKind::Directory(e)) => e,
            _ => &[],
        }
    }

    /// Look up `name` in directory `dir`.
    pub fn lookup(&self, dir: InodeId, name: &[u8]) -> Option<InodeId> {
        let entries = self.entries(dir);
        entries
            .binary_search_by(|e| (*e.name).cmp(name))
            .ok()
            .map(|i| entries[i].inode)
    }

    /// Link `child` into directory `dir` under `name`, keeping entries sorted.
    /// Appending names in increasing order is O(1).
    pub fn link(&mut self, dir: InodeId, name: &[u8], child: InodeId) -> Result<(), TreeError> {
        if !valid_name(name) {
            return Err(TreeError::InvalidName(name.to_vec()));
        }
        if child >= self.inodes.len() {
            return Err(TreeError::NoSuchInode(child));
        }
        if child == ROOT {
            return Err(TreeError::DirectoryHardlink(name.to_vec()));
        }
        let entries = match self.inodes.get_mut(dir).map(|i| &mut i.kind) {
            Some(InodeKind::Directory(e)) => e,
            Some(_) => return Err(TreeError::NotADirectory(dir)),
            None => return Err(TreeError::NoSuchInode(dir)),
        };
        let pos = match entries.last() {
            Some(last) if *last.name < *name => entries.len(),
            None => 0,
            Some(_) => match entries.binary_search_by(|e| (*e.name).cmp(name)) {
                Ok(_) => return Err(TreeError::Exists(name.to_vec())),
                Err(pos) => pos,
            },
        };
        entries.insert(
            pos,
            DirEntry {
                name: name.into(),
                inode: child,
            },
        );
        Ok(())
    }

    /// Add `inode` and link it into `dir` under `name`.
    pub fn add(&mut self, dir: InodeId, name: &[u8], inode: Inode) -> Result<InodeId, TreeError> {
        let id = self.push(inode);
        match self.link(dir, name, id) {
            Ok(()) => Ok(id),
            Err(e) => {
                self.inodes.pop();
                Err(e)
            }
        }
    }

    /// Number of directory entries naming each inode (the root counts 1).
    pub fn reference_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.inodes.len()];
        if let Some(c) = counts.get_mut(ROOT) {
            *c = 1;
        }
        for inode in &self.inodes {
            if let InodeKind::Directory(entries) = &inode.kind {
                for e in entries {
                    if let Some(c) = counts.get_mut(e.inode) {
                        *c = c.saturating_add(1);
                    }
                }
            }
        }
        counts
    }

    /// Check the structural invariants: every entry names an existing inode,
    /// names are valid, sorted and unique, directories are named exactly once
    /// (root never), and every directory is reachable from the root.
    pub fn validate(&self) -> Result<(), TreeError> {
        if !self.inodes.first().is_some_and(|r| r.kind.is_dir()) {
            return Err(TreeError::NotADirectory(ROOT));
        }
        let counts = self.reference_counts();
        for inode in &self.inodes {
            if let InodeKind::Directory(entries) = &inode.kind {
                let mut prev: Option<&[u8]> = None;
                for e in entries {
                    if !valid_name(&e.name) {
                        return Err(TreeError::InvalidName(e.name.to_vec()));
                    }
                    if prev.is_some_and(|p| p >= &*e.name) {
                        return Err(TreeError::Exists(e.name.to_vec()));
                    }
                    prev = Some(&e.name);
                    let child = self
                        .inodes
                        .get(e.inode)
                        .ok_or(TreeError::NoSuchInode(e.inode))?;
                    if child.kind.is_dir() && (e.inode == ROOT || counts[e.inode] != 1) {
                        return Err(TreeError::DirectoryHardlink(e.name.to_vec()));
                    }
                }
            }
        }
        // Reachability: a directory named once but only from an unreachable
        // cycle would otherwise slip through.
        let mut seen = vec![false; self.inodes.len()];
        let mut stack = vec![ROOT];
        seen[ROOT] = true;
        while let Some(d) = stack.pop() {
            for e in self.entries(d) {
                if !seen[e.inode] {
                    seen[e.inode] = true;
                    if self.inodes[e.inode].kind.is_dir() {
                        stack.push(e.inode);
                    }
                }
            }
        }
        for (id, inode) in self.inodes.iter().enumerate() {
            if inode.kind.is_dir() && !seen[id] {
                return Err(TreeError::NoSuchInode(id));
            }
        }
        Ok(())
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Inode {
        Inode::new(InodeKind::Regular(RegularFile::default()), 0o644)
    }

    #[test]
    fn link_keeps_entries_sorted_and_unique() {
        let mut t = Tree::new();
        t.add(ROOT, b"b", file()).unwrap();
        t.add(ROOT, b"a", file()).unwrap();
        t.add(ROOT, b"c", file()).unwrap();
        let names: Vec<&[u8]> = t.entries(ROOT).iter().map(|e| &*e.name).collect();
        assert_eq!(names, vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(
            t.add(ROOT, b"b", file()),
            Err(TreeError::Exists(b"b".to_vec()))
        );
        assert_eq!(
            t.inodes.len(),
            4,
            "failed add must not leave an inode behind"
        );
        assert_eq!(t.lookup(ROOT, b"c"), Some(3));
        assert_eq!(t.lookup(ROOT, b"d"), None);
    }

    #[test]
    fn invalid_names_are_refused() {
        let mut t = Tree::new();
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
            assert!(matches!(
                t.add(ROOT, bad, file()),
                Err(TreeError::InvalidName(_))
            ));
        }
        assert!(t.add(ROOT, &[b'x'; 255], file()).is_ok());
    }

    #[test]
    fn hardlinks_share_inodes_directories_cannot() {
        let mut t = Tree::new();
        let f = t.add(ROOT, b"f", file()).unwrap();
        t.link(ROOT, b"g", f).unwrap();
        assert_eq!(t.reference_counts()[f], 2);
        let d = t
            .add(ROOT, b"d", Inode::new(InodeKind::Directory(vec![]), 0o755))
            .unwrap();
        t.validate().unwrap();
        t.link(ROOT, b"e", d).unwrap();
        assert!(matches!(t.validate(), Err(TreeError::DirectoryHardlink(_))));
        assert!(t.link(ROOT, b"r", ROOT).is_err());
    }

    #[test]
    fn mode_combines_type_and_permissions() {
        let i = Inode::new(InodeKind::Symlink(b"x".to_vec().into()), 0o777);
        assert_eq!(i.mode(), 0o120777);
        assert!(InodeKind::CharDevice(0).is_whiteout());
        assert!(!InodeKind::CharDevice(1).is_whiteout());
    }
}
