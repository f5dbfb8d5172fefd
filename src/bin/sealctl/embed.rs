//! `sealctl embed-keys`: write trusted keys and the policy into a prebuilt
//! `sealroot` binary, so a distribution can ship its own key without a Rust
//! toolchain.
//!
//! The binary carries an 8192-byte reserved area (layout in
//! `sealroot::boot::trust`) in ELF section `.sealroot_trust`, starting with the
//! magic `SEALROOT-TRUST01`. This command:
//! - finds the magic exactly once in the file (zero or several occurrences
//!   are refused: patching the wrong copy would leave the binary trusting
//!   whatever it was built with);
//! - when the ELF has section headers, checks that the magic sits at the
//!   start of `.sealroot_trust` and that the section holds the whole area
//!   (`strip` keeps section headers; only tools like `sstrip` drop them, and
//!   then the magic alone locates the area, bounded by the file size). The
//!   `object` crate reads the ELF header, the section header table and the
//!   section names, refusing what is truncated or inconsistent; this module
//!   checks the class and encoding (64-bit little-endian, what sealroot is
//!   built as), that the name table lies in the file, and the section's type
//!   and size;
//! - checks the current area decodes (a byte run that merely looks like the
//!   magic would not);
//! - writes the new area and the rest of the file unchanged to OUT through a
//!   temporary file in OUT's directory, fsync'd, then renamed, with the input's
//!   permission bits, so OUT is either absent/old or complete.
//!
//! The payload also carries the boot policy (`sealroot::boot::policy`):
//! `--allow-cmdline ENTRY` adds kernel command-line words a signed boot
//! accepts on top of the defaults, `--init PATH` replaces the init list.
//! `--tpm-pcr N` and `--require-tpm` set the measurement policy
//! (`sealroot::tpm`). Embedding replaces the whole anchor, compiled-in
//! extensions included.
//!
//! `--show` prints the trust anchor a binary carries without writing.

use object::elf;
use object::read::elf::{FileHeader, SectionHeader};
use object::{LittleEndian, ReadRef, SectionIndex};
use sealroot::image::fileio;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sealroot::boot::policy::{BootPolicy, TpmPolicy};
use sealroot::boot::trust::{
    self, Anchor, TrustError, TrustPolicy, AREA_SIZE, MAGIC, SECTION_NAME,
};
use sealroot::keys::{self, KeyError};

/// Largest binary read into memory.
const MAX_BINARY: u64 = 512 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Policy {
    Signed,
    SealedDigest,
}

#[derive(clap::Args)]
pub struct Args {
    /// The prebuilt sealroot binary to read.
    #[arg(long)]
    binary: PathBuf,
    /// Where to write the patched binary (may equal --binary).
    #[arg(long, required_unless_present = "show")]
    output: Option<PathBuf>,
    /// A trusted public key (SubjectPublicKeyInfo PEM); repeatable.
    #[arg(long = "key", value_name = "PUB.pem")]
    keys: Vec<PathBuf>,
    /// Trust policy to embed. sealed-digest trusts the command line's digest
    /// without keys: only safe when a Secure-Boot-signed UKI seals it.
    #[arg(long, value_enum, default_value = "signed")]
    policy: Policy,
    /// Reject seals whose serial is below this number (signed policy only).
    #[arg(long, default_value_t = 0)]
    serial_floor: u64,
    /// A kernel command-line word a signed boot accepts besides the defaults
    /// (`word`, `key=` for any value, `key=value`); repeatable.
    #[arg(long = "allow-cmdline", value_name = "ENTRY")]
    allow_cmdline: Vec<String>,
    /// An allowed init (absolute path); repeatable; replaces the default
    /// list, the first is used when the command line names none.
    #[arg(long = "init", value_name = "PATH")]
    inits: Vec<String>,
    /// The PCR the boot record is extended into (8..=15; default 15, the
    /// "system identity" PCR of systemd's registry).
    #[arg(long = "tpm-pcr", value_name = "N", default_value_t = sealroot::tpm::DEFAULT_PCR)]
    tpm_pcr: u32,
    /// Refuse to boot without a working TPM (default: measure when there is
    /// one, log "not measured" and go on when there is none).
    #[arg(long = "require-tpm")]
    require_tpm: bool,
    /// The TPM NV counter holding the serial floor (hex 0x… or decimal, an
    /// NV index handle; `off` for none). Default 0x01805ea1.
    #[arg(long = "tpm-floor-index", value_name = "HANDLE", value_parser = parse_floor_index,
          default_value = "0x01805ea1")]
    tpm_floor_index: u32,
    /// Refuse to boot when the TPM floor cannot be read (no TPM, no index at
    /// the handle). Default: such a boot goes on without the TPM floor.
    #[arg(long = "require-tpm-floor")]
    require_tpm_floor: bool,
    /// Print the binary's embedded trust anchor and write nothing.
    #[arg(long, conflicts_with_all = ["output", "keys", "allow_cmdline", "inits", "require_tpm", "require_tpm_floor"])]
    show: bool,
}

/// Why embedding failed.
#[derive(Debug)]
pub enum EmbedError {
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// Reading the binary or writing the output (missing, too large, I/O).
    File(fileio::FileIoError),
    NotElf {
        path: PathBuf,
    },
    UnsupportedElf {
        class: u8,
        data: u8,
    },
    /// `object` refused an ELF structure (truncated, bad sizes or indices).
    Elf {
        what: &'static str,
        error: object::read::Error,
    },
    SectionMissing,
    SectionTooSmall {
        size: u64,
    },
    MagicNotFound {
        path: PathBuf,
    },
    MagicAmbiguous {
        offsets: Vec<usize>,
    },
    MagicNotAtSection {
        magic: usize,
        section: u64,
    },
    AreaOutOfFile {
        offset: usize,
        file_len: usize,
    },
    ExistingArea(TrustError),
    Key {
        path: PathBuf,
        error: KeyError,
    },
    KeysWithSealedDigest {
        count: usize,
    },
    Policy(TrustError),
}

impl std::fmt::Display for EmbedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmbedError::Io { op, path, error } => write!(f, "{op} {}: {error}", path.display()),
            EmbedError::File(e) => e.fmt(f),
            EmbedError::NotElf { path } => write!(f, "{}: not an ELF file", path.display()),
            EmbedError::UnsupportedElf { class, data } => write!(
                f,
                "ELF class {class} / data encoding {data}: only 64-bit little-endian binaries are supported"
            ),
            EmbedError::Elf { what, error } => write!(f, "malformed ELF: {what}: {error}"),
            EmbedError::SectionMissing => write!(
                f,
                "no {SECTION_NAME} section: not a sealroot binary, or one too old to carry a trust area"
            ),
            EmbedError::SectionTooSmall { size } => write!(
                f,
                "{SECTION_NAME} section is {size} bytes, expected at least {AREA_SIZE}"
            ),
            EmbedError::MagicNotFound { path } => write!(
                f,
                "{}: trust area magic not found (not a sealroot binary?)",
                path.display()
            ),
            EmbedError::MagicAmbiguous { offsets } => write!(
                f,
                "trust area magic found {} times (at offsets {offsets:?}); refusing to guess which to patch",
                offsets.len()
            ),
            EmbedError::MagicNotAtSection { magic, section } => write!(
                f,
                "trust area magic at file offset {magic:#x}, but {SECTION_NAME} starts at {section:#x}"
            ),
            EmbedError::AreaOutOfFile { offset, file_len } => write!(
                f,
                "trust area at offset {offset:#x} would run past the end of the {file_len}-byte file"
            ),
            EmbedError::ExistingArea(e) => write!(f, "current trust area does not decode: {e}"),
            EmbedError::Key { path, error } => write!(f, "key {}: {error}", path.display()),
            EmbedError::KeysWithSealedDigest { count } => write!(
                f,
                "--policy sealed-digest uses no keys, but {count} --key given"
            ),
            EmbedError::Policy(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EmbedError {}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EmbedError {
    let path = path.to_path_buf();
    move |error| EmbedError::Io { op, path, error }
}

fn read_binary(path: &Path) -> Result<(Vec<u8>, u32), EmbedError> {
    let data = fileio::read_bounded(path, MAX_BINARY).map_err(EmbedError::File)?;
    let mode = std::fs::metadata(path)
        .map_err(io_err("stat", path))?
        .permissions()
        .mode()
        & 0o7777;
    Ok((data, mode))
}

fn elf_err(what: &'static str) -> impl FnOnce(object::read::Error) -> EmbedError {
    move |error| EmbedError::Elf { what, error }
}

/// File offset and size of `.sealroot_trust`, or `None` when the ELF has no
/// section headers at all. `object` reads the ELF header, the section
/// header table (extended numbering included) and the names; this checks
/// the class and encoding sealroot is built for and the section's size.
fn trust_section(path: &Path, data: &[u8]) -> Result<Option<(u64, u64)>, EmbedError> {
    let not_elf = || EmbedError::NotElf {
        path: path.to_path_buf(),
    };
    let raw = data
        .read_at::<elf::FileHeader64<LittleEndian>>(0)
        .map_err(|()| not_elf())?;
    let ident = &raw.e_ident;
    if ident.magic != elf::ELFMAG {
        return Err(not_elf());
    }
    if ident.class != elf::ELFCLASS64 || ident.data != elf::ELFDATA2LSB {
        return Err(EmbedError::UnsupportedElf {
            class: ident.class.0,
            data: ident.data.0,
        });
    }
    let endian = LittleEndian;
    let header = elf::FileHeader64::<LittleEndian>::parse(data).map_err(elf_err("ELF header"))?;
    let sections = header
        .sections(endian, data)
        .map_err(elf_err("section header table"))?;
    if sections.is_empty() {
        return Ok(None);
    }
    // The names must lie in the file, or "no such section" would be a guess.
    header
        .shstrndx(endian, data)
        .and_then(|i| sections.section(SectionIndex(i as usize)))
        .and_then(|h| h.data(endian, data))
        .map_err(elf_err("section name string table"))?;
    let Some((_, section)) = sections.section_by_name(endian, SECTION_NAME.as_bytes()) else {
        return Err(EmbedError::SectionMissing);
    };
    // SHT_NOBITS has no bytes in the file.
    let Some((offset, size)) = section.file_range(endian) else {
        return Err(EmbedError::SectionTooSmall { size: 0 });
    };
    if size < AREA_SIZE as u64 {
        return Err(EmbedError::SectionTooSmall { size });
    }
    Ok(Some((offset, size)))
}

/// Offset of the one trust area in `data`, checked as the module docs say.
pub fn locate_area(path: &Path, data: &[u8]) -> Result<usize, EmbedError> {
    let section = trust_section(path, data)?;
    let offsets: Vec<usize> = data
        .windows(MAGIC.len())
        .enumerate()
        .filter(|(_, w)| *w == MAGIC)
        .map(|(i, _)| i)
        .take(16)
        .collect();
    let offset = match offsets.as_slice() {
        [] => {
            return Err(EmbedError::MagicNotFound {
                path: path.to_path_buf(),
            })
        }
        [one] => *one,
        _ => return Err(EmbedError::MagicAmbiguous { offsets }),
    };
    if let Some((section_offset, _)) = section {
        if section_offset != offset as u64 {
            return Err(EmbedError::MagicNotAtSection {
                magic: offset,
                section: section_offset,
            });
        }
    }
    if offset
        .checked_add(AREA_SIZE)
        .is_none_or(|end| end > data.len())
    {
        return Err(EmbedError::AreaOutOfFile {
            offset,
            file_len: data.len(),
        });
    }
    Ok(offset)
}

/// `0x…` hex, decimal, or `off` (0).
pub(crate) fn parse_floor_index(text: &str) -> Result<u32, String> {
    let parsed = match text {
        "off" => Some(0),
        t => match t.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => t.parse::<u32>().ok(),
        },
    };
    parsed.ok_or_else(|| format!("{text:?} is not a handle (0x01805ea1, decimal, or off)"))
}

fn build_policy(args: &Args) -> Result<TrustPolicy, EmbedError> {
    let mut keys = Vec::with_capacity(args.keys.len());
    for path in &args.keys {
        let key = keys::load_public_key(path).map_err(|error| EmbedError::Key {
            path: path.clone(),
            error,
        })?;
        keys.push(key);
    }
    Ok(match args.policy {
        Policy::Signed => TrustPolicy::Signed {
            keys,
            serial_floor: args.serial_floor,
        },
        Policy::SealedDigest => {
            if !keys.is_empty() {
                return Err(EmbedError::KeysWithSealedDigest { count: keys.len() });
            }
            TrustPolicy::SealedDigest {
                serial_floor: args.serial_floor,
            }
        }
    })
}

fn show(args: &Args) -> Result<String, EmbedError> {
    let (data, _) = read_binary(&args.binary)?;
    let offset = locate_area(&args.binary, &data)?;
    let area = &data[offset..offset + AREA_SIZE];
    Ok(
        match trust::decode_area(area).map_err(EmbedError::ExistingArea)? {
            Some(anchor) => format!("{}source: embedded\n", trust::describe(&anchor)),
            None => "source: compiled-in (nothing embedded)\n".to_string(),
        },
    )
}

fn embed(args: &Args, output: &Path) -> Result<String, EmbedError> {
    let policy_error = |error| {
        EmbedError::Policy(TrustError::BootPolicy {
            source: trust::TrustSource::Embedded,
            error,
        })
    };
    let tpm = TpmPolicy::new(args.tpm_pcr, args.require_tpm)
        .and_then(|t| t.with_floor(args.tpm_floor_index, args.require_tpm_floor))
        .map_err(policy_error)?;
    let boot = BootPolicy::new(
        args.allow_cmdline.clone(),
        (!args.inits.is_empty()).then(|| args.inits.clone()),
    )
    .map_err(policy_error)?
    .with_tpm(tpm);
    let policy = Anchor {
        policy: build_policy(args)?,
        boot,
    };
    let payload = trust::encode_payload(&policy).map_err(EmbedError::Policy)?;
    let area = trust::encode_area(&payload).map_err(EmbedError::Policy)?;
    let (mut data, mode) = read_binary(&args.binary)?;
    let offset = locate_area(&args.binary, &data)?;
    trust::decode_area(&data[offset..offset + AREA_SIZE]).map_err(EmbedError::ExistingArea)?;
    data[offset..offset + AREA_SIZE].copy_from_slice(&area);
    fileio::write_atomic(output, &data, Some(mode)).map_err(EmbedError::File)?;
    Ok(format!(
        "{}wrote {} (trust area at offset {offset:#x}, {} payload bytes)\n",
        trust::describe(&policy),
        output.display(),
        payload.len()
    ))
}

pub fn run(args: Args) -> ExitCode {
    let result = match (&args.output, args.show) {
        (_, true) => show(&args),
        (Some(out), false) => embed(&args, out),
        (None, false) => return crate::fail("embed-keys", "--output is required"),
    };
    match result {
        Ok(text) => {
            let _ = write!(std::io::stdout().lock(), "{text}");
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail("embed-keys", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_section_refusals_are_typed() {
        let path = Path::new("x");
        assert!(matches!(
            trust_section(path, b"#!/bin/sh\n"),
            Err(EmbedError::NotElf { .. })
        ));
        // Any 64-bit little-endian ELF of the host stands in for a binary
        // without the section.
        let Ok(elf) = std::fs::read("/bin/true") else {
            return;
        };
        if elf.get(4..6) != Some(&[2, 1][..]) {
            return;
        }
        assert!(matches!(
            trust_section(path, &elf),
            Err(EmbedError::SectionMissing)
        ));
        let mut class32 = elf.clone();
        class32[4] = 1;
        assert!(matches!(
            trust_section(path, &class32),
            Err(EmbedError::UnsupportedElf { class: 1, data: 1 })
        ));
        // Headers present, section header table cut off.
        assert!(matches!(
            trust_section(path, &elf[..64]),
            Err(EmbedError::Elf {
                what: "section header table",
                ..
            })
        ));
        // e_shoff = 0: no section headers, the magic alone locates the area.
        let mut no_sections = elf.clone();
        no_sections[0x28..0x30].fill(0);
        assert!(matches!(trust_section(path, &no_sections), Ok(None)));
        // e_shstrndx past the table: object refuses the table.
        let mut bad_index = elf.clone();
        bad_index[0x3e..0x40].copy_from_slice(&0xfeffu16.to_le_bytes());
        match trust_section(path, &bad_index) {
            Err(EmbedError::Elf { what, error }) => {
                assert_eq!(what, "section header table");
                assert_eq!(error.to_string(), "Invalid ELF e_shstrndx");
            }
            other => panic!("{other:?}"),
        }
        // The name table's sh_offset past the end of the file.
        let le64 = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
        let shoff = le64(0x28);
        let shstrndx = usize::from(u16::from_le_bytes([elf[0x3e], elf[0x3f]]));
        let at = shoff + shstrndx * 64 + 24;
        let mut bad_names = elf.clone();
        bad_names[at..at + 8].copy_from_slice(&(elf.len() as u64).to_le_bytes());
        assert!(matches!(
            trust_section(path, &bad_names),
            Err(EmbedError::Elf {
                what: "section name string table",
                ..
            })
        ));
    }
}
