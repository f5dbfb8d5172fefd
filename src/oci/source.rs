//! Where OCI content comes from: one trait for every store, and the one
//! place a reference string picks its store.
//!
//! Contract: `manifest` returns the raw bytes of the image manifest the
//! reference resolves to, with that manifest's own content digest (callers
//! parse it); `open_blob` streams one blob. Implementations bound what they
//! read (a manifest is small; a blob is never held whole in memory) and the
//! caller checks every blob's digest and size against its descriptor while
//! reading.
//!
//! [`AnySource::open`] owns the reading of an image reference as the
//! subcommands take it: `docker://…` is a [`Registry`], anything else must
//! be an image layout `oci:DIR[:REF]` ([`LayoutSource`]). [`AnySource`] is
//! itself an [`ImageSource`] that hands every call to the store it holds;
//! its error, [`AnySourceError`], is that store's error unchanged.

use std::io::Read;

use crate::oci::layout::{LayoutError, LayoutSource};
use crate::oci::registry::{Registry, RegistryError, RegistryOptions};
use crate::oci::seal_artifact::SealPair;

/// A content digest as OCI writes it: `sha256:<64 hex>`.
pub type OciDigest = String;

/// A store of OCI images: an image-layout directory or a registry.
pub trait ImageSource {
    /// The error this store reports (names the store, the reference and the cause).
    type Error: std::error::Error + Send + Sync + 'static;

    /// A one-line name of the store and reference, for messages
    /// (`oci:/srv/layout:v2`, `registry 127.0.0.1:5000/os/root:v2`).
    fn describe(&self) -> String;

    /// The image manifest the store's reference resolves to: its bytes and
    /// their digest. An index resolving to several manifests is resolved
    /// for linux/amd64 by the implementation.
    fn manifest(&self) -> Result<(Vec<u8>, OciDigest), Self::Error>;

    /// Stream the blob with `digest`; `size` is the descriptor's size.
    fn open_blob(&self, digest: &str, size: u64) -> Result<Box<dyn Read + '_>, Self::Error>;

    /// The seal stored beside the image manifest `manifest_digest` (a
    /// [`crate::oci::seal_artifact`] whose subject it is), if the store has
    /// one. Unverified bytes: the caller checks them against its keys.
    /// Stores that keep no seals need not implement this.
    fn seal(&self, manifest_digest: &str) -> Result<Option<SealPair>, Self::Error> {
        let _ = manifest_digest;
        Ok(None)
    }

    /// Every seal stored beside `manifest_digest`, oldest first, for a
    /// store that can keep several (a registry lists one referrer per
    /// push: a re-seal at a higher serial, a seal by a rotated key). The
    /// puller verifies them newest first and takes the first its keys and
    /// floor accept. Defaults to [`ImageSource::seal`].
    fn seals(&self, manifest_digest: &str) -> Result<Vec<SealPair>, Self::Error> {
        Ok(self.seal(manifest_digest)?.into_iter().collect())
    }
}

/// An opened image reference of either kind: an image layout or a registry.
#[derive(Debug)]
pub enum AnySource {
    /// `oci:DIR[:REF]`.
    Layout(LayoutSource),
    /// `docker://HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX]` (boxed: a
    /// client is ten times a layout's size).
    Registry(Box<Registry>),
}

/// Why an [`AnySource`] could not be opened or read: its store's own error.
#[derive(Debug, thiserror::Error)]
pub enum AnySourceError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl AnySource {
    /// Open `reference`: `docker://…` as a registry (with `registry`'s
    /// transport, trust and credentials), anything else as `oci:DIR[:REF]`
    /// (refused as [`LayoutError::BadReference`] without the `oci:` prefix).
    pub fn open(reference: &str, registry: &RegistryOptions) -> Result<AnySource, AnySourceError> {
        if reference.starts_with("docker://") {
            Ok(AnySource::Registry(Box::new(Registry::open(
                reference, registry,
            )?)))
        } else {
            Ok(AnySource::Layout(LayoutSource::parse(reference)?))
        }
    }
}

impl ImageSource for AnySource {
    type Error = AnySourceError;

    fn describe(&self) -> String {
        match self {
            AnySource::Layout(s) => s.describe(),
            AnySource::Registry(s) => s.describe(),
        }
    }

    fn manifest(&self) -> Result<(Vec<u8>, OciDigest), AnySourceError> {
        match self {
            AnySource::Layout(s) => Ok(s.manifest()?),
            AnySource::Registry(s) => Ok(s.manifest()?),
        }
    }

    fn open_blob(&self, digest: &str, size: u64) -> Result<Box<dyn Read + '_>, AnySourceError> {
        match self {
            AnySource::Layout(s) => Ok(s.open_blob(digest, size)?),
            AnySource::Registry(s) => Ok(s.open_blob(digest, size)?),
        }
    }

    fn seal(&self, manifest_digest: &str) -> Result<Option<SealPair>, AnySourceError> {
        match self {
            AnySource::Layout(s) => Ok(s.seal(manifest_digest)?),
            AnySource::Registry(s) => Ok(s.seal(manifest_digest)?),
        }
    }

    fn seals(&self, manifest_digest: &str) -> Result<Vec<SealPair>, AnySourceError> {
        match self {
            AnySource::Layout(s) => Ok(s.seals(manifest_digest)?),
            AnySource::Registry(s) => Ok(s.seals(manifest_digest)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_picks_the_store_by_prefix() {
        let opts = RegistryOptions::default();
        match AnySource::open("oci:/srv/layout:v2", &opts) {
            Ok(AnySource::Layout(l)) => assert_eq!(l.describe(), "oci:/srv/layout:v2"),
            other => panic!("oci: reference opened as {other:?}"),
        }
        assert!(matches!(
            AnySource::open("/srv/layout", &opts),
            Err(AnySourceError::Layout(LayoutError::BadReference { .. }))
        ));
        assert!(matches!(
            AnySource::open("docker://Upper/x", &opts),
            Err(AnySourceError::Registry(RegistryError::BadReference { .. }))
        ));
    }
}
