//! `composefs/meta.json`: the repository's format metadata, as composefs-rs
//! 0.8 and later write and require it.
//!
//! Contract:
//! - The file is a JSON object: `version` (the base repository format; 1
//!   today), `algorithm` (`fsverity-<sha256|sha512>-12`), optional `features`
//!   with three lists (`compatible`, `read-only-compatible`, `incompatible`)
//!   and optional `erofs_formats` (`{"default": N}`, the EROFS format version
//!   images are written in). sealctl writes version 1, its algorithm,
//!   `erofs_formats.default = 0` (mkcomposefs's default output, what
//!   `sealctl build` writes) and no feature flags; composefs-rs treats the
//!   V0 format as naming no feature of its own.
//! - Readers refuse (fail closed) a version above [`FORMAT_VERSION`], an
//!   `incompatible` feature they do not know, an algorithm other than the
//!   image digest's, and malformed JSON. An unknown `read-only-compatible`
//!   feature still lets sealroot boot (it only reads) but makes sealctl
//!   refuse to write.
//! - composefs-rs decides whether a repository is "verity-capable" from the
//!   file's own fs-verity, so `sealctl install` enables it there.
//! - A repository without the file is one sealctl made before it existed,
//!   or one not made by composefs tooling: sealroot boots it (the image and
//!   seal checks do not depend on it), sealctl refuses to add to it until
//!   `sealctl upgrade-repo` writes one (never silently).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::HashAlgorithm;

/// File name inside `composefs/`.
pub const FILE_NAME: &str = crate::layout::META_FILE;
/// The base repository format this code understands.
pub const FORMAT_VERSION: u32 = 1;
/// Largest `meta.json` read.
pub const MAX_SIZE: usize = 64 * 1024;
/// The EROFS format version `sealctl build` writes (mkcomposefs default).
pub const EROFS_FORMAT: u32 = 0;

/// Feature flags this code knows, by tier. None so far: sealctl writes
/// none, and an `incompatible` one it does not know is refused.
const KNOWN_INCOMPATIBLE: &[&str] = &[];
/// `v1_erofs`: composefs-rs's marker for V1-only image repositories; reading
/// them is fine, sealctl (which writes V0 images) must not add to them.
const KNOWN_RO_COMPATIBLE: &[&str] = &[];

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Features {
    #[serde(default)]
    pub compatible: Vec<String>,
    #[serde(default)]
    pub read_only_compatible: Vec<String>,
    #[serde(default)]
    pub incompatible: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErofsFormats {
    pub default: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<u32>,
}

/// The parsed file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoMeta {
    pub version: u32,
    pub algorithm: String,
    #[serde(default)]
    pub features: Features,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erofs_formats: Option<ErofsFormats>,
}

/// Why a `meta.json` is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaError {
    Malformed {
        reason: String,
    },
    NewerVersion {
        found: u32,
    },
    UnknownAlgorithm {
        found: String,
    },
    AlgorithmMismatch {
        repo: String,
        digest: &'static str,
    },
    IncompatibleFeatures {
        features: Vec<String>,
    },
    /// Unknown read-only-compatible features: reading is fine, writing not.
    ReadOnly {
        features: Vec<String>,
    },
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::Malformed { reason } => write!(f, "meta.json is malformed: {reason}"),
            MetaError::NewerVersion { found } => write!(
                f,
                "meta.json names repository format version {found}; this sealroot understands up to {FORMAT_VERSION}"
            ),
            MetaError::UnknownAlgorithm { found } => write!(
                f,
                "meta.json names algorithm {found:?}, expected fsverity-sha256-12 or fsverity-sha512-12"
            ),
            MetaError::AlgorithmMismatch { repo, digest } => write!(
                f,
                "meta.json says the repository uses {repo}, but the digest is {digest}"
            ),
            MetaError::IncompatibleFeatures { features } => write!(
                f,
                "meta.json lists incompatible features this tool does not know: {}",
                features.join(", ")
            ),
            MetaError::ReadOnly { features } => write!(
                f,
                "meta.json lists read-only-compatible features this tool does not know ({}): it may read the repository but not write to it",
                features.join(", ")
            ),
        }
    }
}

impl std::error::Error for MetaError {}

/// `fsverity-<hash>-12` for an algorithm.
pub fn algorithm_name(alg: HashAlgorithm) -> String {
    format!("fsverity-{}-12", alg.name())
}

fn parse_algorithm(name: &str) -> Option<HashAlgorithm> {
    match name {
        "fsverity-sha256-12" => Some(HashAlgorithm::Sha256),
        "fsverity-sha512-12" => Some(HashAlgorithm::Sha512),
        _ => None,
    }
}

impl RepoMeta {
    /// What sealctl writes for a new repository of `alg`.
    pub fn new(alg: HashAlgorithm) -> RepoMeta {
        RepoMeta {
            version: FORMAT_VERSION,
            algorithm: algorithm_name(alg),
            features: Features::default(),
            erofs_formats: Some(ErofsFormats {
                default: EROFS_FORMAT,
                extra: Vec::new(),
            }),
        }
    }

    /// Parse and check what must hold for any use (version, algorithm,
    /// incompatible features).
    pub fn parse(bytes: &[u8]) -> Result<RepoMeta, MetaError> {
        if bytes.len() > MAX_SIZE {
            return Err(MetaError::Malformed {
                reason: format!("larger than {MAX_SIZE} bytes"),
            });
        }
        let meta: RepoMeta = serde_json::from_slice(bytes).map_err(|e| MetaError::Malformed {
            reason: e.to_string(),
        })?;
        if meta.version > FORMAT_VERSION {
            return Err(MetaError::NewerVersion {
                found: meta.version,
            });
        }
        if parse_algorithm(&meta.algorithm).is_none() {
            return Err(MetaError::UnknownAlgorithm {
                found: meta.algorithm.chars().take(64).collect(),
            });
        }
        let unknown: Vec<String> = meta
            .features
            .incompatible
            .iter()
            .filter(|f| !KNOWN_INCOMPATIBLE.contains(&f.as_str()))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(MetaError::IncompatibleFeatures { features: unknown });
        }
        Ok(meta)
    }

    /// The repository's digest algorithm.
    pub fn hash_algorithm(&self) -> HashAlgorithm {
        parse_algorithm(&self.algorithm).unwrap_or(HashAlgorithm::Sha256)
    }

    /// Reading images of `alg` from this repository is fine.
    pub fn check_read(&self, alg: HashAlgorithm) -> Result<(), MetaError> {
        if self.hash_algorithm() != alg {
            return Err(MetaError::AlgorithmMismatch {
                repo: self.algorithm.clone(),
                digest: alg.name(),
            });
        }
        Ok(())
    }

    /// Writing objects and images of `alg` to this repository is fine.
    pub fn check_write(&self, alg: HashAlgorithm) -> Result<(), MetaError> {
        self.check_read(alg)?;
        let unknown: Vec<String> = self
            .features
            .read_only_compatible
            .iter()
            .filter(|f| !KNOWN_RO_COMPATIBLE.contains(&f.as_str()))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(MetaError::ReadOnly { features: unknown });
        }
        Ok(())
    }

    /// The file's bytes: pretty JSON and a newline, as composefs-rs writes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Why the boot refused a repository's `meta.json`.
#[derive(Debug)]
pub enum BootMetaError {
    /// The file exists but cannot be read as a regular file beneath
    /// `composefs/` (symlink, FIFO, too large, I/O error).
    File(crate::boot::io::FileError),
    Invalid(MetaError),
}

impl fmt::Display for BootMetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootMetaError::File(e) => write!(f, "repository {e}"),
            BootMetaError::Invalid(e) => write!(f, "repository composefs/{e}"),
        }
    }
}

impl std::error::Error for BootMetaError {}

/// The boot's check: read `meta.json` beneath the `composefs/` fd (no
/// symlinks), and refuse a newer format, unknown incompatible features or
/// another algorithm than the digest's. `Ok(None)`: no `meta.json` (a
/// repository from before sealctl wrote one; the image and seal checks
/// decide alone).
pub fn check_for_boot(
    composefs: impl std::os::fd::AsFd,
    alg: HashAlgorithm,
) -> Result<Option<RepoMeta>, BootMetaError> {
    let shown = crate::layout::shown(FILE_NAME);
    let bytes = match crate::boot::io::read_beneath(
        &composefs,
        FILE_NAME,
        &shown,
        MAX_SIZE,
        crate::boot::io::Follow::Never,
    ) {
        Ok(b) => b,
        Err(crate::boot::io::FileError::Missing { .. }) => return Ok(None),
        Err(e) => return Err(BootMetaError::File(e)),
    };
    let meta = RepoMeta::parse(&bytes).map_err(BootMetaError::Invalid)?;
    meta.check_read(alg).map_err(BootMetaError::Invalid)?;
    Ok(Some(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_form_is_what_composefs_rs_reads() {
        let m = RepoMeta::new(HashAlgorithm::Sha512);
        let v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "version": 1,
                "algorithm": "fsverity-sha512-12",
                "features": {"compatible": [], "read-only-compatible": [], "incompatible": []},
                "erofs_formats": {"default": 0}
            })
        );
        assert_eq!(RepoMeta::parse(&m.to_bytes()), Ok(m));
    }

    #[test]
    fn composefs_rs_forms_are_read() {
        // cfsctl init (V1 default) and an old V2 repository without erofs_formats.
        let v1 = br#"{"version":1,"algorithm":"fsverity-sha256-12","features":{"compatible":[],"read-only-compatible":["v1_erofs"],"incompatible":[]},"erofs_formats":{"default":1}}"#;
        let m = RepoMeta::parse(v1).unwrap();
        assert_eq!(m.check_read(HashAlgorithm::Sha256), Ok(()));
        assert!(matches!(
            m.check_write(HashAlgorithm::Sha256),
            Err(MetaError::ReadOnly { .. })
        ));
        let v2 = br#"{"version":1,"algorithm":"fsverity-sha512-12"}"#;
        let m = RepoMeta::parse(v2).unwrap();
        assert_eq!(m.check_write(HashAlgorithm::Sha512), Ok(()));
        assert!(matches!(
            m.check_read(HashAlgorithm::Sha256),
            Err(MetaError::AlgorithmMismatch { .. })
        ));
    }

    #[test]
    fn refusals() {
        type Check = fn(&MetaError) -> bool;
        let cases: &[(&[u8], Check)] = &[
            (br#"{"version":2,"algorithm":"fsverity-sha256-12"}"#, |e| {
                matches!(e, MetaError::NewerVersion { found: 2 })
            }),
            (br#"{"version":1,"algorithm":"fsverity-sha256-10"}"#, |e| {
                matches!(e, MetaError::UnknownAlgorithm { .. })
            }),
            (
                br#"{"version":1,"algorithm":"fsverity-sha256-12","features":{"incompatible":["x"]}}"#,
                |e| matches!(e, MetaError::IncompatibleFeatures { .. }),
            ),
            (br#"{"algorithm":"fsverity-sha256-12"}"#, |e| {
                matches!(e, MetaError::Malformed { .. })
            }),
            (b"not json", |e| matches!(e, MetaError::Malformed { .. })),
        ];
        for (bytes, check) in cases {
            let e = RepoMeta::parse(bytes).unwrap_err();
            assert!(check(&e), "{}: {e:?}", String::from_utf8_lossy(bytes));
            assert!(!e.to_string().is_empty());
        }
        assert!(RepoMeta::parse(&vec![b' '; MAX_SIZE + 1]).is_err());
    }
}
