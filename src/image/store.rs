//! The crash-safe, content-addressed object store: `objects/XX/<rest of hex>`,
//! one regular file per distinct content, named by its fs-verity digest (the
//! composefs / composefs-rs layout, usable as an overlayfs data-only layer).
//!
//! Contract:
//! - An object visible under a digest name always has exactly that content,
//!   even after a crash or `SIGKILL` at any moment. Existing objects are never
//!   rewritten or replaced.
//! - The store computes the fs-verity digest of the bytes it writes itself, as
//!   it writes them, and compares it with the caller's digest: the caller's
//!   digest is a claim that is checked, never trusted. A mismatch fails closed
//!   with [`StoreError::DigestMismatch`] and nothing is published.
//! - [`Batch::add_bytes_hashed`] is the exception that proves the rule: it
//!   takes no digest from the caller, it computes it from the bytes it writes
//!   and returns it (one hashing pass for scanners that read files anyway).
//! - A [`Batch`] collects objects under temporary names inside the store
//!   (`objects/.tmp/<pid>-<n>/`, the same filesystem, so renames are atomic).
//!   [`Batch::commit`] makes them durable in one pass (`syncfs` on the store's
//!   filesystem: one journal commit instead of one `fsync` per object, which
//!   is what makes fresh stores fast), then publishes each under its digest
//!   name with `renameat2(RENAME_NOREPLACE)` (if the name already exists, the
//!   object is already there and the temporary is dropped), then `fsync`s the
//!   directories it changed so the names are durable too.
//! - A dropped (uncommitted) batch removes its temporaries. A batch that died
//!   with its process leaves a temporary directory; [`ObjectStore::open`]
//!   removes those whose owning process no longer exists.
//!
//! Kernel facts relied on:
//! - `rename` within one filesystem is atomic: the target name shows either
//!   nothing or the complete, already-synced file; `RENAME_NOREPLACE` fails
//!   with `EEXIST` instead of replacing (ext4, btrfs, xfs, tmpfs, f2fs).
//! - `syncfs(fd)` writes back and waits for all dirty data and metadata of
//!   the filesystem holding `fd` before it returns (since Linux 5.8 it also
//!   reports writeback errors). Without it, a delayed-allocation filesystem
//!   could make a rename durable before the data, leaving an empty or short
//!   file under a digest name after a power loss.

// A mismatch carries both digests by value for the caller to print; errors
// are rare, so the larger Result is not worth boxing for.
#![allow(clippy::result_large_err)]

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::digest::Digest;
use crate::image::fsverity::MerkleHasher;

/// Name of the directory (inside `objects/`) holding batches' temporaries.
/// It starts with a dot so no two-hex-digit object directory can collide.
pub const TEMP_DIR: &str = ".tmp";

/// Copy buffer size: large writes, but still cache-friendly for hashing.
const COPY_CHUNK: usize = 256 << 10;

/// Why a store operation failed. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating or opening the store or one of its directories.
    #[error("cannot open object store {path}: {source}")]
    OpenStore { path: PathBuf, source: io::Error },
    /// Opening or reading a source file to add.
    #[error("cannot read {path}: {source}")]
    ReadSource { path: PathBuf, source: io::Error },
    /// Creating or writing a temporary object.
    #[error("cannot write temporary object {path}: {source}")]
    WriteTemp { path: PathBuf, source: io::Error },
    /// The content's fs-verity digest is not the one the caller named.
    #[error(
        "content of {path} has fs-verity digest {}, expected {}",
        .found.to_composefs(),
        .expected.to_composefs()
    )]
    DigestMismatch {
        expected: Digest,
        found: Digest,
        path: PathBuf,
    },
    /// The durability pass (`syncfs` / `fsync`) failed: nothing published.
    #[error("cannot make objects durable in {path}: {source}")]
    Sync { path: PathBuf, source: io::Error },
    /// Publishing a temporary under its digest name failed.
    #[error("cannot publish object {path}: {source}")]
    Publish { path: PathBuf, source: io::Error },
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// An opened object store directory.
pub struct ObjectStore {
    root: PathBuf,
    dir: OwnedFd,
}

/// What a committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Objects newly published by this batch.
    pub added: u64,
    /// Objects that were already in the store (or added twice to the batch).
    pub existing: u64,
    /// Content bytes of the newly published objects.
    pub bytes_added: u64,
}

impl ObjectStore {
    /// Open (creating if needed) the store at `objects_dir`, and remove
    /// temporaries left behind by batches whose process has died.
    pub fn open(objects_dir: &Path) -> Result<ObjectStore, StoreError> {
        let err = |source| StoreError::OpenStore {
            path: objects_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(objects_dir).map_err(err)?;
        let dir = rustix::fs::open(
            objects_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(io_err(e)))?;
        let store = ObjectStore {
            root: objects_dir.to_owned(),
            dir,
        };
        store.clean_stale_temps()?;
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the object with this digest lives (whether or not it exists).
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.root.join(crate::layout::object_name(digest))
    }

    /// Whether a regular file exists under this digest's name.
    pub fn contains(&self, digest: &Digest) -> bool {
        rustix::fs::statat(
            &self.dir,
            crate::layout::object_name(digest),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
        .unwrap_or(false)
    }

    /// Start a batch of additions.
    pub fn batch(&self) -> Batch<'_> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Batch {
            store: self,
            temp_rel: PathBuf::from(TEMP_DIR).join(name),
            temp_ready: Mutex::new(false),
            next: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            claimed: Mutex::new(HashSet::new()),
            existing: AtomicU64::new(0),
        }
    }

    /// Remove `.tmp/<pid>-<n>` directories whose process is gone. A
    /// directory of a live process (another batch at work) is left alone.
    fn clean_stale_temps(&self) -> Result<(), StoreError> {
        let temp = self.root.join(TEMP_DIR);
        for path in stale_temp_dirs(&self.root)? {
            std::fs::remove_dir_all(&path)
                .or_else(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|source| StoreError::OpenStore { path, source })?;
        }
        // Empty now (nothing live): remove it too; harmless if in use.
        let _ = std::fs::remove_dir(&temp);
        Ok(())
    }
}

/// The batch directories under `objects_dir` (`.tmp/<pid>-<n>`) whose
/// process no longer exists: what [`ObjectStore::open`] removes and what
/// `sealctl gc` counts as garbage. A name that is not `<pid>-<n>` is stale
/// too; this process's own batches are live (they clean up on drop).
pub fn stale_temp_dirs(objects_dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let temp = objects_dir.join(TEMP_DIR);
    let entries = match std::fs::read_dir(&temp) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::OpenStore { path: temp, source }),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok());
        let alive = match pid {
            Some(pid) if pid == std::process::id() as i32 => true,
            Some(pid) => crate::image::fileio::process_alive(pid),
            None => false,
        };
        if !alive {
            out.push(entry.path());
        }
    }
    Ok(out)
}

struct Pending {
    temp_name: OsString,
    digest: Digest,
    size: u64,
}

/// A set of objects being added; see the module docs. `Sync`: scanner
/// threads add concurrently through `&Batch`.
pub struct Batch<'a> {
    store: &'a ObjectStore,
    /// `.tmp/<pid>-<n>`, relative to the store.
    temp_rel: PathBuf,
    temp_ready: Mutex<bool>,
    next: AtomicU64,
    pending: Mutex<Vec<Pending>>,
    /// Digests this batch has written or is writing, so identical content
    /// added twice (by two threads) is copied once.
    claimed: Mutex<HashSet<Digest>>,
    existing: AtomicU64,
}

// Scanner threads share one batch by reference.
const _: () = {
    const fn assert_sync<T: Sync>() {}
    assert_sync::<Batch<'static>>();
};

/// Outcome of [`Batch::claim`].
enum Claim {
    New,
    AlreadyThere,
}

impl Batch<'_> {
    fn temp_dir(&self) -> PathBuf {
        self.store.root.join(&self.temp_rel)
    }

    fn ensure_temp_dir(&self) -> Result<(), StoreError> {
        let mut ready = self.temp_ready.lock().unwrap_or_else(|p| p.into_inner());
        if !*ready {
            let path = self.temp_dir();
            // Another batch that finishes removes `.tmp` when it is empty;
            // if that races with this creation, create it again.
            let mut attempt = 0;
            loop {
                match std::fs::create_dir_all(&path) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 => attempt += 1,
                    Err(source) => return Err(StoreError::WriteTemp { path, source }),
                }
            }
            *ready = true;
        }
        Ok(())
    }

    fn claim(&self, digest: &Digest) -> Claim {
        if self.store.contains(digest) {
            self.existing.fetch_add(1, Ordering::Relaxed);
            return Claim::AlreadyThere;
        }
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        if claimed.insert(*digest) {
            Claim::New
        } else {
            self.existing.fetch_add(1, Ordering::Relaxed);
            Claim::AlreadyThere
        }
    }

    fn unclaim(&self, digest: &Digest) {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        claimed.remove(digest);
    }

    /// Copy `source` into a new temporary, hashing exactly the bytes written.
    /// Returns the temporary's name and the content's digest and size.
    fn write_temp(
        &self,
        alg: crate::digest::HashAlgorithm,
        mut source: impl Read,
        source_path: &Path,
    ) -> Result<(OsString, Digest, u64), StoreError> {
        self.ensure_temp_dir()?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = OsString::from(n.to_string());
        let path = self.temp_dir().join(&name);
        let werr = |source| StoreError::WriteTemp {
            path: path.clone(),
            source,
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(werr)?;
        let result = (|| {
            let mut hasher = MerkleHasher::new(alg);
            let mut buf = vec![0u8; COPY_CHUNK];
            let mut size = 0u64;
            loop {
                let k = match source.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(StoreError::ReadSource {
                            path: source_path.to_owned(),
                            source,
                        })
                    }
                };
                let data = buf.get(..k).unwrap_or(&[]);
                hasher.update(data);
                out.write_all(data).map_err(werr)?;
                size += k as u64;
            }
            Ok((hasher.finish(), size))
        })();
        drop(out);
        match result {
            Ok((digest, size)) => Ok((name, digest, size)),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    fn add_from(
        &self,
        source: impl Read,
        source_path: &Path,
        digest: &Digest,
    ) -> Result<(), StoreError> {
        if let Claim::AlreadyThere = self.claim(digest) {
            return Ok(());
        }
        let written = self.write_temp(digest.algorithm(), source, source_path);
        let (name, found, size) = match written {
            Ok(w) => w,
            Err(e) => {
                self.unclaim(digest);
                return Err(e);
            }
        };
        if found != *digest {
            let _ = std::fs::remove_file(self.temp_dir().join(&name));
            self.unclaim(digest);
            return Err(StoreError::DigestMismatch {
                expected: *digest,
                found,
                path: source_path.to_owned(),
            });
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.push(Pending {
            temp_name: name,
            digest: *digest,
            size,
        });
        Ok(())
    }

    /// Add the content of the file at `src`, which the caller says has
    /// `digest`. Skips objects already in the store. The copy is hashed as it
    /// is written; if it does not have `digest` (wrong claim, or the file
    /// changed since the caller hashed it), fails with
    /// [`StoreError::DigestMismatch`].
    pub fn add_file(&self, src: &Path, digest: &Digest) -> Result<(), StoreError> {
        if self.store.contains(digest) {
            self.existing.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let file = File::open(src).map_err(|source| StoreError::ReadSource {
            path: src.to_owned(),
            source,
        })?;
        self.add_from(file, src, digest)
    }

    /// If an object named `digest` is already in the store, count it as
    /// existing (as [`add_file`](Self::add_file) would) and return `true`;
    /// otherwise change nothing and return `false`. For a caller that knows a
    /// file's digest without having read it (an incremental build's cache):
    /// an object present under that name has that content, one that is
    /// absent must be added by reading the file.
    pub fn add_existing(&self, digest: &Digest) -> bool {
        if self.store.contains(digest) {
            self.existing.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Add `data`, which the caller says has `digest` (checked as for
    /// [`add_file`](Self::add_file); the error's path is the object's name).
    pub fn add_bytes(&self, data: &[u8], digest: &Digest) -> Result<(), StoreError> {
        let label = self.store.path_of(digest);
        self.add_from(data, &label, digest)
    }

    /// Add `data` and return its fs-verity digest, computed here from these
    /// very bytes (one hashing pass, no claim to check). Skips the write if
    /// the object already exists. This is the fast path for a scanner that
    /// reads a file into memory anyway: read once, hash once, write only
    /// when new.
    pub fn add_bytes_hashed(
        &self,
        alg: crate::digest::HashAlgorithm,
        data: &[u8],
    ) -> Result<Digest, StoreError> {
        let digest = crate::image::fsverity::digest_bytes(alg, data);
        if let Claim::AlreadyThere = self.claim(&digest) {
            return Ok(digest);
        }
        let written = self.write_temp_plain(data);
        match written {
            Ok(name) => {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                pending.push(Pending {
                    temp_name: name,
                    digest,
                    size: data.len() as u64,
                });
                Ok(digest)
            }
            Err(e) => {
                self.unclaim(&digest);
                Err(e)
            }
        }
    }

    /// Stream `source` into the store and return the fs-verity digest of
    /// exactly the bytes written (one pass, bounded memory: for contents
    /// that arrive as a stream, like a file inside an OCI layer). If the
    /// object already exists or this batch already has it, the copy is
    /// dropped and counted as existing. `label` names the source in errors.
    pub fn add_reader_hashed(
        &self,
        alg: crate::digest::HashAlgorithm,
        source: impl Read,
        label: &Path,
    ) -> Result<Digest, StoreError> {
        let (name, digest, size) = self.write_temp(alg, source, label)?;
        if let Claim::AlreadyThere = self.claim(&digest) {
            let _ = std::fs::remove_file(self.temp_dir().join(&name));
            return Ok(digest);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.push(Pending {
            temp_name: name,
            digest,
            size,
        });
        Ok(digest)
    }

    /// Write already-hashed bytes to a new temporary.
    fn write_temp_plain(&self, data: &[u8]) -> Result<OsString, StoreError> {
        self.ensure_temp_dir()?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = OsString::from(n.to_string());
        let path = self.temp_dir().join(&name);
        let result = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(data));
        match result {
            Ok(()) => Ok(name),
            Err(source) => {
                let _ = std::fs::remove_file(&path);
                Err(StoreError::WriteTemp { path, source })
            }
        }
    }

    /// Make every added object durable in one pass, then publish each under
    /// its digest name and make the names durable. On error, objects not yet
    /// published stay unpublished (their temporaries are removed).
    pub fn commit(self) -> Result<BatchStats, StoreError> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut stats = BatchStats {
            existing: self.existing.load(Ordering::Relaxed),
            ..BatchStats::default()
        };
        if pending.is_empty() {
            return Ok(stats);
        }
        let dir = &self.store.dir;
        rustix::fs::syncfs(dir).map_err(|e| StoreError::Sync {
            path: self.store.root.clone(),
            source: io_err(e),
        })?;

        let temp_dir = rustix::fs::openat(
            dir,
            &self.temp_rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::Publish {
            path: self.temp_dir(),
            source: io_err(e),
        })?;
        // Object directories are created as needed; remember which ones this
        // batch touched (and whether it created any) for the final fsyncs.
        let mut touched = [false; 256];
        let mut created_dir = false;
        for p in &pending {
            let rel = crate::layout::object_name(&p.digest);
            let first = p.digest.as_bytes().first().copied().unwrap_or(0);
            let prefix = rel.get(..2).unwrap_or("00");
            if !touched[usize::from(first)] {
                match rustix::fs::mkdirat(dir, prefix, Mode::from_raw_mode(0o755)) {
                    Ok(()) => created_dir = true,
                    Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(StoreError::Publish {
                            path: self.store.root.join(prefix),
                            source: io_err(e),
                        })
                    }
                }
                touched[usize::from(first)] = true;
            }
            match rustix::fs::renameat_with(
                &temp_dir,
                p.temp_name.as_os_str(),
                dir,
                &rel,
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {
                    stats.added += 1;
                    stats.bytes_added += p.size;
                }
                Err(Errno::EXIST) => {
                    // Someone published the same content first; it is
                    // identical by construction, keep theirs.
                    let _ =
                        rustix::fs::unlinkat(&temp_dir, p.temp_name.as_os_str(), AtFlags::empty());
                    stats.existing += 1;
                }
                Err(e) => {
                    return Err(StoreError::Publish {
                        path: self.store.root.join(&rel),
                        source: io_err(e),
                    })
                }
            }
        }
        for (i, _) in touched.iter().enumerate().filter(|(_, t)| **t) {
            let name = format!("{i:02x}");
            let sub = rustix::fs::openat(
                dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .and_then(|fd| rustix::fs::fsync(fd.as_fd()));
            sub.map_err(|e| StoreError::Sync {
                path: self.store.root.join(&name),
                source: io_err(e),
            })?;
        }
        if created_dir {
            rustix::fs::fsync(dir).map_err(|e| StoreError::Sync {
                path: self.store.root.clone(),
                source: io_err(e),
            })?;
        }
        Ok(stats)
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let ready = *self.temp_ready.lock().unwrap_or_else(|p| p.into_inner());
        if ready {
            let _ = std::fs::remove_dir_all(self.temp_dir());
            // Leave no empty `.tmp` behind (mkcomposefs leaves nothing);
            // this fails harmlessly while another batch still uses it.
            let _ = std::fs::remove_dir(self.store.root.join(TEMP_DIR));
        }
    }
}

/// Names under a store that look like objects (`XX/<rest>`), for checks.
pub fn list_objects(objects_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(objects_dir)? {
        let e = e?;
        let name = e.file_name().into_vec();
        if name.len() != 2 || !name.iter().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        for f in std::fs::read_dir(e.path())? {
            out.push(f?.path());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::HashAlgorithm;
    use crate::image::fsverity::digest_bytes;

    #[test]
    fn add_commit_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let objects = dir.path().join("objects");
        let store = ObjectStore::open(&objects).unwrap();
        let a = b"hello, object store".repeat(100);
        let b = vec![7u8; 10000];
        let da = digest_bytes(HashAlgorithm::Sha256, &a);
        let db = digest_bytes(HashAlgorithm::Sha256, &b);
        let src = dir.path().join("b");
        std::fs::write(&src, &b).unwrap();

        let batch = store.batch();
        batch.add_bytes(&a, &da).unwrap();
        batch.add_bytes(&a, &da).unwrap(); // duplicate in one batch
        batch.add_file(&src, &db).unwrap();
        assert!(!store.contains(&da), "nothing visible before commit");
        let stats = batch.commit().unwrap();
        assert_eq!(stats.added, 2);
        assert_eq!(stats.existing, 1);
        assert_eq!(stats.bytes_added, (a.len() + b.len()) as u64);
        assert_eq!(std::fs::read(store.path_of(&da)).unwrap(), a);
        assert_eq!(std::fs::read(store.path_of(&db)).unwrap(), b);
        assert!(store.path_of(&da).ends_with(format!(
            "{}/{}",
            &da.to_hex()[..2],
            &da.to_hex()[2..]
        )));

        // Second batch: everything exists, nothing rewritten.
        let before = std::fs::metadata(store.path_of(&db)).unwrap();
        let batch = store.batch();
        batch.add_file(&src, &db).unwrap();
        batch.add_bytes(&a, &da).unwrap();
        let stats = batch.commit().unwrap();
        assert_eq!((stats.added, stats.existing), (0, 2));
        let after = std::fs::metadata(store.path_of(&db)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(before.ino(), after.ino());

        // No temporaries left, not even the empty temporary directory.
        assert!(!objects.join(TEMP_DIR).exists());
        assert_eq!(list_objects(&objects).unwrap().len(), 2);
    }

    #[test]
    fn add_bytes_hashed_computes_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let data = b"scanner-read content".repeat(50);
        let batch = store.batch();
        let d = batch
            .add_bytes_hashed(HashAlgorithm::Sha256, &data)
            .unwrap();
        assert_eq!(d, digest_bytes(HashAlgorithm::Sha256, &data));
        let d2 = batch
            .add_bytes_hashed(HashAlgorithm::Sha256, &data)
            .unwrap();
        assert_eq!(d, d2);
        let stats = batch.commit().unwrap();
        assert_eq!((stats.added, stats.existing), (1, 1));
        assert_eq!(std::fs::read(store.path_of(&d)).unwrap(), data);
        let batch = store.batch();
        batch
            .add_bytes_hashed(HashAlgorithm::Sha256, &data)
            .unwrap();
        assert_eq!(batch.commit().unwrap().existing, 1);
    }

    #[test]
    fn wrong_digest_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let data = b"real content".repeat(10);
        let claimed = digest_bytes(HashAlgorithm::Sha256, b"other content");
        let batch = store.batch();
        match batch.add_bytes(&data, &claimed) {
            Err(StoreError::DigestMismatch {
                expected, found, ..
            }) => {
                assert_eq!(expected, claimed);
                assert_eq!(found, digest_bytes(HashAlgorithm::Sha256, &data));
            }
            other => panic!("expected DigestMismatch, got {other:?}"),
        }
        let src = dir.path().join("src");
        std::fs::write(&src, &data).unwrap();
        assert!(matches!(
            batch.add_file(&src, &claimed),
            Err(StoreError::DigestMismatch { .. })
        ));
        let stats = batch.commit().unwrap();
        assert_eq!(stats.added, 0);
        assert!(!store.contains(&claimed));
        assert!(list_objects(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn sha512_objects_and_missing_source() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(&dir.path().join("o")).unwrap();
        let data = vec![1u8; 5000];
        let d = digest_bytes(HashAlgorithm::Sha512, &data);
        let batch = store.batch();
        batch.add_bytes(&data, &d).unwrap();
        let missing = dir.path().join("missing");
        match batch.add_file(&missing, &digest_bytes(HashAlgorithm::Sha256, b"x")) {
            Err(StoreError::ReadSource { path, .. }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        batch.commit().unwrap();
        assert_eq!(std::fs::read(store.path_of(&d)).unwrap(), data);
        assert_eq!(store.path_of(&d).file_name().unwrap().len(), 126);
    }

    #[test]
    fn dropped_batch_and_stale_temps_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let data = vec![3u8; 100];
        let d = digest_bytes(HashAlgorithm::Sha256, &data);
        {
            let batch = store.batch();
            batch.add_bytes(&data, &d).unwrap();
        }
        assert!(!store.contains(&d));
        assert!(!dir.path().join(TEMP_DIR).exists());
        // A temp dir of a process that does not exist (pid 0x7fffffff is
        // above any pid_max) is stale; a non-pid name too.
        for name in ["2147483647-0", "junk"] {
            let stale = dir.path().join(TEMP_DIR).join(name);
            std::fs::create_dir_all(&stale).unwrap();
            std::fs::write(stale.join("0"), b"partial").unwrap();
        }
        drop(store);
        let _store = ObjectStore::open(dir.path()).unwrap();
        assert!(!dir.path().join(TEMP_DIR).exists());
    }

    #[test]
    fn concurrent_adds() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let batch = store.batch();
        let datas: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 100 + i as usize * 50]).collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let batch = &batch;
                let datas = &datas;
                s.spawn(move || {
                    // Every thread adds every object: each is copied once.
                    for d in datas.iter().cycle().skip(t * 16).take(64) {
                        let dg = digest_bytes(HashAlgorithm::Sha256, d);
                        batch.add_bytes(d, &dg).unwrap();
                    }
                });
            }
        });
        let stats = batch.commit().unwrap();
        assert_eq!(stats.added, 64);
        assert_eq!(stats.existing, 64 * 3);
        for d in &datas {
            let dg = digest_bytes(HashAlgorithm::Sha256, d);
            assert_eq!(&std::fs::read(store.path_of(&dg)).unwrap(), d);
        }
    }
}
