//! Reading a directory tree from disk into a [`Tree`], the way `mkcomposefs` does.
//!
//! Contract (the reference's directory semantics):
//! - Metadata comes from `lstat` (symlinks are never followed): permission
//!   bits, uid, gid, `st_rdev` for devices, mtime with nanoseconds (zero with
//!   `use_epoch`). Link counts are recorded as 1 and hard links on disk
//!   become separate inodes, as the reference does for directory input.
//! - Xattrs are read with `llistxattr`/`lgetxattr` (so ACLs appear as
//!   `system.posix_acl_*`), all of them, only `user.*` with `user_xattrs`,
//!   or none with `skip_xattrs`. Names over 255 bytes or values over 65535
//!   bytes are refused.
//! - Character and block devices are left out with `skip_devices`.
//! - Regular files of 1..=64 bytes are stored inline. Larger files get their
//!   fs-verity digest (SHA-256) and the payload `XX/<rest of hex>`; with a
//!   store batch, their content is added to it under that digest.
//! - The walk is single-threaded (it is syscall-bound); hashing runs on
//!   `threads` workers (default: all cores) pulling from one work list, and
//!   files of 64 MiB or more are hashed afterwards one at a time with the
//!   multi-core Merkle hasher. Memory is the tree plus one path per file
//!   to hash; no file data is held beyond 64 bytes.
//! - Any error (unreadable file, file changed size while reading, store
//!   failure) stops the scan and names the path.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::digest::{Digest, HashAlgorithm};
use crate::store::{Batch, StoreError};
use crate::tree::{
    Inode, InodeId, InodeKind, RegularFile, Timespec, Tree, TreeError, Xattr, INLINE_THRESHOLD,
    MAX_XATTR_NAME_LEN, MAX_XATTR_VALUE_LEN, ROOT,
};

/// Options for [`scan_directory`].
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    pub skip_xattrs: bool,
    pub user_xattrs: bool,
    pub skip_devices: bool,
    pub use_epoch: bool,
    /// Hashing threads; 0 = all cores.
    pub threads: usize,
}

/// Why a scan failed.
#[derive(Debug)]
pub enum ScanError {
    /// An I/O error on `path`.
    Io { path: PathBuf, source: io::Error },
    /// The source is not a directory.
    NotADirectory { path: PathBuf },
    /// A file changed size between `lstat` and reading it.
    Changed { path: PathBuf },
    /// An xattr too long for the format.
    XattrTooLong { path: PathBuf, name: Vec<u8> },
    /// The object store refused a file.
    Store {
        path: PathBuf,
        source: Box<StoreError>,
    },
    /// The names on disk broke a tree invariant (should not happen).
    Tree { path: PathBuf, source: TreeError },
    /// `skip_xattrs` and `user_xattrs` together.
    ConflictingOptions,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ScanError::NotADirectory { path } => write!(f, "{}: not a directory", path.display()),
            ScanError::Changed { path } => {
                write!(f, "{}: file changed while it was read", path.display())
            }
            ScanError::XattrTooLong { path, name } => write!(
                f,
                "{}: xattr {:?} is too long for the image format",
                path.display(),
                String::from_utf8_lossy(name)
            ),
            ScanError::Store { path, source } => {
                write!(
                    f,
                    "{}: cannot add to object store: {source}",
                    path.display()
                )
            }
            ScanError::Tree { path, source } => write!(f, "{}: {source}", path.display()),
            ScanError::ConflictingOptions => {
                write!(f, "--skip-xattrs and --user-xattrs cannot be combined")
            }
        }
    }
}

impl std::error::Error for ScanError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ScanError::Io { source, .. } => Some(source),
            ScanError::Store { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Files at least this large are hashed one at a time with the multi-core
/// Merkle hasher instead of by one pool worker.
const LARGE_FILE: u64 = 64 << 20;

/// Scan `root` into a tree. With `store`, every file larger than 64 bytes is
/// added to the batch (the caller commits it).
pub fn scan_directory(
    root: &Path,
    opts: &ScanOptions,
    store: Option<&Batch>,
) -> Result<Tree, ScanError> {
    if opts.skip_xattrs && opts.user_xattrs {
        return Err(ScanError::ConflictingOptions);
    }
    let meta = fs::symlink_metadata(root).map_err(io_err(root))?;
    if !meta.is_dir() {
        return Err(ScanError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let mut tree = Tree::with_root(load_inode(root, &meta, opts)?.0);
    let mut work: Vec<(InodeId, PathBuf)> = Vec::new();
    // Depth-first walk with an explicit stack of (dir inode, dir path).
    let mut stack: Vec<(InodeId, PathBuf)> = vec![(ROOT, root.to_path_buf())];
    let mut names: Vec<(Vec<u8>, fs::FileType)> = Vec::new();
    while let Some((dir_id, dir_path)) = stack.pop() {
        names.clear();
        for entry in fs::read_dir(&dir_path).map_err(io_err(&dir_path))? {
            let entry = entry.map_err(io_err(&dir_path))?;
            let ft = entry.file_type().map_err(io_err(&entry.path()))?;
            names.push((entry.file_name().as_bytes().to_vec(), ft));
        }
        // Sorted insertion keeps Tree::link O(1) per entry.
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, ft) in names.drain(..) {
            if opts.skip_devices && (ft.is_block_device() || ft.is_char_device()) {
                continue;
            }
            let path = dir_path.join(std::ffi::OsStr::from_bytes(&name));
            let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
            if opts.skip_devices
                && (meta.file_type().is_block_device() || meta.file_type().is_char_device())
            {
                continue;
            }
            let (inode, hash) = load_inode(&path, &meta, opts)?;
            let is_dir = inode.kind.is_dir();
            let id = tree
                .add(dir_id, &name, inode)
                .map_err(|source| ScanError::Tree {
                    path: path.clone(),
                    source,
                })?;
            if is_dir {
                stack.push((id, path));
            } else if hash {
                work.push((id, path));
            }
        }
    }
    hash_files(&mut tree, work, opts, store)?;
    Ok(tree)
}

/// Build the inode for `path`; the bool says whether it still needs hashing.
fn load_inode(
    path: &Path,
    meta: &fs::Metadata,
    opts: &ScanOptions,
) -> Result<(Inode, bool), ScanError> {
    let ft = meta.file_type();
    let mut needs_hash = false;
    let kind = if ft.is_dir() {
        InodeKind::Directory(Vec::new())
    } else if ft.is_file() {
        let size = meta.len();
        let inline = if size > 0 && size <= INLINE_THRESHOLD {
            Some(read_small(path, size)?)
        } else {
            needs_hash = size > INLINE_THRESHOLD;
            None
        };
        InodeKind::Regular(RegularFile {
            size,
            inline,
            payload: None,
            digest: None,
        })
    } else if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io_err(path))?;
        InodeKind::Symlink(target.as_os_str().as_bytes().into())
    } else if ft.is_char_device() {
        InodeKind::CharDevice(meta.rdev())
    } else if ft.is_block_device() {
        InodeKind::BlockDevice(meta.rdev())
    } else if ft.is_fifo() {
        InodeKind::Fifo
    } else {
        InodeKind::Socket
    };
    let mut inode = Inode::new(kind, meta.mode());
    inode.uid = meta.uid();
    inode.gid = meta.gid();
    if !opts.use_epoch {
        inode.mtime = Timespec {
            sec: meta.mtime(),
            nsec: meta.mtime_nsec() as u32,
        };
    }
    if !opts.skip_xattrs {
        inode.xattrs = read_xattrs(path, opts.user_xattrs)?;
    }
    Ok((inode, needs_hash))
}

fn read_small(path: &Path, size: u64) -> Result<Box<[u8]>, ScanError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0u8; size as usize + 1];
    let mut got = 0;
    loop {
        let n = f.read(&mut buf[got..]).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        got += n;
        if got == buf.len() {
            break;
        }
    }
    if got as u64 != size {
        return Err(ScanError::Changed {
            path: path.to_path_buf(),
        });
    }
    buf.truncate(got);
    Ok(buf.into_boxed_slice())
}

fn read_xattrs(path: &Path, user_only: bool) -> Result<Vec<Xattr>, ScanError> {
    let err = |e: rustix::io::Errno| ScanError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(e),
    };
    let mut list = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr(path, &mut [0u8; 0][..]).map_err(err)?;
                list.resize(need.max(list.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        }
    };
    let mut out = Vec::new();
    let mut value = vec![0u8; 256];
    for name in list[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if user_only && !name.starts_with(b"user.") {
            continue;
        }
        if name.len() > MAX_XATTR_NAME_LEN {
            return Err(ScanError::XattrTooLong {
                path: path.to_path_buf(),
                name: name.to_vec(),
            });
        }
        let cname = std::ffi::CString::new(name).map_err(|_| ScanError::XattrTooLong {
            path: path.to_path_buf(),
            name: name.to_vec(),
        })?;
        let n = loop {
            match rustix::fs::lgetxattr(path, cname.as_c_str(), &mut value[..]) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => {
                    let need = rustix::fs::lgetxattr(path, cname.as_c_str(), &mut [0u8; 0][..])
                        .map_err(err)?;
                    if need > MAX_XATTR_VALUE_LEN {
                        return Err(ScanError::XattrTooLong {
                            path: path.to_path_buf(),
                            name: name.to_vec(),
                        });
                    }
                    value.resize(need.max(value.len() * 2).min(MAX_XATTR_VALUE_LEN), 0);
                }
                Err(e) => return Err(err(e)),
            }
        };
        out.push(Xattr {
            name: name.into(),
            value: value[..n].into(),
        });
    }
    Ok(out)
}

fn hash_one(path: &Path, expected_size: u64, large: bool) -> Result<Digest, ScanError> {
    let f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    if len != expected_size {
        return Err(ScanError::Changed {
            path: path.to_path_buf(),
        });
    }
    let d = if large {
        crate::fsverity::digest_file(HashAlgorithm::Sha256, &f)
    } else {
        crate::fsverity::digest_file_serial(HashAlgorithm::Sha256, &f)
    };
    d.map_err(io_err(path))
}

fn hash_files(
    tree: &mut Tree,
    work: Vec<(InodeId, PathBuf)>,
    opts: &ScanOptions,
    store: Option<&Batch>,
) -> Result<(), ScanError> {
    let size_of = |tree: &Tree, id: InodeId| match &tree.inodes[id].kind {
        InodeKind::Regular(r) => r.size,
        _ => 0,
    };
    let (large, small): (Vec<_>, Vec<_>) = work
        .into_iter()
        .map(|(id, p)| (id, size_of(tree, id), p))
        .partition(|(_, size, _)| *size >= LARGE_FILE);
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.threads
    }
    .clamp(1, 256);

    let results: Vec<Mutex<Option<Digest>>> = (0..small.len()).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<ScanError>> = Mutex::new(None);
    let add = |path: &Path, d: &Digest| -> Result<(), ScanError> {
        if let Some(b) = store {
            b.add_file(path, d).map_err(|source| ScanError::Store {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        }
        Ok(())
    };
    std::thread::scope(|s| {
        for _ in 0..threads.min(small.len().max(1)) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((_, size, path)) = small.get(i) else {
                    return;
                };
                let r = hash_one(path, *size, false).and_then(|d| add(path, &d).map(|()| d));
                match r {
                    Ok(d) => {
                        if let Ok(mut slot) = results[i].lock() {
                            *slot = Some(d);
                        }
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut fe) = first_error.lock() {
                            fe.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let set = |tree: &mut Tree, id: InodeId, d: Digest| {
        if let InodeKind::Regular(r) = &mut tree.inodes[id].kind {
            r.payload = Some(d.object_path().into_bytes().into_boxed_slice());
            r.digest = Some(d);
        }
    };
    for ((id, _, path), slot) in small.iter().zip(results) {
        let d = slot
            .into_inner()
            .ok()
            .flatten()
            .ok_or_else(|| ScanError::Changed { path: path.clone() })?;
        set(tree, *id, d);
    }
    for (id, size, path) in &large {
        let d = hash_one(path, *size, true)?;
        add(path, &d)?;
        set(tree, *id, d);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_types_inline_threshold_and_digests() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::write(p.join("empty"), b"").unwrap();
        fs::write(p.join("small"), vec![b'x'; 64]).unwrap();
        fs::write(p.join("big"), vec![b'y'; 65]).unwrap();
        fs::create_dir(p.join("sub")).unwrap();
        std::os::unix::fs::symlink("target/x", p.join("sub/link")).unwrap();
        let t = scan_directory(p, &ScanOptions::default(), None).unwrap();
        let get = |n: &[u8]| &t.inodes[t.lookup(ROOT, n).unwrap()];
        match &get(b"small").kind {
            InodeKind::Regular(r) => {
                assert_eq!(r.inline.as_deref(), Some(&[b'x'; 64][..]));
                assert!(r.digest.is_none());
            }
            k => panic!("{k:?}"),
        }
        match &get(b"big").kind {
            InodeKind::Regular(r) => {
                assert!(r.inline.is_none());
                let d = crate::fsverity::digest_bytes(HashAlgorithm::Sha256, &[b'y'; 65]);
                assert_eq!(r.digest, Some(d));
                assert_eq!(r.payload.as_deref(), Some(d.object_path().as_bytes()));
            }
            k => panic!("{k:?}"),
        }
        let sub = t.lookup(ROOT, b"sub").unwrap();
        let link = t.lookup(sub, b"link").unwrap();
        assert_eq!(
            t.inodes[link].kind,
            InodeKind::Symlink(b"target/x".to_vec().into())
        );
        let epoch = scan_directory(
            p,
            &ScanOptions {
                use_epoch: true,
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert!(epoch.inodes.iter().all(|i| i.mtime == Timespec::default()));
        assert!(matches!(
            scan_directory(&p.join("empty"), &ScanOptions::default(), None),
            Err(ScanError::NotADirectory { .. })
        ));
    }
}
