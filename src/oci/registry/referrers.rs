//! Seals beside images: an OCI 1.1 artifact whose `subject` is the image.
//!
//! The artifact's encoding (artifact type, empty config, the seal manifest
//! and signature as two layers, `subject`) has one owner,
//! [`crate::oci::seal_artifact`]; this file moves it to and from a registry.
//!
//! It is pushed by its own digest. A registry with the referrers API
//! answers the manifest PUT with an `OCI-Subject` header; without it (the
//! referrers tag schema of distribution-spec 1.1, for registries such as
//! distribution 2.8, Debian's `docker-registry`), the client also keeps an
//! index at the tag `sha256-<subject hex>` listing the subject's referrers:
//! GET it (404: start empty), add the artifact's descriptor if absent, PUT
//! it back. Two pushers racing on that tag can lose one entry; rerunning
//! the push restores it.
//!
//! Discovery tries `GET /v2/<repo>/referrers/<subject digest>` (`200` with
//! an index) and on `404` reads the tag `sha256-<hex>` (`404` there too: no
//! referrers). Descriptors of other artifact types are ignored. Each seal
//! artifact is fetched by digest, its subject checked, and both blobs
//! fetched with size caps and digest checks; a broken referrer is skipped
//! (another may be good), and reported only when no seal is found.

use super::{Registry, RegistryError, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};
use crate::oci::flatten::sha256_hex;
use crate::oci::seal_artifact::{self, SealPair, Subject, SEAL_ARTIFACT_TYPE};
use crate::seal::{MAX_MANIFEST_SIZE as MAX_SEAL_SIZE, SIGNATURE_SIZE};

/// What a seal push did.
#[derive(Debug, Clone)]
pub struct PushedSeal {
    /// The image manifest the seal is attached to.
    pub subject: String,
    /// The seal artifact's manifest digest.
    pub artifact: String,
    /// `true` when the registry took the subject itself (`OCI-Subject`);
    /// `false` when the tag-schema index was written.
    pub referrers_api: bool,
}

/// How seals were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealDiscovery {
    /// `GET /v2/<repo>/referrers/<digest>` answered.
    ReferrersApi,
    /// The referrers API is absent; the `sha256-<hex>` tag was read.
    TagSchema,
}

/// One seal found beside an image.
#[derive(Debug, Clone)]
pub struct RegistrySeal {
    pub pair: SealPair,
    /// The artifact manifest's digest.
    pub artifact: String,
}

/// The seals beside one image manifest, in the order the registry lists them.
#[derive(Debug)]
pub struct FoundSeals {
    pub seals: Vec<RegistrySeal>,
    pub discovery: SealDiscovery,
    /// Referrers of the seal type that could not be read (skipped).
    pub broken: Vec<RegistryError>,
}

/// The tag the referrers tag schema uses for `subject`.
pub fn fallback_tag(subject: &str) -> String {
    subject.replacen(':', "-", 1)
}

fn is_sha256(digest: &str) -> bool {
    sha256_hex(digest).is_ok()
}

impl Registry {
    /// Push `seal` as an artifact whose subject is the image manifest this
    /// reference resolves to.
    pub fn push_seal(&self, seal: &SealPair) -> Result<PushedSeal, RegistryError> {
        let m = self.resolve()?;
        let subject = Subject {
            digest: &m.digest,
            size: m.bytes.len() as u64,
            media_type: &m.media_type,
        };
        self.push_seal_for(&subject, seal)
    }

    /// Push `seal` for the image manifest `subject` (already in the
    /// repository): blobs, the artifact by digest, and the tag-schema index
    /// when the registry did not take the subject itself.
    pub fn push_seal_for(
        &self,
        subject: &Subject<'_>,
        seal: &SealPair,
    ) -> Result<PushedSeal, RegistryError> {
        let artifact = seal_artifact::build(subject, seal);
        for blob in &artifact.blobs {
            self.push_blob(&blob.bytes)?;
        }
        let oci_subject =
            self.put_manifest(&artifact.digest, MEDIA_OCI_MANIFEST, &artifact.manifest)?;
        let referrers_api = oci_subject.as_deref() == Some(subject.digest);
        if !referrers_api {
            let entry = serde_json::json!({
                "mediaType": MEDIA_OCI_MANIFEST,
                "digest": artifact.digest,
                "size": artifact.manifest.len(),
                "artifactType": SEAL_ARTIFACT_TYPE,
            });
            self.add_to_fallback_index(subject.digest, entry)?;
        }
        Ok(PushedSeal {
            subject: subject.digest.to_string(),
            artifact: artifact.digest,
            referrers_api,
        })
    }

    /// Add `entry` to the tag-schema index of `subject` (create it if absent).
    fn add_to_fallback_index(
        &self,
        subject: &str,
        entry: serde_json::Value,
    ) -> Result<(), RegistryError> {
        let tag = fallback_tag(subject);
        let mut index = match self.get_manifest(&tag)? {
            Some(m) => {
                if m.media_type != MEDIA_OCI_INDEX {
                    return Err(self.protocol_error(
                        format!("referrers tag {tag}"),
                        format!("holds a {} where an OCI index belongs", m.media_type),
                    ));
                }
                m.json
            }
            None => serde_json::json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_OCI_INDEX,
                "manifests": [],
            }),
        };
        let manifests = index
            .get_mut("manifests")
            .and_then(|m| m.as_array_mut())
            .ok_or_else(|| {
                self.protocol_error(format!("referrers tag {tag}"), "index without manifests")
            })?;
        if manifests
            .iter()
            .any(|d| d.get("digest") == entry.get("digest"))
        {
            return Ok(());
        }
        manifests.push(entry);
        let bytes = serde_json::to_vec(&index).unwrap_or_default();
        self.put_manifest(&tag, MEDIA_OCI_INDEX, &bytes)?;
        Ok(())
    }

    /// The referrers index of `subject`: through the API, else the tag schema.
    fn referrers(
        &self,
        subject: &str,
    ) -> Result<(Vec<serde_json::Value>, SealDiscovery), RegistryError> {
        let what = format!("referrers of {subject}");
        let resp = self.send(&super::Request {
            accept: Some(MEDIA_OCI_INDEX),
            ..super::Request::new(
                "GET",
                format!(
                    "{}?artifactType={}",
                    self.url(&format!("referrers/{subject}")),
                    super::auth::query_escape(SEAL_ARTIFACT_TYPE)
                ),
                what.clone(),
            )
        })?;
        let (json, discovery) = match resp.status().as_u16() {
            200 => {
                let bytes = self.read_capped(&what, resp, super::MAX_MANIFEST_SIZE)?;
                let json: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| self.protocol_error(&what, format!("not JSON: {e}")))?;
                (json, SealDiscovery::ReferrersApi)
            }
            404 => match self.get_manifest(&fallback_tag(subject))? {
                Some(m) => (m.json, SealDiscovery::TagSchema),
                None => return Ok((Vec::new(), SealDiscovery::TagSchema)),
            },
            _ => return Err(self.status_error(&what, resp)),
        };
        let list = json
            .get("manifests")
            .and_then(|m| m.as_array())
            .cloned()
            .unwrap_or_default();
        Ok((list, discovery))
    }

    /// Every seal pushed beside the image manifest `subject`
    /// (`sha256:<hex>`). Reads only manifests and seal blobs: no layer.
    pub fn find_seals(&self, subject: &str) -> Result<FoundSeals, RegistryError> {
        if !is_sha256(subject) {
            return Err(
                self.protocol_error(format!("referrers of {subject}"), "not a sha256 digest")
            );
        }
        let (list, discovery) = self.referrers(subject)?;
        let mut seals = Vec::new();
        let mut broken = Vec::new();
        for d in list {
            if d.get("artifactType").and_then(|a| a.as_str()) != Some(SEAL_ARTIFACT_TYPE) {
                continue;
            }
            let Some(digest) = d.get("digest").and_then(|x| x.as_str()) else {
                continue;
            };
            match self.read_seal_artifact(digest, subject) {
                Ok(s) => seals.push(s),
                Err(e) => broken.push(e),
            }
        }
        Ok(FoundSeals {
            seals,
            discovery,
            broken,
        })
    }

    fn read_seal_artifact(
        &self,
        digest: &str,
        subject: &str,
    ) -> Result<RegistrySeal, RegistryError> {
        let what = format!("seal artifact {digest}");
        if !is_sha256(digest) {
            return Err(self.protocol_error(&what, "not a sha256 digest"));
        }
        let m = self
            .get_manifest(digest)?
            .ok_or_else(|| self.not_found(&what))?;
        let parsed = seal_artifact::parse(&m.bytes, digest)
            .map_err(|e| self.protocol_error(&what, e.to_string()))?;
        if parsed.subject != subject {
            return Err(self.protocol_error(
                &what,
                format!("its subject is {}, not {subject}", parsed.subject),
            ));
        }
        let (md, ms) = &parsed.manifest_blob;
        let (sd, ss) = &parsed.signature_blob;
        let manifest = self.get_small_blob(md, *ms, MAX_SEAL_SIZE as u64)?;
        let signature = self.get_small_blob(sd, *ss, SIGNATURE_SIZE as u64)?;
        Ok(RegistrySeal {
            pair: SealPair {
                manifest,
                signature,
            },
            artifact: digest.to_string(),
        })
    }
}
