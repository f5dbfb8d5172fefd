//! The trust anchor: which policy `sealroot` enforces and which keys it trusts.
//!
//! Contract:
//! - The policy is fixed when the binary is made, never by the command line.
//!   Two sources, the second overriding the first as a whole:
//!   1. **compiled in** by `build.rs` (keys from `SEALROOT_TRUSTED_KEYS` or
//!      `keys/trusted/*.pub.pem`, plus the test key with feature `test-keys`;
//!      feature `sealed-digest` selects that policy; `SEALROOT_SERIAL_FLOOR`);
//!   2. **embedded** into a prebuilt binary by `sealctl embed-keys`, in the
//!      reserved area described below.
//! - The trust policy comes with the [`BootPolicy`] (command-line allowlist,
//!   init list, TPM measurement policy, TPM serial floor) from the same
//!   source: compiled in from `SEALROOT_CMDLINE_ALLOW`, `SEALROOT_INITS`,
//!   `SEALROOT_TPM_PCR`, `SEALROOT_TPM_REQUIRED`, `SEALROOT_TPM_FLOOR_INDEX`
//!   and `SEALROOT_REQUIRE_TPM_FLOOR`, or embedded with the keys. [`Anchor`]
//!   holds both.
//! - `sealed-digest` with a serial floor is refused wherever it is made
//!   ([`TrustError::FloorWithSealedDigest`]): that policy checks no seal, so
//!   the floor could never be enforced.
//! - Fail closed: a malformed embedded payload is an error, never "fall back
//!   to the compiled-in keys"; `signed` with no keys is an error
//!   ([`TrustError::NoTrustedKeys`]), so such a binary refuses every boot; a
//!   key that is not a valid, non-weak ed25519 point is an error.
//!
//! The reserved area (the `static` lives in [`crate::sys`], because the
//! `link_section` attribute counts as unsafe code to the lint): 8192 bytes in
//! ELF section `.sealroot_trust`:
//!
//! | offset | size | content                                                |
//! |--------|------|--------------------------------------------------------|
//! | 0      | 16   | magic `SEALROOT-TRUST01`                               |
//! | 16     | 4    | payload length, u32 little endian; 0 = none embedded   |
//! | 20     | len  | payload: JSON `{"policy":"signed"\|"sealed-digest",`   |
//! |        |      | `"keys":["<64 lowercase hex>",...],"serial_floor":N,`  |
//! |        |      | optional `"cmdline_allow":[...]`, `"inits":[...]`,     |
//! |        |      | `"tpm_pcr":N` (8..=15, default 15), `"tpm_required":true`, |
//! |        |      | `"tpm_floor_index":N` (NV handle, 0 = off, default 0x01805ea1), |
//! |        |      | `"tpm_floor_required":true`}`                         |
//! | 20+len | rest | zero bytes (checked)                                   |
//!
//! The area is read through [`std::hint::black_box`] so the optimizer cannot
//! fold the all-zero initial contents into the code: the bytes that count are
//! the ones in the file at run time, after `sealctl embed-keys` patched them.
//! The magic is never compared at run time: a second copy of it in the binary
//! would make the embed tool's "exactly one occurrence" check fail.

use std::fmt;

use ed25519_dalek::VerifyingKey;

use crate::boot::policy::{BootPolicy, PolicyError, TpmPolicy};
use crate::digest::{hex_decode_lower, hex_encode};

mod compiled {
    include!(concat!(env!("OUT_DIR"), "/trusted_keys.rs"));
}

/// The 16 bytes the reserved area starts with.
pub const MAGIC: [u8; 16] = *b"SEALROOT-TRUST01";
/// Total size of the reserved area.
pub const AREA_SIZE: usize = 8192;
/// Magic plus the length field.
pub const HEADER_LEN: usize = 20;
/// Largest payload the area holds.
pub const MAX_PAYLOAD_LEN: usize = AREA_SIZE - HEADER_LEN;
/// ELF section holding the area.
pub const SECTION_NAME: &str = ".sealroot_trust";

/// The area as built: magic, length 0 (nothing embedded), zeros.
pub const INITIAL_AREA: [u8; AREA_SIZE] = {
    let mut area = [0u8; AREA_SIZE];
    let mut i = 0;
    while i < MAGIC.len() {
        area[i] = MAGIC[i];
        i += 1;
    }
    area
};

/// What `sealroot` accepts as the root image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustPolicy {
    /// The measured image needs a seal signed by one of `keys`, with a serial
    /// of at least `serial_floor`.
    Signed {
        keys: Vec<VerifyingKey>,
        serial_floor: u64,
    },
    /// The digest on the (sealed) command line is trusted as it is. If a seal
    /// is present anyway, its serial must reach `serial_floor`.
    SealedDigest { serial_floor: u64 },
}

impl TrustPolicy {
    /// `signed` / `sealed-digest`, as in the payload and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            TrustPolicy::Signed { .. } => "signed",
            TrustPolicy::SealedDigest { .. } => "sealed-digest",
        }
    }

    pub fn serial_floor(&self) -> u64 {
        match self {
            TrustPolicy::Signed { serial_floor, .. }
            | TrustPolicy::SealedDigest { serial_floor } => *serial_floor,
        }
    }
}

/// Everything fixed at build/embed time: the trust policy and the boot policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub policy: TrustPolicy,
    pub boot: BootPolicy,
}

impl Anchor {
    /// A trust policy with the default boot policy.
    pub fn with_default_boot(policy: TrustPolicy) -> Anchor {
        Anchor {
            policy,
            boot: BootPolicy::default(),
        }
    }
}

/// Where the policy in effect came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustSource {
    /// Built in by `build.rs`.
    CompiledIn,
    /// Written into the binary's reserved area by `sealctl embed-keys`.
    Embedded,
}

impl fmt::Display for TrustSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrustSource::CompiledIn => "compiled-in",
            TrustSource::Embedded => "embedded",
        })
    }
}

/// Why no usable trust policy could be loaded (or encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustError {
    /// A trust area shorter than [`AREA_SIZE`] (tooling reading a file).
    AreaTooSmall { len: usize },
    /// The area does not start with [`MAGIC`] (tooling reading a file).
    BadMagic,
    /// The length field exceeds what the area holds.
    PayloadTooLarge { len: usize, max: usize },
    /// Bytes after the payload are not zero.
    NotZeroPadded { offset: usize },
    /// The payload is not the expected JSON object.
    Malformed { reason: String },
    /// `policy` is neither `signed` nor `sealed-digest`.
    UnknownPolicy { found: String },
    /// A key is not 64 lowercase hex characters.
    BadKeyHex { index: usize, found: String },
    /// 32 bytes that are not a valid ed25519 point.
    InvalidKey { source: TrustSource, index: usize },
    /// A small-order ("weak") key, which signs anything under loose checks.
    WeakKey { source: TrustSource, index: usize },
    /// The same key listed twice.
    DuplicateKey { index: usize },
    /// `signed` with no keys: every boot would be refused.
    NoTrustedKeys { source: TrustSource },
    /// `sealed-digest` with keys, which that policy would silently ignore.
    KeysWithSealedDigest { count: usize },
    /// `sealed-digest` with a serial floor, which that policy cannot enforce.
    FloorWithSealedDigest { floor: u64 },
    /// A command-line allowlist entry or init path that is unusable.
    BootPolicy {
        source: TrustSource,
        error: PolicyError,
    },
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::AreaTooSmall { len } => write!(
                f,
                "trust area is {len} bytes, expected {AREA_SIZE}"
            ),
            // Never spell the magic out in a message: that would put a
            // second copy into the binary and defeat the embed tool's
            // exactly-once search.
            TrustError::BadMagic => write!(f, "trust area does not start with its magic bytes"),
            TrustError::PayloadTooLarge { len, max } => write!(
                f,
                "embedded trust payload length {len} exceeds the area's {max} bytes"
            ),
            TrustError::NotZeroPadded { offset } => write!(
                f,
                "embedded trust area has a non-zero byte after the payload at offset {offset}"
            ),
            TrustError::Malformed { reason } => {
                write!(f, "embedded trust payload is malformed: {reason}")
            }
            TrustError::UnknownPolicy { found } => write!(
                f,
                "embedded trust payload names policy {found:?}, expected \"signed\" or \"sealed-digest\""
            ),
            TrustError::BadKeyHex { index, found } => write!(
                f,
                "embedded trusted key #{index} is {found:?}, expected 64 lowercase hex characters"
            ),
            TrustError::InvalidKey { source, index } => write!(
                f,
                "{source} trusted key #{index} is not a valid ed25519 public key"
            ),
            TrustError::WeakKey { source, index } => write!(
                f,
                "{source} trusted key #{index} is a weak (small-order) ed25519 key"
            ),
            TrustError::DuplicateKey { index } => {
                write!(f, "embedded trusted key #{index} is listed twice")
            }
            TrustError::NoTrustedKeys { source } => write!(
                f,
                "policy signed with no {source} trusted keys: every seal would be refused \
                 (build with SEALROOT_TRUSTED_KEYS or keys/trusted/*.pub.pem, or run sealctl embed-keys)"
            ),
            TrustError::KeysWithSealedDigest { count } => write!(
                f,
                "policy sealed-digest with {count} key(s): that policy uses no keys"
            ),
            TrustError::FloorWithSealedDigest { floor } => write!(
                f,
                "policy sealed-digest with serial floor {floor}: that policy checks no seal, so \
                 the floor cannot be enforced (use policy signed for rollback protection)"
            ),
            TrustError::BootPolicy { source, error } => {
                write!(f, "{source} boot policy: {error}")
            }
        }
    }
}

impl std::error::Error for TrustError {}

/// The JSON payload as it is stored; field order fixed for stable output.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    policy: String,
    keys: Vec<String>,
    serial_floor: u64,
    /// Vendor command-line entries on top of the defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cmdline_allow: Vec<String>,
    /// The init list; absent = the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inits: Option<Vec<String>>,
    /// The measurement PCR; absent = the default (15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm_pcr: Option<u32>,
    /// Refuse a boot without a working TPM.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    tpm_required: bool,
    /// The TPM serial floor's NV counter; absent = the default, 0 = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm_floor_index: Option<u32>,
    /// Refuse a boot that cannot read the TPM floor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    tpm_floor_required: bool,
}

/// The trust policy in effect for this binary: the embedded payload if one
/// was written, else the compiled-in keys and policy.
pub fn load() -> Result<TrustPolicy, TrustError> {
    load_anchor().map(|(anchor, _)| anchor.policy)
}

/// Trust and boot policy in effect, and where they came from.
pub fn load_anchor() -> Result<(Anchor, TrustSource), TrustError> {
    let area: &[u8; AREA_SIZE] = std::hint::black_box(&crate::sys::TRUST_AREA);
    match decode_payload_region(area)? {
        Some(anchor) => Ok((anchor, TrustSource::Embedded)),
        None => compiled_in().map(|a| (a, TrustSource::CompiledIn)),
    }
}

/// The boot policy in force, and whether the command line is restricted by
/// it (the `signed` trust policy). Unlike [`load_anchor`] this succeeds for
/// a build without compiled-in keys: such a binary still checks its command
/// line first and refuses at the seal step, after saying what it measured.
/// A malformed embedded payload is an error here too (fail closed).
pub fn load_boot_policy() -> Result<(BootPolicy, bool), TrustError> {
    let area: &[u8; AREA_SIZE] = std::hint::black_box(&crate::sys::TRUST_AREA);
    match decode_payload_region(area)? {
        Some(anchor) => {
            let signed = matches!(anchor.policy, TrustPolicy::Signed { .. });
            Ok((anchor.boot, signed))
        }
        None => Ok((compiled_boot_policy()?, !compiled::COMPILED_SEALED_DIGEST)),
    }
}

/// The compiled-in anchor, ignoring any embedded payload.
pub fn compiled_in() -> Result<Anchor, TrustError> {
    let policy = policy_from_parts(
        compiled::COMPILED_SEALED_DIGEST,
        compiled::COMPILED_KEYS,
        compiled::COMPILED_SERIAL_FLOOR,
    )?;
    Ok(Anchor {
        policy,
        boot: compiled_boot_policy()?,
    })
}

fn compiled_boot_policy() -> Result<BootPolicy, TrustError> {
    let inits = if compiled::COMPILED_INITS.is_empty() {
        None
    } else {
        Some(
            compiled::COMPILED_INITS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    };
    let allow = compiled::COMPILED_CMDLINE_ALLOW
        .iter()
        .map(|s| s.to_string())
        .collect();
    let source = TrustSource::CompiledIn;
    let tpm = TpmPolicy::new(compiled::COMPILED_TPM_PCR, compiled::COMPILED_TPM_REQUIRED)
        .and_then(|t| {
            t.with_floor(
                compiled::COMPILED_TPM_FLOOR_INDEX,
                compiled::COMPILED_TPM_FLOOR_REQUIRED,
            )
        })
        .map_err(|error| TrustError::BootPolicy { source, error })?;
    BootPolicy::new(allow, inits)
        .map(|b| b.with_tpm(tpm))
        .map_err(|error| TrustError::BootPolicy { source, error })
}

fn policy_from_parts(
    sealed_digest: bool,
    raw_keys: &[[u8; 32]],
    serial_floor: u64,
) -> Result<TrustPolicy, TrustError> {
    if sealed_digest {
        // build.rs refuses a floor and warns about keys; checked again here.
        if serial_floor > 0 {
            return Err(TrustError::FloorWithSealedDigest {
                floor: serial_floor,
            });
        }
        return Ok(TrustPolicy::SealedDigest { serial_floor });
    }
    let mut keys = Vec::with_capacity(raw_keys.len());
    for (index, raw) in raw_keys.iter().enumerate() {
        keys.push(check_key(raw, TrustSource::CompiledIn, index)?);
    }
    if keys.is_empty() {
        return Err(TrustError::NoTrustedKeys {
            source: TrustSource::CompiledIn,
        });
    }
    Ok(TrustPolicy::Signed { keys, serial_floor })
}

fn check_key(
    raw: &[u8; 32],
    source: TrustSource,
    index: usize,
) -> Result<VerifyingKey, TrustError> {
    let key =
        VerifyingKey::from_bytes(raw).map_err(|_| TrustError::InvalidKey { source, index })?;
    if key.is_weak() {
        return Err(TrustError::WeakKey { source, index });
    }
    Ok(key)
}

/// Decode a whole area read from a file (tooling): checks size and magic,
/// then as [`load`] does. `Ok(None)`: nothing embedded.
pub fn decode_area(area: &[u8]) -> Result<Option<Anchor>, TrustError> {
    if area.len() < AREA_SIZE {
        return Err(TrustError::AreaTooSmall { len: area.len() });
    }
    if area.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(TrustError::BadMagic);
    }
    decode_payload_region(&area[..AREA_SIZE])
}

/// Everything after the magic: length, payload, zero padding.
fn decode_payload_region(area: &[u8]) -> Result<Option<Anchor>, TrustError> {
    let len_bytes: [u8; 4] = area
        .get(16..HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(TrustError::AreaTooSmall { len: area.len() })?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let max = area.len().saturating_sub(HEADER_LEN);
    if len > max {
        return Err(TrustError::PayloadTooLarge { len, max });
    }
    let end = HEADER_LEN + len;
    if let Some(pos) = area[end..].iter().position(|&b| b != 0) {
        return Err(TrustError::NotZeroPadded { offset: end + pos });
    }
    if len == 0 {
        return Ok(None);
    }
    decode_payload(&area[HEADER_LEN..end]).map(Some)
}

/// Parse a payload (the JSON bytes alone).
pub fn decode_payload(bytes: &[u8]) -> Result<Anchor, TrustError> {
    if bytes.len() > MAX_PAYLOAD_LEN {
        return Err(TrustError::PayloadTooLarge {
            len: bytes.len(),
            max: MAX_PAYLOAD_LEN,
        });
    }
    let payload: Payload = serde_json::from_slice(bytes).map_err(|e| TrustError::Malformed {
        reason: e.to_string(),
    })?;
    let source = TrustSource::Embedded;
    let tpm = TpmPolicy::new(
        payload.tpm_pcr.unwrap_or(crate::tpm::DEFAULT_PCR),
        payload.tpm_required,
    )
    .and_then(|t| {
        t.with_floor(
            payload
                .tpm_floor_index
                .unwrap_or(crate::tpm::nv::DEFAULT_FLOOR_INDEX),
            payload.tpm_floor_required,
        )
    })
    .map_err(|error| TrustError::BootPolicy { source, error })?;
    let boot = BootPolicy::new(payload.cmdline_allow.clone(), payload.inits.clone())
        .map_err(|error| TrustError::BootPolicy { source, error })?
        .with_tpm(tpm);
    decode_trust(&payload).map(|policy| Anchor { policy, boot })
}

fn decode_trust(payload: &Payload) -> Result<TrustPolicy, TrustError> {
    let source = TrustSource::Embedded;
    match payload.policy.as_str() {
        "sealed-digest" => {
            if !payload.keys.is_empty() {
                return Err(TrustError::KeysWithSealedDigest {
                    count: payload.keys.len(),
                });
            }
            if payload.serial_floor > 0 {
                return Err(TrustError::FloorWithSealedDigest {
                    floor: payload.serial_floor,
                });
            }
            Ok(TrustPolicy::SealedDigest { serial_floor: 0 })
        }
        "signed" => {
            let mut keys: Vec<VerifyingKey> = Vec::with_capacity(payload.keys.len());
            for (index, text) in payload.keys.iter().enumerate() {
                let raw: [u8; 32] = match hex_decode_lower(text) {
                    Ok(bytes) => bytes.try_into().map_err(|_| TrustError::BadKeyHex {
                        index,
                        found: text.clone(),
                    })?,
                    Err(_) => {
                        return Err(TrustError::BadKeyHex {
                            index,
                            found: text.clone(),
                        })
                    }
                };
                let key = check_key(&raw, source, index)?;
                if keys.contains(&key) {
                    return Err(TrustError::DuplicateKey { index });
                }
                keys.push(key);
            }
            if keys.is_empty() {
                return Err(TrustError::NoTrustedKeys { source });
            }
            Ok(TrustPolicy::Signed {
                keys,
                serial_floor: payload.serial_floor,
            })
        }
        other => Err(TrustError::UnknownPolicy {
            found: other.to_string(),
        }),
    }
}

/// The payload JSON for a policy. Refuses what [`decode_payload`] would refuse
/// (signed without keys, duplicate keys, too large), so `sealctl embed-keys`
/// cannot write a binary that fails every boot by accident.
pub fn encode_payload(anchor: &Anchor) -> Result<Vec<u8>, TrustError> {
    let boot = &anchor.boot;
    let inits = (!boot.default_inits()).then(|| boot.inits.clone());
    let cmdline_allow = boot.extra_allow.clone();
    let tpm_pcr = (boot.tpm.pcr != crate::tpm::DEFAULT_PCR).then_some(boot.tpm.pcr);
    let tpm_required = boot.tpm.required;
    let tpm_floor_index = (boot.tpm.floor_index != crate::tpm::nv::DEFAULT_FLOOR_INDEX)
        .then_some(boot.tpm.floor_index);
    let tpm_floor_required = boot.tpm.floor_required;
    let payload = match &anchor.policy {
        TrustPolicy::Signed { keys, serial_floor } => Payload {
            policy: "signed".into(),
            keys: keys.iter().map(|k| hex_encode(k.as_bytes())).collect(),
            serial_floor: *serial_floor,
            cmdline_allow,
            inits,
            tpm_pcr,
            tpm_required,
            tpm_floor_index,
            tpm_floor_required,
        },
        TrustPolicy::SealedDigest { serial_floor } => Payload {
            policy: "sealed-digest".into(),
            keys: Vec::new(),
            serial_floor: *serial_floor,
            cmdline_allow,
            inits,
            tpm_pcr,
            tpm_required,
            tpm_floor_index,
            tpm_floor_required,
        },
    };
    let bytes = serde_json::to_vec(&payload).map_err(|e| TrustError::Malformed {
        reason: e.to_string(),
    })?;
    // Round trip through the decoder: one definition of "valid".
    decode_payload(&bytes)?;
    Ok(bytes)
}

/// A complete area (magic, length, payload, zeros) holding `payload`.
pub fn encode_area(payload: &[u8]) -> Result<Vec<u8>, TrustError> {
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(TrustError::PayloadTooLarge {
            len: payload.len(),
            max: MAX_PAYLOAD_LEN,
        });
    }
    let mut area = INITIAL_AREA.to_vec();
    let len = u32::try_from(payload.len()).map_err(|_| TrustError::PayloadTooLarge {
        len: payload.len(),
        max: MAX_PAYLOAD_LEN,
    })?;
    area[16..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    area[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    Ok(area)
}

/// Human- and test-readable lines: `policy:`, `serial-floor:`, one `key:`
/// line per key fingerprint, one `init:` line per allowed init, and the
/// command-line policy (the byte grammar, the value bytes, the rootflags
/// options, the refused failure-policy keys and `cmdline-allow:` per entry;
/// or `cmdline: unrestricted` under sealed-digest).
pub fn describe(anchor: &Anchor) -> String {
    let policy = &anchor.policy;
    let mut out = format!(
        "policy: {}\nserial-floor: {}\n",
        policy.name(),
        policy.serial_floor()
    );
    if let TrustPolicy::Signed { keys, .. } = policy {
        for key in keys {
            out.push_str("key: ");
            out.push_str(&crate::keys::fingerprint(key));
            out.push('\n');
        }
    }
    for init in &anchor.boot.inits {
        out.push_str(&format!("init: {init}\n"));
    }
    out.push_str(&format!(
        "tpm-pcr: {}\ntpm: {}\n",
        anchor.boot.tpm.pcr,
        if anchor.boot.tpm.required {
            "required"
        } else {
            "optional"
        }
    ));
    out.push_str(&describe_floor(&anchor.boot.tpm));
    match policy {
        TrustPolicy::Signed { .. } => {
            out.push_str(
                "cmdline-bytes: space and printable ASCII, no \" ' or \\ (one grammar for every reader)\n",
            );
            out.push_str(&format!(
                "cmdline-values: letters, digits and {}\n",
                crate::boot::policy::SAFE_VALUE_BYTES
            ));
            out.push_str(&format!(
                "rootflags-allow: {}\n",
                crate::boot::policy::ROOTFLAGS_ALLOWED.join(",")
            ));
            for key in crate::boot::policy::FAILURE_POLICY_KEYS {
                out.push_str(&format!(
                    "cmdline-refused: {key}= (the failure policy comes from the initramfs)\n"
                ));
            }
            for entry in anchor.boot.effective_allow() {
                out.push_str(&format!("cmdline-allow: {entry}\n"));
            }
        }
        TrustPolicy::SealedDigest { .. } => {
            out.push_str(
                "cmdline: unrestricted (sealed-digest: the command line is inside a signed UKI)\n",
            );
        }
    }
    out
}

/// The `tpm-floor:` line: the NV counter and whether it is required, or
/// `off`.
pub fn describe_floor(tpm: &TpmPolicy) -> String {
    if tpm.floor_index == 0 {
        return "tpm-floor: off\n".to_string();
    }
    format!(
        "tpm-floor: nv 0x{:08x} {}\n",
        tpm.floor_index,
        if tpm.floor_required {
            "required"
        } else {
            "optional"
        }
    )
}

/// What `sealroot --show-trust` prints: [`describe`] plus a `source:` line,
/// or the reason no policy loads (`Err`, already one line).
pub fn show() -> Result<String, TrustError> {
    let (anchor, source) = load_anchor()?;
    Ok(format!("{}source: {source}\n", describe(&anchor)))
}

/// Why `sealroot check-seal` refused.
#[derive(Debug)]
pub enum CheckSealError {
    /// No usable trust policy in this binary.
    Trust(TrustError),
    /// The config sets a serial floor, but the sealed-digest policy checks
    /// no seal (the boot refuses this combination).
    FloorWithoutSeal { floor: u64 },
    /// The config named by `--config` is unusable.
    Config(crate::boot::config::ConfigError),
    /// The repository directory cannot be opened.
    Repo(crate::boot::mount::ImageError),
    /// The seal is missing, unreadable or does not verify under this
    /// binary's keys and floor.
    Seal(crate::seal::RepoSealError),
}

impl fmt::Display for CheckSealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckSealError::Trust(e) => write!(f, "{e}"),
            CheckSealError::FloorWithoutSeal { floor } => write!(
                f,
                "config sets serial_floor {floor} but the policy is sealed-digest, which checks no seal; the boot refuses this"
            ),
            CheckSealError::Config(e) => write!(f, "{e}"),
            CheckSealError::Repo(e) => write!(f, "repository: {e}"),
            CheckSealError::Seal(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CheckSealError {}

/// The boot's own seal check ([`crate::seal::check_repository_seal`], the
/// same beneath-fd opens and the same floor: max(this binary's, the
/// config's)) against this binary's trust anchor, for a repository on a
/// host: proves what a (patched) binary would accept without booting. Only
/// the seal is checked, for the digest given; the image's bytes are not
/// hashed here (`sealctl verify` does that offline, the kernel's fs-verity
/// at boot), which keeps userspace Merkle hashing out of the size-budgeted
/// boot binary.
pub fn check_seal(
    root: &std::path::Path,
    digest: &crate::digest::Digest,
    config: &crate::boot::config::Config,
) -> Result<String, CheckSealError> {
    let policy = load().map_err(CheckSealError::Trust)?;
    if let TrustPolicy::SealedDigest { .. } = policy {
        if config.serial_floor > 0 {
            return Err(CheckSealError::FloorWithoutSeal {
                floor: config.serial_floor,
            });
        }
        return Ok(format!(
            "policy sealed-digest: no seal needed for {}\n",
            digest.to_composefs()
        ));
    }
    let TrustPolicy::Signed { keys, serial_floor } = &policy else {
        return Err(CheckSealError::Trust(TrustError::NoTrustedKeys {
            source: TrustSource::CompiledIn,
        }));
    };
    let floor = (*serial_floor).max(config.serial_floor);
    let repo = crate::boot::mount::open_repo(root).map_err(CheckSealError::Repo)?;
    let checked = crate::seal::check_repository_seal(&repo, digest, keys, floor)
        .map_err(CheckSealError::Seal)?;
    Ok(format!(
        "seal ok: {} serial {} (floor {floor}) key {}\n",
        digest.to_composefs(),
        checked.verified.manifest.serial,
        checked.verified.key_fingerprint
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    // RFC 8032 section 7.1, TEST 1 and TEST 2 public keys.
    const KEY1: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const KEY2: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";

    fn key(hex: &str) -> VerifyingKey {
        let raw: [u8; 32] = hex_decode_lower(hex).unwrap().try_into().unwrap();
        VerifyingKey::from_bytes(&raw).unwrap()
    }

    fn area_with(payload: &[u8]) -> Vec<u8> {
        encode_area(payload).unwrap()
    }

    #[test]
    fn tpm_policy_in_payload() {
        let anchor = Anchor {
            policy: TrustPolicy::Signed {
                keys: vec![key(KEY1)],
                serial_floor: 0,
            },
            boot: BootPolicy::default().with_tpm(TpmPolicy::new(12, true).unwrap()),
        };
        let bytes = encode_payload(&anchor).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["tpm_pcr"], 12);
        assert_eq!(json["tpm_required"], true);
        assert_eq!(decode_payload(&bytes), Ok(anchor.clone()));
        let shown = describe(&anchor);
        assert!(shown.contains("tpm-pcr: 12\ntpm: required\n"), "{shown}");
        // The defaults are not written, and absent fields mean the defaults.
        let plain = Anchor::with_default_boot(anchor.policy.clone());
        let json: serde_json::Value =
            serde_json::from_slice(&encode_payload(&plain).unwrap()).unwrap();
        assert!(json.get("tpm_pcr").is_none() && json.get("tpm_required").is_none());
        assert_eq!(plain.boot.tpm, TpmPolicy::default());
        for bad in [
            format!(r#"{{"policy":"signed","keys":["{KEY1}"],"serial_floor":0,"tpm_pcr":16}}"#),
            format!(r#"{{"policy":"signed","keys":["{KEY1}"],"serial_floor":0,"tpm_pcr":3}}"#),
        ] {
            assert!(
                matches!(
                    decode_payload(bad.as_bytes()),
                    Err(TrustError::BootPolicy {
                        error: PolicyError::BadTpmPcr { .. },
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert!(
            shown.contains("tpm-floor: nv 0x01805ea1 optional\n"),
            "{shown}"
        );
        assert!(json.get("tpm_floor_index").is_none() && json.get("tpm_floor_required").is_none());
        // The floor index and its requirement travel in the payload.
        let floored = Anchor {
            policy: anchor.policy.clone(),
            boot: BootPolicy::default()
                .with_tpm(TpmPolicy::default().with_floor(0x0180_0001, true).unwrap()),
        };
        let bytes = encode_payload(&floored).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["tpm_floor_index"], 0x0180_0001);
        assert_eq!(json["tpm_floor_required"], true);
        assert_eq!(decode_payload(&bytes), Ok(floored.clone()));
        assert!(describe(&floored).contains("tpm-floor: nv 0x01800001 required\n"));
        let off = Anchor {
            policy: anchor.policy.clone(),
            boot: BootPolicy::default()
                .with_tpm(TpmPolicy::default().with_floor(0, false).unwrap()),
        };
        let bytes = encode_payload(&off).unwrap();
        assert_eq!(decode_payload(&bytes), Ok(off.clone()));
        assert!(describe(&off).contains("tpm-floor: off\n"));
        for bad in [
            format!(
                r#"{{"policy":"signed","keys":["{KEY1}"],"serial_floor":0,"tpm_floor_index":2164260865}}"#
            ),
            format!(
                r#"{{"policy":"signed","keys":["{KEY1}"],"serial_floor":0,"tpm_floor_index":0,"tpm_floor_required":true}}"#
            ),
        ] {
            assert!(
                matches!(
                    decode_payload(bad.as_bytes()),
                    Err(TrustError::BootPolicy {
                        error: PolicyError::BadTpmFloorIndex { .. },
                        ..
                    })
                ),
                "{bad}"
            );
        }
        let bad = format!(
            r#"{{"policy":"signed","keys":["{KEY1}"],"serial_floor":0,"tpm_required":"yes"}}"#
        );
        assert!(matches!(
            decode_payload(bad.as_bytes()),
            Err(TrustError::Malformed { .. })
        ));
    }

    #[test]
    fn initial_area_means_nothing_embedded() {
        assert_eq!(&INITIAL_AREA[..16], b"SEALROOT-TRUST01");
        assert_eq!(decode_area(&INITIAL_AREA), Ok(None));
    }

    #[test]
    fn payload_round_trips() {
        let policy = TrustPolicy::Signed {
            keys: vec![key(KEY1), key(KEY2)],
            serial_floor: 7,
        };
        let policy = Anchor::with_default_boot(policy);
        let bytes = encode_payload(&policy).unwrap();
        // The stored form is the documented JSON, checked independently of the encoder.
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"policy": "signed", "keys": [KEY1, KEY2], "serial_floor": 7})
        );
        assert_eq!(decode_area(&area_with(&bytes)), Ok(Some(policy)));

        let sealed = Anchor::with_default_boot(TrustPolicy::SealedDigest { serial_floor: 0 });
        let bytes = encode_payload(&sealed).unwrap();
        assert_eq!(decode_payload(&bytes), Ok(sealed));
        // The boot policy travels with the keys.
        let with_boot = Anchor {
            policy: TrustPolicy::Signed {
                keys: vec![key(KEY1)],
                serial_floor: 0,
            },
            boot: BootPolicy::new(
                vec!["no_timer_check".into()],
                Some(vec!["/usr/bin/myinit".into()]),
            )
            .unwrap(),
        };
        let bytes = encode_payload(&with_boot).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["cmdline_allow"], serde_json::json!(["no_timer_check"]));
        assert_eq!(json["inits"], serde_json::json!(["/usr/bin/myinit"]));
        assert_eq!(decode_payload(&bytes), Ok(with_boot));
    }

    #[test]
    fn area_layout_is_magic_length_payload_zeros() {
        let area = area_with(b"{}");
        assert_eq!(area.len(), 8192);
        assert_eq!(&area[..16], b"SEALROOT-TRUST01");
        assert_eq!(&area[16..20], &[2, 0, 0, 0]);
        assert_eq!(&area[20..22], b"{}");
        assert!(area[22..].iter().all(|&b| b == 0));
    }

    #[test]
    fn malformed_payloads_fail_closed() {
        type Check = fn(&TrustError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("not json", |e| matches!(e, TrustError::Malformed { .. })),
            ("{\"policy\":\"signed\"}", |e| matches!(e, TrustError::Malformed { .. })),
            (
                "{\"policy\":\"signed\",\"keys\":[],\"serial_floor\":0,\"extra\":1}",
                |e| matches!(e, TrustError::Malformed { .. }),
            ),
            (
                "{\"policy\":\"signed\",\"keys\":[],\"serial_floor\":-1}",
                |e| matches!(e, TrustError::Malformed { .. }),
            ),
            (
                "{\"policy\":\"none\",\"keys\":[],\"serial_floor\":0}",
                |e| matches!(e, TrustError::UnknownPolicy { found } if found == "none"),
            ),
            (
                "{\"policy\":\"signed\",\"keys\":[],\"serial_floor\":0}",
                |e| {
                    matches!(
                        e,
                        TrustError::NoTrustedKeys {
                            source: TrustSource::Embedded
                        }
                    )
                },
            ),
            (
                "{\"policy\":\"signed\",\"keys\":[\"D75A980182B10AB7D54BFED3C964073A0EE172F3DAA62325AF021A68F707511A\"],\"serial_floor\":0}",
                |e| matches!(e, TrustError::BadKeyHex { index: 0, .. }),
            ),
            (
                "{\"policy\":\"signed\",\"keys\":[\"d75a98\"],\"serial_floor\":0}",
                |e| matches!(e, TrustError::BadKeyHex { index: 0, .. }),
            ),
            (
                "{\"policy\":\"sealed-digest\",\"keys\":[\"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"],\"serial_floor\":0}",
                |e| matches!(e, TrustError::KeysWithSealedDigest { count: 1 }),
            ),
            (
                "{\"policy\":\"sealed-digest\",\"keys\":[],\"serial_floor\":3}",
                |e| matches!(e, TrustError::FloorWithSealedDigest { floor: 3 }),
            ),
            (
                "{\"policy\":\"signed\",\"keys\":[\"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"],\"serial_floor\":0,\"cmdline_allow\":[\"a b\"]}",
                |e| matches!(e, TrustError::BootPolicy { .. }),
            ),
            (
                "{\"policy\":\"signed\",\"keys\":[\"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"],\"serial_floor\":0,\"inits\":[]}",
                |e| matches!(e, TrustError::BootPolicy { .. }),
            ),
            (
                "{\"policy\":\"signed\",\"keys\":[\"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"],\"serial_floor\":0,\"inits\":[\"bin/sh\"]}",
                |e| matches!(e, TrustError::BootPolicy { .. }),
            ),
            // The identity point (y = 1): small order.
            (
                "{\"policy\":\"signed\",\"keys\":[\"0100000000000000000000000000000000000000000000000000000000000000\"],\"serial_floor\":0}",
                |e| matches!(e, TrustError::WeakKey { index: 0, .. }),
            ),
            // y = 2 has no x on the curve.
            (
                "{\"policy\":\"signed\",\"keys\":[\"0200000000000000000000000000000000000000000000000000000000000000\"],\"serial_floor\":0}",
                |e| matches!(e, TrustError::InvalidKey { index: 0, .. }),
            ),
        ];
        for (payload, check) in cases {
            let err = decode_area(&area_with(payload.as_bytes())).unwrap_err();
            assert!(check(&err), "{payload}: unexpected {err:?}");
            assert!(!err.to_string().is_empty());
        }
        let dup = format!(
            "{{\"policy\":\"signed\",\"keys\":[\"{KEY1}\",\"{KEY1}\"],\"serial_floor\":0}}"
        );
        assert_eq!(
            decode_area(&area_with(dup.as_bytes())),
            Err(TrustError::DuplicateKey { index: 1 })
        );
    }

    #[test]
    fn corrupt_areas_fail_closed() {
        let mut area = INITIAL_AREA.to_vec();
        area[16..20].copy_from_slice(&(8173u32).to_le_bytes());
        assert_eq!(
            decode_area(&area),
            Err(TrustError::PayloadTooLarge {
                len: 8173,
                max: 8172
            })
        );
        area[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_area(&area),
            Err(TrustError::PayloadTooLarge { .. })
        ));

        let mut area = INITIAL_AREA.to_vec();
        area[8191] = 1;
        assert_eq!(
            decode_area(&area),
            Err(TrustError::NotZeroPadded { offset: 8191 })
        );

        let mut area = INITIAL_AREA.to_vec();
        area[0] ^= 1;
        assert_eq!(decode_area(&area), Err(TrustError::BadMagic));
        assert_eq!(
            decode_area(&INITIAL_AREA[..100]),
            Err(TrustError::AreaTooSmall { len: 100 })
        );
        assert!(encode_area(&[b' '; MAX_PAYLOAD_LEN + 1]).is_err());
        // The largest payload fits exactly.
        assert!(encode_area(&[b' '; MAX_PAYLOAD_LEN]).is_ok());
    }

    #[test]
    fn signed_with_no_keys_is_refused_everywhere() {
        assert_eq!(
            policy_from_parts(false, &[], 0),
            Err(TrustError::NoTrustedKeys {
                source: TrustSource::CompiledIn
            })
        );
        assert_eq!(
            encode_payload(&Anchor::with_default_boot(TrustPolicy::Signed {
                keys: vec![],
                serial_floor: 0
            })),
            Err(TrustError::NoTrustedKeys {
                source: TrustSource::Embedded
            })
        );
        // sealed-digest needs no keys, and cannot enforce a floor.
        assert_eq!(
            policy_from_parts(true, &[], 0),
            Ok(TrustPolicy::SealedDigest { serial_floor: 0 })
        );
        assert_eq!(
            policy_from_parts(true, &[], 5),
            Err(TrustError::FloorWithSealedDigest { floor: 5 })
        );
        let raw: [u8; 32] = hex_decode_lower(KEY1).unwrap().try_into().unwrap();
        assert_eq!(
            policy_from_parts(false, &[raw], 2),
            Ok(TrustPolicy::Signed {
                keys: vec![key(KEY1)],
                serial_floor: 2
            })
        );
    }

    #[test]
    fn compiled_in_matches_build_inputs() {
        // Without SEALROOT_TRUSTED_KEYS, keys/trusted/ or test-keys, a signed
        // build has no keys and must refuse; with the feature it has the test key.
        let result = compiled_in().map(|a| a.policy);
        if cfg!(feature = "sealed-digest") {
            assert!(matches!(result, Ok(TrustPolicy::SealedDigest { .. })));
        } else if compiled::COMPILED_KEYS.is_empty() {
            assert_eq!(
                result,
                Err(TrustError::NoTrustedKeys {
                    source: TrustSource::CompiledIn
                })
            );
        } else {
            assert!(
                matches!(result, Ok(TrustPolicy::Signed { ref keys, .. }) if keys.len() == compiled::COMPILED_KEYS.len())
            );
        }
        // Nothing is embedded in a freshly built test binary.
        assert_eq!(
            load_anchor().map(|(_, s)| s).ok(),
            result.ok().map(|_| TrustSource::CompiledIn)
        );
    }

    #[test]
    fn describe_lists_policy_and_fingerprints() {
        let text = describe(&Anchor::with_default_boot(TrustPolicy::Signed {
            keys: vec![key(KEY1)],
            serial_floor: 9,
        }));
        let expected_fp = format!(
            "sha256:{}",
            hex_encode(&Sha256::digest(hex_decode_lower(KEY1).unwrap()))
        );
        assert!(text.starts_with(&format!(
            "policy: signed\nserial-floor: 9\nkey: {expected_fp}\ninit: /sbin/init\n"
        )));
        assert!(text.contains("\ncmdline-allow: console=\n"));
        assert!(text.contains("\ncmdline-allow: init=/lib/systemd/systemd\n"));
        assert!(!text.contains("cmdline-allow: init=/bin/sh"));
        let sealed = describe(&Anchor::with_default_boot(TrustPolicy::SealedDigest {
            serial_floor: 0,
        }));
        assert!(sealed.starts_with("policy: sealed-digest\nserial-floor: 0\ninit: /sbin/init\n"));
        assert!(sealed.contains("cmdline: unrestricted"));
    }
}
