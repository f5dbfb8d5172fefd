//! A repository's record of the layers it has already read, so a pull
//! skips fetching them.
//!
//! Contract:
//! - One file per layer and fs-verity algorithm:
//!   `REPO/oci-cache/layers/<layer hex>.<alg>.json`, holding the layer's
//!   digest, its diff_id and the [`Op`]s it applied (metadata, inline
//!   contents, object digests: never file contents). Outside `composefs/`,
//!   so neither `gc`, `verify` nor composefs-rs ever sees it.
//! - Written (atomically, best effort) only after a pull published its
//!   image: a cache entry always describes a layer whose blob was checked
//!   against its digest and diff_id and whose objects were committed.
//! - Used only if it parses whole, names the same layer digest and diff_id,
//!   and every object it needs is in the store now (gc may have removed
//!   some); anything else means the blob is fetched as if there were no
//!   entry.
//! - Nothing here is trusted for the seal: a pull's image is still held to
//!   the sealed digest. If a pull that used cache entries builds another
//!   digest, those entries are removed and the pull reads every layer again
//!   ([`crate::oci::pull::pull`]), so a damaged entry costs one retry, never
//!   a wrong image.
//! - [`prune`] (run by `sealctl gc` after its removals) deletes the entries
//!   that could never be used again: one naming an object the store no
//!   longer holds, or one that does not parse. It never deletes an entry
//!   whose objects are all present, so racing a pull that is writing its
//!   entries (after committing their objects) loses nothing.

use std::path::PathBuf;

use crate::digest::HashAlgorithm;
use crate::image::fileio::{self, FileIoError};
use crate::image::repo::{Repo, RepoError};
use crate::image::store::{Batch, ObjectStore, StoreError};
use crate::oci::flatten::{sha256_hex, Op};

/// Format id of a cache entry.
pub const FORMAT: &str = "sealroot-oci-layer-v1";
/// Largest entry read (a layer with very many files).
pub const MAX_ENTRY: u64 = 1 << 30;

/// The layer cache of one repository for one fs-verity algorithm.
#[derive(Clone, Debug)]
pub struct LayerCache {
    dir: PathBuf,
    hash: HashAlgorithm,
}

impl LayerCache {
    pub fn new(repo: &Repo, hash: HashAlgorithm) -> LayerCache {
        LayerCache {
            dir: repo.root().join("oci-cache").join("layers"),
            hash,
        }
    }

    fn path(&self, layer: &str) -> Option<PathBuf> {
        let hex = sha256_hex(layer).ok()?;
        Some(self.dir.join(format!("{hex}{}", self.suffix())))
    }

    /// The end of this algorithm's entry names (`<layer hex>.<alg>.json`).
    fn suffix(&self) -> String {
        format!(".{}.json", self.hash.name())
    }

    /// The operations recorded for `layer`, if the entry is usable (module
    /// docs); the objects it needs are counted as existing in `batch`.
    pub fn load(&self, layer: &str, diff_id: &str, batch: &Batch<'_>) -> Option<Vec<Op>> {
        let entry = read_entry(&self.path(layer)?, self.hash)?;
        if entry.layer != layer || entry.diff_id != diff_id {
            return None;
        }
        for op in &entry.ops {
            if let Some(d) = op.object() {
                if !batch.add_existing(&d) {
                    return None;
                }
            }
        }
        Some(entry.ops)
    }

    /// Record `ops` for `layer`.
    pub fn store(&self, layer: &str, diff_id: &str, ops: &[Op]) -> Result<(), FileIoError> {
        let Some(path) = self.path(layer) else {
            return Ok(());
        };
        std::fs::create_dir_all(&self.dir).map_err(|error| FileIoError::Io {
            op: "mkdir",
            path: self.dir.clone(),
            error,
        })?;
        let v = serde_json::json!({
            "format": FORMAT,
            "layer": layer,
            "diff_id": diff_id,
            "ops": ops.iter().map(Op::to_json).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&v).unwrap_or_default();
        fileio::write_atomic(&path, &bytes, Some(0o644))
    }

    /// Forget `layer` (its entry led to a digest the seal did not name).
    pub fn remove(&self, layer: &str) {
        if let Some(p) = self.path(layer) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What [`prune`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Entries whose objects are all in the store.
    pub kept: u64,
    /// Entries removed (an object gone, or unreadable).
    pub removed: u64,
}

/// Why [`prune`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Remove the layer-cache entries of `repo` (for its hash algorithm) that
/// name an object the store no longer holds or do not parse; a repository
/// without `meta.json` or without a cache has nothing to prune.
pub fn prune(repo: &Repo) -> Result<PruneReport, PruneError> {
    let mut report = PruneReport::default();
    let Some(meta) = repo.read_meta()? else {
        return Ok(report);
    };
    let hash = meta.hash_algorithm();
    let cache = LayerCache::new(repo, hash);
    let entries = match std::fs::read_dir(&cache.dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(error) => {
            return Err(PruneError::Io {
                op: "read directory",
                path: cache.dir.clone(),
                error,
            })
        }
    };
    let store =
        ObjectStore::open(&repo.objects_dir()).map_err(|e| PruneError::Store(Box::new(e)))?;
    let suffix = cache.suffix();
    for entry in entries {
        let entry = entry.map_err(|error| PruneError::Io {
            op: "read directory",
            path: cache.dir.clone(),
            error,
        })?;
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(&suffix))
        {
            // Another algorithm's entries, or temporaries of a writer.
            continue;
        }
        let path = entry.path();
        if entry_objects_present(&path, hash, &store) {
            report.kept += 1;
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => report.removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(PruneError::Io {
                    op: "remove",
                    path,
                    error,
                })
            }
        }
    }
    Ok(report)
}

/// One parsed cache entry.
struct Entry {
    layer: String,
    diff_id: String,
    ops: Vec<Op>,
}

/// The entry at `path`, if it is one whole entry of this format.
fn read_entry(path: &std::path::Path, hash: HashAlgorithm) -> Option<Entry> {
    let bytes = fileio::read_bounded(path, MAX_ENTRY).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    if v.get("format")?.as_str()? != FORMAT {
        return None;
    }
    let ops = v
        .get("ops")?
        .as_array()?
        .iter()
        .map(|o| Op::from_json(o, hash))
        .collect::<Option<_>>()?;
    Some(Entry {
        layer: v.get("layer")?.as_str()?.to_string(),
        diff_id: v.get("diff_id")?.as_str()?.to_string(),
        ops,
    })
}

/// Whether the entry at `path` parses and every object it names is in `store`.
fn entry_objects_present(path: &std::path::Path, hash: HashAlgorithm, store: &ObjectStore) -> bool {
    read_entry(path, hash).is_some_and(|e| {
        e.ops
            .iter()
            .all(|op| op.object().is_none_or(|d| store.contains(&d)))
    })
}
