//! The model as a composefs-rs tree, built through the crate's public API,
//! and composefs-rs's images of it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use composefs::erofs::format::FormatVersion;
use composefs::erofs::writer::{mkfs_erofs_versioned, ValidatedFileSystem};
use composefs::fsverity::{FsVerityHashValue, Sha256HashValue};
use composefs::generic_tree::{LeafContent, LeafId, Stat};
use composefs::tree::{Directory, FileSystem, Inode, RegularFile};

use crate::model::{hex, Content, Kind, Meta, Model};

type Fs = FileSystem<Sha256HashValue>;

fn stat(m: &Meta) -> Stat {
    let mut xattrs = BTreeMap::new();
    for (k, v) in &m.xattrs {
        xattrs.insert(
            Box::from(OsStr::from_bytes(k)),
            v.clone().into_boxed_slice(),
        );
    }
    Stat {
        st_mode: m.perm,
        st_uid: m.uid,
        st_gid: m.gid,
        st_mtim_sec: m.mtime_sec as i64,
        st_mtim_nsec: m.mtime_nsec,
        xattrs,
    }
}

fn object(d: &[u8; 32]) -> Sha256HashValue {
    Sha256HashValue::from_hex(hex(d)).expect("64 hex digits")
}

fn leaf_content(k: &Kind) -> LeafContent<RegularFile<Sha256HashValue>> {
    match k {
        Kind::File(Content::Inline { data, .. }) => {
            LeafContent::Regular(RegularFile::Inline(data.clone().into_boxed_slice()))
        }
        Kind::File(Content::External {
            size,
            object: o,
            verity: true,
        }) => LeafContent::Regular(RegularFile::External(object(o), *size)),
        Kind::File(Content::External {
            size,
            object: o,
            verity: false,
        }) => LeafContent::Regular(RegularFile::ExternalNoVerity(object(o), *size)),
        Kind::File(Content::Sparse { size }) => LeafContent::Regular(RegularFile::Sparse(*size)),
        Kind::Symlink(t) => LeafContent::Symlink(Box::from(OsStr::from_bytes(t))),
        Kind::Chr(r) => LeafContent::CharacterDevice(u64::from(*r)),
        Kind::Blk(r) => LeafContent::BlockDevice(u64::from(*r)),
        Kind::Fifo => LeafContent::Fifo,
        Kind::Sock => LeafContent::Socket,
        Kind::Dir(_) => unreachable!("directories are not leaves"),
    }
}

/// Build the composefs-rs tree for `m`: one leaf per model leaf (shared by
/// all its entries: hard links), directories nested.
pub fn filesystem(m: &Model) -> Fs {
    let mut fs = Fs::new(stat(&m.nodes[0].meta));
    let mut leaf_of: Vec<Option<LeafId>> = vec![None; m.nodes.len()];
    let root = build_dir(m, 0, &mut fs, &mut leaf_of);
    fs.root = root;
    fs
}

fn build_dir(
    m: &Model,
    id: usize,
    fs: &mut Fs,
    leaf_of: &mut Vec<Option<LeafId>>,
) -> Directory<Sha256HashValue> {
    let mut dir = Directory::new(stat(&m.nodes[id].meta));
    for (name, child) in m.entries(id) {
        let node = &m.nodes[*child];
        let inode = if matches!(node.kind, Kind::Dir(_)) {
            Inode::Directory(Box::new(build_dir(m, *child, fs, leaf_of)))
        } else {
            let leaf = match leaf_of[*child] {
                Some(l) => l,
                None => {
                    let l = fs.push_leaf(stat(&node.meta), leaf_content(&node.kind));
                    leaf_of[*child] = Some(l);
                    l
                }
            };
            Inode::leaf(leaf)
        };
        dir.insert(OsStr::from_bytes(name), inode);
    }
    dir
}

pub fn image(fs: Fs, version: FormatVersion) -> Result<Vec<u8>, String> {
    let v = ValidatedFileSystem::new(fs)
        .map_err(|e| format!("composefs-rs refused the tree: {e:#}"))?;
    Ok(mkfs_erofs_versioned(&v, version).into_vec())
}

/// composefs-rs's own dumpfile reader, for trees within its input limits.
pub fn filesystem_from_dumpfile(text: &str) -> Result<Fs, String> {
    composefs::dumpfile::dumpfile_to_filesystem::<Sha256HashValue>(text)
        .map_err(|e| format!("composefs-rs could not read the dumpfile: {e:#}"))
}
