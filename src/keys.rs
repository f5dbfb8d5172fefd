//! Ed25519 keys: fingerprints and raw-key checks (both binaries), and PEM
//! key files (the tool, feature `tool`).
//!
//! Contract:
//! - [`fingerprint`] is `sha256:` + lowercase hex of SHA-256 over the 32 raw
//!   public key bytes. It names a key in manifests, logs and status files.
//! - Public keys must be valid, non-small-order curve points (the test
//!   `verify_strict` applies), so a weak key is refused when loaded rather
//!   than when a signature happens to be checked ([`public_key_from_raw`]).
//! - Private keys are PKCS#8 `PRIVATE KEY` PEM (RFC 5958 / RFC 8410): version
//!   0 ("v1", what `openssl genpkey -algorithm ed25519` writes) or version 1
//!   ("v2", with the `[1]` public key, which must belong to the private key).
//!   Public keys are SubjectPublicKeyInfo `PUBLIC KEY` PEM. The algorithm must
//!   be id-Ed25519 (1.3.101.112) with absent parameters.
//! - Parsing is strict and bounded: at most [`MAX_PEM_SIZE`] bytes, exactly
//!   one PEM block with only whitespace around it (RFC 7468 strict form,
//!   canonical base64), DER only (shortest lengths, no trailing bytes).
//!   Encrypted keys and other algorithms are refused by name.
//! - The PEM, DER, PKCS#8 and SPKI work is done by the RustCrypto crates
//!   (`pem-rfc7468`, `der`, `pkcs8`, `spki`) through ed25519-dalek's `pem`
//!   feature, which only the tool enables; this module adds the checks those
//!   crates leave to their callers (one block and nothing around it, the
//!   parameters, a weak public key, the size bound) and names each refusal.
//! - [`generate`] takes 32 bytes from `/dev/urandom`, the kernel CSPRNG.

use std::fmt;
#[cfg(feature = "tool")]
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
#[cfg(feature = "tool")]
use ed25519_dalek::{
    pkcs8::{
        self,
        spki::{self, der, der::Decode},
        EncodePrivateKey, EncodePublicKey, KeypairBytes,
    },
    SigningKey,
};
use sha2::{Digest as _, Sha256};

/// Largest PEM file accepted. A real Ed25519 key PEM is about 120 bytes.
pub const MAX_PEM_SIZE: usize = 16 * 1024;

/// id-Ed25519, RFC 8410.
#[cfg(feature = "tool")]
const OID_ED25519: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.101.112");

#[cfg(feature = "tool")]
const LABEL_PRIVATE: &str = "PRIVATE KEY";
#[cfg(feature = "tool")]
const LABEL_PUBLIC: &str = "PUBLIC KEY";
#[cfg(feature = "tool")]
const LABEL_ENCRYPTED: &str = "ENCRYPTED PRIVATE KEY";

/// Why a key was refused.
#[derive(Debug)]
pub enum KeyError {
    /// Raw key of the wrong length.
    WrongKeyLength { found: usize },
    /// The public key is not a valid curve point.
    InvalidPublicKey,
    /// The public key has small order; every strict verification would fail.
    WeakPublicKey,
    /// The input is larger than [`MAX_PEM_SIZE`].
    #[cfg(feature = "tool")]
    TooLarge { size: u64, limit: usize },
    /// Not one well-formed PEM block (the reason is pem-rfc7468's).
    #[cfg(feature = "tool")]
    Pem(der::pem::Error),
    /// Something other than whitespace before or after the PEM block, or a
    /// second block.
    #[cfg(feature = "tool")]
    TextOutsideBlock,
    /// The block is of another kind than asked for (e.g. a public key where
    /// a private key is needed).
    #[cfg(feature = "tool")]
    WrongLabel {
        expected: &'static str,
        found: String,
    },
    /// `ENCRYPTED PRIVATE KEY`: decrypt it first.
    #[cfg(feature = "tool")]
    Encrypted,
    /// The block's bytes are not the DER structure asked for.
    #[cfg(feature = "tool")]
    Der(der::Error),
    /// The key is for another algorithm (dotted OID), not Ed25519.
    #[cfg(feature = "tool")]
    NotEd25519 { oid: String },
    /// The algorithm identifier carries parameters; RFC 8410 forbids them.
    #[cfg(feature = "tool")]
    AlgorithmParameters,
    /// A PKCS#8 v2 key whose embedded public key is not the one derived
    /// from its private key.
    #[cfg(feature = "tool")]
    PublicKeyMismatch,
    /// Reading the key file failed (missing, too large, I/O).
    #[cfg(feature = "tool")]
    File(crate::image::fileio::FileIoError),
    /// Reading the random source failed.
    #[cfg(feature = "tool")]
    Random { path: PathBuf, error: String },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::WrongKeyLength { found } => {
                write!(f, "Ed25519 key is {found} bytes, expected 32")
            }
            KeyError::InvalidPublicKey => write!(f, "public key is not a valid Ed25519 point"),
            KeyError::WeakPublicKey => write!(
                f,
                "public key has small order and can never verify strictly"
            ),
            #[cfg(feature = "tool")]
            KeyError::TooLarge { size, limit } => write!(
                f,
                "key file is {size} bytes, larger than the {limit}-byte limit"
            ),
            #[cfg(feature = "tool")]
            KeyError::Pem(e) => write!(f, "not a well-formed PEM block: {e}"),
            #[cfg(feature = "tool")]
            KeyError::TextOutsideBlock => write!(
                f,
                "text outside the PEM block (only one block and whitespace are allowed)"
            ),
            #[cfg(feature = "tool")]
            KeyError::WrongLabel { expected, found } => {
                write!(f, "PEM block is {found:?}, expected {expected:?}")
            }
            #[cfg(feature = "tool")]
            KeyError::Encrypted => write!(
                f,
                "private key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)"
            ),
            #[cfg(feature = "tool")]
            KeyError::Der(e) => write!(f, "malformed key structure: {e}"),
            #[cfg(feature = "tool")]
            KeyError::NotEd25519 { oid } => {
                write!(f, "key algorithm is {oid}, not Ed25519 (1.3.101.112)")
            }
            #[cfg(feature = "tool")]
            KeyError::AlgorithmParameters => write!(
                f,
                "Ed25519 algorithm identifier has parameters (RFC 8410 forbids them)"
            ),
            #[cfg(feature = "tool")]
            KeyError::PublicKeyMismatch => write!(
                f,
                "the public key inside the PKCS#8 v2 file does not belong to its private key"
            ),
            #[cfg(feature = "tool")]
            KeyError::File(e) => e.fmt(f),
            #[cfg(feature = "tool")]
            KeyError::Random { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for KeyError {}

/// `sha256:<hex>` of the 32 raw public key bytes.
pub fn fingerprint(key: &VerifyingKey) -> String {
    let hash = Sha256::digest(key.as_bytes());
    format!("sha256:{}", crate::digest::hex_encode(&hash))
}

/// A verifying key from its 32 raw bytes, refusing invalid and weak points.
pub fn public_key_from_raw(raw: &[u8]) -> Result<VerifyingKey, KeyError> {
    let bytes: &[u8; 32] = raw
        .try_into()
        .map_err(|_| KeyError::WrongKeyLength { found: raw.len() })?;
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidPublicKey)?;
    if key.is_weak() {
        return Err(KeyError::WeakPublicKey);
    }
    Ok(key)
}

// ---------------------------------------------------------------------------
// PEM key files (tool only)

/// The DER bytes of the single PEM block in `input`, labelled `want`.
#[cfg(feature = "tool")]
fn pem_block(
    input: &[u8],
    want: &'static str,
) -> Result<der::zeroize::Zeroizing<Vec<u8>>, KeyError> {
    if input.len() > MAX_PEM_SIZE {
        return Err(KeyError::TooLarge {
            size: input.len() as u64,
            limit: MAX_PEM_SIZE,
        });
    }
    // pem-rfc7468 reads the first block and ignores what follows its END
    // line; a key file is exactly one block, so anything else is refused.
    let text = std::str::from_utf8(input).map_err(|_| KeyError::TextOutsideBlock)?;
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if !trimmed.starts_with("-----BEGIN ") {
        return Err(if text.contains("-----BEGIN ") {
            KeyError::TextOutsideBlock
        } else {
            KeyError::Pem(der::pem::Error::PreEncapsulationBoundary)
        });
    }
    let label = der::pem::decode_label(trimmed.as_bytes()).map_err(KeyError::Pem)?;
    if label == LABEL_ENCRYPTED && want == LABEL_PRIVATE {
        return Err(KeyError::Encrypted);
    }
    if label != want {
        return Err(KeyError::WrongLabel {
            expected: want,
            found: label.to_string(),
        });
    }
    let end = format!("-----END {want}-----");
    if !trimmed.ends_with(&end) || trimmed.matches("-----BEGIN ").count() != 1 {
        return Err(KeyError::TextOutsideBlock);
    }
    let (_, der) = der::pem::decode_vec(trimmed.as_bytes()).map_err(KeyError::Pem)?;
    Ok(der::zeroize::Zeroizing::new(der))
}

/// RFC 8410: id-Ed25519 and no parameters.
#[cfg(feature = "tool")]
fn check_algorithm<P>(alg: &spki::AlgorithmIdentifier<P>) -> Result<(), KeyError> {
    if alg.oid != OID_ED25519 {
        return Err(KeyError::NotEd25519 {
            oid: alg.oid.to_string(),
        });
    }
    if alg.parameters.is_some() {
        return Err(KeyError::AlgorithmParameters);
    }
    Ok(())
}

/// Parse SubjectPublicKeyInfo DER holding an Ed25519 key.
#[cfg(feature = "tool")]
fn parse_spki_der(der: &[u8]) -> Result<VerifyingKey, KeyError> {
    let info = spki::SubjectPublicKeyInfoRef::from_der(der).map_err(KeyError::Der)?;
    check_algorithm(&info.algorithm)?;
    let raw = info
        .subject_public_key
        .as_bytes()
        .ok_or(KeyError::InvalidPublicKey)?;
    public_key_from_raw(raw)
}

/// Parse PKCS#8 DER (v1 or v2) holding an Ed25519 key.
#[cfg(feature = "tool")]
fn parse_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyError> {
    let info = pkcs8::PrivateKeyInfo::from_der(der).map_err(KeyError::Der)?;
    check_algorithm(&info.algorithm)?;
    let pair = KeypairBytes::try_from(info).map_err(|_| {
        KeyError::Der(der::Error::from(der::ErrorKind::Value {
            tag: der::Tag::OctetString,
        }))
    })?;
    let key = SigningKey::from_bytes(&pair.secret_key);
    if let Some(public) = &pair.public_key {
        if public.as_ref() != key.verifying_key().as_bytes() {
            return Err(KeyError::PublicKeyMismatch);
        }
    }
    Ok(key)
}

/// Parse a SubjectPublicKeyInfo `PUBLIC KEY` PEM holding an Ed25519 key.
#[cfg(feature = "tool")]
pub fn parse_public_pem(pem: &[u8]) -> Result<VerifyingKey, KeyError> {
    parse_spki_der(&pem_block(pem, LABEL_PUBLIC)?)
}

/// Parse a PKCS#8 `PRIVATE KEY` PEM (v1 or v2) holding an Ed25519 key.
#[cfg(feature = "tool")]
pub fn parse_private_pem(pem: &[u8]) -> Result<SigningKey, KeyError> {
    parse_pkcs8_der(&pem_block(pem, LABEL_PRIVATE)?)
}

/// The SubjectPublicKeyInfo PEM of `key`, byte-identical to what
/// `openssl pkey -pubout` writes.
#[cfg(feature = "tool")]
pub fn public_key_pem(key: &VerifyingKey) -> String {
    // Encoding 44 fixed-shape bytes cannot fail; an empty string would be
    // refused by every reader.
    key.to_public_key_pem(der::pem::LineEnding::LF)
        .unwrap_or_default()
}

/// The PKCS#8 v1 PEM of `key` (no public key inside), byte-identical to
/// what `openssl genpkey -algorithm ed25519` writes.
#[cfg(feature = "tool")]
pub fn private_key_pem(key: &SigningKey) -> der::zeroize::Zeroizing<String> {
    let pair = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    pair.to_pkcs8_pem(der::pem::LineEnding::LF)
        .unwrap_or_default()
}

/// A fresh signing key from 32 bytes of `/dev/urandom`.
#[cfg(feature = "tool")]
pub fn generate() -> Result<SigningKey, KeyError> {
    use std::io::Read;
    let path = Path::new("/dev/urandom");
    let mut seed = der::zeroize::Zeroizing::new([0u8; 32]);
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(seed.as_mut()))
        .map_err(|error| KeyError::Random {
            path: path.to_path_buf(),
            error: error.to_string(),
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Read a key file through the tool's one bounded read.
#[cfg(feature = "tool")]
pub fn read_key_file(path: &Path) -> Result<der::zeroize::Zeroizing<Vec<u8>>, KeyError> {
    use crate::image::fileio::{read_bounded, FileIoError};
    match read_bounded(path, MAX_PEM_SIZE as u64) {
        Ok(bytes) => Ok(der::zeroize::Zeroizing::new(bytes)),
        Err(FileIoError::TooLarge { size, .. }) => Err(KeyError::TooLarge {
            size,
            limit: MAX_PEM_SIZE,
        }),
        Err(e) => Err(KeyError::File(e)),
    }
}

/// Load a public key PEM file.
#[cfg(feature = "tool")]
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    parse_public_pem(&read_key_file(path)?)
}

/// Load a private key PEM file.
#[cfg(feature = "tool")]
pub fn load_private_key(path: &Path) -> Result<SigningKey, KeyError> {
    parse_private_pem(&read_key_file(path)?)
}

#[cfg(all(test, feature = "tool"))]
mod tests {
    use super::*;

    // RFC 8410 §10.3 example private key (PKCS#8 v1) and §10.1 public key.
    const RFC8410_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
-----END PRIVATE KEY-----\n";
    const RFC8410_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
-----END PUBLIC KEY-----\n";

    fn pem_encode(label: &str, der: &[u8]) -> String {
        der::pem::encode_string(label, der::pem::LineEnding::LF, der).unwrap()
    }

    const OID_BYTES: [u8; 3] = [0x2b, 0x65, 0x70];

    #[test]
    fn base64_must_be_canonical() {
        // Unused bits set in the last character, missing padding, a bad
        // character: each a PEM error, never a key.
        for bad in ["Zh==", "Zg", "Zm9v!", "Zm9v-_"] {
            let pem = format!("-----BEGIN PUBLIC KEY-----\n{bad}\n-----END PUBLIC KEY-----\n");
            assert!(
                matches!(parse_public_pem(pem.as_bytes()), Err(KeyError::Pem(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn rfc8410_examples_parse() {
        let sk = parse_private_pem(RFC8410_PRIVATE.as_bytes()).unwrap();
        // RFC 8410 §10.3 seed bytes.
        assert_eq!(
            crate::digest::hex_encode(sk.as_bytes()),
            "d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842"
        );
        let pk = parse_public_pem(RFC8410_PUBLIC.as_bytes()).unwrap();
        assert_eq!(
            crate::digest::hex_encode(pk.as_bytes()),
            "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
        );
        // Writers reproduce the exact input bytes.
        assert_eq!(private_key_pem(&sk).as_str(), RFC8410_PRIVATE);
        assert_eq!(public_key_pem(&pk), RFC8410_PUBLIC);
    }

    #[test]
    fn rfc8410_v2_with_public_key() {
        // RFC 8410 §10.3 second example: v2 with an attribute and the public
        // key, which belongs to the same private key as the v1 example.
        let with_attrs = "-----BEGIN PRIVATE KEY-----\n\
MHICAQEwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
oB8wHQYKKoZIhvcNAQkJFDEPDA1DdXJkbGUgQ2hhaXJzgSEAGb9ECWmEzf6FQbrB\n\
Z9w7lshQhqowtrbLDFw4rXAxZuE=\n\
-----END PRIVATE KEY-----\n";
        let v2 = parse_private_pem(with_attrs.as_bytes()).unwrap();
        let v1 = parse_private_pem(RFC8410_PRIVATE.as_bytes()).unwrap();
        assert_eq!(v2.as_bytes(), v1.as_bytes());
    }

    fn v2_der(seed: &[u8; 32], public: &[u8; 32]) -> Vec<u8> {
        let mut der = vec![0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03];
        der.extend_from_slice(&OID_BYTES);
        der.extend_from_slice(&[0x04, 0x22, 0x04, 0x20]);
        der.extend_from_slice(seed);
        der.extend_from_slice(&[0x81, 0x21, 0x00]);
        der.extend_from_slice(public);
        der
    }

    #[test]
    fn v2_public_key_checked() {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let good = pem_encode(
            LABEL_PRIVATE,
            &v2_der(&[7u8; 32], sk.verifying_key().as_bytes()),
        );
        assert_eq!(
            parse_private_pem(good.as_bytes()).unwrap().as_bytes(),
            sk.as_bytes()
        );
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        let bad = pem_encode(LABEL_PRIVATE, &v2_der(&[7u8; 32], other.as_bytes()));
        assert!(matches!(
            parse_private_pem(bad.as_bytes()),
            Err(KeyError::PublicKeyMismatch)
        ));
    }

    #[test]
    fn wrong_labels_and_text() {
        assert!(matches!(
            parse_private_pem(RFC8410_PUBLIC.as_bytes()),
            Err(KeyError::WrongLabel {
                expected: "PRIVATE KEY",
                ..
            })
        ));
        assert!(matches!(
            parse_public_pem(RFC8410_PRIVATE.as_bytes()),
            Err(KeyError::WrongLabel {
                expected: "PUBLIC KEY",
                ..
            })
        ));
        let two = format!("{RFC8410_PUBLIC}{RFC8410_PUBLIC}");
        assert!(matches!(
            parse_public_pem(two.as_bytes()),
            Err(KeyError::TextOutsideBlock)
        ));
        let prefixed = format!("hello\n{RFC8410_PUBLIC}");
        assert!(matches!(
            parse_public_pem(prefixed.as_bytes()),
            Err(KeyError::TextOutsideBlock)
        ));
        assert!(matches!(parse_public_pem(b""), Err(KeyError::Pem(_))));
        assert!(parse_public_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n").is_err());
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(
            parse_private_pem(enc.as_bytes()),
            Err(KeyError::Encrypted)
        ));
        let crlf = RFC8410_PUBLIC.replace('\n', "\r\n");
        assert!(parse_public_pem(crlf.as_bytes()).is_ok());
        let big = vec![b' '; MAX_PEM_SIZE + 1];
        assert!(matches!(
            parse_public_pem(&big),
            Err(KeyError::TooLarge { .. })
        ));
    }

    #[test]
    fn other_algorithm_named() {
        // An X25519 SPKI (OID 1.3.101.110) has the same shape.
        let x25519 = "-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VuAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
-----END PUBLIC KEY-----\n";
        match parse_public_pem(x25519.as_bytes()) {
            Err(KeyError::NotEd25519 { oid }) => assert_eq!(oid, "1.3.101.110"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn der_mutations_never_panic_and_fail() {
        let pk = parse_public_pem(RFC8410_PUBLIC.as_bytes()).unwrap();
        let der_pub = {
            let mut d = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03];
            d.extend_from_slice(&OID_BYTES);
            d.extend_from_slice(&[0x03, 0x21, 0x00]);
            d.extend_from_slice(pk.as_bytes());
            d
        };
        // Every single-byte change in the structure (not the key bytes) fails;
        // every truncation fails.
        for i in 0..12 {
            for delta in [1u8, 0x80, 0xff] {
                let mut d = der_pub.clone();
                d[i] = d[i].wrapping_add(delta);
                assert!(parse_spki_der(&d).is_err(), "byte {i} + {delta}");
            }
        }
        for len in 0..der_pub.len() {
            assert!(parse_spki_der(&der_pub[..len]).is_err());
        }
        let mut long = der_pub.clone();
        long.push(0);
        assert!(parse_spki_der(&long).is_err());
        let sk_der = {
            let mut d = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03];
            d.extend_from_slice(&OID_BYTES);
            d.extend_from_slice(&[0x04, 0x22, 0x04, 0x20]);
            d.extend_from_slice(&[1u8; 32]);
            d
        };
        // Byte 4 is the version, checked separately below.
        for i in (0..16).filter(|&i| i != 4) {
            let mut d = sk_der.clone();
            d[i] ^= 0x01;
            assert!(parse_pkcs8_der(&d).is_err(), "byte {i}");
        }
        for len in 0..sk_der.len() {
            assert!(parse_pkcs8_der(&sk_der[..len]).is_err());
        }
        // Version 1 (v2) without the public key it announces, and version
        // 2, are refused.
        let mut v2 = sk_der.clone();
        v2[4] = 1;
        assert!(matches!(parse_pkcs8_der(&v2), Err(KeyError::Der(_))));
        v2[4] = 2;
        assert!(matches!(parse_pkcs8_der(&v2), Err(KeyError::Der(_))));
    }

    #[test]
    fn weak_and_invalid_public_keys() {
        // The identity point (small order).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            public_key_from_raw(&identity),
            Err(KeyError::WeakPublicKey)
        ));
        assert!(matches!(
            public_key_from_raw(&[1u8; 31]),
            Err(KeyError::WrongKeyLength { found: 31 })
        ));
    }

    #[test]
    fn fingerprint_is_sha256_of_raw_key() {
        let pk = parse_public_pem(RFC8410_PUBLIC.as_bytes()).unwrap();
        let fp = fingerprint(&pk);
        let expect = crate::digest::hex_encode(&Sha256::digest(pk.as_bytes()));
        assert_eq!(fp, format!("sha256:{expect}"));
    }

    #[test]
    fn generate_gives_distinct_working_keys() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
        let pem = private_key_pem(&a);
        assert_eq!(
            parse_private_pem(pem.as_bytes()).unwrap().as_bytes(),
            a.as_bytes()
        );
    }
}
