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
//! - The walk (readdir + `fstatat` relative to each directory) is
//!   single-threaded; everything else about a non-directory (content of
//!   small files, fs-verity digest and store copy of large ones, symlink
//!   target, xattrs read through the already-open fd where there is one)
//!   runs on `threads` workers (default: all cores) fed through a queue
//!   while the walk goes on, so stat calls overlap hashing (profiled on
//!   /usr/share: the walk alone was a fifth of the wall time when it came
//!   first). Files of 64 MiB or more are hashed afterwards one at a time
//!   with the multi-core Merkle hasher. Memory is the tree plus one path per
//!   file; no file data is held beyond 64 bytes.
//! - Any error (unreadable file, file changed size while reading, store
//!   failure) stops the scan and names the path.
//! - [`scan_directory_cached`] is the incremental variant: a regular file
//!   over 64 bytes whose [`FileKey`] (from the walk's own `statx`) has a
//!   reusable entry in the [`DigestCache`] gets that digest without being
//!   opened, provided, with a store batch, that its object is already in the
//!   store; every other file is read as above. It returns the
//!   [`ScanRecord`] the next cache is made from (see
//!   [`crate::image::digest_cache`] for the key and the racy-timestamp rule).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::digest::{Digest, HashAlgorithm};
use crate::image::digest_cache::{DigestCache, FileKey, Observed, ScanRecord, Stamp};
use crate::image::store::{Batch, StoreError};
use crate::image::tree::{
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
    /// fs-verity algorithm for external files (their object names and
    /// `trusted.overlay.metacopy`). SHA-256 unless asked otherwise.
    pub hash: HashAlgorithm,
}

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// An I/O error on `path`.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The source is not a directory.
    #[error("{path}: not a directory")]
    NotADirectory { path: PathBuf },
    /// A file changed size between `lstat` and reading it.
    #[error("{path}: file changed while it was read")]
    Changed { path: PathBuf },
    /// An xattr too long for the format.
    #[error(
        "{path}: xattr {:?} is too long for the image format",
        String::from_utf8_lossy(.name)
    )]
    XattrTooLong { path: PathBuf, name: Vec<u8> },
    /// The object store refused a file.
    #[error("{path}: cannot add to object store: {source}")]
    Store {
        path: PathBuf,
        source: Box<StoreError>,
    },
    /// The names on disk broke a tree invariant (should not happen). The
    /// field is not named `source`: this variant has no `source()`.
    #[error("{path}: {error}")]
    Tree { path: PathBuf, error: TreeError },
    /// `skip_xattrs` and `user_xattrs` together.
    #[error("--skip-xattrs and --user-xattrs cannot be combined")]
    ConflictingOptions,
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
    scan_inner(root, opts, store, None).map(|(tree, _)| tree)
}

/// [`scan_directory`] reusing the digests `cache` holds for unchanged files
/// (see the module docs). The record lists every regular file over 64
/// bytes with its key and digest, and when the scan started.
pub fn scan_directory_cached(
    root: &Path,
    opts: &ScanOptions,
    store: Option<&Batch>,
    cache: &DigestCache,
) -> Result<(Tree, ScanRecord), ScanError> {
    scan_inner(root, opts, store, Some(cache))
}

fn scan_inner(
    root: &Path,
    opts: &ScanOptions,
    store: Option<&Batch>,
    cache: Option<&DigestCache>,
) -> Result<(Tree, ScanRecord), ScanError> {
    // Before the first stat: the racy-timestamp rule measures from here.
    let started = Stamp::now();
    if opts.skip_xattrs && opts.user_xattrs {
        return Err(ScanError::ConflictingOptions);
    }
    let meta = fs::symlink_metadata(root).map_err(io_err(root))?;
    if !meta.is_dir() {
        return Err(ScanError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let mut root_inode = make_inode(&meta, opts);
    if !opts.skip_xattrs {
        root_inode.xattrs = read_xattrs(root, XattrSource::Path(root), opts.user_xattrs)?;
    }
    let mut tree = Tree::with_root(root_inode);
    let threads = worker_count(opts);
    // Everything but directories is finished by the workers (content,
    // digest, symlink target, xattrs) while the walk goes on: the walk's
    // readdir and stat calls overlap the hashing instead of preceding it.
    // With a cache: each regular file over 64 bytes with its key from the
    // walk's stat, in walk order (the next cache is made from them).
    let mut keyed: Vec<(InodeId, FileKey)> = Vec::new();
    // Files of LARGE_FILE or more run after the rest, one at a time, each
    // on all cores.
    let mut large: Vec<Found> = Vec::new();
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<ScanError>> = Mutex::new(None);
    let fail = |e: ScanError| {
        failed.store(true, Ordering::Relaxed);
        if let Ok(mut fe) = first_error.lock() {
            fe.get_or_insert(e);
        }
    };
    let (tx, rx) = std::sync::mpsc::channel::<Found>();
    let rx = Mutex::new(rx);
    let mut results: Vec<(InodeId, Finished)> = Vec::new();
    let walked = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    let mut buf = vec![0u8; 128 << 10];
                    loop {
                        let next = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => break,
                        };
                        // The walk hung up: nothing more to do.
                        let Ok(item) = next else { break };
                        if failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let cached = cache.zip(item.key.as_ref());
                        match finish_one(&item.path, &item.job, opts, store, &mut buf, cached) {
                            Ok(f) => mine.push((item.id, f)),
                            Err(e) => {
                                fail(e);
                                break;
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        let walked = walk(root, &mut tree, opts, cache.is_some(), &failed, |item| {
            if let Some(key) = item.key {
                keyed.push((item.id, key));
            }
            if matches!(item.job, Job::Hash(size) if size >= LARGE_FILE) {
                large.push(item);
            } else if tx.send(item).is_err() {
                // Every worker has stopped: one failed, its error is kept.
                failed.store(true, Ordering::Relaxed);
            }
        });
        drop(tx);
        for h in handles {
            match h.join() {
                Ok(v) => results.extend(v),
                Err(_) => fail(ScanError::Changed {
                    path: PathBuf::from("<worker panicked>"),
                }),
            }
        }
        walked
    });
    walked?;
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut buf = Vec::new();
    for item in &large {
        let cached = cache.zip(item.key.as_ref());
        let f = finish_one(&item.path, &item.job, opts, store, &mut buf, cached)?;
        results.push((item.id, f));
    }
    let (reused, hashed) = apply_results(&mut tree, results);
    let mut record = ScanRecord {
        started,
        reused,
        hashed,
        ..Default::default()
    };
    for (id, key) in keyed {
        if let InodeKind::Regular(RegularFile {
            digest: Some(digest),
            ..
        }) = tree.inodes[id].kind
        {
            record.files.push(Observed { key, digest });
        }
    }
    Ok((tree, record))
}

/// A non-directory the walk found: the workers' unit of work.
struct Found {
    id: InodeId,
    path: PathBuf,
    job: Job,
    key: Option<FileKey>,
}

fn worker_count(opts: &ScanOptions) -> usize {
    if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.threads
    }
    .clamp(1, 256)
}

/// Walk the tree below `root` (whose inode is the tree's root) depth first,
/// adding every entry to `tree` in sorted order per directory and reading
/// directory xattrs; every non-directory goes to `found`. Stops early (Ok)
/// once `failed` is set: a worker's error is the one reported.
fn walk(
    root: &Path,
    tree: &mut Tree,
    opts: &ScanOptions,
    want_keys: bool,
    failed: &AtomicBool,
    mut found: impl FnMut(Found),
) -> Result<(), ScanError> {
    let mut stack: Vec<(InodeId, PathBuf)> = vec![(ROOT, root.to_path_buf())];
    let mut names: Vec<(Vec<u8>, fs::Metadata)> = Vec::new();
    while let Some((dir_id, dir_path)) = stack.pop() {
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        names.clear();
        for entry in fs::read_dir(&dir_path).map_err(io_err(&dir_path))? {
            let entry = entry.map_err(io_err(&dir_path))?;
            let ft = entry.file_type().map_err(io_err(&entry.path()))?;
            if opts.skip_devices && (ft.is_block_device() || ft.is_char_device()) {
                continue;
            }
            // fstatat relative to the directory: no path walk.
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            names.push((entry.file_name().as_bytes().to_vec(), meta));
        }
        // Sorted insertion keeps Tree::link O(1) per entry.
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, meta) in names.drain(..) {
            let ft = meta.file_type();
            if opts.skip_devices && (ft.is_block_device() || ft.is_char_device()) {
                continue;
            }
            let path = dir_path.join(std::ffi::OsStr::from_bytes(&name));
            let mut inode = make_inode(&meta, opts);
            let is_dir = inode.kind.is_dir();
            if is_dir && !opts.skip_xattrs {
                inode.xattrs = read_xattrs(&path, XattrSource::Path(&path), opts.user_xattrs)?;
            }
            let job = job_of(&inode.kind);
            let id = tree
                .add(dir_id, &name, inode)
                .map_err(|error| ScanError::Tree {
                    path: path.clone(),
                    error,
                })?;
            if is_dir {
                stack.push((id, path));
            } else {
                let hashed = ft.is_file() && meta.len() > INLINE_THRESHOLD;
                let key = (want_keys && hashed).then(|| FileKey::of(&meta));
                found(Found { id, path, job, key });
            }
        }
    }
    Ok(())
}

/// The inode for `meta`, without xattrs, content or symlink target.
fn make_inode(meta: &fs::Metadata, opts: &ScanOptions) -> Inode {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        InodeKind::Directory(Vec::new())
    } else if ft.is_file() {
        InodeKind::Regular(RegularFile {
            size: meta.len(),
            inline: None,
            payload: None,
            digest: None,
        })
    } else if ft.is_symlink() {
        InodeKind::Symlink(Box::new([]))
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
    inode
}

/// What a worker found out about one non-directory entry.
#[derive(Default)]
struct Finished {
    xattrs: Vec<Xattr>,
    inline: Option<Box<[u8]>>,
    digest: Option<Digest>,
    target: Option<Box<[u8]>>,
    /// The digest came from the cache; the file was not opened.
    reused: bool,
}

enum Job {
    Empty,
    Small(u64),
    Hash(u64),
    Symlink,
    Other,
}

fn job_of(kind: &InodeKind) -> Job {
    match kind {
        InodeKind::Regular(r) if r.size == 0 => Job::Empty,
        InodeKind::Regular(r) if r.size <= INLINE_THRESHOLD => Job::Small(r.size),
        InodeKind::Regular(r) => Job::Hash(r.size),
        InodeKind::Symlink(_) => Job::Symlink,
        _ => Job::Other,
    }
}

/// Open a file `lstat` found regular. `O_NOFOLLOW` and `O_NONBLOCK`: one
/// swapped for a symlink or a FIFO since then fails instead of being followed
/// or blocking the scan forever (the size check catches other swaps).
fn open_regular(path: &Path) -> Result<File, ScanError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err(path))
}

/// Read exactly `size` bytes (fails if the file is now shorter or longer).
fn read_exact_size(f: &mut File, path: &Path, size: u64) -> Result<Box<[u8]>, ScanError> {
    let mut buf = vec![0u8; size as usize + 1];
    let mut got = 0;
    while got < buf.len() {
        let n = f.read(&mut buf[got..]).map_err(io_err(path))?;
        got += n;
        // A short read of a regular file means end of file; the extra byte
        // of room catches a file that grew.
        if n == 0 || got as u64 == size {
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

/// fs-verity digest of an open file read with `pread` into `buf`.
fn hash_open(
    alg: HashAlgorithm,
    f: &File,
    path: &Path,
    size: u64,
    buf: &mut [u8],
) -> Result<Digest, ScanError> {
    use std::os::unix::fs::FileExt;
    let mut h = crate::image::fsverity::MerkleHasher::new(alg);
    let mut off = 0u64;
    loop {
        let n = f.read_at(buf, off).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
        // A short read of a regular file is its end: skip the extra call.
        if n < buf.len() && off == size {
            break;
        }
    }
    if off != size {
        return Err(ScanError::Changed {
            path: path.to_path_buf(),
        });
    }
    Ok(h.finish())
}

/// The cache's digest for `key`, if it may be used: with a store batch,
/// only if its object is already there (counted as existing).
fn reusable(
    cache: Option<&DigestCache>,
    key: Option<&FileKey>,
    store: Option<&Batch>,
) -> Option<Digest> {
    let d = cache?.lookup(key?)?;
    match store {
        Some(b) if !b.add_existing(&d) => None,
        _ => Some(d),
    }
}

fn finish_one(
    path: &Path,
    job: &Job,
    opts: &ScanOptions,
    store: Option<&Batch>,
    buf: &mut [u8],
    cached: Option<(&DigestCache, &FileKey)>,
) -> Result<Finished, ScanError> {
    let mut out = Finished::default();
    let want_x = !opts.skip_xattrs;
    if let Job::Hash(_) = job {
        if let Some(d) = reusable(cached.map(|c| c.0), cached.map(|c| c.1), store) {
            out.digest = Some(d);
            out.reused = true;
            if want_x {
                out.xattrs = read_xattrs(path, XattrSource::Path(path), opts.user_xattrs)?;
            }
            return Ok(out);
        }
    }
    match job {
        Job::Small(size) | Job::Hash(size) => {
            let mut f = open_regular(path)?;
            if let Job::Small(_) = job {
                out.inline = Some(read_exact_size(&mut f, path, *size)?);
            } else {
                let d = if *size >= LARGE_FILE {
                    let len = f.metadata().map_err(io_err(path))?.len();
                    if len != *size {
                        return Err(ScanError::Changed {
                            path: path.to_path_buf(),
                        });
                    }
                    crate::image::fsverity::digest_file(opts.hash, &f).map_err(io_err(path))?
                } else {
                    hash_open(opts.hash, &f, path, *size, buf)?
                };
                if let Some(b) = store {
                    b.add_file(path, &d).map_err(|source| ScanError::Store {
                        path: path.to_path_buf(),
                        source: Box::new(source),
                    })?;
                }
                out.digest = Some(d);
            }
            if want_x {
                out.xattrs = read_xattrs(path, XattrSource::Fd(&f), opts.user_xattrs)?;
            }
        }
        Job::Symlink => {
            let t = fs::read_link(path).map_err(io_err(path))?;
            out.target = Some(t.as_os_str().as_bytes().into());
            if want_x {
                out.xattrs = read_xattrs(path, XattrSource::Path(path), opts.user_xattrs)?;
            }
        }
        Job::Empty | Job::Other => {
            if want_x {
                out.xattrs = read_xattrs(path, XattrSource::Path(path), opts.user_xattrs)?;
            }
        }
    }
    Ok(out)
}

/// Put what the workers found into the tree; returns how many digests were
/// reused from the cache and how many were computed.
fn apply_results(tree: &mut Tree, results: Vec<(InodeId, Finished)>) -> (u64, u64) {
    let (mut reused, mut hashed) = (0, 0);
    for (id, f) in results {
        if f.digest.is_some() {
            if f.reused {
                reused += 1;
            } else {
                hashed += 1;
            }
        }
        let inode = &mut tree.inodes[id];
        inode.xattrs = f.xattrs;
        match &mut inode.kind {
            InodeKind::Regular(r) => {
                r.inline = f.inline;
                if let Some(d) = f.digest {
                    r.payload = Some(
                        crate::layout::object_name(&d)
                            .into_bytes()
                            .into_boxed_slice(),
                    );
                    r.digest = Some(d);
                }
            }
            InodeKind::Symlink(t) => {
                if let Some(target) = f.target {
                    *t = target;
                }
            }
            _ => {}
        }
    }
    (reused, hashed)
}

/// Where to read xattrs from: an open file (no path walk) or a path
/// (symlinks, devices: `l*xattr`, never following).
#[derive(Clone, Copy)]
enum XattrSource<'a> {
    Fd(&'a File),
    Path(&'a Path),
}

impl XattrSource<'_> {
    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Fd(f) => rustix::fs::flistxattr(f, buf),
            XattrSource::Path(p) => rustix::fs::llistxattr(*p, buf),
        }
    }

    fn get(&self, name: &std::ffi::CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Fd(f) => rustix::fs::fgetxattr(f, name, buf),
            XattrSource::Path(p) => rustix::fs::lgetxattr(*p, name, buf),
        }
    }
}

/// Largest xattr name list and value the kernel hands out
/// (`XATTR_LIST_MAX`, `XATTR_SIZE_MAX`: 64 KiB each).
const KERNEL_XATTR_MAX: usize = 65536;

/// Call `read` with a buffer that doubles from `start` bytes on ERANGE, up
/// to [`KERNEL_XATTR_MAX`]. (A size query with an empty buffer is not used:
/// the answer can be stale by the next call, and rustix clamps the count it
/// returns for a slice to the slice's length.) `Ok(None)`: still ERANGE at
/// the kernel's maximum.
fn read_growing(
    start: usize,
    mut read: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; start];
    loop {
        match read(&mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < KERNEL_XATTR_MAX => {
                let grown = (buf.len() * 2).min(KERNEL_XATTR_MAX);
                buf.resize(grown, 0);
            }
            Err(rustix::io::Errno::RANGE) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

fn read_xattrs(path: &Path, src: XattrSource, user_only: bool) -> Result<Vec<Xattr>, ScanError> {
    let err = |e: rustix::io::Errno| ScanError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(e),
    };
    let names = match read_growing(512, |buf| src.list(buf)) {
        Ok(Some(names)) => names,
        Ok(None) => return Err(err(rustix::io::Errno::RANGE)),
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if user_only && !name.starts_with(b"user.") {
            continue;
        }
        let too_long = || ScanError::XattrTooLong {
            path: path.to_path_buf(),
            name: name.to_vec(),
        };
        if name.len() > MAX_XATTR_NAME_LEN {
            return Err(too_long());
        }
        let cname = std::ffi::CString::new(name).map_err(|_| too_long())?;
        let value = match read_growing(256, |buf| src.get(cname.as_c_str(), buf)) {
            Ok(Some(v)) => v,
            Ok(None) => return Err(too_long()),
            // Removed between listing and reading: it is not there.
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(err(e)),
        };
        if value.len() > MAX_XATTR_VALUE_LEN {
            return Err(too_long());
        }
        out.push(Xattr {
            name: name.into(),
            value: value.into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_sources_are_the_io_and_store_errors_only() {
        use std::error::Error;
        let path = PathBuf::from("/s");
        let io = || io::Error::from_raw_os_error(2);
        let io_err = ScanError::Io {
            path: path.clone(),
            source: io(),
        };
        assert_eq!(io_err.source().unwrap().to_string(), io().to_string());
        let store = StoreError::Publish {
            path: path.clone(),
            source: io(),
        };
        let message = store.to_string();
        let scan_err = ScanError::Store {
            path: path.clone(),
            source: Box::new(store),
        };
        let source = scan_err.source().unwrap();
        assert_eq!(source.to_string(), message);
        assert!(source.source().is_some());
        let tree_err = ScanError::Tree {
            path: path.clone(),
            error: TreeError::NoSuchInode(1),
        };
        assert!(tree_err.source().is_none());
        assert!(ScanError::Changed { path }.source().is_none());
        assert!(ScanError::ConflictingOptions.source().is_none());
    }

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
                let d = crate::image::fsverity::digest_bytes(HashAlgorithm::Sha256, &[b'y'; 65]);
                assert_eq!(r.digest, Some(d));
                assert_eq!(
                    r.payload.as_deref(),
                    Some(crate::layout::object_name(&d).as_bytes())
                );
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

    /// Workers finish entries in any order; the tree must not depend on
    /// that: same inodes in the same order, same image, whatever the thread
    /// count.
    #[test]
    fn tree_does_not_depend_on_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let wide = p.join("wide");
        fs::create_dir(&wide).unwrap();
        for i in 0..200 {
            let data = vec![(i % 251) as u8; i * 37 % 9000];
            fs::write(wide.join(format!("f{i:04}")), data).unwrap();
        }
        let mut deep = p.to_path_buf();
        for d in 0..12 {
            deep = deep.join(format!("d{d}"));
            fs::create_dir(&deep).unwrap();
            fs::write(deep.join("x"), vec![b'z'; 100 + d]).unwrap();
            std::os::unix::fs::symlink(format!("../t{d}"), deep.join("l")).unwrap();
        }
        let image = |threads| {
            let opts = ScanOptions {
                threads,
                ..Default::default()
            };
            let tree = scan_directory(p, &opts, None).unwrap();
            let bytes = crate::image::erofs::write_image(&tree, &Default::default()).unwrap();
            (tree, bytes)
        };
        let (one, one_bytes) = image(1);
        assert_eq!(one.inodes.len(), 1 + 1 + 200 + 12 * 3);
        for threads in [2, 3, 8] {
            let (t, bytes) = image(threads);
            assert_eq!(t.inodes, one.inodes, "threads={threads}");
            assert!(bytes == one_bytes, "threads={threads}: image differs");
        }
        let wide_id = one.lookup(ROOT, b"wide").unwrap();
        let f7 = one.lookup(wide_id, b"f0007").unwrap();
        match &one.inodes[f7].kind {
            InodeKind::Regular(r) => assert_eq!(
                r.digest,
                Some(crate::image::fsverity::digest_bytes(
                    HashAlgorithm::Sha256,
                    &vec![7u8; 7 * 37]
                ))
            ),
            k => panic!("{k:?}"),
        }
    }

    /// sysfs files claim 4096 bytes and hold fewer: a worker's error (the
    /// size changed, or a write-only attribute refusing the open) stops the
    /// whole scan and names a path below the root, instead of a tree.
    #[test]
    fn an_error_in_a_worker_stops_the_scan_and_names_the_file() {
        let root = Path::new("/sys/kernel/mm");
        assert!(root.is_dir(), "this test needs sysfs at /sys");
        for threads in [1, 2, 4] {
            let opts = ScanOptions {
                threads,
                skip_xattrs: true,
                ..Default::default()
            };
            match scan_directory(root, &opts, None) {
                Err(ScanError::Changed { path }) | Err(ScanError::Io { path, .. }) => {
                    assert!(path.starts_with(root) && path != root, "{path:?}")
                }
                other => panic!("threads={threads}: {:?}", other.map(|t| t.inodes.len())),
            }
        }
    }

    /// A file the walk saw as regular but which became a FIFO or a symlink
    /// before a worker opened it: an error, never a hang or a followed link.
    #[test]
    fn a_regular_file_swapped_for_a_fifo_or_symlink_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let link = dir.path().join("link");
        fs::write(dir.path().join("real"), vec![3u8; 100]).unwrap();
        std::os::unix::fs::symlink("real", &link).unwrap();
        let opts = ScanOptions::default();
        let mut buf = vec![0u8; 4096];
        for job in [Job::Small(10), Job::Hash(100)] {
            match finish_one(&fifo, &job, &opts, None, &mut buf, None) {
                // Small: the read finds no data (size changed); large: pread
                // on a pipe is ESPIPE.
                Err(ScanError::Changed { path }) | Err(ScanError::Io { path, .. }) => {
                    assert_eq!(path, fifo)
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("a FIFO was read as a file"),
            }
            match finish_one(&link, &job, &opts, None, &mut buf, None) {
                Err(ScanError::Io { path, source }) => {
                    assert_eq!(path, link);
                    assert_eq!(source.raw_os_error(), Some(libc::ELOOP));
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("a symlink was followed"),
            }
        }
    }
}
