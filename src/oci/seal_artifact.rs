//! How a seal travels beside an OCI image: an OCI 1.1 artifact whose
//! `subject` is the image manifest.
//!
//! Contract (one owner of this encoding; the layout source and the
//! registry transport both read and write it through here):
//! - The artifact is an image manifest (`application/vnd.oci.image.manifest.v1+json`)
//!   with `artifactType` [`SEAL_ARTIFACT_TYPE`], the empty config
//!   (`application/vnd.oci.empty.v1+json`, the two bytes `{}`), and exactly two
//!   layers: the seal manifest bytes ([`SEAL_MANIFEST_MEDIA_TYPE`]) and the
//!   raw 64-byte signature ([`SEAL_SIGNATURE_MEDIA_TYPE`]), both exactly the
//!   bytes of the repository's `seals/<hex>.json` and `.sig`.
//! - `subject` names the image manifest by digest, size and media type, so
//!   registries list it under the referrers API (or the tag-schema fallback
//!   `sha256-<hex>`), and layouts find it by scanning `index.json`.
//! - Nothing here is trusted: the seal pair is verified against the trusted
//!   keys by the puller ([`crate::oci::pull`]) like any other seal.

use serde_json::json;

use crate::oci::flatten::{sha256_digest, sha256_hex, BlobError};

/// `artifactType` of a sealroot seal artifact.
pub const SEAL_ARTIFACT_TYPE: &str = "application/vnd.sealroot.seal.v1";
/// Media type of the layer holding the seal manifest (`<hex>.json`).
pub const SEAL_MANIFEST_MEDIA_TYPE: &str = "application/vnd.sealroot.seal.manifest.v1+json";
/// Media type of the layer holding the raw signature (`<hex>.sig`).
pub const SEAL_SIGNATURE_MEDIA_TYPE: &str = "application/vnd.sealroot.seal.signature.v1";
/// The OCI empty config descriptor's media type and content.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONTENT: &[u8] = b"{}";
/// Media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A seal pair: manifest bytes and signature bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealPair {
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
}

/// One blob of an artifact: digest, media type, bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
}

/// A seal artifact ready to store: its manifest and the blobs it names
/// (config first, then seal manifest, then signature).
#[derive(Clone, Debug)]
pub struct SealArtifact {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub blobs: Vec<Blob>,
}

/// The image manifest a seal is attached to.
#[derive(Clone, Debug)]
pub struct Subject<'a> {
    pub digest: &'a str,
    pub size: u64,
    pub media_type: &'a str,
}

/// Why a seal artifact could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SealArtifactError {
    #[error("seal artifact {digest}: not a sealroot seal artifact: {reason}")]
    NotASeal { digest: String, reason: String },
    #[error("seal artifact {digest}: {error}")]
    Blob { digest: String, error: BlobError },
}

fn blob(media_type: &'static str, bytes: Vec<u8>) -> Blob {
    Blob {
        digest: sha256_digest(&bytes),
        media_type,
        bytes,
    }
}

/// The artifact that carries `seal` for `subject`.
pub fn build(subject: &Subject<'_>, seal: &SealPair) -> SealArtifact {
    let config = blob(EMPTY_MEDIA_TYPE, EMPTY_CONTENT.to_vec());
    let json = blob(SEAL_MANIFEST_MEDIA_TYPE, seal.manifest.clone());
    let sig = blob(SEAL_SIGNATURE_MEDIA_TYPE, seal.signature.clone());
    let desc =
        |b: &Blob| json!({"mediaType": b.media_type, "digest": b.digest, "size": b.bytes.len()});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": SEAL_ARTIFACT_TYPE,
        "config": desc(&config),
        "layers": [desc(&json), desc(&sig)],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
    });
    let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
    SealArtifact {
        digest: sha256_digest(&manifest),
        manifest,
        blobs: vec![config, json, sig],
    }
}

/// What a seal artifact manifest names: the subject digest and the two
/// layer descriptors `(digest, size)` for the seal manifest and signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedSealArtifact {
    pub subject: String,
    pub manifest_blob: (String, u64),
    pub signature_blob: (String, u64),
}

/// Parse a seal artifact manifest (`digest` names it in errors).
pub fn parse(bytes: &[u8], digest: &str) -> Result<ParsedSealArtifact, SealArtifactError> {
    let bad = |reason: &str| SealArtifactError::NotASeal {
        digest: digest.to_owned(),
        reason: reason.to_owned(),
    };
    let m: oci_spec::image::ImageManifest =
        serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
    if m.artifact_type().as_ref().map(|t| t.to_string()).as_deref() != Some(SEAL_ARTIFACT_TYPE) {
        return Err(bad("artifactType is not the seal type"));
    }
    let subject = m.subject().as_ref().ok_or_else(|| bad("no subject"))?;
    let find = |media: &str| {
        let mut it = m
            .layers()
            .iter()
            .filter(|l| l.media_type().to_string() == media);
        match (it.next(), it.next()) {
            (Some(l), None) => {
                let d = l.digest().to_string();
                sha256_hex(&d).map_err(|error| SealArtifactError::Blob {
                    digest: digest.to_owned(),
                    error,
                })?;
                Ok((d, l.size()))
            }
            _ => Err(bad(&format!("not exactly one {media} layer"))),
        }
    };
    Ok(ParsedSealArtifact {
        subject: subject.digest().to_string(),
        manifest_blob: find(SEAL_MANIFEST_MEDIA_TYPE)?,
        signature_blob: find(SEAL_SIGNATURE_MEDIA_TYPE)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_then_parse_round_trips() {
        let subject_digest = sha256_digest(b"image manifest");
        let pair = SealPair {
            manifest: b"{\"format\":\"x\"}\n".to_vec(),
            signature: vec![7; 64],
        };
        let art = build(
            &Subject {
                digest: &subject_digest,
                size: 14,
                media_type: MANIFEST_MEDIA_TYPE,
            },
            &pair,
        );
        let parsed = parse(&art.manifest, &art.digest).unwrap();
        assert_eq!(parsed.subject, subject_digest);
        assert_eq!(parsed.manifest_blob.0, art.blobs[1].digest);
        assert_eq!(parsed.signature_blob.1, 64);
        assert!(parse(b"{}", "x").is_err());
    }
}
