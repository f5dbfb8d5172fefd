//! TPM2 measurement of the booted (or refused) seal, without tpm2-tss.
//!
//! Contract:
//! - [`accepted_record`] / [`sealed_digest_record`] / [`refused_record`] are
//!   THE record encoders: the boot binary extends exactly these bytes and
//!   `sealctl pcr` predicts from exactly these bytes. A record is one line of
//!   ASCII without a trailing newline, made only of validated values (a
//!   parsed digest, a `sha256:<hex>` key fingerprint, an integer, a fixed
//!   reason word), so no attacker-chosen text can make a refused record
//!   equal an accepted one: the second word (`accepted` / `refused`)
//!   differs and every field after it has a fixed grammar.
//!
//!   ```text
//!   sealroot-v1 accepted image=v1-sha256-12:<hex> key=sha256:<64 hex> serial=<decimal u64>
//!   sealroot-v1 accepted image=v1-sha256-12:<hex> trust=sealed-digest
//!   sealroot-v1 refused image=v1-sha256-12:<hex> reason=<class>
//!   sealroot-v1 refused reason=<class>
//!   ```
//!   (`v1-sha512-12:` for SHA-512 images; `image=` in a refused record is the
//!   digest the boot was asked for, when it got that far; `<class>` is one of
//!   [`RefusalClass`].)
//! - [`pcr_event`] sends one **TPM2_PCR_Event** to `/dev/tpmrm0` (the
//!   kernel's resource manager, Linux 4.12+), or `/dev/tpm0` when there is no
//!   `tpmrm0`. PCR_Event hands the TPM the record bytes (at most 1024) and the
//!   TPM hashes them in *every allocated PCR bank* itself, extends each bank
//!   and returns the per-bank event digests. That is why this module needs no
//!   bank enumeration (TPM2_GetCapability) and no SHA-1 code: whatever banks
//!   the platform allocated (SHA-1, SHA-256, SHA-384, SM3 …) are all
//!   extended, so no bank is left at a value an attacker could extend to an
//!   accepted state later. The returned SHA-256 digest is checked against
//!   our own SHA-256 of the record (a TPM or transport that hashed something
//!   else is an error). TPM2_PCR_Extend would need our own hash for every
//!   bank and a GetCapability round trip first.
//! - Command (TPM 2.0 Library Part 3, 22.3; structures Part 2), all integers
//!   big endian:
//!
//!   | bytes | field                                                  |
//!   |-------|--------------------------------------------------------|
//!   | 2     | tag `TPM_ST_SESSIONS` 0x8002 (PCR_Event needs auth)     |
//!   | 4     | commandSize (whole command)                            |
//!   | 4     | commandCode `TPM_CC_PCR_Event` 0x0000013C              |
//!   | 4     | pcrHandle = PCR index (PCR handles start at 0)         |
//!   | 4     | authorizationSize = 9                                  |
//!   | 4+2+1+2 | password session: `TPM_RS_PW` 0x40000009, empty nonce, attributes 0, empty password (PCR auth values are empty after TPM2_Startup) |
//!   | 2+n   | eventData: TPM2B_EVENT (n ≤ 1024)                       |
//!
//!   Response: tag (2), responseSize (4), responseCode (4); on success (code
//!   0, tag 0x8002) parameterSize (4), then TPML_DIGEST_VALUES: count (4) and
//!   count × TPMT_HA {hashAlg (2), digest (size fixed by the algorithm)},
//!   then the session's response area: nonce TPM2B (2+n), attributes (1),
//!   hmac TPM2B (2+n). Everything is length-checked: responseSize must equal
//!   the bytes read, the parameters must fill parameterSize exactly, the
//!   session area must end the response exactly, at most 16 digests, no
//!   unknown algorithm (its size would be unknown).
//! - Device I/O: the whole command in one `write`, the whole response in one
//!   `read` of at most [`MAX_RESPONSE`] bytes (the kernel's TPM buffer is
//!   4096 bytes and it returns a response in one read). No `unsafe`: rustix.
//! - Kernel facts: the kernel's TPM driver sends TPM2_Startup itself when it
//!   probes a TPM 2.0 chip (the firmware usually did already), so the PCRs
//!   are usable from PID 1 on. `tpm_tis`/`tpm_crb` are built into Debian's
//!   6.12 cloud kernel (PID 1 mode loads them from its module list where a
//!   kernel has them as modules). The kernel exposes each PCR of each bank in
//!   sysfs as `/sys/class/tpm/tpm0/pcr-<bank>/<N>` (uppercase hex; since
//!   Linux 5.12), which is what the tests read in the booted system.
//! - Which PCR: 15 by default ([`DEFAULT_PCR`]). systemd's PCR registry calls
//!   15 "system identity": systemd-pcrfs measures the root file system's
//!   identity and systemd-pcrmachine the machine id into it, both later in
//!   the boot; firmware never touches it, so it starts at zero and sealroot's
//!   record is the first event in it. The build-time policy may choose any of
//!   8..=15: 0–7 belong to the firmware (policies over them would break),
//!   16 is the resettable debug PCR, 17–22 need locality 3/4 (DRTM), 23 is
//!   resettable by applications — a resettable PCR proves nothing.
//! - The measurement log: each record is also appended to systemd's
//!   `/run/log/systemd/tpm2-measure.log` ([`LOG_PATH`]) in its JSON-SEQ form
//!   (RFC 7464: 0x1E, one JSON object, LF), under an exclusive `flock` as
//!   systemd takes, file mode 0600: `{"pcr":N,"digests":[{"hashAlg":"sha256",
//!   "digest":"<hex>"},…],"content_type":"systemd","content":{"string":
//!   "<record>","bootId":"<32 hex>","timestamp":<CLOCK_BOOTTIME µs>}}`, the
//!   fields systemd-pcrlock reads. [`parse_log`] and [`replay`] read it back.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::io::Errno;

use crate::digest::{hex_decode_lower, hex_encode, Digest};

pub mod nv;

/// Device nodes tried in order.
pub const DEVICES: [&str; 2] = ["/dev/tpmrm0", "/dev/tpm0"];
/// `TPM_ST_NO_SESSIONS`
pub const TPM_ST_NO_SESSIONS: u16 = 0x8001;
/// `TPM_ST_SESSIONS`
pub const TPM_ST_SESSIONS: u16 = 0x8002;
/// `TPM_CC_PCR_Event`
pub const TPM_CC_PCR_EVENT: u32 = 0x0000_013C;
/// `TPM_RS_PW`: the password authorization session handle.
pub const TPM_RS_PW: u32 = 0x4000_0009;
/// Largest TPM2B_EVENT the TPM accepts.
pub const MAX_EVENT: usize = 1024;
/// Largest response read (the kernel's TPM_BUFSIZE).
pub const MAX_RESPONSE: usize = 4096;
/// At most this many digests in a TPML_DIGEST_VALUES (`HASH_COUNT` bound).
pub const MAX_BANKS: u32 = 16;
/// The default PCR (systemd registry: "system identity").
pub const DEFAULT_PCR: u32 = 15;
/// PCRs a policy may choose.
pub const ALLOWED_PCRS: std::ops::RangeInclusive<u32> = 8..=15;
/// systemd's userspace measurement log.
pub const LOG_PATH: &str = "/run/log/systemd/tpm2-measure.log";
/// Version tag every record starts with.
pub const RECORD_TAG: &str = "sealroot-v1";

/// A PCR bank (TPM_ALG_ID of its hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bank {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
    Sm3_256,
}

impl Bank {
    pub const ALL: [Bank; 5] = [
        Bank::Sha1,
        Bank::Sha256,
        Bank::Sha384,
        Bank::Sha512,
        Bank::Sm3_256,
    ];

    /// TPM_ALG_ID.
    pub fn alg_id(self) -> u16 {
        match self {
            Bank::Sha1 => 0x0004,
            Bank::Sha256 => 0x000B,
            Bank::Sha384 => 0x000C,
            Bank::Sha512 => 0x000D,
            Bank::Sm3_256 => 0x0012,
        }
    }

    pub fn from_alg_id(id: u16) -> Option<Bank> {
        Bank::ALL.into_iter().find(|b| b.alg_id() == id)
    }

    pub fn digest_len(self) -> usize {
        match self {
            Bank::Sha1 => 20,
            Bank::Sha256 | Bank::Sm3_256 => 32,
            Bank::Sha384 => 48,
            Bank::Sha512 => 64,
        }
    }

    /// The name systemd and the kernel's sysfs use (`sha256`, `sm3_256`).
    pub fn name(self) -> &'static str {
        match self {
            Bank::Sha1 => "sha1",
            Bank::Sha256 => "sha256",
            Bank::Sha384 => "sha384",
            Bank::Sha512 => "sha512",
            Bank::Sm3_256 => "sm3_256",
        }
    }

    pub fn from_name(name: &str) -> Option<Bank> {
        Bank::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Hash `data` with this bank's algorithm, where this crate has it
    /// (SHA-256/384/512; `None` for SHA-1 and SM3).
    pub fn hash(self, parts: &[&[u8]]) -> Option<Vec<u8>> {
        fn run<H: sha2::Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut h = H::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
        match self {
            Bank::Sha256 => Some(run::<sha2::Sha256>(parts)),
            Bank::Sha384 => Some(run::<sha2::Sha384>(parts)),
            Bank::Sha512 => Some(run::<sha2::Sha512>(parts)),
            Bank::Sha1 | Bank::Sm3_256 => None,
        }
    }
}

/// One bank's digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankDigest {
    pub bank: Bank,
    pub digest: Vec<u8>,
}

/// How a response was malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Fewer bytes than the field at `need` requires.
    Short { len: usize, need: usize },
    /// responseSize differs from the bytes read.
    SizeField { declared: u32, read: usize },
    /// A success response whose tag is not `TPM_ST_SESSIONS`.
    Tag { tag: u16 },
    /// parameterSize runs past the response.
    ParameterSize { declared: u32, available: usize },
    /// More digests than any TPM has banks.
    TooManyDigests { count: u32 },
    /// No digest at all: nothing was extended.
    NoDigests,
    /// A hash algorithm whose digest size is unknown.
    UnknownAlgorithm { alg: u16 },
    /// The same bank twice.
    DuplicateBank { bank: Bank },
    /// Bytes left over in the parameter or session area.
    Trailing { area: &'static str, extra: usize },
    /// A response that fills the whole read buffer (possibly cut).
    TooLarge { len: usize },
    /// An NV public area for another index than the one asked for.
    IndexMismatch { asked: u32, got: u32 },
    /// An NV name that is not nameAlg || H(public area).
    NameMismatch,
    /// NV_Read returned another number of bytes than asked for.
    DataLength { asked: u16, got: usize },
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Short { len, need } => {
                write!(f, "{len} bytes, a field needs {need}")
            }
            Malformed::SizeField { declared, read } => {
                write!(f, "responseSize says {declared} bytes, {read} were read")
            }
            Malformed::Tag { tag } => write!(f, "tag 0x{tag:04x}, expected 0x8002"),
            Malformed::ParameterSize {
                declared,
                available,
            } => write!(
                f,
                "parameterSize {declared} exceeds the {available} bytes after it"
            ),
            Malformed::TooManyDigests { count } => {
                write!(f, "{count} digests (at most {MAX_BANKS})")
            }
            Malformed::NoDigests => f.write_str("no digest returned: no bank extended"),
            Malformed::UnknownAlgorithm { alg } => {
                write!(f, "unknown hash algorithm 0x{alg:04x}")
            }
            Malformed::DuplicateBank { bank } => write!(f, "bank {} listed twice", bank.name()),
            Malformed::Trailing { area, extra } => {
                write!(f, "{extra} unexpected bytes after the {area}")
            }
            Malformed::TooLarge { len } => write!(f, "response of {len} bytes fills the buffer"),
            Malformed::IndexMismatch { asked, got } => write!(
                f,
                "NV public area is for index 0x{got:08x}, asked for 0x{asked:08x}"
            ),
            Malformed::NameMismatch => f.write_str("NV name is not the hash of the NV public area"),
            Malformed::DataLength { asked, got } => {
                write!(f, "NV_Read returned {got} bytes, asked for {asked}")
            }
        }
    }
}

/// Why a measurement failed.
#[derive(Debug)]
pub enum TpmError {
    /// Neither `/dev/tpmrm0` nor `/dev/tpm0` exists.
    NoDevice,
    /// open/write/read on the device failed.
    Io {
        path: String,
        op: &'static str,
        errno: Errno,
    },
    /// The TPM answered with a non-zero response code.
    ResponseCode { command: u32, rc: u32 },
    /// The response does not have the expected structure.
    Malformed { command: u32, what: Malformed },
    /// A record longer than TPM2B_EVENT holds.
    EventTooLarge { len: usize },
    /// The PCR index is outside [`ALLOWED_PCRS`].
    BadPcr { pcr: u32 },
    /// The TPM's SHA-256 of the record differs from ours.
    DigestMismatch { bank: Bank },
    /// A value that cannot go into a record (not a key fingerprint).
    BadRecordField { field: &'static str },
}

impl fmt::Display for TpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpmError::NoDevice => write!(f, "no TPM device ({} or {})", DEVICES[0], DEVICES[1]),
            TpmError::Io { path, op, errno } => {
                write!(
                    f,
                    "TPM {path}: {op} failed: {}",
                    crate::boot::io::errno_name(*errno)
                )
            }
            TpmError::ResponseCode { command, rc } => write!(
                f,
                "TPM answered command 0x{command:08x} with response code 0x{rc:08x}"
            ),
            TpmError::Malformed { command, what } => write!(
                f,
                "TPM response to command 0x{command:08x} is malformed: {what}"
            ),
            TpmError::EventTooLarge { len } => write!(
                f,
                "measurement record is {len} bytes, a TPM event holds at most {MAX_EVENT}"
            ),
            TpmError::BadPcr { pcr } => write!(
                f,
                "PCR {pcr} is not usable for measurement (allowed: {}..={})",
                ALLOWED_PCRS.start(),
                ALLOWED_PCRS.end()
            ),
            TpmError::DigestMismatch { bank } => write!(
                f,
                "the TPM's {} digest of the record differs from sealroot's own",
                bank.name()
            ),
            TpmError::BadRecordField { field } => {
                write!(f, "value for record field {field} is not well-formed")
            }
        }
    }
}

impl std::error::Error for TpmError {}

// ------------------------------------------------------------------ records

/// Why a boot was refused, as the refused record names it: a fixed word,
/// never the error text (which can contain attacker-chosen bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalClass {
    Cmdline,
    BootPolicy,
    Config,
    Digest,
    Trust,
    Sysroot,
    Repository,
    Image,
    Seal,
    Mount,
    Tpm,
    Switch,
}

impl RefusalClass {
    pub const ALL: [RefusalClass; 12] = [
        RefusalClass::Cmdline,
        RefusalClass::BootPolicy,
        RefusalClass::Config,
        RefusalClass::Digest,
        RefusalClass::Trust,
        RefusalClass::Sysroot,
        RefusalClass::Repository,
        RefusalClass::Image,
        RefusalClass::Seal,
        RefusalClass::Mount,
        RefusalClass::Tpm,
        RefusalClass::Switch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RefusalClass::Cmdline => "cmdline",
            RefusalClass::BootPolicy => "boot-policy",
            RefusalClass::Config => "config",
            RefusalClass::Digest => "digest",
            RefusalClass::Trust => "trust",
            RefusalClass::Sysroot => "sysroot",
            RefusalClass::Repository => "repository",
            RefusalClass::Image => "image",
            RefusalClass::Seal => "seal",
            RefusalClass::Mount => "mount",
            RefusalClass::Tpm => "tpm",
            RefusalClass::Switch => "switch",
        }
    }

    pub fn from_name(name: &str) -> Option<RefusalClass> {
        RefusalClass::ALL.into_iter().find(|c| c.name() == name)
    }
}

fn valid_fingerprint(fp: &str) -> bool {
    fp.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The record of a boot accepted under the signed policy.
pub fn accepted_record(image: &Digest, fingerprint: &str, serial: u64) -> Result<String, TpmError> {
    if !valid_fingerprint(fingerprint) {
        return Err(TpmError::BadRecordField { field: "key" });
    }
    Ok(format!(
        "{RECORD_TAG} accepted image={} key={fingerprint} serial={serial}",
        image.to_composefs()
    ))
}

/// The record of a boot accepted under the sealed-digest policy.
pub fn sealed_digest_record(image: &Digest) -> String {
    format!(
        "{RECORD_TAG} accepted image={} trust=sealed-digest",
        image.to_composefs()
    )
}

/// The record of a refused boot.
pub fn refused_record(image: Option<&Digest>, reason: RefusalClass) -> String {
    match image {
        Some(d) => format!(
            "{RECORD_TAG} refused image={} reason={}",
            d.to_composefs(),
            reason.name()
        ),
        None => format!("{RECORD_TAG} refused reason={}", reason.name()),
    }
}

// ------------------------------------------------------------------ wire format

/// The TPM2_PCR_Event command for `pcr` with `event` as the event data.
pub fn encode_pcr_event(pcr: u32, event: &[u8]) -> Result<Vec<u8>, TpmError> {
    if event.len() > MAX_EVENT {
        return Err(TpmError::EventTooLarge { len: event.len() });
    }
    let mut c = Vec::with_capacity(29 + event.len());
    c.extend_from_slice(&TPM_ST_SESSIONS.to_be_bytes());
    c.extend_from_slice(&[0; 4]); // size, patched below
    c.extend_from_slice(&TPM_CC_PCR_EVENT.to_be_bytes());
    c.extend_from_slice(&pcr.to_be_bytes());
    c.extend_from_slice(&9u32.to_be_bytes());
    c.extend_from_slice(&TPM_RS_PW.to_be_bytes());
    c.extend_from_slice(&0u16.to_be_bytes()); // nonceCaller
    c.push(0); // sessionAttributes
    c.extend_from_slice(&0u16.to_be_bytes()); // hmac (empty password)
    c.extend_from_slice(&(event.len() as u16).to_be_bytes());
    c.extend_from_slice(event);
    let size = c.len() as u32;
    c[2..6].copy_from_slice(&size.to_be_bytes());
    Ok(c)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    command: u32,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TpmError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(TpmError::Malformed {
                command: self.command,
                what: Malformed::Short {
                    len: self.buf.len(),
                    need: self.pos.saturating_add(n),
                },
            }),
        }
    }
    fn u8(&mut self) -> Result<u8, TpmError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, TpmError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, TpmError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn tpm2b(&mut self) -> Result<&'a [u8], TpmError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn rest(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// Refuse bytes left over after `area` was read in full.
    fn end(&self, area: &'static str) -> Result<(), TpmError> {
        match self.rest() {
            0 => Ok(()),
            extra => Err(TpmError::Malformed {
                command: self.command,
                what: Malformed::Trailing { area, extra },
            }),
        }
    }
}

/// Header check shared by every response: size field, response code.
/// Returns the tag.
pub fn check_header(buf: &[u8], command: u32) -> Result<u16, TpmError> {
    let mut r = Reader {
        buf,
        pos: 0,
        command,
    };
    let tag = r.u16()?;
    let size = r.u32()?;
    let rc = r.u32()?;
    if size as usize != buf.len() {
        return Err(TpmError::Malformed {
            command,
            what: Malformed::SizeField {
                declared: size,
                read: buf.len(),
            },
        });
    }
    if rc != 0 {
        return Err(TpmError::ResponseCode { command, rc });
    }
    Ok(tag)
}

/// The parameter area of a successful response to a command sent with one
/// password session: tag `TPM_ST_SESSIONS`, parameterSize, the parameters,
/// then exactly one session response area (nonce, attributes, hmac).
pub fn session_params(buf: &[u8], command: u32) -> Result<&[u8], TpmError> {
    let bad = |what| TpmError::Malformed { command, what };
    let tag = check_header(buf, command)?;
    if tag != TPM_ST_SESSIONS {
        return Err(bad(Malformed::Tag { tag }));
    }
    let mut r = Reader {
        buf,
        pos: 10,
        command,
    };
    let param_size = r.u32()?;
    if param_size as usize > r.rest() {
        return Err(bad(Malformed::ParameterSize {
            declared: param_size,
            available: r.rest(),
        }));
    }
    let start = r.pos;
    r.pos += param_size as usize;
    r.tpm2b()?; // nonceTPM
    r.u8()?; // sessionAttributes
    r.tpm2b()?; // hmac
    r.end("session area")?;
    Ok(&buf[start..start + param_size as usize])
}

/// Parse a TPM2_PCR_Event response: the per-bank event digests.
pub fn parse_pcr_event_response(buf: &[u8]) -> Result<Vec<BankDigest>, TpmError> {
    let command = TPM_CC_PCR_EVENT;
    let bad = |what| TpmError::Malformed { command, what };
    let mut p = Reader {
        buf: session_params(buf, command)?,
        pos: 0,
        command,
    };
    let count = p.u32()?;
    if count > MAX_BANKS {
        return Err(bad(Malformed::TooManyDigests { count }));
    }
    if count == 0 {
        return Err(bad(Malformed::NoDigests));
    }
    let mut out: Vec<BankDigest> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let alg = p.u16()?;
        let bank = Bank::from_alg_id(alg).ok_or(bad(Malformed::UnknownAlgorithm { alg }))?;
        if out.iter().any(|d| d.bank == bank) {
            return Err(bad(Malformed::DuplicateBank { bank }));
        }
        let digest = p.take(bank.digest_len())?.to_vec();
        out.push(BankDigest { bank, digest });
    }
    p.end("parameters")?;
    Ok(out)
}

// ------------------------------------------------------------------ device

/// Open the TPM: `/dev/tpmrm0`, else `/dev/tpm0`.
pub fn open_device() -> Result<(OwnedFd, &'static str), TpmError> {
    use rustix::fs::{Mode, OFlags};
    for path in DEVICES {
        match rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => return Ok((fd, path)),
            Err(Errno::NOENT) | Err(Errno::NODEV) | Err(Errno::NXIO) => continue,
            Err(errno) => {
                return Err(TpmError::Io {
                    path: path.to_string(),
                    op: "open",
                    errno,
                })
            }
        }
    }
    Err(TpmError::NoDevice)
}

/// One command, one response (bounded).
pub fn transact(fd: impl AsFd, path: &str, command: &[u8]) -> Result<Vec<u8>, TpmError> {
    let io = |op, errno| TpmError::Io {
        path: path.to_string(),
        op,
        errno,
    };
    let written = loop {
        match rustix::io::write(&fd, command) {
            Err(Errno::INTR) => continue,
            r => break r.map_err(|e| io("write", e))?,
        }
    };
    if written != command.len() {
        return Err(io("write", Errno::IO));
    }
    let mut buf = vec![0u8; MAX_RESPONSE];
    let n = loop {
        match rustix::io::read(&fd, &mut buf) {
            Err(Errno::INTR) => continue,
            r => break r.map_err(|e| io("read", e))?,
        }
    };
    if n >= MAX_RESPONSE {
        return Err(TpmError::Malformed {
            command: u32::from_be_bytes([
                command.get(6).copied().unwrap_or(0),
                command.get(7).copied().unwrap_or(0),
                command.get(8).copied().unwrap_or(0),
                command.get(9).copied().unwrap_or(0),
            ]),
            what: Malformed::TooLarge { len: n },
        });
    }
    buf.truncate(n);
    Ok(buf)
}

/// What one PCR_Event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measured {
    pub device: &'static str,
    pub pcr: u32,
    pub digests: Vec<BankDigest>,
}

/// Check the TPM's digests of `record` against our own where we can hash
/// (SHA-256/384/512).
pub fn check_event_digests(record: &[u8], digests: &[BankDigest]) -> Result<(), TpmError> {
    for d in digests {
        if let Some(ours) = d.bank.hash(&[record]) {
            if ours != d.digest {
                return Err(TpmError::DigestMismatch { bank: d.bank });
            }
        }
    }
    Ok(())
}

/// Extend `record` into `pcr` of every allocated bank with TPM2_PCR_Event.
pub fn pcr_event(pcr: u32, record: &[u8]) -> Result<Measured, TpmError> {
    if !ALLOWED_PCRS.contains(&pcr) {
        return Err(TpmError::BadPcr { pcr });
    }
    let command = encode_pcr_event(pcr, record)?;
    let (fd, device) = open_device()?;
    let response = transact(&fd, device, &command)?;
    let digests = parse_pcr_event_response(&response)?;
    check_event_digests(record, &digests)?;
    Ok(Measured {
        device,
        pcr,
        digests,
    })
}

// ------------------------------------------------------------------ PCR math

/// `H(old || event_digest)`: one extend in `bank`, where this crate has the
/// hash (`None` for SHA-1/SM3 or wrong sizes).
pub fn extend(bank: Bank, old: &[u8], event_digest: &[u8]) -> Option<Vec<u8>> {
    if old.len() != bank.digest_len() || event_digest.len() != bank.digest_len() {
        return None;
    }
    bank.hash(&[old, event_digest])
}

/// The PCR value after extending `record` (hashed as PCR_Event does) into
/// `start`.
pub fn predict(bank: Bank, start: &[u8], record: &[u8]) -> Option<Vec<u8>> {
    let event = bank.hash(&[record])?;
    extend(bank, start, &event)
}

// ------------------------------------------------------------------ event log

/// One record of the JSON-SEQ log, as written or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub pcr: u32,
    pub digests: Vec<BankDigest>,
    /// `content.string` when `content_type` is `systemd`.
    pub string: Option<String>,
}

/// One log record: 0x1E, JSON object, LF.
pub fn log_entry(
    pcr: u32,
    digests: &[BankDigest],
    record: &str,
    boot_id: &str,
    timestamp_us: u64,
) -> String {
    let js = crate::boot::json_str;
    let banks: Vec<String> = digests
        .iter()
        .map(|d| {
            format!(
                "{{\"hashAlg\":{},\"digest\":{}}}",
                js(d.bank.name()),
                js(&hex_encode(&d.digest))
            )
        })
        .collect();
    format!(
        "\u{1e}{{\"pcr\":{pcr},\"digests\":[{}],\"content_type\":\"systemd\",\"content\":{{\"string\":{},\"bootId\":{},\"timestamp\":{timestamp_us}}}}}\n",
        banks.join(","),
        js(record),
        js(boot_id),
    )
}

/// The kernel's boot id as systemd formats an id128 (32 hex, no dashes);
/// empty when unreadable.
pub fn boot_id() -> String {
    match crate::boot::io::read_file_limited(Path::new("/proc/sys/kernel/random/boot_id"), 64) {
        Ok(b) => String::from_utf8_lossy(&b)
            .trim()
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect(),
        Err(_) => String::new(),
    }
}

/// CLOCK_BOOTTIME in microseconds.
pub fn boottime_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000)
        .saturating_add((t.tv_nsec / 1000) as u64)
}

/// Append one entry to the log at `path` (directory made 0755, file 0600,
/// append-only, no symlink followed, exclusive flock while writing).
pub fn append_log(path: &Path, entry: &str) -> Result<(), Errno> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    if let Some(dir) = path.parent() {
        crate::boot::io::mkdir_all(dir, 0o755)?;
    }
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )?;
    rustix::fs::flock(&fd, FlockOperation::LockExclusive)?;
    crate::boot::io::write_all(&fd, entry.as_bytes())
}

/// Why a log did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogError {
    /// Text before the first 0x1E.
    NoRecordSeparator,
    /// Record `index` (0-based) is not valid JSON of the expected shape.
    Record { index: usize, reason: String },
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::NoRecordSeparator => {
                f.write_str("not a JSON-SEQ log: does not start with the 0x1E record separator")
            }
            LogError::Record { index, reason } => write!(f, "log record #{index}: {reason}"),
        }
    }
}

impl std::error::Error for LogError {}

#[derive(serde::Deserialize)]
struct RawDigest {
    #[serde(rename = "hashAlg")]
    hash_alg: String,
    digest: String,
}

#[derive(serde::Deserialize)]
struct RawContent {
    string: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawEntry {
    pcr: u32,
    digests: Vec<RawDigest>,
    content_type: Option<String>,
    content: Option<serde_json::Value>,
}

/// Parse a JSON-SEQ log (what [`append_log`] and systemd write). Digests
/// of algorithms this code does not know are skipped, as systemd does;
/// a known algorithm with a wrong-sized or non-hex digest is an error.
pub fn parse_log(bytes: &[u8]) -> Result<Vec<LogEntry>, LogError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if bytes[0] != 0x1e {
        return Err(LogError::NoRecordSeparator);
    }
    let mut out = Vec::new();
    for (index, chunk) in bytes[1..].split(|&b| b == 0x1e).enumerate() {
        let bad = |reason: String| LogError::Record { index, reason };
        let raw: RawEntry = serde_json::from_slice(chunk).map_err(|e| bad(e.to_string()))?;
        if raw.pcr > 23 {
            return Err(bad(format!("pcr {} is out of range", raw.pcr)));
        }
        let mut digests = Vec::new();
        for d in raw.digests {
            let Some(bank) = Bank::from_name(&d.hash_alg) else {
                continue;
            };
            let digest = hex_decode_lower(&d.digest)
                .ok()
                .filter(|v| v.len() == bank.digest_len())
                .ok_or_else(|| {
                    bad(format!(
                        "{} digest {:?} is not valid",
                        bank.name(),
                        d.digest
                    ))
                })?;
            digests.push(BankDigest { bank, digest });
        }
        let string = match (raw.content_type.as_deref(), raw.content) {
            (Some("systemd"), Some(c)) => {
                serde_json::from_value::<RawContent>(c)
                    .map_err(|e| bad(format!("content: {e}")))?
                    .string
            }
            _ => None,
        };
        out.push(LogEntry {
            pcr: raw.pcr,
            digests,
            string,
        });
    }
    Ok(out)
}

/// Replay `entries` for `pcr` in `bank` from `start`. `Err(index)` names the
/// first entry for that PCR lacking this bank's digest.
pub fn replay(entries: &[LogEntry], pcr: u32, bank: Bank, start: &[u8]) -> Result<Vec<u8>, usize> {
    let mut value = start.to_vec();
    for (i, e) in entries.iter().enumerate().filter(|(_, e)| e.pcr == pcr) {
        let d = e.digests.iter().find(|d| d.bank == bank).ok_or(i)?;
        value = extend(bank, &value, &d.digest).ok_or(i)?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d256(byte: &str) -> Digest {
        Digest::parse_hex_any(&byte.repeat(32)).unwrap()
    }

    fn hex(s: &str) -> Vec<u8> {
        hex_decode_lower(s).unwrap()
    }

    #[test]
    fn command_bytes_match_the_spec_layout() {
        // Hand-assembled from Part 3 22.3 (TPM2_PCR_Event) and Part 2
        // (TPMS_AUTH_COMMAND, TPM2B_EVENT): PCR 15, event "abc".
        let want = hex(concat!(
            "8002",     // TPM_ST_SESSIONS
            "00000020", // commandSize 32
            "0000013c", // TPM_CC_PCR_Event
            "0000000f", // pcrHandle 15
            "00000009", // authorizationSize
            "40000009", // TPM_RS_PW
            "0000",     // nonceCaller
            "00",       // sessionAttributes
            "0000",     // hmac
            "0003",     // eventData.size
            "616263"    // "abc"
        ));
        assert_eq!(encode_pcr_event(15, b"abc").unwrap(), want);
        let big = vec![b'x'; MAX_EVENT];
        let c = encode_pcr_event(8, &big).unwrap();
        assert_eq!(c.len(), 29 + MAX_EVENT);
        assert_eq!(&c[2..6], &((29 + MAX_EVENT) as u32).to_be_bytes());
        assert!(matches!(
            encode_pcr_event(8, &vec![0; MAX_EVENT + 1]),
            Err(TpmError::EventTooLarge { len: 1025 })
        ));
    }

    /// A well-formed success response with the given (alg, digest) list.
    fn response(digests: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut params = (digests.len() as u32).to_be_bytes().to_vec();
        for (alg, d) in digests {
            params.extend_from_slice(&alg.to_be_bytes());
            params.extend_from_slice(d);
        }
        let mut r = vec![0x80, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
        r.extend_from_slice(&(params.len() as u32).to_be_bytes());
        r.extend_from_slice(&params);
        r.extend_from_slice(&[0, 0, 1, 0, 0]); // nonce, attrs (continueSession), hmac
        let n = r.len() as u32;
        r[2..6].copy_from_slice(&n.to_be_bytes());
        r
    }

    #[test]
    fn response_parsed_per_bank() {
        let r = response(&[
            (0x0004, vec![1; 20]),
            (0x000b, vec![2; 32]),
            (0x000c, vec![3; 48]),
        ]);
        let got = parse_pcr_event_response(&r).unwrap();
        assert_eq!(
            got,
            vec![
                BankDigest {
                    bank: Bank::Sha1,
                    digest: vec![1; 20]
                },
                BankDigest {
                    bank: Bank::Sha256,
                    digest: vec![2; 32]
                },
                BankDigest {
                    bank: Bank::Sha384,
                    digest: vec![3; 48]
                },
            ]
        );
    }

    fn malformed(r: &[u8]) -> Malformed {
        match parse_pcr_event_response(r) {
            Err(TpmError::Malformed { command, what }) => {
                assert_eq!(command, TPM_CC_PCR_EVENT);
                what
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn bad_responses_refused() {
        // Error response: tag 8001, size 10, rc TPM_RC_LOCALITY 0x907.
        let e = hex("80010000000a00000907");
        assert!(matches!(
            parse_pcr_event_response(&e),
            Err(TpmError::ResponseCode {
                command: TPM_CC_PCR_EVENT,
                rc: 0x907
            })
        ));
        let good = response(&[(0x000b, vec![2; 32])]);
        // Short: every truncation.
        for n in 0..good.len() {
            assert!(parse_pcr_event_response(&good[..n]).is_err(), "len {n}");
        }
        assert!(matches!(malformed(&good[..5]), Malformed::Short { .. }));
        // Size field lies.
        let mut r = good.clone();
        r[5] += 1;
        assert!(matches!(malformed(&r), Malformed::SizeField { .. }));
        // Extra byte at the end (size field adjusted).
        let mut r = good.clone();
        r.push(0);
        let n = r.len() as u32;
        r[2..6].copy_from_slice(&n.to_be_bytes());
        assert!(matches!(
            malformed(&r),
            Malformed::Trailing {
                area: "session area",
                ..
            }
        ));
        // Wrong tag on success.
        let mut r = good.clone();
        r[1] = 0x01;
        assert_eq!(malformed(&r), Malformed::Tag { tag: 0x8001 });
        // parameterSize beyond the end.
        let mut r = good.clone();
        r[10..14].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(malformed(&r), Malformed::ParameterSize { .. }));
        // parameterSize one too large: the session area, read from one
        // byte later, no longer ends the response exactly.
        let mut r = good.clone();
        let p = u32::from_be_bytes(r[10..14].try_into().unwrap());
        r[10..14].copy_from_slice(&(p + 1).to_be_bytes());
        let m = malformed(&r);
        assert!(
            matches!(
                m,
                Malformed::Trailing {
                    area: "session area",
                    ..
                } | Malformed::Short { .. }
            ),
            "{m:?}"
        );
        // Unknown algorithm, zero and huge counts, duplicate bank.
        assert_eq!(
            malformed(&response(&[(0x0099, vec![0; 32])])),
            Malformed::UnknownAlgorithm { alg: 0x99 }
        );
        assert_eq!(malformed(&response(&[])), Malformed::NoDigests);
        let mut r = good.clone();
        r[14..18].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        assert_eq!(
            malformed(&r),
            Malformed::TooManyDigests { count: 0xffff_ffff }
        );
        assert_eq!(
            malformed(&response(&[(0x000b, vec![2; 32]), (0x000b, vec![2; 32])])),
            Malformed::DuplicateBank { bank: Bank::Sha256 }
        );
        // A huge buffer whose size field disagrees.
        let mut huge = good.clone();
        huge.resize(70_000, 0);
        assert!(matches!(malformed(&huge), Malformed::SizeField { .. }));
    }

    #[test]
    fn records() {
        let fp = format!("sha256:{}", "0f".repeat(32));
        let a = accepted_record(&d256("ab"), &fp, 9).unwrap();
        assert_eq!(
            a,
            format!(
                "sealroot-v1 accepted image=v1-sha256-12:{} key={fp} serial=9",
                "ab".repeat(32)
            )
        );
        assert_eq!(
            sealed_digest_record(&d256("ab")),
            format!(
                "sealroot-v1 accepted image=v1-sha256-12:{} trust=sealed-digest",
                "ab".repeat(32)
            )
        );
        assert_eq!(
            refused_record(Some(&d256("cd")), RefusalClass::Seal),
            format!(
                "sealroot-v1 refused image=v1-sha256-12:{} reason=seal",
                "cd".repeat(32)
            )
        );
        assert_eq!(
            refused_record(None, RefusalClass::BootPolicy),
            "sealroot-v1 refused reason=boot-policy"
        );
        for bad in [
            "",
            "sha256:",
            "sha256:AB",
            &format!("sha512:{}", "0".repeat(64)),
            &format!("sha256:{} serial=1", "0".repeat(64)),
        ] {
            assert!(matches!(
                accepted_record(&d256("ab"), bad, 1),
                Err(TpmError::BadRecordField { field: "key" })
            ));
        }
        for c in RefusalClass::ALL {
            assert_eq!(RefusalClass::from_name(c.name()), Some(c));
            let r = refused_record(Some(&d256("ab")), c);
            assert!(r.starts_with("sealroot-v1 refused "));
            assert!(r.len() < MAX_EVENT);
        }
        assert!(a.len() < MAX_EVENT);
    }

    #[test]
    fn extend_math_matches_independent_values() {
        // Computed outside this crate:
        //   printf abc | sha256sum
        //   -> ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        //   (head -c 32 /dev/zero; printf abc | openssl dgst -sha256 -binary) | sha256sum
        //   -> 589f9ffed4c477966bfb8d41f37895b08c69047df8f911d6f3b57fbe08faee8d
        //   (head -c 48 /dev/zero; printf abc | openssl dgst -sha384 -binary) | sha384sum
        //   -> 93732e3733514a841c982cfa75ea76ab55fe011acb9cd980ef4523913c65be1b0998e04d77f8c174f81a82151619ca40
        let abc = hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(Bank::Sha256.hash(&[b"abc"]).unwrap(), abc);
        let zeros = vec![0u8; 32];
        assert_eq!(
            predict(Bank::Sha256, &zeros, b"abc").unwrap(),
            hex("589f9ffed4c477966bfb8d41f37895b08c69047df8f911d6f3b57fbe08faee8d")
        );
        assert_eq!(
            extend(Bank::Sha256, &zeros, &abc).unwrap(),
            hex("589f9ffed4c477966bfb8d41f37895b08c69047df8f911d6f3b57fbe08faee8d")
        );
        assert_eq!(
            predict(Bank::Sha384, &[0; 48], b"abc").unwrap(),
            hex("93732e3733514a841c982cfa75ea76ab55fe011acb9cd980ef4523913c65be1b0998e04d77f8c174f81a82151619ca40")
        );
        assert!(extend(Bank::Sha256, &zeros[..31], &abc).is_none());
        assert!(predict(Bank::Sha1, &[0; 20], b"abc").is_none());
    }

    #[test]
    fn event_digests_checked() {
        let rec = b"sealroot-v1 refused reason=seal";
        let ok = vec![
            BankDigest {
                bank: Bank::Sha1,
                digest: vec![7; 20],
            },
            BankDigest {
                bank: Bank::Sha256,
                digest: Bank::Sha256.hash(&[rec]).unwrap(),
            },
        ];
        check_event_digests(rec, &ok).unwrap();
        let mut bad = ok.clone();
        bad[1].digest[0] ^= 1;
        assert!(matches!(
            check_event_digests(rec, &bad),
            Err(TpmError::DigestMismatch { bank: Bank::Sha256 })
        ));
    }

    #[test]
    fn log_round_trip_and_replay() {
        let r1 = "sealroot-v1 accepted image=x \"quoted\"\n";
        let d1 = vec![
            BankDigest {
                bank: Bank::Sha256,
                digest: Bank::Sha256.hash(&[r1.as_bytes()]).unwrap(),
            },
            BankDigest {
                bank: Bank::Sha1,
                digest: vec![9; 20],
            },
        ];
        let r2 = "other";
        let d2 = vec![BankDigest {
            bank: Bank::Sha256,
            digest: Bank::Sha256.hash(&[r2.as_bytes()]).unwrap(),
        }];
        let text = log_entry(15, &d1, r1, "00112233445566778899aabbccddeeff", 12)
            + &log_entry(11, &d2, r2, "", 13)
            + &log_entry(15, &d2, r2, "", 14);
        assert!(text.starts_with('\u{1e}') && text.ends_with('\n'));
        let entries = parse_log(text.as_bytes()).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].pcr, 15);
        assert_eq!(entries[0].digests, d1);
        assert_eq!(entries[0].string.as_deref(), Some(r1));
        // Every record is a JSON object systemd can read.
        for chunk in text.split('\u{1e}').skip(1) {
            let v: serde_json::Value = serde_json::from_str(chunk).unwrap();
            assert_eq!(v["content_type"], "systemd");
            assert!(v["digests"][0]["hashAlg"].is_string());
        }
        let zeros = [0u8; 32];
        let step1 = predict(Bank::Sha256, &zeros, r1.as_bytes()).unwrap();
        let step2 = predict(Bank::Sha256, &step1, r2.as_bytes()).unwrap();
        assert_eq!(replay(&entries, 15, Bank::Sha256, &zeros).unwrap(), step2);
        assert_eq!(
            replay(&entries, 11, Bank::Sha256, &zeros).unwrap(),
            predict(Bank::Sha256, &zeros, r2.as_bytes()).unwrap()
        );
        // The second PCR-15 entry has no SHA-384 digest.
        assert_eq!(replay(&entries, 15, Bank::Sha384, &[0; 48]), Err(0));
        assert_eq!(replay(&entries, 7, Bank::Sha256, &zeros).unwrap(), zeros);
        assert_eq!(parse_log(b"").unwrap(), vec![]);
        assert_eq!(parse_log(b"{}"), Err(LogError::NoRecordSeparator));
        assert!(matches!(
            parse_log(b"\x1e{\"pcr\":1}\n"),
            Err(LogError::Record { index: 0, .. })
        ));
        assert!(matches!(
            parse_log(b"\x1e{\"pcr\":99,\"digests\":[]}\n"),
            Err(LogError::Record { index: 0, .. })
        ));
        assert!(matches!(
            parse_log(
                b"\x1e{\"pcr\":1,\"digests\":[{\"hashAlg\":\"sha256\",\"digest\":\"00\"}]}\n"
            ),
            Err(LogError::Record { index: 0, .. })
        ));
        // Unknown algorithms are skipped.
        let e =
            parse_log(b"\x1e{\"pcr\":1,\"digests\":[{\"hashAlg\":\"md5\",\"digest\":\"00\"}]}\n")
                .unwrap();
        assert!(e[0].digests.is_empty());
    }

    #[test]
    fn log_appended_under_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/systemd/tpm2-measure.log");
        append_log(&path, "\u{1e}{\"pcr\":15,\"digests\":[]}\n").unwrap();
        append_log(&path, "\u{1e}{\"pcr\":14,\"digests\":[]}\n").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let e = parse_log(&bytes).unwrap();
        assert_eq!(e.iter().map(|e| e.pcr).collect::<Vec<_>>(), vec![15, 14]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A symlink in place of the log is not followed.
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(append_log(&link, "x"), Err(Errno::LOOP));
    }

    #[test]
    fn banks() {
        for b in Bank::ALL {
            assert_eq!(Bank::from_alg_id(b.alg_id()), Some(b));
            assert_eq!(Bank::from_name(b.name()), Some(b));
        }
        assert!(matches!(
            pcr_event(16, b"x"),
            Err(TpmError::BadPcr { pcr: 16 })
        ));
        assert!(matches!(
            pcr_event(7, b"x"),
            Err(TpmError::BadPcr { pcr: 7 })
        ));
    }
}
