//! The digest value: an fs-verity algorithm plus its bytes.
//!
//! Contract:
//! - [`HashAlgorithm`] is the fs-verity hash algorithm number the kernel uses
//!   (`FS_VERITY_HASH_ALG_SHA256` = 1, `FS_VERITY_HASH_ALG_SHA512` = 2).
//! - Hex is lowercase, exactly `2 * len` characters. Parsing is strict: empty,
//!   short, long, uppercase or non-hex input is an error, never truncated or
//!   padded. Uppercase is refused so that one digest has exactly one spelling
//!   (file names in the object store, manifest fields, command line).
//! - [`Digest::parse_composefs`] accepts the composefs-rs grammar
//!   `v<1|2>-<sha256|sha512>-12:<hex>` (12 = log2 of the 4096-byte block size).
//! - [`Digest::parse_hex_any`] is the legacy `composefs=<hex>` form: the
//!   algorithm follows from the length (64 → SHA-256, 128 → SHA-512).

use std::fmt;

/// fs-verity hash algorithm, numbered as in `<linux/fsverity.h>`.
/// SHA-256 is the default: it is what composefs, mkcomposefs and bootc use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgorithm {
    #[default]
    Sha256 = 1,
    Sha512 = 2,
}

impl HashAlgorithm {
    /// Digest length in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha512 => 64,
        }
    }

    /// The kernel's algorithm number.
    pub const fn number(self) -> u8 {
        self as u8
    }

    pub fn from_number(n: u32) -> Option<Self> {
        match n {
            1 => Some(HashAlgorithm::Sha256),
            2 => Some(HashAlgorithm::Sha512),
            _ => None,
        }
    }

    /// `sha256` / `sha512`, as `fsverity digest` prints it.
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(HashAlgorithm::Sha256),
            "sha512" => Some(HashAlgorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestParseError {
    Empty,
    /// Hex of the wrong length for the algorithm.
    WrongLength {
        expected: usize,
        found: usize,
    },
    /// A character that is not lowercase hex, at this byte offset.
    NotLowercaseHex {
        offset: usize,
    },
    /// The `v1-sha256-12:` prefix is malformed or names an unknown algorithm.
    BadPrefix(String),
    /// Hex length that matches no algorithm (legacy form).
    UnknownLength(usize),
}

impl fmt::Display for DigestParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestParseError::Empty => write!(f, "digest is empty"),
            DigestParseError::WrongLength { expected, found } => {
                write!(f, "digest has {found} hex characters, expected {expected}")
            }
            DigestParseError::NotLowercaseHex { offset } => {
                write!(f, "digest has a character that is not lowercase hex at offset {offset}")
            }
            DigestParseError::BadPrefix(p) => write!(
                f,
                "digest prefix {p:?} is not v1-sha256-12, v1-sha512-12, v2-sha256-12 or v2-sha512-12"
            ),
            DigestParseError::UnknownLength(n) => write!(
                f,
                "digest has {n} hex characters; expected 64 (sha256) or 128 (sha512)"
            ),
        }
    }
}

impl std::error::Error for DigestParseError {}

/// An fs-verity digest: algorithm and exactly `algorithm.digest_len()` bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: HashAlgorithm,
    bytes: [u8; 64],
}

impl Digest {
    /// Build from raw bytes; `None` if the length does not match the algorithm.
    pub fn from_bytes(algorithm: HashAlgorithm, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != algorithm.digest_len() {
            return None;
        }
        let mut buf = [0u8; 64];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(Digest {
            algorithm,
            bytes: buf,
        })
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.algorithm.digest_len()]
    }

    /// Lowercase hex of the digest bytes.
    pub fn to_hex(&self) -> String {
        hex_encode(self.as_bytes())
    }

    /// `v1-sha256-12:<hex>`, the composefs-rs / bootc command-line form.
    pub fn to_composefs(&self) -> String {
        format!("v1-{}-12:{}", self.algorithm.name(), self.to_hex())
    }

    /// Parse strict lowercase hex for a known algorithm.
    pub fn parse_hex(algorithm: HashAlgorithm, hex: &str) -> Result<Self, DigestParseError> {
        if hex.is_empty() {
            return Err(DigestParseError::Empty);
        }
        let expected = algorithm.digest_len() * 2;
        if hex.len() != expected {
            return Err(DigestParseError::WrongLength {
                expected,
                found: hex.len(),
            });
        }
        let bytes = hex_decode_lower(hex)?;
        Ok(Digest::from_bytes(algorithm, &bytes).expect("length checked above"))
    }

    /// Legacy form: bare hex, algorithm from the length.
    pub fn parse_hex_any(hex: &str) -> Result<Self, DigestParseError> {
        match hex.len() {
            0 => Err(DigestParseError::Empty),
            64 => Digest::parse_hex(HashAlgorithm::Sha256, hex),
            128 => Digest::parse_hex(HashAlgorithm::Sha512, hex),
            n => {
                // Report a bad character before a bad length: it is the more
                // specific fact when someone pasted garbage.
                hex_decode_lower_prefix_check(hex)?;
                Err(DigestParseError::UnknownLength(n))
            }
        }
    }

    /// The composefs-rs grammar `v<1|2>-<sha256|sha512>-12:<hex>`.
    pub fn parse_composefs(text: &str) -> Result<Self, DigestParseError> {
        if text.is_empty() {
            return Err(DigestParseError::Empty);
        }
        let (prefix, hex) = text
            .split_once(':')
            .ok_or_else(|| DigestParseError::BadPrefix(text.chars().take(16).collect()))?;
        let algorithm = match prefix {
            "v1-sha256-12" | "v2-sha256-12" => HashAlgorithm::Sha256,
            "v1-sha512-12" | "v2-sha512-12" => HashAlgorithm::Sha512,
            other => {
                return Err(DigestParseError::BadPrefix(
                    other.chars().take(16).collect(),
                ))
            }
        };
        Digest::parse_hex(algorithm, hex)
    }

    /// The one grammar for a digest typed by a person or read from a config
    /// (`sealctl` arguments, `config.json`, `sealroot check-seal`):
    /// `v<1|2>-<sha256|sha512>-12:<hex>`, `<sha256|sha512>:<hex>` (what
    /// `fsverity digest` prints), or bare lowercase hex (algorithm from the
    /// length). The kernel command line has its own, narrower forms
    /// ([`crate::boot::cmdline`]).
    pub fn parse_user(text: &str) -> Result<Self, DigestParseError> {
        if text.starts_with('v') {
            return Digest::parse_composefs(text);
        }
        match text.split_once(':') {
            Some((alg, hex)) => match HashAlgorithm::from_name(alg) {
                Some(alg) => Digest::parse_hex(alg, hex),
                None => Err(DigestParseError::BadPrefix(alg.chars().take(16).collect())),
            },
            None => Digest::parse_hex_any(text),
        }
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.to_hex())
    }
}

impl fmt::Display for Digest {
    /// `sha256:<hex>`, as `fsverity digest` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.to_hex())
    }
}

/// Lowercase hex encoding.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn lower_hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_decode_lower_prefix_check(hex: &str) -> Result<(), DigestParseError> {
    match hex.bytes().position(|c| lower_hex_value(c).is_none()) {
        Some(offset) => Err(DigestParseError::NotLowercaseHex { offset }),
        None => Ok(()),
    }
}

/// Decode strict lowercase hex of even length.
pub fn hex_decode_lower(hex: &str) -> Result<Vec<u8>, DigestParseError> {
    hex_decode_lower_prefix_check(hex)?;
    if hex.len() % 2 != 0 {
        return Err(DigestParseError::WrongLength {
            expected: hex.len() + 1,
            found: hex.len(),
        });
    }
    Ok(hex
        .as_bytes()
        .chunks_exact(2)
        .map(|p| (lower_hex_value(p[0]).unwrap() << 4) | lower_hex_value(p[1]).unwrap())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95";

    #[test]
    fn round_trips_composefs_form() {
        let d = Digest::parse_composefs(&format!("v1-sha256-12:{HEX}")).unwrap();
        assert_eq!(d.algorithm(), HashAlgorithm::Sha256);
        assert_eq!(d.to_hex(), HEX);
        assert_eq!(d.to_composefs(), format!("v1-sha256-12:{HEX}"));
    }

    #[test]
    fn sha512_form_needs_128_chars() {
        let long = HEX.repeat(2);
        assert!(Digest::parse_composefs(&format!("v1-sha512-12:{long}")).is_ok());
        assert_eq!(
            Digest::parse_composefs(&format!("v1-sha512-12:{HEX}")),
            Err(DigestParseError::WrongLength {
                expected: 128,
                found: 64
            })
        );
    }

    #[test]
    fn refuses_malformed() {
        assert_eq!(Digest::parse_composefs(""), Err(DigestParseError::Empty));
        assert!(matches!(
            Digest::parse_composefs(&format!("v1-sha1-12:{HEX}")),
            Err(DigestParseError::BadPrefix(_))
        ));
        assert!(matches!(
            Digest::parse_composefs(&format!("v1-sha256-13:{HEX}")),
            Err(DigestParseError::BadPrefix(_))
        ));
        assert!(matches!(
            Digest::parse_composefs(HEX),
            Err(DigestParseError::BadPrefix(_))
        ));
        let upper = HEX.to_uppercase();
        assert_eq!(
            Digest::parse_hex_any(&upper),
            Err(DigestParseError::NotLowercaseHex { offset: 1 })
        );
        assert!(Digest::parse_hex_any(&HEX[..63]).is_err());
        assert!(Digest::parse_hex_any(&format!("{HEX}0")).is_err());
        assert!(Digest::parse_hex_any(&format!("{HEX} ")).is_err());
        assert_eq!(
            Digest::parse_hex_any(&format!("?{}", &HEX[1..])),
            Err(DigestParseError::NotLowercaseHex { offset: 0 })
        );
        assert_eq!(Digest::parse_hex_any(""), Err(DigestParseError::Empty));
    }

    #[test]
    fn from_bytes_checks_length() {
        assert!(Digest::from_bytes(HashAlgorithm::Sha256, &[0; 31]).is_none());
        assert!(Digest::from_bytes(HashAlgorithm::Sha512, &[0; 32]).is_none());
        assert!(Digest::from_bytes(HashAlgorithm::Sha512, &[0; 64]).is_some());
    }
}
