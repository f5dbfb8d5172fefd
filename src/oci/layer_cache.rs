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

use std::path::PathBuf;

use crate::digest::HashAlgorithm;
use crate::image::fileio::{self, FileIoError};
use crate::image::repo::Repo;
use crate::image::store::Batch;
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
        Some(self.dir.join(format!("{hex}.{}.json", self.hash.name())))
    }

    /// The operations recorded for `layer`, if the entry is usable (module
    /// docs); the objects it needs are counted as existing in `batch`.
    pub fn load(&self, layer: &str, diff_id: &str, batch: &Batch<'_>) -> Option<Vec<Op>> {
        let bytes = fileio::read_bounded(&self.path(layer)?, MAX_ENTRY).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        if v.get("format")?.as_str()? != FORMAT
            || v.get("layer")?.as_str()? != layer
            || v.get("diff_id")?.as_str()? != diff_id
        {
            return None;
        }
        let ops: Vec<Op> = v
            .get("ops")?
            .as_array()?
            .iter()
            .map(|o| Op::from_json(o, self.hash))
            .collect::<Option<_>>()?;
        for op in &ops {
            if let Some(d) = op.object() {
                if !batch.add_existing(&d) {
                    return None;
                }
            }
        }
        Some(ops)
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
