//! The persistent serial floor: a TPM NV index of type `TPM_NT_COUNTER`
//! (issue 19), read at boot with TPM2_NV_ReadPublic + TPM2_NV_Read and raised
//! by `sealctl tpm-floor` with TPM2_NV_Increment.
//!
//! Contract:
//! - **Why a counter.** By the TPM's own rules a counter index only goes up
//!   (TPM2_NV_Increment adds 1; TPM2_NV_Write is refused for it), and a
//!   counter index defined anew starts at the highest value any counter on
//!   that TPM ever had (Part 1, "NV Counter"). Undefining and redefining the
//!   index therefore cannot lower the floor. Raising from N to M takes M-N
//!   increments: every one is an NV write, so [`plan_raise`] refuses jumps
//!   above a maximum ([`DEFAULT_MAX_JUMP`] unless the caller says otherwise).
//! - **The index** ([`DEFAULT_FLOOR_INDEX`] `0x01805ea1`, in the TCG
//!   registry's owner range 0x01800000..=0x01BFFFFF) is part of the build-time
//!   boot policy (`SEALROOT_TPM_FLOOR_INDEX`, `sealctl embed-keys
//!   --tpm-floor-index`); any handle in 0x01000000..=0x01FFFFFF may be chosen,
//!   0 turns the TPM floor off.
//! - **What the boot accepts** ([`check_public`]), from the public area
//!   NV_ReadPublic returns: type `TPM_NT_COUNTER` (bits 4..7 = 1), data size
//!   8, `TPMA_NV_WRITTEN` (a counter never incremented has no value),
//!   `TPMA_NV_AUTHREAD` (the boot reads with the index's own, empty,
//!   authorization) and `TPMA_NV_NO_DA` (a failed read never counts towards
//!   the dictionary-attack lockout), and of the four write-authorization
//!   bits exactly `TPMA_NV_OWNERWRITE` (only the owner hierarchy may
//!   increment: not `AUTHWRITE` with its empty password, not a policy, not
//!   platform authorization); `TPMA_NV_READLOCKED` must be clear. Every other
//!   attribute is not looked at. [`FLOOR_ATTRIBUTES`] (`0x02060012` before
//!   the first increment, what `sealctl tpm-floor define` asks for) meets
//!   that. Anything else is a [`FloorError`] the boot refuses.
//! - **Commands** (Part 3 31.x, structures Part 2; integers big endian):
//!   - NV_ReadPublic (0x169): `8001 size 00000169 nvIndex`; response
//!     `8001 size rc` then TPM2B_NV_PUBLIC (`size`, nvIndex u32, nameAlg u16,
//!     attributes u32, authPolicy TPM2B, dataSize u16) and TPM2B_NAME
//!     (nameAlg || H(nvPublic)). The name is checked against our own hash of
//!     the public area for SHA-256/384/512 name algorithms, the index
//!     against the one asked for, and both structures must fill the response
//!     exactly.
//!   - NV_Read (0x14E): `8002 size 0000014e authHandle nvIndex` + password
//!     session (authHandle = nvIndex, empty password) + size u16 + offset
//!     u16; response `8002 size rc paramSize` TPM2B_MAX_NV_BUFFER then the
//!     session's response area.
//!   - NV_DefineSpace (0x12A, tool): `8002 size 0000012a TPM_RH_OWNER` +
//!     password session (owner auth) + TPM2B_AUTH (empty) + TPM2B_NV_PUBLIC.
//!   - NV_Increment (0x134, tool): `8002 size 00000134 TPM_RH_OWNER nvIndex`
//!     + password session (owner auth). Both answer with `paramSize` 0.
//! - A missing index is `TPM_RC_HANDLE` on handle 1 (`0x18b`):
//!   [`FloorRead::Undefined`]; what the boot does then is its policy's
//!   `tpm_floor_required`.

use std::fmt;

use super::{check_header, Malformed, Reader, TpmError, TPM_RS_PW, TPM_ST_NO_SESSIONS};
use super::{Bank, TPM_ST_SESSIONS};

/// `TPM_CC_NV_ReadPublic`
pub const TPM_CC_NV_READ_PUBLIC: u32 = 0x0000_0169;
/// `TPM_CC_NV_Read`
pub const TPM_CC_NV_READ: u32 = 0x0000_014E;
/// `TPM_CC_NV_DefineSpace`
pub const TPM_CC_NV_DEFINE_SPACE: u32 = 0x0000_012A;
/// `TPM_CC_NV_Increment`
pub const TPM_CC_NV_INCREMENT: u32 = 0x0000_0134;
/// `TPM_RH_OWNER`: the owner (storage) hierarchy.
pub const TPM_RH_OWNER: u32 = 0x4000_0001;
/// `TPM_ALG_SHA256`, the name algorithm `sealctl tpm-floor define` uses.
pub const TPM_ALG_SHA256: u16 = 0x000B;

/// The default floor index (owner range of the TCG handle registry).
pub const DEFAULT_FLOOR_INDEX: u32 = 0x0180_5EA1;
/// Handles a policy may name (all NV indexes).
pub const NV_INDEX_RANGE: std::ops::RangeInclusive<u32> = 0x0100_0000..=0x01FF_FFFF;
/// Increments `sealctl tpm-floor raise` makes at most per run by default.
pub const DEFAULT_MAX_JUMP: u64 = 32;

/// TPMA_NV bits (Part 2, 13.4).
pub mod attr {
    pub const PPWRITE: u32 = 1 << 0;
    pub const OWNERWRITE: u32 = 1 << 1;
    pub const AUTHWRITE: u32 = 1 << 2;
    pub const POLICYWRITE: u32 = 1 << 3;
    /// `TPM_NT` in bits 4..=7.
    pub const TYPE_MASK: u32 = 0xF0;
    pub const TYPE_SHIFT: u32 = 4;
    pub const OWNERREAD: u32 = 1 << 17;
    pub const AUTHREAD: u32 = 1 << 18;
    pub const NO_DA: u32 = 1 << 25;
    pub const READLOCKED: u32 = 1 << 28;
    pub const WRITTEN: u32 = 1 << 29;
    /// The four bits saying who may write.
    pub const WRITE_AUTH: u32 = PPWRITE | OWNERWRITE | AUTHWRITE | POLICYWRITE;
}

/// `TPM_NT_ORDINARY`
pub const TPM_NT_ORDINARY: u8 = 0;
/// `TPM_NT_COUNTER`
pub const TPM_NT_COUNTER: u8 = 1;

/// What `sealctl tpm-floor define` asks for: a counter the owner increments
/// and anybody reads with the index's empty authorization, outside the
/// dictionary-attack protection.
pub const FLOOR_ATTRIBUTES: u32 = ((TPM_NT_COUNTER as u32) << attr::TYPE_SHIFT)
    | attr::OWNERWRITE
    | attr::OWNERREAD
    | attr::AUTHREAD
    | attr::NO_DA;

/// Attributes the boot requires besides the type (WRITTEN is checked on
/// its own so that its absence has its own message).
pub const REQUIRED_ATTRIBUTES: u32 = attr::OWNERWRITE | attr::AUTHREAD | attr::NO_DA;
/// Attributes the boot refuses.
pub const FORBIDDEN_ATTRIBUTES: u32 =
    attr::PPWRITE | attr::AUTHWRITE | attr::POLICYWRITE | attr::READLOCKED;

/// The `TPM_NT` of an attribute word.
pub fn nv_type(attributes: u32) -> u8 {
    ((attributes & attr::TYPE_MASK) >> attr::TYPE_SHIFT) as u8
}

/// The public area of an NV index (TPMS_NV_PUBLIC) and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvPublic {
    pub index: u32,
    pub name_alg: u16,
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    pub data_size: u16,
    /// TPM2B_NAME contents: nameAlg || H(TPMS_NV_PUBLIC).
    pub name: Vec<u8>,
}

/// What reading the floor found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloorRead {
    /// No NV index at the handle.
    Undefined,
    /// The counter's value.
    Value(u64),
}

/// Why the floor index is unusable.
#[derive(Debug)]
pub enum FloorError {
    /// Talking to the TPM failed (no device, I/O, an error response, a
    /// malformed answer).
    Tpm { index: u32, error: TpmError },
    /// The index is not a counter (an ordinary, bit-field, extend or PIN
    /// index can be written to any value).
    NotCounter { index: u32, nt: u8, attributes: u32 },
    /// A counter without the required attributes or with forbidden ones.
    Attributes {
        index: u32,
        attributes: u32,
        missing: u32,
        forbidden: u32,
    },
    /// A counter that was never incremented has no value.
    NotWritten { index: u32 },
    /// A counter's data is 8 bytes; anything else is not a counter.
    DataSize { index: u32, size: u16 },
}

impl FloorError {
    /// The TPM could not be asked (as opposed to: it answered with an
    /// index the policy refuses).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, FloorError::Tpm { .. })
    }
}

impl fmt::Display for FloorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FloorError::Tpm { index, error } => {
                write!(f, "TPM serial floor (NV index 0x{index:08x}): {error}")
            }
            FloorError::NotCounter {
                index,
                nt,
                attributes,
            } => write!(
                f,
                "TPM NV index 0x{index:08x} is not a counter (TPM_NT {nt}, attributes 0x{attributes:08x}): \
                 it cannot hold a serial floor"
            ),
            FloorError::Attributes {
                index,
                attributes,
                missing,
                forbidden,
            } => write!(
                f,
                "TPM NV counter 0x{index:08x} has attributes 0x{attributes:08x} (missing 0x{missing:08x}, \
                 not allowed 0x{forbidden:08x}): a floor counter must be owner-written only, \
                 auth-readable and no-DA"
            ),
            FloorError::NotWritten { index } => write!(
                f,
                "TPM NV counter 0x{index:08x} was never incremented and has no value \
                 (sealctl tpm-floor define provisions it)"
            ),
            FloorError::DataSize { index, size } => write!(
                f,
                "TPM NV index 0x{index:08x} holds {size} bytes, a counter holds 8"
            ),
        }
    }
}

impl std::error::Error for FloorError {}

/// Check a public area against the floor rules (module docs).
pub fn check_public(p: &NvPublic) -> Result<(), FloorError> {
    let index = p.index;
    let nt = nv_type(p.attributes);
    if nt != TPM_NT_COUNTER {
        return Err(FloorError::NotCounter {
            index,
            nt,
            attributes: p.attributes,
        });
    }
    if p.data_size != 8 {
        return Err(FloorError::DataSize {
            index,
            size: p.data_size,
        });
    }
    let missing = REQUIRED_ATTRIBUTES & !p.attributes;
    let forbidden = FORBIDDEN_ATTRIBUTES & p.attributes;
    if missing != 0 || forbidden != 0 {
        return Err(FloorError::Attributes {
            index,
            attributes: p.attributes,
            missing,
            forbidden,
        });
    }
    if p.attributes & attr::WRITTEN == 0 {
        return Err(FloorError::NotWritten { index });
    }
    Ok(())
}

// ------------------------------------------------------------------ encoders

/// A command: header, handles, optional password session, parameters.
fn command(cc: u32, handles: &[u32], password: Option<&[u8]>, params: &[u8]) -> Vec<u8> {
    let tag = if password.is_some() {
        TPM_ST_SESSIONS
    } else {
        TPM_ST_NO_SESSIONS
    };
    let mut c = Vec::with_capacity(32 + params.len());
    c.extend_from_slice(&tag.to_be_bytes());
    c.extend_from_slice(&[0; 4]); // size, patched below
    c.extend_from_slice(&cc.to_be_bytes());
    for h in handles {
        c.extend_from_slice(&h.to_be_bytes());
    }
    if let Some(pw) = password {
        // TPMS_AUTH_COMMAND with TPM_RS_PW: empty nonce, no attributes,
        // the password as hmac.
        c.extend_from_slice(&(9 + pw.len() as u32).to_be_bytes());
        c.extend_from_slice(&TPM_RS_PW.to_be_bytes());
        c.extend_from_slice(&0u16.to_be_bytes());
        c.push(0);
        c.extend_from_slice(&(pw.len() as u16).to_be_bytes());
        c.extend_from_slice(pw);
    }
    c.extend_from_slice(params);
    let size = c.len() as u32;
    c[2..6].copy_from_slice(&size.to_be_bytes());
    c
}

/// TPM2_NV_ReadPublic for `index`.
pub fn encode_nv_read_public(index: u32) -> Vec<u8> {
    command(TPM_CC_NV_READ_PUBLIC, &[index], None, &[])
}

/// TPM2_NV_Read of `size` bytes at `offset`, authorized by the index itself
/// with the empty password.
pub fn encode_nv_read(index: u32, size: u16, offset: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(4);
    p.extend_from_slice(&size.to_be_bytes());
    p.extend_from_slice(&offset.to_be_bytes());
    command(TPM_CC_NV_READ, &[index, index], Some(&[]), &p)
}

/// TPMS_NV_PUBLIC with an empty authPolicy.
pub fn encode_nv_public(index: u32, name_alg: u16, attributes: u32, data_size: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(14);
    p.extend_from_slice(&index.to_be_bytes());
    p.extend_from_slice(&name_alg.to_be_bytes());
    p.extend_from_slice(&attributes.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    p.extend_from_slice(&data_size.to_be_bytes());
    p
}

/// TPM2_NV_DefineSpace of the floor counter at `index` (empty index
/// authorization, SHA-256 names, [`FLOOR_ATTRIBUTES`]), authorized by the
/// owner's password `owner_auth`.
pub fn encode_define_floor(index: u32, owner_auth: &[u8]) -> Vec<u8> {
    let public = encode_nv_public(index, TPM_ALG_SHA256, FLOOR_ATTRIBUTES, 8);
    let mut p = Vec::with_capacity(4 + public.len());
    p.extend_from_slice(&0u16.to_be_bytes()); // TPM2B_AUTH: empty
    p.extend_from_slice(&(public.len() as u16).to_be_bytes());
    p.extend_from_slice(&public);
    command(
        TPM_CC_NV_DEFINE_SPACE,
        &[TPM_RH_OWNER],
        Some(owner_auth),
        &p,
    )
}

/// TPM2_NV_Increment of `index`, authorized by the owner's password.
pub fn encode_increment(index: u32, owner_auth: &[u8]) -> Vec<u8> {
    command(
        TPM_CC_NV_INCREMENT,
        &[TPM_RH_OWNER, index],
        Some(owner_auth),
        &[],
    )
}

// ------------------------------------------------------------------ decoders

fn malformed(command: u32, what: Malformed) -> TpmError {
    TpmError::Malformed { command, what }
}

/// TPM2_NV_ReadPublic's response for `index`.
pub fn parse_nv_read_public(buf: &[u8], index: u32) -> Result<NvPublic, TpmError> {
    let command = TPM_CC_NV_READ_PUBLIC;
    let tag = check_header(buf, command)?;
    if tag != TPM_ST_NO_SESSIONS {
        return Err(malformed(command, Malformed::Tag { tag }));
    }
    let mut r = Reader {
        buf,
        pos: 10,
        command,
    };
    let public = r.tpm2b()?;
    let name = r.tpm2b()?.to_vec();
    r.end("parameters")?;
    let mut p = Reader {
        buf: public,
        pos: 0,
        command,
    };
    let got = p.u32()?;
    let name_alg = p.u16()?;
    let attributes = p.u32()?;
    let auth_policy = p.tpm2b()?.to_vec();
    let data_size = p.u16()?;
    p.end("NV public area")?;
    if got != index {
        return Err(malformed(
            command,
            Malformed::IndexMismatch { asked: index, got },
        ));
    }
    // The name must be nameAlg || H(public) where we have the hash.
    let bank = Bank::from_alg_id(name_alg).filter(|b| b.hash(&[]).is_some());
    if let Some(bank) = bank {
        let mut want = name_alg.to_be_bytes().to_vec();
        want.extend(bank.hash(&[public]).unwrap_or_default());
        if name != want {
            return Err(malformed(command, Malformed::NameMismatch));
        }
    }
    Ok(NvPublic {
        index,
        name_alg,
        attributes,
        auth_policy,
        data_size,
        name,
    })
}

/// TPM2_NV_Read's response: exactly `size` bytes of data.
pub fn parse_nv_read(buf: &[u8], size: u16) -> Result<Vec<u8>, TpmError> {
    let command = TPM_CC_NV_READ;
    let params = super::session_params(buf, command)?;
    let mut r = Reader {
        buf: params,
        pos: 0,
        command,
    };
    let data = r.tpm2b()?;
    r.end("parameters")?;
    if data.len() != usize::from(size) {
        return Err(malformed(
            command,
            Malformed::DataLength {
                asked: size,
                got: data.len(),
            },
        ));
    }
    Ok(data.to_vec())
}

/// A response with no parameters (NV_DefineSpace, NV_Increment).
pub fn parse_empty(buf: &[u8], command: u32) -> Result<(), TpmError> {
    let params = super::session_params(buf, command)?;
    Reader {
        buf: params,
        pos: 0,
        command,
    }
    .end("parameters")
}

/// `TPM_RC_HANDLE` for a handle (format 1, not a parameter): no such index.
pub fn is_missing_handle(rc: u32) -> bool {
    rc & 0x0C0 == 0x080 && rc & 0x03F == 0x00B
}

// ------------------------------------------------------------------ reading

/// Sends one command and returns the response (the device, a socket, a
/// test's replay).
pub type Transact<'a> = dyn FnMut(&[u8]) -> Result<Vec<u8>, TpmError> + 'a;

/// The public area of `index`, or `None` when no index is defined there.
/// `tx` sends one command and returns the response.
pub fn read_public(tx: &mut Transact<'_>, index: u32) -> Result<Option<NvPublic>, TpmError> {
    let resp = tx(&encode_nv_read_public(index))?;
    match parse_nv_read_public(&resp, index) {
        Err(TpmError::ResponseCode { rc, .. }) if is_missing_handle(rc) => Ok(None),
        other => other.map(Some),
    }
}

/// The counter's value (8 bytes, big endian).
pub fn read_counter(tx: &mut Transact<'_>, index: u32) -> Result<u64, TpmError> {
    let resp = tx(&encode_nv_read(index, 8, 0))?;
    let data = parse_nv_read(&resp, 8)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&data);
    Ok(u64::from_be_bytes(b))
}

/// Read the floor at `index` through `tx`: the public area is checked
/// ([`check_public`]) before the value is read.
pub fn read_floor_with(tx: &mut Transact<'_>, index: u32) -> Result<FloorRead, FloorError> {
    let tpm = |error| FloorError::Tpm { index, error };
    let Some(public) = read_public(tx, index).map_err(tpm)? else {
        return Ok(FloorRead::Undefined);
    };
    check_public(&public)?;
    read_counter(tx, index).map(FloorRead::Value).map_err(tpm)
}

/// Read the floor from the TPM device (`/dev/tpmrm0`, else `/dev/tpm0`).
pub fn read_floor(index: u32) -> Result<FloorRead, FloorError> {
    let (fd, path) = super::open_device().map_err(|error| FloorError::Tpm { index, error })?;
    let mut tx = |c: &[u8]| super::transact(&fd, path, c);
    read_floor_with(&mut tx, index)
}

// ------------------------------------------------------------------ raising

/// Why a raise is refused before anything is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RaiseError {
    /// The floor would have to go down, which a counter cannot.
    Lower { current: u64, target: u64 },
    /// More increments than the bound allows.
    JumpTooLarge {
        current: u64,
        target: u64,
        max_jump: u64,
    },
}

impl fmt::Display for RaiseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RaiseError::Lower { current, target } => write!(
                f,
                "the TPM floor is {current}, above {target}: a counter never goes down"
            ),
            RaiseError::JumpTooLarge {
                current,
                target,
                max_jump,
            } => write!(
                f,
                "raising the TPM floor from {current} to {target} takes {} increments, more than \
                 the bound of {max_jump} (each is an NV write; raise in steps or pass --max-jump)",
                target - current
            ),
        }
    }
}

impl std::error::Error for RaiseError {}

/// How many increments take the floor from `current` to `target`:
/// 0 when it is already there, refused when `target` is below it
/// (`allow_lower` = false) or more than `max_jump` away.
pub fn plan_raise(
    current: u64,
    target: u64,
    max_jump: u64,
    allow_lower: bool,
) -> Result<u64, RaiseError> {
    if target < current {
        return if allow_lower {
            Ok(0)
        } else {
            Err(RaiseError::Lower { current, target })
        };
    }
    let steps = target - current;
    if steps > max_jump {
        return Err(RaiseError::JumpTooLarge {
            current,
            target,
            max_jump,
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::hex_decode_lower;

    fn hex(s: &str) -> Vec<u8> {
        hex_decode_lower(s).unwrap()
    }

    // Captured from swtpm 0.7.1 (libtpms) with tpm2-tools 5.4
    // (`tpm2_nvdefine 0x01805EA1 -C o -s 8 -a "nt=counter|ownerwrite|authread|ownerread|no_da"`,
    // `tpm2_nvreadpublic`, `tpm2_nvincrement`, through a logging TCTI), and
    // from raw commands sent to the same swtpm (NV_Read with a password
    // session, NV_ReadPublic of an undefined index).
    const RP_CMD: &str = "80010000000e0000016901805ea1";
    const RP_UNWRITTEN: &str = "80010000003e00000000000e01805ea1000b02060012000000080022000b322658988ed09bda6c457df81006ac680f6546cdd07a93322cb44e1f30f17070";
    const RP_WRITTEN: &str = "80010000003e00000000000e01805ea1000b22060012000000080022000b5ba38c90e6e60c0edd3e59bc0377d93886e85ab3ee2bbaf0999ca623a4ed6263";
    const RP_UNDEFINED: &str = "80010000000a0000018b";
    const READ_CMD: &str = "8002000000230000014e01805ea101805ea10000000940000009000000000000080000";
    const READ_RESP: &str = "80020000001d000000000000000a000800000000000000010000010000";
    // tpm2-tools' NV_Read response (HMAC session): value 1, 32-byte nonce and hmac.
    const READ_RESP_HMAC: &str = "80020000005d000000000000000a0008000000000000000100200ebeb209766085fa3f1f5307fa631ead4c23f0071e2d580675dbe419b8f784ab010020720ed9831c0282ab809e9cf3561e610d159349188fb44e37567afd19589b7683";
    // The tail of tpm2-tools' NV_DefineSpace command after its HMAC session:
    // TPM2B_AUTH (empty) and TPM2B_NV_PUBLIC.
    const DEFINE_PARAMS: &str = "0000000e01805ea1000b0206001200000008";

    #[test]
    fn read_public_command_and_captured_responses() {
        assert_eq!(encode_nv_read_public(0x01805EA1), hex(RP_CMD));
        let p = parse_nv_read_public(&hex(RP_WRITTEN), 0x01805EA1).unwrap();
        assert_eq!(p.index, 0x01805EA1);
        assert_eq!(p.name_alg, TPM_ALG_SHA256);
        assert_eq!(p.attributes, 0x2206_0012);
        assert_eq!(p.data_size, 8);
        assert!(p.auth_policy.is_empty());
        assert_eq!(nv_type(p.attributes), TPM_NT_COUNTER);
        check_public(&p).unwrap();
        let u = parse_nv_read_public(&hex(RP_UNWRITTEN), 0x01805EA1).unwrap();
        assert_eq!(u.attributes, FLOOR_ATTRIBUTES);
        assert!(matches!(
            check_public(&u),
            Err(FloorError::NotWritten { index: 0x01805EA1 })
        ));
        // The TPM's name is nameAlg || SHA-256(public): checked, so a flip
        // anywhere in the public area is caught.
        let mut bad = hex(RP_WRITTEN);
        bad[20] ^= 0x01; // inside the attributes
        assert!(matches!(
            parse_nv_read_public(&bad, 0x01805EA1),
            Err(TpmError::Malformed {
                what: Malformed::NameMismatch,
                ..
            })
        ));
        // The index must be the one asked for.
        assert!(matches!(
            parse_nv_read_public(&hex(RP_WRITTEN), 0x01805EA2),
            Err(TpmError::Malformed {
                what: Malformed::IndexMismatch {
                    asked: 0x01805EA2,
                    got: 0x01805EA1
                },
                ..
            })
        ));
        // Undefined: TPM_RC_HANDLE on handle 1.
        match parse_nv_read_public(&hex(RP_UNDEFINED), 0x01805EA2) {
            Err(TpmError::ResponseCode { rc, .. }) => {
                assert_eq!(rc, 0x18B);
                assert!(is_missing_handle(rc));
            }
            other => panic!("{other:?}"),
        }
        assert!(!is_missing_handle(0x14B)); // TPM_RC_HANDLE on a parameter (P bit)
        assert!(!is_missing_handle(0x101)); // TPM_RC_FAILURE
        assert!(!is_missing_handle(0x150)); // TPM_RC_NV_UNINITIALIZED (format 0)
                                            // Every truncation and an extra byte are malformed.
        let good = hex(RP_WRITTEN);
        for n in 0..good.len() {
            assert!(parse_nv_read_public(&good[..n], 0x01805EA1).is_err(), "{n}");
        }
        let mut long = good.clone();
        long.push(0);
        long[5] += 1;
        assert!(matches!(
            parse_nv_read_public(&long, 0x01805EA1),
            Err(TpmError::Malformed {
                what: Malformed::Trailing { .. },
                ..
            })
        ));
    }

    #[test]
    fn read_command_and_captured_responses() {
        assert_eq!(encode_nv_read(0x01805EA1, 8, 0), hex(READ_CMD));
        assert_eq!(
            parse_nv_read(&hex(READ_RESP), 8).unwrap(),
            hex("0000000000000001")
        );
        assert_eq!(
            parse_nv_read(&hex(READ_RESP_HMAC), 8).unwrap(),
            hex("0000000000000001")
        );
        assert!(matches!(
            parse_nv_read(&hex(READ_RESP), 4),
            Err(TpmError::Malformed {
                what: Malformed::DataLength { asked: 4, got: 8 },
                ..
            })
        ));
        let good = hex(READ_RESP);
        for n in 0..good.len() {
            assert!(parse_nv_read(&good[..n], 8).is_err(), "{n}");
        }
        // TPM_RC_NV_UNINITIALIZED (0x14a) and TPM_RC_NV_AUTHORIZATION (0x149)
        // come back as response codes.
        assert!(matches!(
            parse_nv_read(&hex("80010000000a0000014a"), 8),
            Err(TpmError::ResponseCode { rc: 0x14A, .. })
        ));
    }

    #[test]
    fn define_and_increment_commands_match_the_layout() {
        // Hand-assembled from Part 3 31.3 (NV_DefineSpace): owner handle,
        // password session with the owner's auth "ab", then the same
        // parameter bytes tpm2-tools sent.
        let want = hex(&format!(
            "8002{:08x}0000012a40000001{}{}",
            10 + 4 + 4 + 11 + DEFINE_PARAMS.len() / 2,
            "0000000b40000009000000000261 62".replace(' ', ""),
            DEFINE_PARAMS
        ));
        assert_eq!(encode_define_floor(0x01805EA1, b"ab"), want);
        // NV_Increment (31.8): owner handle, index, empty owner password.
        assert_eq!(
            encode_increment(0x01805EA1, b""),
            hex("80020000001f000001344000000101805ea100000009400000090000000000")
        );
        // Their responses carry no parameters.
        parse_empty(
            &hex("80020000001300000000000000000000010000"),
            TPM_CC_NV_INCREMENT,
        )
        .unwrap();
        assert!(matches!(
            parse_empty(
                &hex("8002000000150000000000000002abcd0000010000"),
                TPM_CC_NV_INCREMENT
            ),
            Err(TpmError::Malformed {
                what: Malformed::Trailing {
                    area: "parameters",
                    extra: 2
                },
                ..
            })
        ));
        // TPM_RC_NV_DEFINED (0x14c): the index exists already.
        assert!(matches!(
            parse_empty(&hex("80010000000a0000014c"), TPM_CC_NV_DEFINE_SPACE),
            Err(TpmError::ResponseCode { rc: 0x14C, .. })
        ));
    }

    fn public(attributes: u32, size: u16) -> NvPublic {
        NvPublic {
            index: DEFAULT_FLOOR_INDEX,
            name_alg: TPM_ALG_SHA256,
            attributes,
            auth_policy: vec![],
            data_size: size,
            name: vec![],
        }
    }

    #[test]
    fn floor_rules() {
        let ok = FLOOR_ATTRIBUTES | attr::WRITTEN;
        check_public(&public(ok, 8)).unwrap();
        // An ordinary index (tpm2_nvdefine's default attributes) planted at
        // the handle: refused by type.
        let ordinary = 0x0006_0006 | attr::WRITTEN; // ownerwrite|authwrite|ownerread|authread
        assert!(matches!(
            check_public(&public(ordinary, 8)),
            Err(FloorError::NotCounter { nt: 0, .. })
        ));
        // Bit field (2) and extend (4) indexes too.
        for nt in [2u32, 4, 8] {
            assert!(matches!(
                check_public(&public((ok & !attr::TYPE_MASK) | nt << 4, 8)),
                Err(FloorError::NotCounter { .. })
            ));
        }
        // Anybody may increment with the empty password: refused.
        match check_public(&public(ok | attr::AUTHWRITE, 8)) {
            Err(FloorError::Attributes {
                forbidden, missing, ..
            }) => {
                assert_eq!(forbidden, attr::AUTHWRITE);
                assert_eq!(missing, 0);
            }
            other => panic!("{other:?}"),
        }
        for (bit, forbidden) in [
            (attr::PPWRITE, true),
            (attr::POLICYWRITE, true),
            (attr::READLOCKED, true),
            (attr::OWNERWRITE, false),
            (attr::AUTHREAD, false),
            (attr::NO_DA, false),
        ] {
            let a = if forbidden { ok | bit } else { ok & !bit };
            assert!(
                matches!(
                    check_public(&public(a, 8)),
                    Err(FloorError::Attributes { .. })
                ),
                "{bit:x}"
            );
        }
        // Not looked at: OWNERREAD, ORDERLY (bit 26), PLATFORMCREATE (30).
        check_public(&public((ok & !attr::OWNERREAD) | 1 << 26 | 1 << 30, 8)).unwrap();
        assert!(matches!(
            check_public(&public(ok, 4)),
            Err(FloorError::DataSize { size: 4, .. })
        ));
        for e in [
            check_public(&public(ordinary, 8)).unwrap_err(),
            check_public(&public(ok | attr::AUTHWRITE, 8)).unwrap_err(),
        ] {
            assert!(e.to_string().contains("0x01805ea1"), "{e}");
            assert!(!e.is_unreachable());
        }
    }

    /// A fake TPM answering the captured responses in order.
    fn replay(responses: Vec<Vec<u8>>) -> impl FnMut(&[u8]) -> Result<Vec<u8>, TpmError> {
        let mut it = responses.into_iter();
        move |_c: &[u8]| Ok(it.next().expect("one response per command"))
    }

    #[test]
    fn read_floor_sequence() {
        let mut tx = replay(vec![hex(RP_WRITTEN), hex(READ_RESP)]);
        assert_eq!(
            read_floor_with(&mut tx, 0x01805EA1).unwrap(),
            FloorRead::Value(1)
        );
        let mut tx = replay(vec![hex(RP_UNDEFINED)]);
        assert_eq!(
            read_floor_with(&mut tx, 0x01805EA1).unwrap(),
            FloorRead::Undefined
        );
        // Unwritten: refused before NV_Read is sent (the replay has no
        // second response).
        let mut tx = replay(vec![hex(RP_UNWRITTEN)]);
        assert!(matches!(
            read_floor_with(&mut tx, 0x01805EA1),
            Err(FloorError::NotWritten { .. })
        ));
        // A TPM in failure mode.
        let mut tx = replay(vec![hex("80010000000a00000101")]);
        let e = read_floor_with(&mut tx, 0x01805EA1).unwrap_err();
        assert!(e.is_unreachable(), "{e}");
    }

    #[test]
    fn raise_plans() {
        assert_eq!(plan_raise(1, 2, 32, false), Ok(1));
        assert_eq!(plan_raise(2, 2, 32, false), Ok(0));
        assert_eq!(plan_raise(1, 33, 32, false), Ok(32));
        assert_eq!(
            plan_raise(1, 34, 32, false),
            Err(RaiseError::JumpTooLarge {
                current: 1,
                target: 34,
                max_jump: 32
            })
        );
        assert_eq!(
            plan_raise(5, 2, 32, false),
            Err(RaiseError::Lower {
                current: 5,
                target: 2
            })
        );
        assert_eq!(plan_raise(5, 2, 32, true), Ok(0));
        assert_eq!(
            plan_raise(0, u64::MAX, 32, false),
            Err(RaiseError::JumpTooLarge {
                current: 0,
                target: u64::MAX,
                max_jump: 32
            })
        );
    }
}
