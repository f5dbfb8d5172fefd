//! An OCI image-layout directory as an [`ImageSource`]: `oci:DIR[:REF]`.
//!
//! Contract:
//! - `DIR` holds `oci-layout`, `index.json` and `blobs/<alg>/<hex>` (what
//!   `umoci`, `skopeo copy … oci:DIR:REF` and `podman save --format oci-dir`
//!   write). `REF` selects the `index.json` entry whose
//!   `org.opencontainers.image.ref.name` annotation equals it; without
//!   `REF`, the only image entry (seal artifacts do not count) is taken,
//!   and several are refused as ambiguous.
//! - An entry that is an image index is resolved to its `linux/amd64`
//!   manifest (nested indexes up to [`MAX_INDEX_DEPTH`] deep).
//! - Every JSON document (index, manifest) is read with a size limit and
//!   checked against its descriptor's digest and size before it is parsed;
//!   `index.json` itself has no descriptor and is only size-bounded.
//! - `open_blob` refuses digests other than `sha256:<64 hex>` (so a digest
//!   can never name a path outside `blobs/`) and a file whose size is not
//!   the descriptor's; the caller checks the content digest as it streams.
//! - [`attach_seal`] writes a seal artifact into the layout (blobs first,
//!   then `index.json` replaced atomically), and [`LayoutSource::seal`]
//!   finds it again by its subject.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use crate::oci::flatten::{read_small_blob, sha256_hex, BlobError};
use crate::oci::seal_artifact::{self, SealPair, SEAL_ARTIFACT_TYPE};
use crate::oci::source::{ImageSource, OciDigest};

/// The annotation naming an index entry.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest `index.json` or manifest read.
pub const MAX_JSON: u64 = 4 << 20;
/// Largest seal blob read (a seal manifest is at most 64 KiB).
const MAX_SEAL_BLOB: u64 = 64 << 10;
/// How deep image indexes may nest.
pub const MAX_INDEX_DEPTH: usize = 4;

/// Why an image layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{spec:?}: not an OCI layout reference (expected oci:DIR[:REF])")]
    BadReference { spec: String },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: larger than the {limit}-byte limit")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: not valid JSON of its kind: {reason}")]
    BadJson { path: PathBuf, reason: String },
    #[error("{layout}: no image named {reference:?} in index.json")]
    NoSuchRef { layout: String, reference: String },
    #[error("{layout}: index.json lists no image")]
    NoImage { layout: String },
    #[error("{layout}: index.json lists {count} images; name one as oci:DIR:REF")]
    Ambiguous { layout: String, count: usize },
    #[error("{layout}: the image index has no linux/amd64 manifest")]
    NoPlatform { layout: String },
    #[error("{layout}: image indexes nested deeper than {MAX_INDEX_DEPTH}")]
    TooDeep { layout: String },
    #[error("{layout}: descriptor media type {media_type:?} is neither a manifest nor an index")]
    MediaType { layout: String, media_type: String },
    #[error("{layout}: blob {digest}: file is {found} bytes, descriptor says {expected}")]
    WrongBlobSize {
        layout: String,
        digest: String,
        expected: u64,
        found: u64,
    },
    #[error("{layout}: {error}")]
    Blob { layout: String, error: BlobError },
    #[error("{layout}: blob {digest} is missing")]
    MissingBlob { layout: String, digest: String },
    #[error("{layout}: {error}")]
    SealArtifact {
        layout: String,
        error: seal_artifact::SealArtifactError,
    },
}

/// An OCI image layout and an optional reference in it.
#[derive(Clone, Debug)]
pub struct LayoutSource {
    dir: PathBuf,
    reference: Option<String>,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

impl LayoutSource {
    /// `oci:DIR[:REF]` (the `oci:` prefix required; the reference is what
    /// follows the first `:` after it, as skopeo reads it).
    pub fn parse(spec: &str) -> Result<LayoutSource, LayoutError> {
        let rest = spec.strip_prefix("oci:").ok_or(LayoutError::BadReference {
            spec: spec.to_owned(),
        })?;
        let (dir, reference) = match rest.split_once(':') {
            Some((d, r)) => (d, Some(r.to_owned()).filter(|r| !r.is_empty())),
            None => (rest, None),
        };
        if dir.is_empty() {
            return Err(LayoutError::BadReference {
                spec: spec.to_owned(),
            });
        }
        Ok(LayoutSource::new(dir, reference))
    }

    pub fn new(dir: impl Into<PathBuf>, reference: Option<String>) -> LayoutSource {
        LayoutSource {
            dir: dir.into(),
            reference,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, LayoutError> {
        let hex = sha256_hex(digest).map_err(|error| self.blob_err(error))?;
        Ok(self.dir.join("blobs").join("sha256").join(hex))
    }

    fn blob_err(&self, error: BlobError) -> LayoutError {
        LayoutError::Blob {
            layout: self.describe(),
            error,
        }
    }

    fn read_index(&self) -> Result<ImageIndex, LayoutError> {
        let path = self.dir.join("index.json");
        let bytes = read_bounded(&path, MAX_JSON)?;
        serde_json::from_slice(&bytes).map_err(|e| LayoutError::BadJson {
            path,
            reason: e.to_string(),
        })
    }

    /// Read a JSON blob named by a descriptor, checked.
    fn read_json_blob(&self, digest: &str, size: u64, limit: u64) -> Result<Vec<u8>, LayoutError> {
        let reader = self.open_checked(digest, size)?;
        read_small_blob(reader, digest, size, limit).map_err(|e| self.blob_err(e))
    }

    fn open_checked(&self, digest: &str, size: u64) -> Result<File, LayoutError> {
        let path = self.blob_path(digest)?;
        let file = File::open(&path).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => LayoutError::MissingBlob {
                layout: self.describe(),
                digest: digest.to_owned(),
            },
            _ => LayoutError::Io {
                path: path.clone(),
                error,
            },
        })?;
        let len = file
            .metadata()
            .map_err(|error| LayoutError::Io {
                path: path.clone(),
                error,
            })?
            .len();
        if len != size {
            return Err(LayoutError::WrongBlobSize {
                layout: self.describe(),
                digest: digest.to_owned(),
                expected: size,
                found: len,
            });
        }
        Ok(file)
    }

    /// The descriptor `index.json` selects for this source's reference.
    fn top_descriptor(&self, index: &ImageIndex) -> Result<Descriptor, LayoutError> {
        let is_seal = |d: &Descriptor| {
            d.artifact_type().as_ref().map(|t| t.to_string()).as_deref() == Some(SEAL_ARTIFACT_TYPE)
        };
        match &self.reference {
            Some(r) => index
                .manifests()
                .iter()
                .find(|d| {
                    d.annotations()
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME))
                        .is_some_and(|n| n == r)
                })
                .cloned()
                .ok_or_else(|| LayoutError::NoSuchRef {
                    layout: self.dir.display().to_string(),
                    reference: r.clone(),
                }),
            None => {
                let images: Vec<&Descriptor> =
                    index.manifests().iter().filter(|d| !is_seal(d)).collect();
                match images.as_slice() {
                    [one] => Ok((*one).clone()),
                    [] => Err(LayoutError::NoImage {
                        layout: self.describe(),
                    }),
                    many => Err(LayoutError::Ambiguous {
                        layout: self.describe(),
                        count: many.len(),
                    }),
                }
            }
        }
    }
}

/// Read a whole file of at most `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, LayoutError> {
    let io = |error| LayoutError::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = File::open(path).map_err(io)?;
    let mut out = Vec::new();
    file.take(limit + 1).read_to_end(&mut out).map_err(io)?;
    if out.len() as u64 > limit {
        return Err(LayoutError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(out)
}

fn is_linux_amd64(d: &Descriptor) -> bool {
    d.platform()
        .as_ref()
        .is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == "amd64")
}

impl ImageSource for LayoutSource {
    type Error = LayoutError;

    fn describe(&self) -> String {
        match &self.reference {
            Some(r) => format!("oci:{}:{r}", self.dir.display()),
            None => format!("oci:{}", self.dir.display()),
        }
    }

    fn manifest(&self) -> Result<(Vec<u8>, OciDigest), LayoutError> {
        let index = self.read_index()?;
        let mut desc = self.top_descriptor(&index)?;
        for _ in 0..=MAX_INDEX_DEPTH {
            let media = desc.media_type().to_string();
            let digest = desc.digest().to_string();
            let bytes = self.read_json_blob(&digest, desc.size(), MAX_JSON)?;
            if MANIFEST_TYPES.contains(&media.as_str()) {
                return Ok((bytes, digest));
            }
            if !INDEX_TYPES.contains(&media.as_str()) {
                return Err(LayoutError::MediaType {
                    layout: self.describe(),
                    media_type: media,
                });
            }
            let nested: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|e| LayoutError::BadJson {
                    path: self.blob_path(&digest).unwrap_or_default(),
                    reason: e.to_string(),
                })?;
            desc = nested
                .manifests()
                .iter()
                .find(|d| is_linux_amd64(d))
                .cloned()
                .ok_or_else(|| LayoutError::NoPlatform {
                    layout: self.describe(),
                })?;
        }
        Err(LayoutError::TooDeep {
            layout: self.describe(),
        })
    }

    fn open_blob(&self, digest: &str, size: u64) -> Result<Box<dyn Read + '_>, LayoutError> {
        let file = self.open_checked(digest, size)?;
        // One byte more than declared lets the caller's check notice a file
        // that grew after the size check; nothing beyond that is read.
        Ok(Box::new(file.take(size.saturating_add(1))))
    }

    fn seal(&self, manifest_digest: &str) -> Result<Option<SealPair>, LayoutError> {
        let index = self.read_index()?;
        for d in index.manifests() {
            if d.artifact_type().as_ref().map(|t| t.to_string()).as_deref()
                != Some(SEAL_ARTIFACT_TYPE)
            {
                continue;
            }
            let digest = d.digest().to_string();
            let bytes = self.read_json_blob(&digest, d.size(), MAX_JSON)?;
            let parsed = seal_artifact::parse(&bytes, &digest).map_err(|error| {
                LayoutError::SealArtifact {
                    layout: self.describe(),
                    error,
                }
            })?;
            if parsed.subject != manifest_digest {
                continue;
            }
            let (md, ms) = &parsed.manifest_blob;
            let (sd, ss) = &parsed.signature_blob;
            return Ok(Some(SealPair {
                manifest: self.read_json_blob(md, *ms, MAX_SEAL_BLOB)?,
                signature: self.read_json_blob(sd, *ss, MAX_SEAL_BLOB)?,
            }));
        }
        Ok(None)
    }
}

/// Store `seal` in the layout as an artifact whose subject is the image
/// manifest `subject` (replacing an earlier seal artifact for the same
/// subject in `index.json`). Returns the artifact manifest's digest.
pub fn attach_seal(
    layout: &LayoutSource,
    subject: &seal_artifact::Subject<'_>,
    seal: &SealPair,
) -> Result<String, LayoutError> {
    let art = seal_artifact::build(subject, seal);
    let mut blobs: Vec<(&str, &[u8])> = art
        .blobs
        .iter()
        .map(|b| (b.digest.as_str(), b.bytes.as_slice()))
        .collect();
    blobs.push((&art.digest, &art.manifest));
    for (digest, bytes) in blobs {
        let path = layout.blob_path(digest)?;
        if !path.exists() {
            crate::image::fileio::write_atomic(&path, bytes, Some(0o644)).map_err(|e| {
                LayoutError::Io {
                    path: path.clone(),
                    error: std::io::Error::other(e.to_string()),
                }
            })?;
        }
    }
    // index.json is edited as JSON (not through the typed index) so fields
    // this code does not know survive.
    let index_path = layout.dir.join("index.json");
    let bytes = read_bounded(&index_path, MAX_JSON)?;
    let bad = |reason: String| LayoutError::BadJson {
        path: index_path.clone(),
        reason,
    };
    let mut index: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let manifests = index
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or_else(|| bad("no manifests array".into()))?;
    let mut keep = Vec::new();
    for m in manifests.drain(..) {
        let stale = m.get("artifactType").and_then(|t| t.as_str()) == Some(SEAL_ARTIFACT_TYPE)
            && m.get("annotations")
                .and_then(|a| a.get("sealroot.subject"))
                .and_then(|s| s.as_str())
                == Some(subject.digest);
        if !stale {
            keep.push(m);
        }
    }
    keep.push(serde_json::json!({
        "mediaType": seal_artifact::MANIFEST_MEDIA_TYPE,
        "artifactType": SEAL_ARTIFACT_TYPE,
        "digest": art.digest,
        "size": art.manifest.len(),
        "annotations": {"sealroot.subject": subject.digest},
    }));
    *manifests = keep;
    let out = serde_json::to_vec(&index).map_err(|e| bad(e.to_string()))?;
    crate::image::fileio::write_atomic(&index_path, &out, Some(0o644)).map_err(|e| {
        LayoutError::Io {
            path: index_path.clone(),
            error: std::io::Error::other(e.to_string()),
        }
    })?;
    Ok(art.digest)
}

/// The image manifest's descriptor facts (for a seal's subject): its
/// digest, size and media type, from the bytes `manifest` returned.
pub fn manifest_subject(bytes: &[u8], digest: &str) -> (String, u64, String) {
    let media = serde_json::from_slice::<ImageManifest>(bytes)
        .ok()
        .and_then(|m| m.media_type().as_ref().map(|t| t.to_string()))
        .unwrap_or_else(|| seal_artifact::MANIFEST_MEDIA_TYPE.to_owned());
    (digest.to_owned(), bytes.len() as u64, media)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::flatten::sha256_digest;

    /// A layout with one manifest blob per `(ref, manifest bytes)`.
    fn layout(dir: &Path, images: &[(&str, &[u8])]) -> Vec<String> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let mut manifests = Vec::new();
        let mut digests = Vec::new();
        for (r, bytes) in images {
            let d = sha256_digest(bytes);
            std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
            manifests.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": d, "size": bytes.len(),
                "annotations": {REF_NAME: r},
            }));
            digests.push(d);
        }
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        digests
    }

    #[test]
    fn references_select_index_entries() {
        let t = tempfile::tempdir().unwrap();
        let d = layout(t.path(), &[("v1", b"{\"a\":1}"), ("v2", b"{\"b\":2}")]);
        let spec = format!("oci:{}:v2", t.path().display());
        let src = LayoutSource::parse(&spec).unwrap();
        assert_eq!(
            src.manifest().unwrap(),
            (b"{\"b\":2}".to_vec(), d[1].clone())
        );
        let none = LayoutSource::new(t.path(), None);
        assert!(matches!(
            none.manifest(),
            Err(LayoutError::Ambiguous { count: 2, .. })
        ));
        let missing = LayoutSource::new(t.path(), Some("v3".into()));
        assert!(matches!(
            missing.manifest(),
            Err(LayoutError::NoSuchRef { .. })
        ));
        assert!(LayoutSource::parse("docker://x").is_err());
        assert!(LayoutSource::parse("oci:").is_err());
    }

    #[test]
    fn blobs_are_checked_against_their_descriptors() {
        let t = tempfile::tempdir().unwrap();
        let d = layout(t.path(), &[("v1", b"{\"a\":1}")]);
        // Same size, other content: the manifest's digest is wrong.
        std::fs::write(t.path().join("blobs/sha256").join(&d[0][7..]), b"{\"a\":2}").unwrap();
        let src = LayoutSource::new(t.path(), Some("v1".into()));
        assert!(matches!(
            src.manifest(),
            Err(LayoutError::Blob {
                error: BlobError::WrongDigest { .. },
                ..
            })
        ));
        // Another size.
        std::fs::write(t.path().join("blobs/sha256").join(&d[0][7..]), b"{}").unwrap();
        assert!(matches!(
            src.manifest(),
            Err(LayoutError::WrongBlobSize {
                expected: 7,
                found: 2,
                ..
            })
        ));
        // Digests never name paths.
        assert!(matches!(
            src.open_blob("sha256:../../../etc/passwd", 1),
            Err(LayoutError::Blob {
                error: BlobError::UnsupportedDigest { .. },
                ..
            })
        ));
        let absent = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            src.open_blob(&absent, 1),
            Err(LayoutError::MissingBlob { .. })
        ));
    }

    #[test]
    fn attached_seals_are_found_by_subject() {
        let t = tempfile::tempdir().unwrap();
        let d = layout(t.path(), &[("v1", b"{\"a\":1}")]);
        let src = LayoutSource::new(t.path(), None);
        assert_eq!(src.seal(&d[0]).unwrap(), None);
        let pair = SealPair {
            manifest: b"{\"format\":\"sealroot-seal-v1\"}\n".to_vec(),
            signature: vec![1; 64],
        };
        let subject = seal_artifact::Subject {
            digest: &d[0],
            size: 7,
            media_type: seal_artifact::MANIFEST_MEDIA_TYPE,
        };
        attach_seal(&src, &subject, &pair).unwrap();
        // Attaching again replaces the entry instead of adding one.
        attach_seal(&src, &subject, &pair).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(t.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
        // The seal entry does not make the image ambiguous.
        assert_eq!(src.manifest().unwrap().1, d[0]);
        assert_eq!(src.seal(&d[0]).unwrap(), Some(pair));
        assert_eq!(src.seal(&sha256_digest(b"other")).unwrap(), None);
    }
}
