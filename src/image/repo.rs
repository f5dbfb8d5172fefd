//! The repository: composefs-rs-compatible layout, build, seal, offline
//! verify and install onto a target root.
//!
//! Layout under a repository root (a build repository or a target sysroot):
//! ```text
//! composefs/meta.json                 format metadata (crate::repo_meta; composefs-rs 0.8+)
//! composefs/objects/XX/<rest of hex>   file contents and images, named by fs-verity digest
//! composefs/images/<hex>               -> ../objects/XX/<rest>: the images this
//!                                      repository may mount (as composefs-rs stores them)
//! composefs/seals/<hex>.json|.sig      seal manifest and raw signature
//! state/deploy/<hex>/etc/{upper,work}  persistent /etc overlay
//! state/deploy/<hex>/var               /var
//! ```
//!
//! Invariants every writer here keeps:
//! - A file is visible under a digest name only with that content. New files
//!   are written under a temporary name in the same directory, fsync'd,
//!   checked, then renamed into place (no-replace for objects), and the
//!   directory is fsync'd. A crash leaves at most stray temporary files, which
//!   the next run removes.
//! - Objects are published before the image that references them, and the
//!   image before its seal, so a visible image always has its objects.
//! - An image is itself an object; `images/<hex>` is a relative symlink to
//!   it, made under a temporary name and renamed into place. (sealroot opens
//!   it beneath `composefs/`, so the link may never lead outside.)
//! - Writers (`build`, `sign`, `install` on its target) hold a shared
//!   `flock` on `composefs/` itself while they work, and `install` one on
//!   its source; `sealctl gc` (crate::image::gc) takes it exclusively and
//!   without waiting, so it never removes what a writer is adding or
//!   reading. composefs-rs takes the same shared lock on the same directory
//!   when it opens a repository.
//! - `meta.json` is written when a repository is created and checked before
//!   anything is added; a repository with content but no `meta.json` is
//!   refused until `sealctl upgrade-repo` writes one.
//!
//! Kernel facts relied on: `rename(2)` within one filesystem is atomic;
//! `renameat2(RENAME_NOREPLACE)` fails with EEXIST instead of replacing;
//! `FS_IOC_ENABLE_VERITY` needs a read-only fd and no writer, returns EEXIST
//! when verity is already on, EOPNOTSUPP/ENOTTY where the kernel or the
//! filesystem cannot do it.

use std::fs::{self, File};

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use crate::digest::{Digest, DigestParseError, HashAlgorithm};
use crate::image::fileio::{self, FileIoError};
use crate::image::fsverity;
use crate::image::progress::Progress;
use crate::image::store::{ObjectStore, StoreError};
use crate::layout;
use crate::seal::{self, Manifest, SealError};
use crate::sys::VerityError;

/// Prefix of every temporary file this module creates.
pub use crate::image::fileio::TEMP_PREFIX;

/// Largest image `sealctl` reads into memory.
pub const MAX_IMAGE_SIZE: u64 = 4 << 30;

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// Reading or atomically replacing a file (see [`fileio`]).
    #[error("{0}")]
    File(FileIoError),
    #[error("{text:?} is not a digest: {error}")]
    BadDigestArgument {
        text: String,
        error: DigestParseError,
    },
    #[error("{path}: image not found")]
    ImageMissing { path: PathBuf },
    #[error("{path}: image is {size} bytes, larger than the {MAX_IMAGE_SIZE}-byte limit")]
    ImageTooLarge { path: PathBuf, size: u64 },
    #[error(
        "{path}: image content has digest {}, not the {} its name says",
        .found.to_hex(),
        .expected.to_hex()
    )]
    ImageDigestMismatch {
        path: PathBuf,
        expected: Box<Digest>,
        found: Box<Digest>,
    },
    #[error("{0}")]
    Seal(SealError),
    #[error("{0}")]
    Store(Box<StoreError>),
    #[error("{0}")]
    Scan(Box<crate::image::scan::ScanError>),
    #[error("cannot write the image: {0}")]
    WriteImage(Box<crate::image::erofs::writer::WriteError>),
    /// The image could not be read as a composefs EROFS image.
    #[error("{path}: not a readable composefs image: {reason}")]
    ImageMalformed { path: PathBuf, reason: String },
    #[error("{path}: object {} missing", .digest.to_hex())]
    ObjectMissing { path: PathBuf, digest: Box<Digest> },
    /// Content whose digest is not the one it is (to be) named by.
    #[error(
        "{path}: object content has digest {}, expected {}",
        .found.to_hex(),
        .expected.to_hex()
    )]
    ObjectDigestMismatch {
        path: PathBuf,
        expected: Box<Digest>,
        found: Box<Digest>,
    },
    /// EOPNOTSUPP / ENOTTY from `FS_IOC_ENABLE_VERITY`.
    #[error(
        "the kernel/filesystem at {target} does not support fs-verity (ext4 needs -O verity and 4096-byte blocks): {errno}"
    )]
    NoVeritySupport {
        target: PathBuf,
        errno: rustix::io::Errno,
    },
    #[error("{path}: enabling fs-verity failed: {errno}{}", enable_verity_hint(.errno))]
    EnableVerity {
        path: PathBuf,
        errno: rustix::io::Errno,
    },
    #[error("{path}: measuring fs-verity failed: {errno}")]
    MeasureVerity {
        path: PathBuf,
        errno: rustix::io::Errno,
    },
    /// The kernel measures other content than the name says; the file was
    /// removed so a rerun copies it again.
    #[error(
        "{path}: kernel measures {}, expected {} (file removed; rerun install to copy it again)",
        .found.to_hex(),
        .expected.to_hex()
    )]
    VerityDigestMismatch {
        path: PathBuf,
        expected: Box<Digest>,
        found: Box<Digest>,
    },
    /// `composefs/meta.json` refuses this use.
    #[error("{path}: {error}")]
    Meta {
        path: PathBuf,
        error: crate::repo_meta::MetaError,
    },
    /// A repository with content but no `meta.json` (made before sealctl
    /// wrote one): never upgraded silently.
    #[error(
        "{repo}: repository has content but no composefs/meta.json (made by an older sealctl); \
         run `sealctl upgrade-repo --repo {repo}` once to add it"
    )]
    MetaMissing { repo: PathBuf },
    /// `upgrade-repo` on a repository that already has `meta.json`.
    #[error("{path} already exists; nothing to upgrade")]
    MetaExists { path: PathBuf },
}

/// The hint [`RepoError::EnableVerity`] appends for the errnos whose cause
/// is known.
fn enable_verity_hint(errno: &rustix::io::Errno) -> &'static str {
    match *errno {
        rustix::io::Errno::INVAL => " (ext4 needs 4096-byte blocks: mkfs.ext4 -b 4096 -O verity)",
        rustix::io::Errno::TXTBSY => " (the file is open for writing somewhere)",
        _ => "",
    }
}

impl From<SealError> for RepoError {
    fn from(e: SealError) -> Self {
        RepoError::Seal(e)
    }
}

impl From<FileIoError> for RepoError {
    fn from(e: FileIoError) -> Self {
        RepoError::File(e)
    }
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RepoError {
    let path = path.to_path_buf();
    move |error| RepoError::Io { op, path, error }
}

/// A held repository lock ([`Repo::lock_for_write`], [`Repo::lock_shared`],
/// [`Repo::try_lock_exclusive`]); dropping it unlocks.
#[derive(Debug)]
pub struct RepoLock {
    _dir: std::os::fd::OwnedFd,
}

/// Paths of one repository (a build repository or a target sysroot).
#[derive(Clone, Debug)]
pub struct Repo {
    root: PathBuf,
}

impl Repo {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Repo { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn composefs_dir(&self) -> PathBuf {
        self.root.join(layout::REPO_DIR)
    }
    pub fn objects_dir(&self) -> PathBuf {
        self.composefs_dir().join(layout::OBJECTS_DIR)
    }
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        self.composefs_dir().join(layout::object_rel(digest))
    }
    pub fn images_dir(&self) -> PathBuf {
        self.composefs_dir().join(layout::IMAGES_DIR)
    }
    pub fn image_path(&self, digest: &Digest) -> PathBuf {
        self.composefs_dir().join(layout::image_rel(digest))
    }
    pub fn seals_dir(&self) -> PathBuf {
        self.composefs_dir().join(layout::SEALS_DIR)
    }
    /// (`<hex>.json`, `<hex>.sig`)
    pub fn seal_paths(&self, digest: &Digest) -> (PathBuf, PathBuf) {
        let (json, sig) = layout::seal_rel(digest);
        let dir = self.composefs_dir();
        (dir.join(json), dir.join(sig))
    }
    pub fn deploy_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join(layout::deploy_rel(digest))
    }
    /// `state/deploy`, the parent of every [`Repo::deploy_dir`].
    pub fn deploy_root(&self) -> PathBuf {
        self.root.join(layout::DEPLOY_DIR)
    }
    pub fn meta_path(&self) -> PathBuf {
        self.composefs_dir().join(layout::META_FILE)
    }

    /// Take the writers' lock: a shared `flock` on the `composefs/`
    /// directory itself (created if missing), waiting while `sealctl gc`
    /// holds it exclusively. composefs-rs takes the same shared lock when
    /// it opens a repository. Held until the returned guard is dropped.
    pub fn lock_for_write(&self) -> Result<RepoLock, RepoError> {
        create_dir_all(&self.composefs_dir())?;
        // A waiting lock never answers EWOULDBLOCK; if it did, fail.
        self.lock(rustix::fs::FlockOperation::LockShared)?
            .ok_or_else(|| {
                io_err("lock", &self.composefs_dir())(std::io::ErrorKind::WouldBlock.into())
            })
    }

    /// The shared lock on an existing repository (the source of an install,
    /// the repository `sign` adds a seal to), so `sealctl gc` cannot remove
    /// what is being read or sealed. Never creates anything: `Ok(None)`
    /// when there is no `composefs/` (the caller's own checks then fail).
    pub fn lock_shared(&self) -> Result<Option<RepoLock>, RepoError> {
        match self.lock(rustix::fs::FlockOperation::LockShared) {
            Err(RepoError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            other => other,
        }
    }

    /// Try to take the exclusive lock garbage collection needs, without
    /// waiting: `Ok(None)` while a writer (or another gc) holds the
    /// repository. `composefs/` must exist.
    pub fn try_lock_exclusive(&self) -> Result<Option<RepoLock>, RepoError> {
        self.lock(rustix::fs::FlockOperation::NonBlockingLockExclusive)
    }

    fn lock(&self, op: rustix::fs::FlockOperation) -> Result<Option<RepoLock>, RepoError> {
        use rustix::fs::{Mode, OFlags};
        let dir = self.composefs_dir();
        let fd = rustix::fs::open(
            &dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open", &dir)(e.into()))?;
        loop {
            match rustix::fs::flock(&fd, op) {
                Ok(()) => return Ok(Some(RepoLock { _dir: fd })),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(io_err("lock", &dir)(e.into())),
            }
        }
    }

    /// The parsed `meta.json`, `None` when there is none.
    pub fn read_meta(&self) -> Result<Option<crate::repo_meta::RepoMeta>, RepoError> {
        Ok(self.read_meta_and_bytes()?.map(|(meta, _)| meta))
    }

    /// [`Repo::read_meta`] with the file's bytes, read once.
    fn read_meta_and_bytes(
        &self,
    ) -> Result<Option<(crate::repo_meta::RepoMeta, Vec<u8>)>, RepoError> {
        let path = self.meta_path();
        let bytes = match fileio::read_bounded(&path, crate::repo_meta::MAX_SIZE as u64) {
            Ok(b) => b,
            Err(FileIoError::Missing { .. }) => return Ok(None),
            Err(FileIoError::TooLarge { size, limit, .. }) => {
                return Err(RepoError::Meta {
                    path,
                    error: crate::repo_meta::MetaError::Malformed {
                        reason: format!("{size} bytes, more than the {limit}-byte limit"),
                    },
                })
            }
            Err(e) => return Err(e.into()),
        };
        crate::repo_meta::RepoMeta::parse(&bytes)
            .map(|meta| Some((meta, bytes)))
            .map_err(|error| RepoError::Meta { path, error })
    }

    /// Before adding objects or images of `alg`: check `meta.json`, or
    /// write one when the repository is new (no objects or images yet).
    /// Returns whether it was written now.
    pub fn prepare_meta_for_write(&self, alg: HashAlgorithm) -> Result<bool, RepoError> {
        let path = self.meta_path();
        if let Some(meta) = self.read_meta()? {
            meta.check_write(alg)
                .map_err(|error| RepoError::Meta { path, error })?;
            return Ok(false);
        }
        if self.has_content() {
            return Err(RepoError::MetaMissing {
                repo: self.root.clone(),
            });
        }
        self.write_meta(alg)?;
        Ok(true)
    }

    /// Before installing images of `alg` from `source`: the target's
    /// `meta.json` must allow reading them (install copies images as they
    /// are, so a read-only-compatible feature such as composefs-rs's
    /// `v1_erofs` does not stop it). A new target gets the source's file
    /// byte for byte (it describes the images being copied), or sealctl's
    /// own when the source has none.
    pub fn prepare_meta_for_install(
        &self,
        source: &Repo,
        alg: HashAlgorithm,
    ) -> Result<(), RepoError> {
        let source_meta = source.read_meta_and_bytes()?;
        if let Some((meta, _)) = &source_meta {
            meta.check_read(alg).map_err(|error| RepoError::Meta {
                path: source.meta_path(),
                error,
            })?;
        }
        let path = self.meta_path();
        if let Some(meta) = self.read_meta()? {
            return meta
                .check_read(alg)
                .map_err(|error| RepoError::Meta { path, error });
        }
        if self.has_content() {
            return Err(RepoError::MetaMissing {
                repo: self.root.clone(),
            });
        }
        let bytes = match source_meta {
            Some((_, bytes)) => bytes,
            None => crate::repo_meta::RepoMeta::new(alg).to_bytes(),
        };
        create_dir_all(&self.composefs_dir())?;
        Ok(fileio::write_atomic(&path, &bytes, Some(0o644))?)
    }

    fn has_content(&self) -> bool {
        [self.objects_dir(), self.images_dir()].iter().any(|d| {
            fs::read_dir(d)
                .map(|mut e| e.next().is_some())
                .unwrap_or(false)
        })
    }

    /// Write `meta.json` for `alg` (atomically; replaces nothing).
    pub fn write_meta(&self, alg: HashAlgorithm) -> Result<(), RepoError> {
        let path = self.meta_path();
        if path.symlink_metadata().is_ok() {
            return Err(RepoError::MetaExists { path });
        }
        create_dir_all(&self.composefs_dir())?;
        Ok(fileio::write_atomic(
            &path,
            &crate::repo_meta::RepoMeta::new(alg).to_bytes(),
            Some(0o644),
        )?)
    }
}

/// `sealctl upgrade-repo`: write `meta.json` into a repository made before
/// sealctl wrote one. The algorithm is `alg`, or the one every image's name
/// implies (64 hex: SHA-256, 128: SHA-512); mixed or no images need `alg`.
pub fn upgrade_repo(repo: &Repo, alg: Option<HashAlgorithm>) -> Result<HashAlgorithm, RepoError> {
    let path = repo.meta_path();
    if path.symlink_metadata().is_ok() {
        return Err(RepoError::MetaExists { path });
    }
    let mut seen: Option<HashAlgorithm> = None;
    let dir = repo.images_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e.flatten().collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err("read directory", &dir)(e)),
    };
    for entry in entries {
        let name = entry.file_name();
        let Some(d) = name.to_str().and_then(|n| Digest::parse_hex_any(n).ok()) else {
            continue;
        };
        match seen {
            Some(a) if a != d.algorithm() => {
                return Err(RepoError::Meta {
                    path: dir,
                    error: crate::repo_meta::MetaError::Malformed {
                        reason: "images of both SHA-256 and SHA-512: pass --hash-alg".into(),
                    },
                })
            }
            _ => seen = Some(d.algorithm()),
        }
    }
    let alg = match (alg, seen) {
        (Some(a), Some(s)) if a != s => {
            return Err(RepoError::Meta {
                path: dir,
                error: crate::repo_meta::MetaError::AlgorithmMismatch {
                    repo: crate::repo_meta::algorithm_name(a),
                    digest: s.name(),
                },
            })
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => HashAlgorithm::Sha256,
    };
    repo.write_meta(alg)?;
    Ok(alg)
}

/// A digest as a user types it: `<hex>` (64 → sha256, 128 → sha512),
/// `v1-sha256-12:<hex>` (command-line form) or `sha256:<hex>` (what
/// `fsverity digest` and `sealctl build` print).
pub fn parse_digest_arg(text: &str) -> Result<Digest, RepoError> {
    let result = Digest::parse_user(text);
    result.map_err(|error| RepoError::BadDigestArgument {
        text: text.chars().take(200).collect(),
        error,
    })
}

/// Read an image and check that its content has the digest it is named by.
pub fn read_checked_image(repo: &Repo, digest: &Digest) -> Result<Vec<u8>, RepoError> {
    let path = repo.image_path(digest);
    let image = read_image_file(&path)?;
    let found = fsverity::digest_bytes(digest.algorithm(), &image);
    if found != *digest {
        return Err(RepoError::ImageDigestMismatch {
            path,
            expected: Box::new(*digest),
            found: Box::new(found),
        });
    }
    Ok(image)
}

/// Read an image file whole, bounded by [`MAX_IMAGE_SIZE`].
pub fn read_image_file(path: &Path) -> Result<Vec<u8>, RepoError> {
    fileio::read_bounded(path, MAX_IMAGE_SIZE).map_err(|e| match e {
        FileIoError::Missing { path } => RepoError::ImageMissing { path },
        FileIoError::TooLarge { path, size, .. } => RepoError::ImageTooLarge { path, size },
        other => RepoError::File(other),
    })
}

/// Seal the image `manifest.digest` of `repo` with `key`: checks the image
/// is present with the right content, then writes `<hex>.json` and
/// `<hex>.sig` atomically (each replaced whole). Returns both paths.
pub fn sign_image(
    repo: &Repo,
    key: &SigningKey,
    manifest: &Manifest,
) -> Result<(PathBuf, PathBuf), RepoError> {
    manifest_check(manifest)?;
    let _lock = repo.lock_shared()?;
    read_checked_image(repo, &manifest.digest)?;
    let (json, sig) = seal::sign(key, manifest);
    write_seal(repo, &manifest.digest, &json, &sig)
}

fn manifest_check(manifest: &Manifest) -> Result<(), RepoError> {
    // The key field is filled in by signing; check the rest now so a bad
    // --os/--version/--created is reported before any file is written.
    let mut m = manifest.clone();
    m.key = format!("sha256:{}", "0".repeat(64));
    m.validate().map_err(RepoError::Seal)
}

/// Write a seal pair. The signature is written first and the manifest
/// last: a reader that sees the new manifest also sees its signature.
/// Replacing an existing seal has a window where the old manifest sits
/// next to the new signature (two renames cannot be one), which verifies
/// as `SignatureInvalid`: refused, never wrongly accepted.
pub fn write_seal(
    repo: &Repo,
    digest: &Digest,
    json: &[u8],
    sig: &[u8],
) -> Result<(PathBuf, PathBuf), RepoError> {
    let dir = repo.seals_dir();
    create_dir_all(&dir)?;
    let (json_path, sig_path) = repo.seal_paths(digest);
    fileio::write_atomic(&sig_path, sig, Some(0o644))?;
    fileio::write_atomic(&json_path, json, Some(0o644))?;
    Ok((json_path, sig_path))
}

/// `composefs.digest=v1-<alg>-12:<hex>` for an image present in `repo`.
pub fn cmdline(repo: &Repo, digest: &Digest) -> Result<String, RepoError> {
    let path = repo.image_path(digest);
    match fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(format!("composefs.digest={}", digest.to_composefs())),
        Ok(_) => Err(RepoError::ImageMissing { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RepoError::ImageMissing { path }),
        Err(e) => Err(io_err("stat", &path)(e)),
    }
}

// ---------------------------------------------------------------------------
// Build

/// How `build` fixes mtimes (see `docs/sealing.md`, Reproducibility).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MtimePolicy {
    /// Record mtimes as found.
    #[default]
    AsFound,
    /// Clamp every mtime later than this (seconds since the epoch) to it:
    /// the `SOURCE_DATE_EPOCH` convention.
    ClampTo(i64),
    /// Every mtime becomes 0 (`mkcomposefs --use-epoch`).
    Zero,
}

/// Apply `policy` to every inode of `tree`.
pub fn fix_mtimes(tree: &mut crate::image::tree::Tree, policy: MtimePolicy) {
    for inode in &mut tree.inodes {
        match policy {
            MtimePolicy::AsFound => {}
            MtimePolicy::ClampTo(limit) => {
                if inode.mtime.sec > limit || (inode.mtime.sec == limit && inode.mtime.nsec > 0) {
                    inode.mtime.sec = limit;
                    inode.mtime.nsec = 0;
                }
            }
            MtimePolicy::Zero => {
                inode.mtime.sec = 0;
                inode.mtime.nsec = 0;
            }
        }
    }
}

/// Options for [`build`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildOptions {
    pub mtimes: MtimePolicy,
    /// Hashing threads; 0 = all cores.
    pub threads: usize,
    /// fs-verity algorithm of the image and its objects.
    pub hash: HashAlgorithm,
}

/// What [`build`] made.
#[derive(Clone, Copy, Debug)]
pub struct BuildReport {
    pub digest: Digest,
    pub image_size: u64,
    pub objects_added: u64,
    pub objects_existing: u64,
    pub bytes_added: u64,
    /// File digests taken from the digest cache (0 without one).
    pub digests_reused: u64,
}

/// Build `rootfs` into `repo`: scan it (files over 64 bytes go into the
/// object store, hashed as they are copied), write the EROFS image, commit
/// the objects (durable, then published under their names), then publish
/// the image. Nothing is signed here.
pub fn build(rootfs: &Path, repo: &Repo, opts: &BuildOptions) -> Result<BuildReport, RepoError> {
    build_inner(rootfs, repo, opts, None).map(|(report, _)| report)
}

/// [`build`], reusing the digests `cache` holds for files that did not
/// change (crate::image::digest_cache); a reused digest's object must
/// already be in the repository, or the file is read. Returns the scan's
/// record, from which the caller makes the next cache.
pub fn build_cached(
    rootfs: &Path,
    repo: &Repo,
    opts: &BuildOptions,
    cache: &crate::image::digest_cache::DigestCache,
) -> Result<(BuildReport, crate::image::digest_cache::ScanRecord), RepoError> {
    build_inner(rootfs, repo, opts, Some(cache))
}

fn build_inner(
    rootfs: &Path,
    repo: &Repo,
    opts: &BuildOptions,
    cache: Option<&crate::image::digest_cache::DigestCache>,
) -> Result<(BuildReport, crate::image::digest_cache::ScanRecord), RepoError> {
    let _lock = repo.lock_for_write()?;
    repo.prepare_meta_for_write(opts.hash)?;
    let store =
        ObjectStore::open(&repo.objects_dir()).map_err(|e| RepoError::Store(Box::new(e)))?;
    let batch = store.batch();
    let scan_opts = crate::image::scan::ScanOptions {
        use_epoch: opts.mtimes == MtimePolicy::Zero,
        threads: opts.threads,
        hash: opts.hash,
        ..Default::default()
    };
    let scanned = match cache {
        Some(c) => crate::image::scan::scan_directory_cached(rootfs, &scan_opts, Some(&batch), c),
        None => crate::image::scan::scan_directory(rootfs, &scan_opts, Some(&batch))
            .map(|t| (t, Default::default())),
    };
    let (mut tree, record) = scanned.map_err(|e| RepoError::Scan(Box::new(e)))?;
    fix_mtimes(&mut tree, opts.mtimes);
    let image = crate::image::erofs::writer::write_image(
        &tree,
        &crate::image::erofs::writer::WriteOptions::default(),
    )
    .map_err(|e| RepoError::WriteImage(Box::new(e)))?;
    drop(tree);
    // Objects become visible before the image that names them.
    let stats = batch.commit().map_err(|e| RepoError::Store(Box::new(e)))?;
    let digest = publish_image(repo, &image, opts.hash)?;
    let report = BuildReport {
        digest,
        image_size: image.len() as u64,
        objects_added: stats.added,
        objects_existing: stats.existing,
        bytes_added: stats.bytes_added,
        digests_reused: record.reused,
    };
    Ok((report, record))
}

/// Publish `image`: store it as an object (named by its fs-verity digest,
/// like any file content; an existing object is never rewritten) and point
/// `images/<hex>` at it with a relative symlink, made under a temporary name
/// and renamed into place (this also replaces a regular-file image an older
/// sealctl wrote). Callers publish the image's objects first. Returns the
/// digest.
pub fn publish_image(
    repo: &Repo,
    image: &[u8],
    algorithm: HashAlgorithm,
) -> Result<Digest, RepoError> {
    let digest = fsverity::digest_bytes(algorithm, image);
    let store =
        ObjectStore::open(&repo.objects_dir()).map_err(|e| RepoError::Store(Box::new(e)))?;
    if !store.contains(&digest) {
        let batch = store.batch();
        batch
            .add_bytes(image, &digest)
            .map_err(|e| RepoError::Store(Box::new(e)))?;
        batch.commit().map_err(|e| RepoError::Store(Box::new(e)))?;
    }
    let dir = repo.images_dir();
    create_dir_all(&dir)?;
    fileio::remove_stale_temps(&dir)?;
    let link = repo.image_path(&digest);
    let target = image_link_target(&digest);
    if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
        let tmp = fileio::temp_path_for(&link);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io_err("symlink", &tmp))?;
        fileio::publish(&tmp, &link)?;
    }
    Ok(digest)
}

/// `../objects/XX/<rest>`: where `images/<hex>` points.
pub fn image_link_target(digest: &Digest) -> PathBuf {
    PathBuf::from(layout::image_link_target(digest))
}

// ---------------------------------------------------------------------------
// Image contents

/// The distinct object digests an image references.
pub fn image_objects(path: &Path, image: &[u8]) -> Result<Vec<Digest>, RepoError> {
    crate::image::erofs::reader::referenced_objects(image).map_err(|e| RepoError::ImageMalformed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

// ---------------------------------------------------------------------------
// Offline verification

/// One thing wrong, with the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct Problem {
    pub path: PathBuf,
    pub kind: ProblemKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ProblemKind {
    #[error("image missing")]
    ImageMissing,
    #[error("image unreadable: {0}")]
    ImageUnreadable(String),
    #[error(
        "image content has digest {}, expected {}",
        .found.to_hex(),
        .expected.to_hex()
    )]
    ImageDigestMismatch {
        expected: Box<Digest>,
        found: Box<Digest>,
    },
    #[error("image is not a readable composefs image: {0}")]
    ImageMalformed(String),
    #[error("object {} missing", .digest.to_hex())]
    ObjectMissing { digest: Box<Digest> },
    #[error("object unreadable: {0}")]
    ObjectUnreadable(String),
    #[error(
        "object content has digest {}, expected {}",
        .found.to_hex(),
        .expected.to_hex()
    )]
    ObjectDigestMismatch {
        expected: Box<Digest>,
        found: Box<Digest>,
    },
    #[error("seal missing")]
    SealMissing,
    #[error("{0}")]
    Seal(SealError),
    /// No `composefs/meta.json` (composefs-rs 0.8+ refuse such a repository).
    #[error("no meta.json (composefs-rs refuses such a repository; run sealctl upgrade-repo)")]
    MetaMissing,
    #[error("{0}")]
    Meta(crate::repo_meta::MetaError),
}

impl ProblemKind {
    /// A stable machine-readable name (for `--json`).
    pub fn code(&self) -> &'static str {
        match self {
            ProblemKind::ImageMissing => "image-missing",
            ProblemKind::ImageUnreadable(_) => "image-unreadable",
            ProblemKind::ImageDigestMismatch { .. } => "image-digest-mismatch",
            ProblemKind::ImageMalformed(_) => "image-malformed",
            ProblemKind::ObjectMissing { .. } => "object-missing",
            ProblemKind::ObjectUnreadable(_) => "object-unreadable",
            ProblemKind::ObjectDigestMismatch { .. } => "object-digest-mismatch",
            ProblemKind::SealMissing => "seal-missing",
            ProblemKind::MetaMissing => "meta-missing",
            ProblemKind::Meta(_) => "meta-invalid",
            ProblemKind::Seal(e) => match e {
                SealError::SignatureInvalid => "seal-signature-invalid",
                SealError::UnknownKey { .. } => "seal-unknown-key",
                SealError::SignatureWrongSize { .. } => "seal-signature-wrong-size",
                SealError::DigestMismatch { .. } => "seal-digest-mismatch",
                SealError::SerialBelowFloor { .. } => "seal-serial-below-floor",
                SealError::ManifestTooLarge { .. } | SealError::ManifestEmpty => {
                    "seal-manifest-size"
                }
                SealError::UnknownFormat(_) => "seal-unknown-format",
                _ => "seal-invalid",
            },
        }
    }
}

/// The outcome of [`verify`]. `problems` empty means everything checked.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub objects: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
    /// The seal, if it verified against the given keys.
    pub seal: Option<seal::VerifiedSeal>,
    /// True when no keys were given, so the signature was not checked
    /// (the manifest was still parsed and its digest compared).
    pub signature_unchecked: bool,
}

/// Recompute everything about image `digest` in `repo`: the image's
/// digest, every referenced object (present, right digest) and the seal
/// against `keys`. Problems are collected, not returned early, so one run
/// reports all of them.
pub fn verify(
    repo: &Repo,
    digest: &Digest,
    keys: &[ed25519_dalek::VerifyingKey],
    serial_floor: u64,
    progress: &Progress,
) -> VerifyReport {
    let mut report = VerifyReport::default();
    let meta_problem = match repo.read_meta() {
        Ok(Some(m)) => m
            .check_read(digest.algorithm())
            .err()
            .map(ProblemKind::Meta),
        Ok(None) => Some(ProblemKind::MetaMissing),
        Err(RepoError::Meta { error, .. }) => Some(ProblemKind::Meta(error)),
        Err(e) => Some(ProblemKind::Meta(crate::repo_meta::MetaError::Malformed {
            reason: e.to_string(),
        })),
    };
    if let Some(kind) = meta_problem {
        report.problems.push(Problem {
            path: repo.meta_path(),
            kind,
        });
    }
    let image_path = repo.image_path(digest);
    let image = match read_image_file(&image_path) {
        Ok(i) => Some(i),
        Err(RepoError::ImageMissing { .. }) => {
            report.problems.push(Problem {
                path: image_path.clone(),
                kind: ProblemKind::ImageMissing,
            });
            None
        }
        Err(e) => {
            report.problems.push(Problem {
                path: image_path.clone(),
                kind: ProblemKind::ImageUnreadable(e.to_string()),
            });
            None
        }
    };
    if let Some(image) = &image {
        let found = fsverity::digest_bytes(digest.algorithm(), image);
        if found != *digest {
            report.problems.push(Problem {
                path: image_path.clone(),
                kind: ProblemKind::ImageDigestMismatch {
                    expected: Box::new(*digest),
                    found: Box::new(found),
                },
            });
        }
        match crate::image::erofs::reader::referenced_objects(image) {
            Ok(objects) => verify_objects(repo, &objects, &mut report, progress),
            Err(e) => report.problems.push(Problem {
                path: image_path.clone(),
                kind: ProblemKind::ImageMalformed(e.to_string()),
            }),
        }
    }
    verify_seal_files(repo, digest, keys, serial_floor, &mut report);
    report
}

/// Check each object's presence and digest; appends problems to `report`.
pub fn verify_objects(
    repo: &Repo,
    objects: &[Digest],
    report: &mut VerifyReport,
    progress: &Progress,
) {
    progress.set_total(objects.len() as u64, 0);
    for object in objects {
        let path = repo.object_path(object);
        report.objects += 1;
        let mut size = 0;
        let kind = match File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some(ProblemKind::ObjectMissing {
                    digest: Box::new(*object),
                })
            }
            Err(e) => Some(ProblemKind::ObjectUnreadable(e.to_string())),
            Ok(file) => {
                size = file.metadata().map(|m| m.len()).unwrap_or(0);
                report.bytes += size;
                match fsverity::digest_file(object.algorithm(), &file) {
                    Ok(found) if found == *object => None,
                    Ok(found) => Some(ProblemKind::ObjectDigestMismatch {
                        expected: Box::new(*object),
                        found: Box::new(found),
                    }),
                    Err(e) => Some(ProblemKind::ObjectUnreadable(e.to_string())),
                }
            }
        };
        if let Some(kind) = kind {
            report.problems.push(Problem { path, kind });
        }
        progress.add(1, size);
    }
}

fn verify_seal_files(
    repo: &Repo,
    digest: &Digest,
    keys: &[ed25519_dalek::VerifyingKey],
    serial_floor: u64,
    report: &mut VerifyReport,
) {
    let (json_path, sig_path) = repo.seal_paths(digest);
    let (json, sig) = match seal::read_seal_files(&repo.composefs_dir(), digest) {
        Ok(pair) => pair,
        Err(SealError::Missing { path }) => {
            // Without keys an unsealed image is not a problem by itself.
            if !keys.is_empty() || path == sig_path {
                report.problems.push(Problem {
                    path,
                    kind: ProblemKind::SealMissing,
                });
            }
            report.signature_unchecked = keys.is_empty();
            return;
        }
        Err(e @ SealError::SignatureWrongSize { .. }) => {
            report.problems.push(Problem {
                path: sig_path,
                kind: ProblemKind::Seal(e),
            });
            return;
        }
        Err(e) => {
            report.problems.push(Problem {
                path: json_path,
                kind: ProblemKind::Seal(e),
            });
            return;
        }
    };
    if keys.is_empty() {
        report.signature_unchecked = true;
        match Manifest::parse(&json) {
            Ok(m) if m.digest == *digest => {}
            Ok(m) => report.problems.push(Problem {
                path: json_path,
                kind: ProblemKind::Seal(SealError::DigestMismatch {
                    expected: Box::new(*digest),
                    found: Box::new(m.digest),
                }),
            }),
            Err(e) => report.problems.push(Problem {
                path: json_path,
                kind: ProblemKind::Seal(e),
            }),
        }
        return;
    }
    // The bytes were read the way the boot reads them (beneath, no symlinks,
    // regular files only, bounded); this is the boot's own verification.
    match seal::verify_seal(&json, &sig, keys, digest, serial_floor) {
        Ok(v) => report.seal = Some(v),
        Err(error) => {
            let path = match error {
                SealError::SignatureWrongSize { .. } => sig_path,
                _ => json_path,
            };
            report.problems.push(Problem {
                path,
                kind: ProblemKind::Seal(error),
            });
        }
    }
}

// ---------------------------------------------------------------------------
// Install

/// What `install` did.
#[derive(Debug, Default, Clone)]
pub struct InstallReport {
    pub objects: u64,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    pub seal_installed: bool,
    /// Whether the verity phase ran to completion.
    pub verity_enabled: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct InstallOptions {
    /// Stop after the copy phase (no fs-verity); a later `install` on the
    /// machine that has fs-verity finishes the job.
    pub copy_only: bool,
}

/// Install image `digest` with its objects and seal from `source` into
/// `target`, then enable fs-verity on every object and the image.
///
/// Phase 1 (copy) makes `target` complete: every referenced object is
/// copied through a temp file whose digest is checked before it is renamed
/// into place; the image is published after its objects, the seal after the
/// image, then the state directories. Phase 2 (verity) enables fs-verity on
/// each object, then the image last (the boot measures the image, so an
/// image without verity means the install is not finished), and re-measures
/// each with the kernel.
pub fn install(
    source: &Repo,
    target: &Repo,
    digest: &Digest,
    opts: InstallOptions,
    progress: &Progress,
) -> Result<InstallReport, RepoError> {
    let image = read_checked_image(source, digest)?;
    let objects = image_objects(&source.image_path(digest), &image)?;
    install_with_objects(source, target, digest, &image, &objects, opts, progress)
}

/// [`install`] with the object list already known (the image is checked
/// against `digest` by the caller).
pub fn install_with_objects(
    source: &Repo,
    target: &Repo,
    digest: &Digest,
    image: &[u8],
    objects: &[Digest],
    opts: InstallOptions,
    progress: &Progress,
) -> Result<InstallReport, RepoError> {
    let mut report = InstallReport {
        objects: objects.len() as u64,
        ..InstallReport::default()
    };
    let _source_lock = source.lock_shared()?;
    let _lock = target.lock_for_write()?;
    target.prepare_meta_for_install(source, digest.algorithm())?;
    // Phase 1: copy. The store hashes each object as it copies it and
    // publishes it under its name only if the digest matches.
    let store =
        ObjectStore::open(&target.objects_dir()).map_err(|e| RepoError::Store(Box::new(e)))?;
    let batch = store.batch();
    progress.set_total(objects.len() as u64, 0);
    for object in objects {
        let src = source.object_path(object);
        match src.symlink_metadata() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RepoError::ObjectMissing {
                    path: src,
                    digest: Box::new(*object),
                })
            }
            _ => {}
        }
        batch.add_file(&src, object).map_err(|e| match e {
            StoreError::DigestMismatch {
                expected,
                found,
                path,
            } => RepoError::ObjectDigestMismatch {
                path,
                expected: Box::new(expected),
                found: Box::new(found),
            },
            other => RepoError::Store(Box::new(other)),
        })?;
        progress.add(1, src.metadata().map(|m| m.len()).unwrap_or(0));
    }
    let stats = batch.commit().map_err(|e| RepoError::Store(Box::new(e)))?;
    report.objects_copied = stats.added;
    report.bytes_copied = stats.bytes_added;
    let image_path = target.image_path(digest);
    publish_image(target, image, digest.algorithm())?;
    report.seal_installed = install_seal(source, target, digest)?;
    let deploy = target.deploy_dir(digest);
    for sub in layout::STATE_SUBDIRS {
        create_dir_all(&deploy.join(sub))?;
    }
    for dir in [deploy.join("etc"), deploy.clone()] {
        fileio::fsync_dir(&dir)?;
    }
    if opts.copy_only {
        return Ok(report);
    }
    // Phase 2: verity, objects first, image last.
    for object in objects {
        enable_and_check(target, &target.object_path(object), object)?;
    }
    enable_and_check(target, &image_path, digest)?;
    // composefs-rs takes fs-verity on meta.json as "this repository
    // requires verity on every object".
    enable_meta_verity(target, digest.algorithm())?;
    report.verity_enabled = true;
    Ok(report)
}

fn enable_meta_verity(target: &Repo, alg: HashAlgorithm) -> Result<(), RepoError> {
    let path = target.meta_path();
    let file = File::open(&path).map_err(io_err("open", &path))?;
    match crate::sys::enable_verity(&file, alg) {
        Ok(()) | Err(VerityError::AlreadyEnabled) => Ok(()),
        Err(VerityError::Unsupported(errno)) => Err(RepoError::NoVeritySupport {
            target: target.root().to_path_buf(),
            errno,
        }),
        Err(e) => Err(RepoError::EnableVerity {
            path,
            errno: e.errno(),
        }),
    }
}

fn install_seal(source: &Repo, target: &Repo, digest: &Digest) -> Result<bool, RepoError> {
    let (json, sig) = match seal::read_seal_files(&source.composefs_dir(), digest) {
        Ok(pair) => pair,
        Err(SealError::Missing { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let existing = seal::read_seal_files(&target.composefs_dir(), digest).ok();
    if existing.as_ref() != Some(&(json.clone(), sig.clone())) {
        create_dir_all(&target.seals_dir())?;
        fileio::remove_stale_temps(&target.seals_dir())?;
        write_seal(target, digest, &json, &sig)?;
    }
    Ok(true)
}

/// Enable fs-verity on `path` (already enabled is fine), then check that
/// the kernel measures `expected`. A file that measures otherwise is removed.
fn enable_and_check(target: &Repo, path: &Path, expected: &Digest) -> Result<(), RepoError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    match crate::sys::enable_verity(&file, expected.algorithm()) {
        Ok(()) | Err(VerityError::AlreadyEnabled) => {}
        Err(VerityError::Unsupported(errno)) => {
            return Err(RepoError::NoVeritySupport {
                target: target.root().to_path_buf(),
                errno,
            })
        }
        Err(e) => {
            return Err(RepoError::EnableVerity {
                path: path.to_path_buf(),
                errno: e.errno(),
            })
        }
    }
    let found = crate::sys::measure_verity(&file).map_err(|e| RepoError::MeasureVerity {
        path: path.to_path_buf(),
        errno: e.errno(),
    })?;
    if found != *expected {
        drop(file);
        let _ = fs::remove_file(path);
        if let Some(dir) = path.parent() {
            let _ = fileio::fsync_dir(dir);
        }
        return Err(RepoError::VerityDigestMismatch {
            path: path.to_path_buf(),
            expected: Box::new(*expected),
            found: Box::new(found),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Crash-safe file helpers

pub(crate) fn create_dir_all(dir: &Path) -> Result<(), RepoError> {
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_arguments() {
        let hex = "ab".repeat(32);
        let d = parse_digest_arg(&hex).unwrap();
        assert_eq!(d.algorithm(), HashAlgorithm::Sha256);
        assert_eq!(parse_digest_arg(&format!("sha256:{hex}")).unwrap(), d);
        assert_eq!(parse_digest_arg(&format!("v1-sha256-12:{hex}")).unwrap(), d);
        for bad in [
            String::new(),
            hex[..63].to_string(),
            hex.to_uppercase(),
            format!("md5:{hex}"),
            format!("sha512:{hex}"),
            format!("{hex} "),
        ] {
            let e = parse_digest_arg(&bad).unwrap_err();
            assert!(matches!(e, RepoError::BadDigestArgument { .. }), "{bad:?}");
        }
    }
}
