//! Repository garbage collection (`sealctl gc`): remove the images, seals,
//! state directories and objects that no kept image needs.
//!
//! Contract:
//! - The kept images are the ones named by the caller, or by default every
//!   image that has a seal (both `seals/<hex>.json` and `seals/<hex>.sig`;
//!   the signature is not checked here: no keys are needed, and a seal
//!   that does not verify is the vendor's business, not garbage). A named
//!   image must be in `images/`, or nothing happens.
//! - What a kept image needs: its `images/<hex>` entry, its seal, its
//!   `state/deploy/<hex>` directory, its own object (an image is stored as
//!   the object named by its digest) and every object it references, read
//!   from the image itself with the same function `sealctl install` uses
//!   ([`crate::image::repo::image_objects`]). Every kept image is read and checked
//!   against its digest before anything is removed; one that cannot be read
//!   whole stops the run ([`GcError::KeptImage`]): a partial reference set
//!   would delete live objects.
//! - Garbage: every other `images/`, `seals/`, `state/deploy/` and `objects/`
//!   entry whose name is a digest of the repository's algorithm, plus the
//!   temporaries crashed writers left (`.tmp-sealctl-<pid>-…` files in
//!   `composefs/`, `images/`, `seals/`; the store's `objects/.tmp/<pid>-<n>/`
//!   directories), recognised by the same functions that clean them up
//!   ([`crate::image::fileio::stale_temps`],
//!   [`crate::image::store::stale_temp_dirs`]); names are read back with
//!   [`crate::layout`]'s parsers, which accept exactly the names it gives.
//!   Names gc does not recognise (another algorithm, foreign files) are left
//!   alone. Empty `objects/XX/` directories are removed.
//! - Refused before anything is touched: no `composefs/`, a missing,
//!   malformed or newer `meta.json`, or one whose features forbid writing
//!   (the same checks `build` makes); a composefs-rs `streams/` directory
//!   (its split streams reference objects gc cannot read); a repository
//!   locked by a writer.
//! - Locking: gc holds an exclusive, non-waiting `flock` on `composefs/`
//!   itself for the whole run; `build`, `sign` and `install` hold a shared
//!   one ([`crate::image::repo::Repo::lock_for_write`]), so gc never runs beside a
//!   writer. composefs-rs takes the same shared lock on the same directory
//!   whenever it opens a repository, so gc refuses beside its tools too.
//! - `dry_run` computes the same plan and figures and touches nothing (the
//!   lock is an `flock`, which writes nothing).
//! - Figures: `files` counts every non-directory entry removed (objects,
//!   image links, seal files, temporaries, files inside state directories);
//!   `bytes` is the sum of the sizes of the regular files among them.
//!
//! Crash safety (SIGKILL at any instant, and power loss): the invariant is
//! "every image that is kept — by default, every image with both seal
//! files — has its image entry and all its objects". Nothing a kept image
//! needs is ever removed, so only the default rule could break it: an image
//! dropped by this run whose seal survives while its objects go. The
//! removals therefore run in this order:
//! 1. the seals of dropped images, manifest (`.json`) before signature,
//!    then `fsync(seals/)`: once this returns, no dropped image looks kept
//!    by default, and it is durable before any object goes;
//! 2. the `images/<hex>` entries of dropped images, `fsync(images/)`;
//! 3. their state directories; 4. stale temporaries;
//! 5. unreferenced objects, then empty `objects/XX/` directories;
//! 6. the store's stale batch directories.
//!
//! Steps 3-6 are not synced: a removal a power cut undoes is garbage the
//! next run removes, never a sealed image without its objects (a `syncfs`
//! would also wait for every other writer of the filesystem).
//!
//! A kill leaves a prefix of that sequence done. A dropped image whose seal
//! is gone but whose entry, state or objects remain is unsealed, so the
//! next run (default or with the same `--keep`) drops it again and removes
//! the rest; a rerun ends with exactly the files an uninterrupted run
//! leaves. `unlink` and `rmdir` are atomic per name, and `fsync` of a
//! directory makes its removals durable before the next step starts.
//! `tests/repo_gc.rs` kills `sealctl gc` at random moments and checks
//! that every image with a seal still verifies; with the objects removed
//! before the seals it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashAlgorithm};
use crate::image::fileio::{self, FileIoError};
use crate::image::progress::Progress;
use crate::image::repo::{self, Repo, RepoError};
use crate::image::store::{self, StoreError};
use crate::layout;
use crate::repo_meta::MetaError;

/// composefs-rs's split-stream directory under `composefs/` (sealctl never
/// writes one). gc refuses a repository where it holds anything.
pub const STREAMS_DIR: &str = "streams";

/// What to keep, and whether to act.
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    /// Keep exactly these images; `None`: every sealed image.
    pub keep: Option<Vec<Digest>>,
    /// Compute the figures, remove nothing.
    pub dry_run: bool,
}

/// What a run removed (or, with `dry_run`, would remove).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// The kept images, sorted.
    pub kept: Vec<Digest>,
    /// The `images/` entries dropped, sorted.
    pub dropped: Vec<Digest>,
    /// Non-directory entries removed.
    pub files: u64,
    /// Sum of the sizes of the regular files removed.
    pub bytes: u64,
    pub dry_run: bool,
}

/// Why gc refused or stopped. Before the first removal every refusal
/// leaves the repository untouched.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// No `composefs/` directory under the given root.
    #[error("{path}: no such repository directory")]
    NotARepository { path: PathBuf },
    /// `composefs/` exists but `meta.json` does not.
    #[error(
        "{repo}: repository has no composefs/meta.json; run `sealctl upgrade-repo --repo {repo}` first"
    )]
    MetaMissing { repo: PathBuf },
    /// `meta.json` is malformed, newer, or forbids writing.
    #[error("{path}: {error}")]
    Meta { path: PathBuf, error: MetaError },
    /// A writer (or another gc) holds the repository lock.
    #[error(
        "{path}: repository is in use by another sealctl (build, sign, install or gc); try again later"
    )]
    Locked { path: PathBuf },
    /// Content gc cannot account for (composefs-rs split streams).
    #[error(
        "{path}: holds composefs-rs split streams, whose object references gc cannot read; nothing removed"
    )]
    ForeignContent { path: PathBuf },
    /// `--keep` names an image that is not in `images/`.
    #[error(
        "--keep {}: no such image ({path} missing); nothing removed",
        .digest.to_composefs()
    )]
    KeepNotInRepo { digest: Box<Digest>, path: PathBuf },
    /// A kept image cannot be read whole or does not have its digest.
    #[error(
        "kept image {}: {error}; nothing removed (its objects cannot be listed)",
        .digest.to_hex()
    )]
    KeptImage {
        digest: Box<Digest>,
        error: Box<RepoError>,
    },
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// Another repository error (what the repository code reported).
    #[error("{0}")]
    Repo(Box<RepoError>),
    /// Listing temporaries or syncing a directory failed.
    #[error("{0}")]
    File(FileIoError),
    #[error("{0}")]
    Store(Box<StoreError>),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GcError {
    let path = path.to_path_buf();
    move |error| GcError::Io { op, path, error }
}

fn from_repo(e: RepoError) -> GcError {
    match e {
        RepoError::Io { op, path, error } => GcError::Io { op, path, error },
        RepoError::Meta { path, error } => GcError::Meta { path, error },
        other => GcError::Repo(Box::new(other)),
    }
}

/// One thing to remove, with what it counts for.
#[derive(Debug)]
struct Victim {
    path: PathBuf,
    /// A directory tree (state, store batch) rather than a single entry.
    tree: bool,
    files: u64,
    bytes: u64,
}

/// The removals, grouped in the order they run (see the module docs).
#[derive(Debug, Default)]
struct Plan {
    seals: Vec<Victim>,
    images: Vec<Victim>,
    state: Vec<Victim>,
    temps: Vec<Victim>,
    objects: Vec<Victim>,
    store_temps: Vec<Victim>,
}

impl Plan {
    fn groups(&self) -> [&[Victim]; 6] {
        [
            &self.seals,
            &self.images,
            &self.state,
            &self.temps,
            &self.objects,
            &self.store_temps,
        ]
    }

    fn totals(&self) -> (u64, u64) {
        self.groups()
            .iter()
            .flat_map(|g| g.iter())
            .fold((0, 0), |(f, b), v| (f + v.files, b + v.bytes))
    }
}

/// Run garbage collection on `repo`; see the module docs.
pub fn gc(repo: &Repo, opts: &GcOptions, progress: &Progress) -> Result<GcReport, GcError> {
    let composefs = repo.composefs_dir();
    match composefs.symlink_metadata() {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(GcError::NotARepository { path: composefs });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(GcError::NotARepository { path: composefs });
        }
        Err(e) => return Err(io_err("stat", &composefs)(e)),
    }
    let _lock = repo
        .try_lock_exclusive()
        .map_err(from_repo)?
        .ok_or_else(|| GcError::Locked {
            path: composefs.clone(),
        })?;
    let meta = repo
        .read_meta()
        .map_err(from_repo)?
        .ok_or(GcError::MetaMissing {
            repo: repo.root().to_path_buf(),
        })?;
    let alg = meta.hash_algorithm();
    meta.check_write(alg).map_err(|error| GcError::Meta {
        path: repo.meta_path(),
        error,
    })?;
    let streams = composefs.join(STREAMS_DIR);
    if !list_dir(&streams)?.is_empty() {
        return Err(GcError::ForeignContent { path: streams });
    }

    let images = list_images(repo, alg)?;
    let seals = list_seals(repo, alg)?;
    let keep: BTreeSet<Digest> = match &opts.keep {
        Some(list) => {
            for d in list {
                if !images.contains(d) {
                    return Err(GcError::KeepNotInRepo {
                        digest: Box::new(*d),
                        path: repo.image_path(d),
                    });
                }
            }
            list.iter().copied().collect()
        }
        None => seals
            .iter()
            .filter(|(d, files)| {
                let (json, sig) = repo.seal_paths(d);
                files.contains(&json) && files.contains(&sig)
            })
            .map(|(d, _)| *d)
            .collect(),
    };
    let live = live_objects(repo, &keep)?;
    let plan = make_plan(repo, alg, &keep, &images, &seals, &live)?;
    let (files, bytes) = plan.totals();
    let report = GcReport {
        kept: keep.iter().copied().collect(),
        dropped: images.difference(&keep).copied().collect(),
        files,
        bytes,
        dry_run: opts.dry_run,
    };
    if opts.dry_run {
        return Ok(report);
    }
    progress.set_total(files, bytes);
    let done = execute(repo, &plan, progress)?;
    Ok(GcReport {
        files: done.0,
        bytes: done.1,
        ..report
    })
}

/// Entry names of `dir`; a missing directory has none.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, GcError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        // A name that is not UTF-8 is no digest: never ours to remove.
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Digests named in `images/`.
fn list_images(repo: &Repo, alg: HashAlgorithm) -> Result<BTreeSet<Digest>, GcError> {
    let mut out = BTreeSet::new();
    for (name, _) in list_dir(&repo.images_dir())? {
        out.extend(layout::image_name_digest(&name, alg));
    }
    Ok(out)
}

/// Seal files present, by digest.
fn list_seals(repo: &Repo, alg: HashAlgorithm) -> Result<BTreeMap<Digest, Vec<PathBuf>>, GcError> {
    let mut out: BTreeMap<Digest, Vec<PathBuf>> = BTreeMap::new();
    for (name, path) in list_dir(&repo.seals_dir())? {
        if let Some(d) = layout::seal_name_digest(&name, alg) {
            out.entry(d).or_default().push(path);
        }
    }
    Ok(out)
}

/// Every object a kept image needs: its own and the ones it references.
/// Fails if any kept image cannot be read whole.
fn live_objects(repo: &Repo, keep: &BTreeSet<Digest>) -> Result<BTreeSet<Digest>, GcError> {
    let mut live = BTreeSet::new();
    for d in keep {
        let fail = |error| GcError::KeptImage {
            digest: Box::new(*d),
            error: Box::new(error),
        };
        let image = repo::read_checked_image(repo, d).map_err(fail)?;
        let objects = repo::image_objects(&repo.image_path(d), &image).map_err(fail)?;
        live.insert(*d);
        live.extend(objects);
    }
    Ok(live)
}

/// Size of one entry (not followed): (1, size) for a regular file, (1, 0)
/// for anything else that is not a directory.
fn entry_size(path: &Path) -> Result<Option<(u64, u64)>, GcError> {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => Ok(None),
        Ok(m) if m.is_file() => Ok(Some((1, m.len()))),
        Ok(_) => Ok(Some((1, 0))),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

fn single(path: PathBuf) -> Result<Option<Victim>, GcError> {
    Ok(entry_size(&path)?.map(|(files, bytes)| Victim {
        path,
        tree: false,
        files,
        bytes,
    }))
}

/// A whole tree (symlinks not followed): its non-directory entries and the
/// bytes of its regular files.
fn tree(path: PathBuf) -> Result<Victim, GcError> {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![path.clone()];
    while let Some(p) = stack.pop() {
        match entry_size(&p)? {
            Some((f, b)) => {
                files += f;
                bytes += b;
            }
            None => {
                for entry in fs::read_dir(&p).map_err(io_err("read directory", &p))? {
                    stack.push(entry.map_err(io_err("read directory", &p))?.path());
                }
            }
        }
    }
    Ok(Victim {
        path,
        tree: true,
        files,
        bytes,
    })
}

fn make_plan(
    repo: &Repo,
    alg: HashAlgorithm,
    keep: &BTreeSet<Digest>,
    images: &BTreeSet<Digest>,
    seals: &BTreeMap<Digest, Vec<PathBuf>>,
    live: &BTreeSet<Digest>,
) -> Result<Plan, GcError> {
    let mut plan = Plan::default();
    for (d, present) in seals.iter().filter(|(d, _)| !keep.contains(d)) {
        // Manifest first: without it the pair is no seal at all.
        let (json, sig) = repo.seal_paths(d);
        for path in [json, sig] {
            if present.contains(&path) {
                plan.seals.extend(single(path)?);
            }
        }
    }
    for d in images.difference(keep) {
        plan.images.extend(single(repo.image_path(d))?);
    }
    for (name, path) in list_dir(&repo.deploy_root())? {
        match layout::deploy_name_digest(&name, alg) {
            Some(d) if !keep.contains(&d) => plan.state.push(tree(path)?),
            _ => {}
        }
    }
    for dir in [repo.composefs_dir(), repo.images_dir(), repo.seals_dir()] {
        for path in fileio::stale_temps(&dir).map_err(GcError::File)? {
            plan.temps.extend(single(path)?);
        }
    }
    for (_, sub) in list_dir(&repo.objects_dir())? {
        let Some(prefix) = sub.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Never follow a symlink out of the store.
        let is_dir = sub.symlink_metadata().is_ok_and(|m| m.is_dir());
        if !layout::is_object_prefix(prefix) || !is_dir {
            continue;
        }
        for (name, path) in list_dir(&sub)? {
            match layout::object_name_digest(prefix, &name, alg) {
                Some(d) if !live.contains(&d) => plan.objects.extend(single(path)?),
                _ => {}
            }
        }
    }
    let stale =
        store::stale_temp_dirs(&repo.objects_dir()).map_err(|e| GcError::Store(Box::new(e)))?;
    for path in stale {
        plan.store_temps.push(tree(path)?);
    }
    Ok(plan)
}

/// Remove one victim; returns what it counted, (0, 0) if it was already
/// gone.
fn remove(v: &Victim) -> Result<(u64, u64), GcError> {
    let result = if v.tree {
        fs::remove_dir_all(&v.path)
    } else {
        fs::remove_file(&v.path)
    };
    match result {
        Ok(()) => Ok((v.files, v.bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, 0)),
        Err(e) => Err(io_err("remove", &v.path)(e)),
    }
}

/// Carry out `plan` in order, making each step durable before the next.
fn execute(repo: &Repo, plan: &Plan, progress: &Progress) -> Result<(u64, u64), GcError> {
    let (mut files, mut bytes) = (0, 0);
    let mut run = |group: &[Victim]| -> Result<BTreeSet<PathBuf>, GcError> {
        let mut dirs = BTreeSet::new();
        for v in group {
            let (f, b) = remove(v)?;
            files += f;
            bytes += b;
            progress.add(v.files, v.bytes);
            if let Some(parent) = v.path.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        Ok(dirs)
    };
    // 1-2: unseal, then unlink, each durable before the next step starts.
    for group in [&plan.seals, &plan.images] {
        for dir in run(group)? {
            fileio::fsync_dir(&dir).map_err(GcError::File)?;
        }
    }
    // 3-4: state and temporaries: nothing later depends on them.
    run(&plan.state)?;
    run(&plan.temps)?;
    // 5: objects, then the directories they leave empty. No fsync per
    // directory: a removal lost to a power cut leaves garbage, never a
    // sealed image without its objects (step 1 is durable already).
    run(&plan.objects)?;
    let objects_dir = repo.objects_dir();
    for (_, sub) in list_dir(&objects_dir)? {
        if sub
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(layout::is_object_prefix)
        {
            // Not empty, not a directory, or already gone: left as it is.
            let _ = fs::remove_dir(&sub);
        }
    }
    // 6: the store's stale batches, and its temporary directory if empty.
    run(&plan.store_temps)?;
    if !plan.store_temps.is_empty() {
        let _ = fs::remove_dir(objects_dir.join(store::TEMP_DIR));
    }
    // Not synced on purpose: a removal a power cut undoes is garbage the
    // next run removes, and a `syncfs` would wait for every other writer
    // of the filesystem too.
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::fsverity::digest_bytes;

    #[test]
    fn refusals_touch_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = Repo::new(dir.path());
        let hidden = Progress::hidden();
        let opts = GcOptions::default();
        assert!(matches!(
            gc(&r, &opts, &hidden),
            Err(GcError::NotARepository { .. })
        ));
        fs::create_dir_all(r.objects_dir().join("ab")).unwrap();
        fs::write(r.objects_dir().join("ab").join("c".repeat(62)), b"x").unwrap();
        assert!(matches!(
            gc(&r, &opts, &hidden),
            Err(GcError::MetaMissing { .. })
        ));
        fs::write(
            r.meta_path(),
            br#"{"version":2,"algorithm":"fsverity-sha256-12"}"#,
        )
        .unwrap();
        match gc(&r, &opts, &hidden) {
            Err(GcError::Meta { error, .. }) => {
                assert_eq!(error, MetaError::NewerVersion { found: 2 })
            }
            other => panic!("{other:?}"),
        }
        fs::remove_file(r.meta_path()).unwrap();
        r.write_meta(HashAlgorithm::Sha256).unwrap();
        let missing = digest_bytes(HashAlgorithm::Sha256, b"not here");
        let keep = GcOptions {
            keep: Some(vec![missing]),
            dry_run: false,
        };
        assert!(matches!(
            gc(&r, &keep, &hidden),
            Err(GcError::KeepNotInRepo { .. })
        ));
        // A writer holds the lock: gc refuses instead of waiting.
        let lock = r.lock_for_write().unwrap();
        assert!(matches!(
            gc(&r, &opts, &hidden),
            Err(GcError::Locked { .. })
        ));
        drop(lock);
        fs::create_dir_all(r.composefs_dir().join(STREAMS_DIR).join("x")).unwrap();
        assert!(matches!(
            gc(&r, &opts, &hidden),
            Err(GcError::ForeignContent { .. })
        ));
        fs::remove_dir_all(r.composefs_dir().join(STREAMS_DIR)).unwrap();
        // The unreferenced object survived every refusal; now it goes,
        // while a name that is no digest stays.
        let junk = r.objects_dir().join("ab").join("README");
        fs::write(&junk, b"not an object").unwrap();
        let report = gc(&r, &opts, &hidden).unwrap();
        assert_eq!((report.files, report.bytes), (1, 1));
        assert!(junk.exists(), "a name gc does not know is left alone");
        assert!(!r.objects_dir().join("ab").join("c".repeat(62)).exists());
        let d = digest_bytes(HashAlgorithm::Sha256, b"orphan object");
        let p = r.object_path(&d);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"orphan object").unwrap();
        let dry = gc(
            &r,
            &GcOptions {
                keep: None,
                dry_run: true,
            },
            &hidden,
        )
        .unwrap();
        assert!(p.exists());
        let report = gc(&r, &opts, &hidden).unwrap();
        assert_eq!((report.files, report.bytes), (1, 13));
        assert_eq!((dry.files, dry.bytes, dry.dry_run), (1, 13, true));
        assert!(!p.exists());
        assert!(!p.parent().unwrap().exists(), "empty prefix dir removed");
    }
}
