//! Where OCI content comes from: one trait for every store.
//!
//! Contract: `manifest` returns the raw bytes of the image manifest the
//! reference resolves to, with that manifest's own content digest (callers
//! parse it); `open_blob` streams one blob. Implementations bound what they
//! read (a manifest is small; a blob is never held whole in memory) and the
//! caller checks every blob's digest and size against its descriptor while
//! reading.

use std::io::Read;

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
    fn seal(
        &self,
        manifest_digest: &str,
    ) -> Result<Option<crate::oci::seal_artifact::SealPair>, Self::Error> {
        let _ = manifest_digest;
        Ok(None)
    }

    /// Every seal stored beside `manifest_digest`, oldest first, for a
    /// store that can keep several (a registry lists one referrer per
    /// push: a re-seal at a higher serial, a seal by a rotated key). The
    /// puller verifies them newest first and takes the first its keys and
    /// floor accept. Defaults to [`ImageSource::seal`].
    fn seals(
        &self,
        manifest_digest: &str,
    ) -> Result<Vec<crate::oci::seal_artifact::SealPair>, Self::Error> {
        Ok(self.seal(manifest_digest)?.into_iter().collect())
    }
}
