//! Seals: a signed manifest naming an image digest.
//!
//! Contract (the full format is in `docs/seal-format.md`):
//! - A seal is two files: `<hex>.json`, the manifest, and `<hex>.sig`, a raw
//!   64-byte Ed25519 signature over the manifest's exact bytes. Nothing else
//!   is signed, so `openssl pkeyutl -verify -rawin` checks a seal.
//! - The manifest is one line of compact JSON followed by `\n`, fields in a
//!   fixed order: `format` (`"sealroot-seal-v1"`), `digest`
//!   (`{"algorithm","hex"}`), `key` (fingerprint of the signing key), then
//!   optional `os`, `version`, required `serial`, optional `created`.
//!   [`Manifest::to_bytes`] writes exactly that; [`Manifest::parse`] accepts
//!   only that (re-serialising must give back the same bytes), so one
//!   manifest has one spelling.
//! - Unknown fields are refused, not ignored: a later format that adds a
//!   field that matters (say, an expiry) gets a new format id, and an old
//!   verifier must not accept it while silently dropping the new rule.
//! - [`verify_seal`] checks sizes first (manifest 1..=64 KiB, signature
//!   exactly 64 bytes), then the signature with `verify_strict` against each
//!   trusted key, and only then interprets the manifest: format, that the
//!   named key is the one that verified, digest equals the measured one
//!   (algorithm and every byte), serial at or above the floor.
//! - Everything here works on byte slices, except [`read_seal_files`], which
//!   reads the two files with the same limits without reading past them.

use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestParseError, HashAlgorithm};
use crate::keys;

/// The only manifest format this code knows.
pub const FORMAT_V1: &str = "sealroot-seal-v1";
/// Largest manifest accepted (the real ones are about 250 bytes).
pub const MAX_MANIFEST_SIZE: usize = 64 * 1024;
/// Exact size of a seal signature.
pub const SIGNATURE_SIZE: usize = 64;
/// Longest `os` / `version` value.
pub const MAX_TEXT_FIELD: usize = 256;

/// First parsing pass of a manifest: only the format id (unknown fields
/// are allowed here; the second pass is strict).
#[derive(serde::Deserialize)]
struct FormatProbe {
    #[serde(default)]
    format: Option<String>,
}

/// The signer fingerprint an unverified manifest claims (for the message).
#[derive(serde::Deserialize)]
struct KeyProbe {
    #[serde(default)]
    key: Option<String>,
}

/// Why a seal was refused.
#[derive(Debug)]
pub enum SealError {
    ManifestEmpty,
    ManifestTooLarge {
        size: u64,
        limit: usize,
    },
    SignatureWrongSize {
        size: u64,
    },
    /// Not JSON, not an object, a missing or mistyped field, an unknown
    /// field (serde's message names it).
    ManifestMalformed(String),
    MissingFormat,
    UnknownFormat(String),
    UnknownAlgorithm(String),
    BadDigest(DigestParseError),
    /// A field with a value outside what the format allows.
    FieldInvalid {
        field: &'static str,
        reason: String,
    },
    /// Valid JSON with the right fields, but not byte-for-byte the
    /// canonical form (whitespace, escapes, field order).
    NotCanonical,
    /// No trusted keys were given: nothing can be verified.
    NoTrustedKeys,
    /// The manifest names a signing key that is not trusted.
    UnknownKey {
        fingerprint: String,
    },
    /// No trusted key verifies the signature over these manifest bytes.
    SignatureInvalid,
    /// The signature verifies with `actual`, but the manifest names `named`.
    SignerMismatch {
        named: String,
        actual: String,
    },
    /// `expected` is the image's measured digest, `found` the one sealed.
    DigestMismatch {
        expected: Box<Digest>,
        found: Box<Digest>,
    },
    SerialBelowFloor {
        serial: u64,
        floor: u64,
    },
    /// A seal file does not exist.
    Missing {
        path: PathBuf,
    },
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::ManifestEmpty => write!(f, "seal manifest is empty"),
            SealError::ManifestTooLarge { size, limit } => write!(
                f,
                "seal manifest is {size} bytes, larger than the {limit}-byte limit"
            ),
            SealError::SignatureWrongSize { size } => write!(
                f,
                "seal signature is {size} bytes, expected exactly {SIGNATURE_SIZE}"
            ),
            SealError::ManifestMalformed(m) => write!(f, "seal manifest is malformed: {m}"),
            SealError::MissingFormat => write!(f, "seal manifest has no \"format\" field"),
            SealError::UnknownFormat(id) => write!(
                f,
                "seal manifest format {id:?} is unknown (this build knows {FORMAT_V1:?})"
            ),
            SealError::UnknownAlgorithm(a) => write!(
                f,
                "seal manifest digest algorithm {a:?} is unknown (expected sha256 or sha512)"
            ),
            SealError::BadDigest(e) => write!(f, "seal manifest digest is malformed: {e}"),
            SealError::FieldInvalid { field, reason } => {
                write!(f, "seal manifest field {field:?} is invalid: {reason}")
            }
            SealError::NotCanonical => write!(
                f,
                "seal manifest is not in canonical form (compact JSON, fixed field order, one trailing newline)"
            ),
            SealError::NoTrustedKeys => write!(f, "no trusted keys: every seal is refused"),
            SealError::UnknownKey { fingerprint } => {
                write!(f, "seal is signed by an untrusted key {fingerprint}")
            }
            SealError::SignatureInvalid => write!(
                f,
                "seal signature does not verify with any trusted key (manifest or signature altered)"
            ),
            SealError::SignerMismatch { named, actual } => write!(
                f,
                "seal manifest names key {named} but was signed by {actual}"
            ),
            SealError::DigestMismatch { expected, found } => write!(
                f,
                "seal is for digest {}, but the image measures {}",
                found.to_composefs(),
                expected.to_composefs()
            ),
            SealError::SerialBelowFloor { serial, floor } => write!(
                f,
                "seal serial {serial} is below the minimum serial {floor} (rollback refused)"
            ),
            SealError::Missing { path } => write!(f, "{}: seal file missing", path.display()),
            SealError::Read { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for SealError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SealError::BadDigest(e) => Some(e),
            SealError::Read { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The content of a seal manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The image digest this seal is for.
    pub digest: Digest,
    /// Fingerprint (`sha256:<hex>`) of the key that signs it. [`sign`] sets it.
    pub key: String,
    pub os: Option<String>,
    pub version: Option<String>,
    /// Rollback counter; compared against the boot binary's floor.
    pub serial: u64,
    /// UTC time, `YYYY-MM-DDTHH:MM:SSZ`.
    pub created: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDigest {
    algorithm: String,
    hex: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireManifest {
    format: String,
    digest: WireDigest,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    serial: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<String>,
}

impl Manifest {
    /// A manifest for `digest` with no optional fields and serial 0.
    pub fn new(digest: Digest) -> Self {
        Manifest {
            digest,
            key: String::new(),
            os: None,
            version: None,
            serial: 0,
            created: None,
        }
    }

    /// The canonical bytes: compact JSON, fixed field order, then `\n`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = WireManifest {
            format: FORMAT_V1.to_string(),
            digest: WireDigest {
                algorithm: self.digest.algorithm().name().to_string(),
                hex: self.digest.to_hex(),
            },
            key: self.key.clone(),
            os: self.os.clone(),
            version: self.version.clone(),
            serial: self.serial,
            created: self.created.clone(),
        };
        // Serialising plain strings and integers into a Vec cannot fail.
        let mut out = serde_json::to_vec(&wire).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Check every field against the format's rules (used before signing
    /// and after parsing).
    pub fn validate(&self) -> Result<(), SealError> {
        validate_fingerprint(&self.key)?;
        if let Some(os) = &self.os {
            validate_text("os", os)?;
        }
        if let Some(version) = &self.version {
            validate_text("version", version)?;
        }
        if let Some(created) = &self.created {
            validate_timestamp(created)?;
        }
        Ok(())
    }

    /// Parse and check a manifest strictly (see the module contract).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, SealError> {
        check_manifest_size(bytes.len() as u64)?;
        // The format id decides how to read everything else, so it is
        // checked before the field set: a first pass reads only "format"
        // (other fields ignored), the second pass the whole v1 manifest.
        // Typed passes rather than `serde_json::Value` keep the boot binary
        // small.
        let probe: FormatProbe = serde_json::from_slice(bytes)
            .map_err(|e| SealError::ManifestMalformed(e.to_string()))?;
        match probe.format {
            None => return Err(SealError::MissingFormat),
            Some(s) if s == FORMAT_V1 => {}
            Some(s) => return Err(SealError::UnknownFormat(s.chars().take(80).collect())),
        }
        let wire: WireManifest = serde_json::from_slice(bytes)
            .map_err(|e| SealError::ManifestMalformed(e.to_string()))?;
        let algorithm = HashAlgorithm::from_name(&wire.digest.algorithm).ok_or_else(|| {
            SealError::UnknownAlgorithm(wire.digest.algorithm.chars().take(80).collect())
        })?;
        let digest =
            Digest::parse_hex(algorithm, &wire.digest.hex).map_err(SealError::BadDigest)?;
        let manifest = Manifest {
            digest,
            key: wire.key,
            os: wire.os,
            version: wire.version,
            serial: wire.serial,
            created: wire.created,
        };
        manifest.validate()?;
        if manifest.to_bytes() != bytes {
            return Err(SealError::NotCanonical);
        }
        Ok(manifest)
    }
}

fn check_manifest_size(size: u64) -> Result<(), SealError> {
    if size == 0 {
        return Err(SealError::ManifestEmpty);
    }
    if size > MAX_MANIFEST_SIZE as u64 {
        return Err(SealError::ManifestTooLarge {
            size,
            limit: MAX_MANIFEST_SIZE,
        });
    }
    Ok(())
}

fn validate_fingerprint(fp: &str) -> Result<(), SealError> {
    let ok = fp
        .strip_prefix("sha256:")
        .is_some_and(|hex| crate::digest::hex_decode_lower(hex).is_ok_and(|b| b.len() == 32));
    if ok {
        Ok(())
    } else {
        Err(SealError::FieldInvalid {
            field: "key",
            reason: "expected sha256:<64 lowercase hex>".to_string(),
        })
    }
}

fn validate_text(field: &'static str, value: &str) -> Result<(), SealError> {
    if value.is_empty() {
        return Err(SealError::FieldInvalid {
            field,
            reason: "empty".to_string(),
        });
    }
    if value.len() > MAX_TEXT_FIELD {
        return Err(SealError::FieldInvalid {
            field,
            reason: format!("{} bytes, limit {MAX_TEXT_FIELD}", value.len()),
        });
    }
    // Values end up in log lines and status files; control characters
    // could forge lines there.
    if value.chars().any(char::is_control) {
        return Err(SealError::FieldInvalid {
            field,
            reason: "contains a control character".to_string(),
        });
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SSZ`, a real calendar date and time.
fn validate_timestamp(value: &str) -> Result<(), SealError> {
    let bad = || SealError::FieldInvalid {
        field: "created",
        reason: format!("{value:?} is not YYYY-MM-DDTHH:MM:SSZ"),
    };
    let b = value.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<u32, SealError> {
        let digits = b.get(range).ok_or_else(bad)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(digits
            .iter()
            .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')))
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return Err(bad());
    }
    Ok(())
}

/// Format seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn format_timestamp(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let secs = unix_seconds % 86_400;
    // Civil date from a day count: shift the epoch to 0000-03-01 so leap
    // days fall at the end of each 400-year era's years.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Sign `manifest` with `key`. The manifest's `key` field is set to the
/// signer's fingerprint. Returns the exact manifest bytes and the signature.
pub fn sign(key: &SigningKey, manifest: &Manifest) -> (Vec<u8>, [u8; SIGNATURE_SIZE]) {
    let mut m = manifest.clone();
    m.key = keys::fingerprint(&key.verifying_key());
    let bytes = m.to_bytes();
    let sig = key.sign(&bytes).to_bytes();
    (bytes, sig)
}

/// A seal that passed [`verify_seal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedSeal {
    pub manifest: Manifest,
    /// Fingerprint of the trusted key that verified it.
    pub key_fingerprint: String,
    /// Index of that key in the slice given to [`verify_seal`].
    pub key_index: usize,
}

/// Verify a seal for an image whose digest was `measured`.
pub fn verify_seal(
    manifest_bytes: &[u8],
    sig_bytes: &[u8],
    keys: &[VerifyingKey],
    measured: &Digest,
    serial_floor: u64,
) -> Result<VerifiedSeal, SealError> {
    check_manifest_size(manifest_bytes.len() as u64)?;
    let sig: &[u8; SIGNATURE_SIZE] =
        sig_bytes
            .try_into()
            .map_err(|_| SealError::SignatureWrongSize {
                size: sig_bytes.len() as u64,
            })?;
    if keys.is_empty() {
        return Err(SealError::NoTrustedKeys);
    }
    let signature = Signature::from_bytes(sig);
    let Some(key_index) = keys
        .iter()
        .position(|k| k.verify_strict(manifest_bytes, &signature).is_ok())
    else {
        return Err(unverified_reason(manifest_bytes, keys));
    };
    let key_fingerprint = keys::fingerprint(&keys[key_index]);
    let manifest = Manifest::parse(manifest_bytes)?;
    if manifest.key != key_fingerprint {
        return Err(SealError::SignerMismatch {
            named: manifest.key,
            actual: key_fingerprint,
        });
    }
    if manifest.digest != *measured {
        return Err(SealError::DigestMismatch {
            expected: Box::new(*measured),
            found: Box::new(manifest.digest),
        });
    }
    if manifest.serial < serial_floor {
        return Err(SealError::SerialBelowFloor {
            serial: manifest.serial,
            floor: serial_floor,
        });
    }
    Ok(VerifiedSeal {
        manifest,
        key_fingerprint,
        key_index,
    })
}

/// When no key verifies: if the (unauthenticated) manifest names a key we
/// do not trust, say so, since that is the likely cause; otherwise the
/// manifest or signature was altered. This only picks the message; the seal
/// is refused either way.
fn unverified_reason(manifest_bytes: &[u8], keys: &[VerifyingKey]) -> SealError {
    let named = serde_json::from_slice::<KeyProbe>(manifest_bytes)
        .ok()
        .and_then(|p| p.key);
    match named {
        Some(fp) if validate_fingerprint(&fp).is_ok() => {
            if keys.iter().any(|k| keys::fingerprint(k) == fp) {
                SealError::SignatureInvalid
            } else {
                SealError::UnknownKey { fingerprint: fp }
            }
        }
        _ => SealError::SignatureInvalid,
    }
}

/// Read `seals/<hex>.json` and `seals/<hex>.sig` beneath the repository's
/// `composefs/` directory fd, the way the boot does: opened with
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
/// non-blocking, regular files only (a symlink, FIFO or device is refused),
/// and never read past their limits (manifest 64 KiB, signature 64 bytes).
/// Errors name the files as `composefs/seals/<hex>.{json,sig}`.
pub fn read_seal_pair(
    composefs: impl std::os::fd::AsFd,
    digest: &Digest,
) -> Result<(Vec<u8>, Vec<u8>), crate::boot::io::FileError> {
    use crate::boot::io::{read_beneath, Follow};
    use crate::layout::{seal_rel, shown};
    let (json_rel, sig_rel) = seal_rel(digest);
    let manifest = read_beneath(
        &composefs,
        &json_rel,
        &shown(&json_rel),
        MAX_MANIFEST_SIZE,
        Follow::Never,
    )?;
    let sig = read_beneath(
        &composefs,
        &sig_rel,
        &shown(&sig_rel),
        SIGNATURE_SIZE,
        Follow::Never,
    )?;
    Ok((manifest, sig))
}

/// Why an image's seal in a repository was not accepted.
#[derive(Debug)]
pub enum RepoSealError {
    /// A seal file is missing, not a regular file, behind a symlink, too
    /// large or unreadable.
    File(crate::boot::io::FileError),
    /// The files were read and the seal does not verify.
    Rejected { path: String, error: SealError },
}

impl fmt::Display for RepoSealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoSealError::File(e) => write!(f, "seal: {e}"),
            RepoSealError::Rejected { path, error } => write!(f, "seal {path} rejected: {error}"),
        }
    }
}

impl std::error::Error for RepoSealError {}

/// A seal accepted by [`check_repository_seal`].
#[derive(Clone, Debug)]
pub struct CheckedSeal {
    pub verified: VerifiedSeal,
    /// The manifest bytes that were signed.
    pub manifest: Vec<u8>,
}

/// THE seal check: the boot, `sealroot check-seal` and `sealctl uki inspect
/// --repo` call this; `sealctl verify` reads the same files with the same
/// reader ([`read_seal_files`]) and runs the same [`verify_seal`]. Reads the seal of `digest`
/// beneath the `composefs/` fd ([`read_seal_pair`]) and verifies it against
/// `keys` with `serial_floor` ([`verify_seal`]).
pub fn check_repository_seal(
    composefs: impl std::os::fd::AsFd,
    digest: &Digest,
    keys: &[VerifyingKey],
    serial_floor: u64,
) -> Result<CheckedSeal, RepoSealError> {
    let (manifest, sig) = read_seal_pair(&composefs, digest).map_err(RepoSealError::File)?;
    let verified = verify_seal(&manifest, &sig, keys, digest, serial_floor).map_err(|error| {
        RepoSealError::Rejected {
            path: crate::layout::shown(&crate::layout::seal_rel(digest).0),
            error,
        }
    })?;
    Ok(CheckedSeal { verified, manifest })
}

/// Read a seal's two files from a repository's `composefs/` directory on
/// the tool side, with exactly the rules of [`read_seal_pair`] (only the
/// `composefs/` directory itself is opened by path). Returns (manifest
/// bytes, signature bytes).
pub fn read_seal_files(composefs: &Path, digest: &Digest) -> Result<(Vec<u8>, Vec<u8>), SealError> {
    use crate::boot::io::FileError;
    let (json_rel, sig_rel) = crate::layout::seal_rel(digest);
    let (json, sig) = (composefs.join(&json_rel), composefs.join(&sig_rel));
    let dir = rustix::fs::open(
        composefs,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|errno| match errno {
        rustix::io::Errno::NOENT => SealError::Missing { path: json.clone() },
        errno => SealError::Read {
            path: composefs.to_path_buf(),
            error: std::io::Error::from_raw_os_error(errno.raw_os_error()),
        },
    })?;
    let read = |name: &str, path: &Path, limit: usize| {
        crate::boot::io::read_beneath(
            &dir,
            name,
            &path.display().to_string(),
            limit,
            crate::boot::io::Follow::Never,
        )
        .map_err(|e| match e {
            FileError::Missing { .. } => SealError::Missing {
                path: path.to_path_buf(),
            },
            FileError::TooLarge { .. } if limit == SIGNATURE_SIZE => {
                SealError::SignatureWrongSize {
                    size: file_size(path),
                }
            }
            FileError::TooLarge { .. } => SealError::ManifestTooLarge {
                size: file_size(path),
                limit: MAX_MANIFEST_SIZE,
            },
            other => SealError::Read {
                path: path.to_path_buf(),
                error: std::io::Error::other(other.to_string()),
            },
        })
    };
    let manifest = read(&json_rel, &json, MAX_MANIFEST_SIZE)?;
    check_manifest_size(manifest.len() as u64)?;
    let signature = read(&sig_rel, &sig, SIGNATURE_SIZE)?;
    if signature.len() != SIGNATURE_SIZE {
        return Err(SealError::SignatureWrongSize {
            size: signature.len() as u64,
        });
    }
    Ok((manifest, signature))
}

/// Size of a file for an error message (0 if it cannot be read).
fn file_size(path: &Path) -> u64 {
    std::fs::symlink_metadata(path)
        .map(|m| m.len())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn digest(n: u8) -> Digest {
        Digest::from_bytes(HashAlgorithm::Sha256, &[n; 32]).unwrap()
    }

    fn sealed(n: u8) -> (Vec<u8>, [u8; 64]) {
        let mut m = Manifest::new(digest(1));
        m.os = Some("Debian".into());
        m.version = Some("12.5".into());
        m.serial = 7;
        m.created = Some("2026-01-02T03:04:05Z".into());
        sign(&key(n), &m)
    }

    #[test]
    fn canonical_bytes_are_exact() {
        let (bytes, _) = sealed(1);
        let fp = keys::fingerprint(&key(1).verifying_key());
        let expect = format!(
            "{{\"format\":\"sealroot-seal-v1\",\"digest\":{{\"algorithm\":\"sha256\",\"hex\":\"{}\"}},\"key\":\"{fp}\",\"os\":\"Debian\",\"version\":\"12.5\",\"serial\":7,\"created\":\"2026-01-02T03:04:05Z\"}}\n",
            "01".repeat(32)
        );
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), expect);
        let m = Manifest::parse(&bytes).unwrap();
        assert_eq!(m.serial, 7);
        assert_eq!(m.digest, digest(1));
    }

    #[test]
    fn verify_good_and_each_failure_by_name() {
        let (bytes, sig) = sealed(1);
        let trusted = [key(9).verifying_key(), key(1).verifying_key()];
        let ok = verify_seal(&bytes, &sig, &trusted, &digest(1), 7).unwrap();
        assert_eq!(ok.key_index, 1);
        assert_eq!(ok.key_fingerprint, keys::fingerprint(&trusted[1]));

        assert!(matches!(
            verify_seal(&bytes, &sig, &trusted, &digest(2), 0),
            Err(SealError::DigestMismatch { expected, found }) if *expected == digest(2) && *found == digest(1)
        ));
        assert!(matches!(
            verify_seal(&bytes, &sig, &trusted, &digest(1), 8),
            Err(SealError::SerialBelowFloor {
                serial: 7,
                floor: 8
            })
        ));
        assert!(matches!(
            verify_seal(&bytes, &sig, &[], &digest(1), 0),
            Err(SealError::NoTrustedKeys)
        ));
        let other = [key(9).verifying_key()];
        match verify_seal(&bytes, &sig, &other, &digest(1), 0) {
            Err(SealError::UnknownKey { fingerprint }) => {
                assert_eq!(fingerprint, keys::fingerprint(&key(1).verifying_key()))
            }
            r => panic!("{r:?}"),
        }
        // Flipped bits anywhere in the manifest or signature are caught
        // (every 7th byte: strict verification is slow in debug builds).
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x04;
            assert!(
                matches!(
                    verify_seal(&b, &sig, &trusted, &digest(1), 0),
                    Err(SealError::SignatureInvalid | SealError::UnknownKey { .. })
                ),
                "manifest byte {i}"
            );
        }
        for i in (0..64).step_by(5) {
            let mut s = sig;
            s[i] ^= 0x01;
            assert!(
                matches!(
                    verify_seal(&bytes, &s, &trusted, &digest(1), 0),
                    Err(SealError::SignatureInvalid)
                ),
                "signature byte {i}"
            );
        }
        assert!(matches!(
            verify_seal(&bytes, &sig[..63], &trusted, &digest(1), 0),
            Err(SealError::SignatureWrongSize { size: 63 })
        ));
        assert!(matches!(
            verify_seal(b"", &sig, &trusted, &digest(1), 0),
            Err(SealError::ManifestEmpty)
        ));
        let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
        assert!(matches!(
            verify_seal(&big, &sig, &trusted, &digest(1), 0),
            Err(SealError::ManifestTooLarge { size, limit: MAX_MANIFEST_SIZE }) if size == big.len() as u64
        ));
    }

    #[test]
    fn signer_must_match_named_key() {
        let mut m = Manifest::new(digest(1));
        m.key = keys::fingerprint(&key(2).verifying_key());
        let bytes = m.to_bytes();
        let sig = key(1).sign(&bytes).to_bytes();
        assert!(matches!(
            verify_seal(&bytes, &sig, &[key(1).verifying_key()], &digest(1), 0),
            Err(SealError::SignerMismatch { .. })
        ));
    }

    /// Sign arbitrary bytes so the parse errors after a valid signature are
    /// reachable.
    fn verify_raw(text: &str) -> Result<VerifiedSeal, SealError> {
        let sig = key(1).sign(text.as_bytes()).to_bytes();
        verify_seal(
            text.as_bytes(),
            &sig,
            &[key(1).verifying_key()],
            &digest(1),
            0,
        )
    }

    #[test]
    fn parse_errors_named() {
        let fp = keys::fingerprint(&key(1).verifying_key());
        let hex = "01".repeat(32);
        let good = |rest: &str| {
            format!("{{\"format\":\"sealroot-seal-v1\",\"digest\":{{\"algorithm\":\"sha256\",\"hex\":\"{hex}\"}},\"key\":\"{fp}\"{rest}}}\n")
        };
        assert!(verify_raw(&good(",\"serial\":0")).is_ok());
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "ManifestMalformed"),
            ("[1,2]\n".into(), "ManifestMalformed"),
            ("{\"serial\":1}\n".into(), "MissingFormat"),
            (
                "{\"format\":\"sealroot-seal-v2\"}\n".into(),
                "UnknownFormat",
            ),
            ("{\"format\":7}\n".into(), "ManifestMalformed"),
            (good(""), "ManifestMalformed"), // serial missing
            (good(",\"serial\":0,\"extra\":1"), "ManifestMalformed"),
            (good(",\"serial\":-1"), "ManifestMalformed"),
            (good(",\"serial\":1.5"), "ManifestMalformed"),
            (
                good(",\"serial\":18446744073709551616"),
                "ManifestMalformed",
            ),
            (good(",\"serial\":0,\"os\":\"\""), "FieldInvalid"),
            (good(",\"serial\":0,\"os\":\"a\\nb\""), "FieldInvalid"),
            (
                good(",\"serial\":0,\"created\":\"2026-02-30T00:00:00Z\""),
                "FieldInvalid",
            ),
            (
                good(",\"serial\":0,\"created\":\"yesterday\""),
                "FieldInvalid",
            ),
            (good(", \"serial\":0"), "NotCanonical"),
            (good(",\"serial\":0").trim_end().to_string(), "NotCanonical"),
            (
                good(",\"serial\":0").replace("sha256\",\"hex\"", "sha1\",\"hex\""),
                "UnknownAlgorithm",
            ),
            (good(",\"serial\":0").replace(&hex, &hex[..62]), "BadDigest"),
            (
                good(",\"serial\":0").replace(&hex, &"0A".repeat(32)),
                "BadDigest",
            ),
            (
                good(",\"serial\":0").replace(&hex, &"ab".repeat(64)),
                "BadDigest",
            ),
        ];
        for (text, want) in cases {
            let Err(err) = verify_raw(&text) else {
                panic!("accepted {text:?}")
            };
            let name = format!("{err:?}");
            assert!(name.starts_with(want), "{text:?}: got {name}, want {want}");
            // Every error renders as one readable line.
            let line = err.to_string();
            assert!(!line.is_empty() && !line.contains('\n'), "{line:?}");
        }
    }

    #[test]
    fn sha512_manifest_round_trips() {
        let d = Digest::from_bytes(HashAlgorithm::Sha512, &[3u8; 64]).unwrap();
        let (bytes, sig) = sign(&key(1), &Manifest::new(d));
        let v = verify_seal(&bytes, &sig, &[key(1).verifying_key()], &d, 0).unwrap();
        assert_eq!(v.manifest.digest, d);
        // A sha256 digest with the same leading bytes is a different digest.
        let short = Digest::from_bytes(HashAlgorithm::Sha256, &[3u8; 32]).unwrap();
        assert!(matches!(
            verify_seal(&bytes, &sig, &[key(1).verifying_key()], &short, 0),
            Err(SealError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_timestamp(4_102_444_799), "2099-12-31T23:59:59Z");
        for t in [0u64, 951_782_400, 1_700_000_000, 4_102_444_799] {
            assert!(validate_timestamp(&format_timestamp(t)).is_ok());
        }
        assert!(validate_timestamp("2023-02-29T00:00:00Z").is_err());
        assert!(validate_timestamp("2024-02-29T00:00:00Z").is_ok());
        assert!(validate_timestamp("2024-13-01T00:00:00Z").is_err());
        assert!(validate_timestamp("2024-01-01T24:00:00Z").is_err());
        assert!(validate_timestamp("2024-01-01t00:00:00Z").is_err());
    }
}
