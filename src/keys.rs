//! Ed25519 keys as PEM files, parsed by hand.
//!
//! Contract:
//! - Private keys are PKCS#8 `PRIVATE KEY` PEM (RFC 5958 / RFC 8410): version 0
//!   ("v1", what `openssl genpkey -algorithm ed25519` writes) or version 1
//!   ("v2", OneAsymmetricKey with the `[1]` public key, which must match the
//!   private key). Public keys are SubjectPublicKeyInfo `PUBLIC KEY` PEM. The
//!   algorithm must be id-Ed25519, OID 1.3.101.112, with absent parameters.
//! - Parsing is strict and bounded: at most [`MAX_PEM_SIZE`] bytes of input,
//!   exactly one PEM block with nothing but whitespace around it, canonical
//!   base64 with padding, minimal DER (definite, shortest lengths), no trailing
//!   bytes. Encrypted keys, attributes, other algorithms and non-canonical
//!   encodings are refused with a [`KeyError`] that names the problem.
//! - Public keys must be valid, non-small-order curve points (the same test
//!   `verify_strict` applies), so a weak key is refused when loaded rather
//!   than when a signature happens to be checked.
//! - [`fingerprint`] is `sha256:` + lowercase hex of SHA-256 over the 32 raw
//!   public key bytes. It names a key in manifests, logs and status files.
//! - [`generate`] takes 32 bytes from `/dev/urandom`. On Linux that device
//!   is the kernel CSPRNG; this module does not read any other source.
//!
//! The DER structures are fixed (RFC 8410 §7 and §10), so instead of a
//! general ASN.1 library this module has a tiny TLV reader that checks the
//! exact shapes; anything else is an error.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// Largest PEM file accepted. A real Ed25519 key PEM is about 120 bytes;
/// this leaves room for comments-free line endings of any style.
pub const MAX_PEM_SIZE: usize = 16 * 1024;

/// id-Ed25519, 1.3.101.112, DER-encoded OID content bytes.
const OID_ED25519: [u8; 3] = [0x2b, 0x65, 0x70];

const LABEL_PRIVATE: &str = "PRIVATE KEY";
const LABEL_PUBLIC: &str = "PUBLIC KEY";

/// Why a key was refused.
#[derive(Debug)]
pub enum KeyError {
    /// The input is larger than [`MAX_PEM_SIZE`].
    TooLarge { size: u64, limit: usize },
    /// No `-----BEGIN ...-----` line.
    NotPem,
    /// The PEM block has no matching `-----END ...-----` line.
    MissingEnd { label: String },
    /// The block is of another kind than asked for (e.g. a public key where
    /// a private key is needed).
    WrongLabel {
        expected: &'static str,
        found: String,
    },
    /// `ENCRYPTED PRIVATE KEY`: decrypt it first (`openssl pkey -in K -out K2`).
    Encrypted,
    /// Something other than whitespace before or after the PEM block, or a
    /// second block.
    TextOutsideBlock,
    /// Invalid or non-canonical base64 at this offset of the block body.
    BadBase64 { offset: usize },
    /// Malformed or non-minimal DER at this offset of the decoded bytes.
    BadDer { offset: usize, reason: &'static str },
    /// The key is for another algorithm (dotted OID), not Ed25519.
    NotEd25519 { oid: String },
    /// The algorithm identifier carries parameters; RFC 8410 forbids them.
    AlgorithmParameters,
    /// PKCS#8 version other than 0 (v1) or 1 (v2).
    UnsupportedVersion(u64),
    /// PKCS#8 attributes are present; this parser does not accept any.
    AttributesPresent,
    /// Raw key of the wrong length.
    WrongKeyLength { found: usize },
    /// A PKCS#8 v2 key whose embedded public key is not the one derived
    /// from its private key.
    PublicKeyMismatch,
    /// The public key is not a valid curve point.
    InvalidPublicKey,
    /// The public key has small order; every strict verification would fail.
    WeakPublicKey,
    /// Reading a key file or the random source failed.
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::TooLarge { size, limit } => {
                write!(
                    f,
                    "key file is {size} bytes, larger than the {limit}-byte limit"
                )
            }
            KeyError::NotPem => write!(f, "not a PEM file (no -----BEGIN line)"),
            KeyError::MissingEnd { label } => {
                write!(f, "PEM block {label:?} has no matching -----END line")
            }
            KeyError::WrongLabel { expected, found } => {
                write!(f, "PEM block is {found:?}, expected {expected:?}")
            }
            KeyError::Encrypted => write!(
                f,
                "private key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)"
            ),
            KeyError::TextOutsideBlock => write!(
                f,
                "text outside the PEM block (only one block and whitespace are allowed)"
            ),
            KeyError::BadBase64 { offset } => {
                write!(f, "invalid base64 in PEM body at character {offset}")
            }
            KeyError::BadDer { offset, reason } => {
                write!(f, "malformed DER at byte {offset}: {reason}")
            }
            KeyError::NotEd25519 { oid } => {
                write!(f, "key algorithm is {oid}, not Ed25519 (1.3.101.112)")
            }
            KeyError::AlgorithmParameters => {
                write!(
                    f,
                    "Ed25519 algorithm identifier has parameters (RFC 8410 forbids them)"
                )
            }
            KeyError::UnsupportedVersion(v) => {
                write!(f, "PKCS#8 version {v} is not supported (expected 0 or 1)")
            }
            KeyError::AttributesPresent => write!(f, "PKCS#8 attributes are not supported"),
            KeyError::WrongKeyLength { found } => {
                write!(f, "Ed25519 key is {found} bytes, expected 32")
            }
            KeyError::PublicKeyMismatch => write!(
                f,
                "the public key inside the PKCS#8 v2 file does not belong to its private key"
            ),
            KeyError::InvalidPublicKey => write!(f, "public key is not a valid Ed25519 point"),
            KeyError::WeakPublicKey => {
                write!(
                    f,
                    "public key has small order and can never verify strictly"
                )
            }
            KeyError::Read { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KeyError::Read { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Parse a SubjectPublicKeyInfo `PUBLIC KEY` PEM holding an Ed25519 key.
pub fn parse_public_pem(pem: &[u8]) -> Result<VerifyingKey, KeyError> {
    let der = pem_decode(pem, LABEL_PUBLIC)?;
    parse_spki_der(&der)
}

/// Parse a PKCS#8 `PRIVATE KEY` PEM (v1 or v2) holding an Ed25519 key.
pub fn parse_private_pem(pem: &[u8]) -> Result<SigningKey, KeyError> {
    let mut der = pem_decode(pem, LABEL_PRIVATE)?;
    let result = parse_pkcs8_der(&der);
    der.fill(0);
    result
}

/// The SubjectPublicKeyInfo PEM of `key`, byte-identical to what
/// `openssl pkey -pubout` writes.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    let mut der = Vec::with_capacity(44);
    der.extend_from_slice(&[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03]);
    der.extend_from_slice(&OID_ED25519);
    der.extend_from_slice(&[0x03, 0x21, 0x00]);
    der.extend_from_slice(key.as_bytes());
    pem_encode(LABEL_PUBLIC, &der)
}

/// The PKCS#8 v1 PEM of `key`, byte-identical to what
/// `openssl genpkey -algorithm ed25519` writes.
pub fn private_key_pem(key: &SigningKey) -> String {
    let mut der = Vec::with_capacity(48);
    der.extend_from_slice(&[0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03]);
    der.extend_from_slice(&OID_ED25519);
    der.extend_from_slice(&[0x04, 0x22, 0x04, 0x20]);
    der.extend_from_slice(key.as_bytes());
    let pem = pem_encode(LABEL_PRIVATE, &der);
    der.fill(0);
    pem
}

/// A fresh signing key from 32 bytes of `/dev/urandom`.
pub fn generate() -> Result<SigningKey, KeyError> {
    let path = Path::new("/dev/urandom");
    let mut seed = [0u8; 32];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|error| KeyError::Read {
            path: path.to_path_buf(),
            error,
        })?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

/// `sha256:<hex>` of the 32 raw public key bytes.
pub fn fingerprint(key: &VerifyingKey) -> String {
    let hash = Sha256::digest(key.as_bytes());
    format!("sha256:{}", crate::digest::hex_encode(&hash))
}

/// Read a key file, refusing files larger than [`MAX_PEM_SIZE`] without
/// reading them whole.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    let read_err = |error| KeyError::Read {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size > MAX_PEM_SIZE as u64 {
        return Err(KeyError::TooLarge {
            size,
            limit: MAX_PEM_SIZE,
        });
    }
    let mut buf = Vec::with_capacity(size as usize);
    // One byte more than allowed, so a file that grew since fstat is caught.
    file.take(MAX_PEM_SIZE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() > MAX_PEM_SIZE {
        return Err(KeyError::TooLarge {
            size: buf.len() as u64,
            limit: MAX_PEM_SIZE,
        });
    }
    Ok(buf)
}

/// Load a public key PEM file.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    parse_public_pem(&read_key_file(path)?)
}

/// Load a private key PEM file.
pub fn load_private_key(path: &Path) -> Result<SigningKey, KeyError> {
    let mut pem = read_key_file(path)?;
    let result = parse_private_pem(&pem);
    pem.fill(0);
    result
}

/// A verifying key from its 32 raw bytes, with the same validity checks as
/// PEM loading (used for keys embedded as hex).
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
// PEM

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Decode the single PEM block of `input`, which must carry `want` as label.
fn pem_decode(input: &[u8], want: &'static str) -> Result<Vec<u8>, KeyError> {
    if input.len() > MAX_PEM_SIZE {
        return Err(KeyError::TooLarge {
            size: input.len() as u64,
            limit: MAX_PEM_SIZE,
        });
    }
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    const DASHES: &[u8] = b"-----";

    let start = find(input, BEGIN).ok_or(KeyError::NotPem)?;
    if !input[..start].iter().all(u8::is_ascii_whitespace) {
        return Err(KeyError::TextOutsideBlock);
    }
    let after_begin = &input[start + BEGIN.len()..];
    let label_end = find(after_begin, DASHES).ok_or(KeyError::NotPem)?;
    let label_bytes = &after_begin[..label_end];
    if label_bytes.contains(&b'\n') {
        return Err(KeyError::NotPem);
    }
    let label = String::from_utf8_lossy(label_bytes).into_owned();
    let body_and_rest = &after_begin[label_end + DASHES.len()..];

    let mut end_marker = Vec::with_capacity(END.len() + label_bytes.len() + DASHES.len());
    end_marker.extend_from_slice(END);
    end_marker.extend_from_slice(label_bytes);
    end_marker.extend_from_slice(DASHES);
    let end = find(body_and_rest, &end_marker).ok_or_else(|| KeyError::MissingEnd {
        label: label.clone(),
    })?;
    let body = &body_and_rest[..end];
    let rest = &body_and_rest[end + end_marker.len()..];
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(KeyError::TextOutsideBlock);
    }
    if label == "ENCRYPTED PRIVATE KEY" {
        return Err(KeyError::Encrypted);
    }
    if label != want {
        return Err(KeyError::WrongLabel {
            expected: want,
            found: label,
        });
    }
    // RFC 7468 headers ("Proc-Type:" etc.) mark legacy encrypted PEM; no
    // PKCS#8 writer emits them, and the base64 decoder refuses ':' anyway.
    base64_decode(body)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// base64 (RFC 4648 standard alphabet, padded)

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(B64[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

fn b64_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decode base64 that may be broken into lines. Whitespace is skipped;
/// padding is required and may only end the data; the unused low bits of
/// the last symbol must be zero (so one byte string has one encoding).
fn base64_decode(text: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut quad = [0u32; 4];
    let mut filled = 0usize;
    let mut padding = 0usize;
    let mut finished = false;
    let mut last_offset = 0usize;
    for (offset, &c) in text.iter().enumerate() {
        if c.is_ascii_whitespace() {
            continue;
        }
        last_offset = offset;
        if finished {
            // Nothing may follow a padded quad.
            return Err(KeyError::BadBase64 { offset });
        }
        if c == b'=' {
            // Padding only in the last two positions of a quad.
            if filled < 2 {
                return Err(KeyError::BadBase64 { offset });
            }
            padding += 1;
            quad[filled] = 0;
        } else {
            if padding > 0 {
                return Err(KeyError::BadBase64 { offset });
            }
            quad[filled] = b64_value(c).ok_or(KeyError::BadBase64 { offset })?;
        }
        filled += 1;
        if filled == 4 {
            let n = (quad[0] << 18) | (quad[1] << 12) | (quad[2] << 6) | quad[3];
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            let keep = 3 - padding;
            // Canonical encoding: bits beyond the kept bytes are zero.
            if padding > 0 && bytes[keep..].iter().any(|&b| b != 0) {
                return Err(KeyError::BadBase64 { offset });
            }
            out.extend_from_slice(&bytes[..keep]);
            filled = 0;
            finished = padding > 0;
        }
    }
    if filled != 0 {
        return Err(KeyError::BadBase64 {
            offset: last_offset,
        });
    }
    if out.is_empty() {
        return Err(KeyError::BadBase64 { offset: 0 });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// DER

/// A cursor over DER bytes that reads one TLV at a time.
struct Der<'a> {
    data: &'a [u8],
    /// Offset of `data[0]` in the outermost input, for error messages.
    base: usize,
    pos: usize,
}

impl<'a> Der<'a> {
    fn new(data: &'a [u8]) -> Self {
        Der {
            data,
            base: 0,
            pos: 0,
        }
    }

    fn err(&self, reason: &'static str) -> KeyError {
        KeyError::BadDer {
            offset: self.base + self.pos,
            reason,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    /// Read a TLV with tag `tag`; return a cursor over its contents.
    fn read(&mut self, tag: u8, what: &'static str) -> Result<Der<'a>, KeyError> {
        match self.peek_tag() {
            Some(t) if t == tag => {}
            _ => return Err(self.err(what)),
        }
        let len_at = self.pos + 1;
        let first = *self
            .data
            .get(len_at)
            .ok_or_else(|| self.err("truncated length"))?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else if first == 0x81 {
            let l = *self
                .data
                .get(len_at + 1)
                .ok_or_else(|| self.err("truncated length"))?;
            if l < 0x80 {
                return Err(self.err("non-minimal length"));
            }
            (usize::from(l), 3)
        } else if first == 0x82 {
            // Never needed for Ed25519, but other algorithms' keys (RSA) use
            // it, and reading them lets the error name their algorithm.
            let hi = *self
                .data
                .get(len_at + 1)
                .ok_or_else(|| self.err("truncated length"))?;
            let lo = *self
                .data
                .get(len_at + 2)
                .ok_or_else(|| self.err("truncated length"))?;
            let l = (usize::from(hi) << 8) | usize::from(lo);
            if l < 0x100 {
                return Err(self.err("non-minimal length"));
            }
            (l, 4)
        } else {
            return Err(self.err("unsupported length form"));
        };
        let start = self.pos + header;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| self.err("length past end of data"))?;
        let inner = Der {
            data: &self.data[start..end],
            base: self.base + start,
            pos: 0,
        };
        self.pos = end;
        Ok(inner)
    }

    fn expect_end(&self) -> Result<(), KeyError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.err("unexpected trailing bytes"))
        }
    }

    /// A small non-negative INTEGER (minimal encoding).
    fn read_small_uint(&mut self) -> Result<u64, KeyError> {
        let int = self.read(0x02, "expected INTEGER")?;
        let bytes = int.data;
        if bytes.is_empty() {
            return Err(int.err("empty INTEGER"));
        }
        if bytes.len() > 1 && bytes[0] == 0 && bytes[1] < 0x80 {
            return Err(int.err("non-minimal INTEGER"));
        }
        if bytes[0] >= 0x80 {
            return Err(int.err("negative INTEGER"));
        }
        if bytes.len() > 8 {
            return Err(int.err("INTEGER too large"));
        }
        Ok(bytes.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)))
    }
}

/// `AlgorithmIdentifier ::= SEQUENCE { OID id-Ed25519 }`, no parameters.
fn read_algorithm(outer: &mut Der<'_>) -> Result<(), KeyError> {
    let mut alg = outer.read(0x30, "expected AlgorithmIdentifier SEQUENCE")?;
    let oid = alg.read(0x06, "expected algorithm OID")?;
    if oid.data != OID_ED25519 {
        return Err(KeyError::NotEd25519 {
            oid: oid_to_string(oid.data),
        });
    }
    if !alg.at_end() {
        return Err(KeyError::AlgorithmParameters);
    }
    Ok(())
}

fn oid_to_string(bytes: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for &b in bytes {
        value = value
            .saturating_mul(128)
            .saturating_add(u64::from(b & 0x7f));
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    if arcs.is_empty() {
        return "(empty OID)".to_string();
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn parse_spki_der(der: &[u8]) -> Result<VerifyingKey, KeyError> {
    let mut top = Der::new(der);
    let mut spki = top.read(0x30, "expected SubjectPublicKeyInfo SEQUENCE")?;
    top.expect_end()?;
    read_algorithm(&mut spki)?;
    let bits = spki.read(0x03, "expected subjectPublicKey BIT STRING")?;
    spki.expect_end()?;
    let (unused, key) = bits
        .data
        .split_first()
        .ok_or_else(|| bits.err("empty BIT STRING"))?;
    if *unused != 0 {
        return Err(bits.err("BIT STRING with unused bits"));
    }
    public_key_from_raw(key)
}

fn parse_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyError> {
    let mut top = Der::new(der);
    let mut info = top.read(0x30, "expected PrivateKeyInfo SEQUENCE")?;
    top.expect_end()?;
    let version = info.read_small_uint()?;
    if version > 1 {
        return Err(KeyError::UnsupportedVersion(version));
    }
    read_algorithm(&mut info)?;
    let outer = info.read(0x04, "expected privateKey OCTET STRING")?;
    // CurvePrivateKey ::= OCTET STRING, wrapped in the privateKey OCTET STRING.
    let mut outer_cursor = Der {
        data: outer.data,
        base: outer.base,
        pos: 0,
    };
    let inner = outer_cursor.read(0x04, "expected CurvePrivateKey OCTET STRING")?;
    outer_cursor.expect_end()?;
    let seed: &[u8; 32] = inner
        .data
        .try_into()
        .map_err(|_| KeyError::WrongKeyLength {
            found: inner.data.len(),
        })?;
    let key = SigningKey::from_bytes(seed);

    // [0] IMPLICIT Attributes (constructed): refused.
    if info.peek_tag() == Some(0xa0) {
        return Err(KeyError::AttributesPresent);
    }
    // [1] IMPLICIT PublicKey BIT STRING (primitive), v2 only.
    if info.peek_tag() == Some(0x81) {
        if version != 1 {
            return Err(info.err("public key present in a version 0 (v1) key"));
        }
        let bits = info.read(0x81, "expected [1] publicKey")?;
        let (unused, public) = bits
            .data
            .split_first()
            .ok_or_else(|| bits.err("empty publicKey BIT STRING"))?;
        if *unused != 0 {
            return Err(bits.err("publicKey BIT STRING with unused bits"));
        }
        if public.len() != 32 {
            return Err(KeyError::WrongKeyLength {
                found: public.len(),
            });
        }
        if public != key.verifying_key().as_bytes() {
            return Err(KeyError::PublicKeyMismatch);
        }
    }
    if !info.at_end() {
        return Err(info.err("unexpected trailing fields in PrivateKeyInfo"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8410 §10.3 example private key (PKCS#8 v1) and §10.1 public key.
    const RFC8410_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
-----END PRIVATE KEY-----\n";
    const RFC8410_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
-----END PUBLIC KEY-----\n";

    #[test]
    fn base64_round_trip_all_lengths() {
        for len in 0..70usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let enc = base64_encode(&data);
            if len == 0 {
                assert!(base64_decode(enc.as_bytes()).is_err());
            } else {
                assert_eq!(base64_decode(enc.as_bytes()).unwrap(), data, "len {len}");
            }
        }
    }

    #[test]
    fn base64_known_vectors() {
        // RFC 4648 §10.
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_decode(b"Zm9v\nYmFy").unwrap(), b"foobar");
    }

    #[test]
    fn base64_rejects_noncanonical_and_garbage() {
        for bad in [
            &b"Zh=="[..], // unused bits set
            b"Zm9=",      // unused bits set
            b"Zg=",       // short padding
            b"Zg",        // no padding
            b"Z===",
            b"Zg==Zg==", // data after padding
            b"Zm9v!",
            b"Zm9v-_",
        ] {
            assert!(
                matches!(base64_decode(bad), Err(KeyError::BadBase64 { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
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
        assert_eq!(private_key_pem(&sk), RFC8410_PRIVATE);
        assert_eq!(public_key_pem(&pk), RFC8410_PUBLIC);
    }

    #[test]
    fn rfc8410_v2_with_public_key() {
        // RFC 8410 §10.3 second example: v2 with attributes; attributes are
        // refused by name.
        let with_attrs = "-----BEGIN PRIVATE KEY-----\n\
MHICAQEwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
oB8wHQYKKoZIhvcNAQkJFDEPDA1DdXJkbGUgQ2hhaXJzgSEAGb9ECWmEzf6FQbrB\n\
Z9w7lshQhqowtrbLDFw4rXAxZuE=\n\
-----END PRIVATE KEY-----\n";
        assert!(matches!(
            parse_private_pem(with_attrs.as_bytes()),
            Err(KeyError::AttributesPresent)
        ));
    }

    fn v2_der(seed: &[u8; 32], public: &[u8; 32]) -> Vec<u8> {
        let mut der = vec![0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03];
        der.extend_from_slice(&OID_ED25519);
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
        assert!(matches!(parse_public_pem(b""), Err(KeyError::NotPem)));
        assert!(matches!(
            parse_public_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n"),
            Err(KeyError::MissingEnd { .. })
        ));
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
            d.extend_from_slice(&OID_ED25519);
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
            d.extend_from_slice(&OID_ED25519);
            d.extend_from_slice(&[0x04, 0x22, 0x04, 0x20]);
            d.extend_from_slice(&[1u8; 32]);
            d
        };
        // Byte 4 is the version: 0 -> 1 is a valid v2 key without its
        // optional public key, checked separately below.
        for i in (0..16).filter(|&i| i != 4) {
            let mut d = sk_der.clone();
            d[i] ^= 0x01;
            assert!(parse_pkcs8_der(&d).is_err(), "byte {i}");
        }
        for len in 0..sk_der.len() {
            assert!(parse_pkcs8_der(&sk_der[..len]).is_err());
        }
        let mut v2 = sk_der.clone();
        v2[4] = 1;
        assert_eq!(parse_pkcs8_der(&v2).unwrap().as_bytes(), &[1u8; 32]);
        v2[4] = 2;
        assert!(matches!(
            parse_pkcs8_der(&v2),
            Err(KeyError::UnsupportedVersion(2))
        ));
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
