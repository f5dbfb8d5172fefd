//! `sealctl embed-keys`: write trusted keys and the policy into a prebuilt
//! `sealroot` binary, so a distribution can ship its own key without a Rust
//! toolchain.
//!
//! The binary carries an 8192-byte reserved area (layout in
//! `sealroot::trust`) in ELF section `.sealroot_trust`, starting with the
//! magic `SEALROOT-TRUST01`. This command:
//! - finds the magic exactly once in the file (zero or several occurrences
//!   are refused: patching the wrong copy would leave the binary trusting
//!   whatever it was built with);
//! - when the ELF has section headers, checks that the magic sits at the
//!   start of `.sealroot_trust` and that the section holds the whole area
//!   (`strip` keeps section headers; only tools like `sstrip` drop them, and
//!   then the magic alone locates the area, bounded by the file size);
//! - checks the current area decodes (a byte run that merely looks like the
//!   magic would not);
//! - writes the new area and the rest of the file unchanged to OUT through a
//!   temporary file in OUT's directory, fsync'd, then renamed, with the input's
//!   permission bits, so OUT is either absent/old or complete.
//!
//! The payload also carries the boot policy (`sealroot::boot_policy`):
//! `--allow-cmdline ENTRY` adds kernel command-line words a signed boot
//! accepts on top of the defaults, `--init PATH` replaces the init list.
//! `--tpm-pcr N` and `--require-tpm` set the measurement policy
//! (`sealroot::tpm`). Embedding replaces the whole anchor, compiled-in
//! extensions included.
//!
//! `--show` prints the trust anchor a binary carries without writing.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sealroot::boot_policy::{BootPolicy, TpmPolicy};
use sealroot::keys::{self, KeyError};
use sealroot::trust::{self, Anchor, TrustError, TrustPolicy, AREA_SIZE, MAGIC, SECTION_NAME};

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
    /// Print the binary's embedded trust anchor and write nothing.
    #[arg(long, conflicts_with_all = ["output", "keys", "allow_cmdline", "inits", "require_tpm"])]
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
    BinaryTooLarge {
        path: PathBuf,
        size: u64,
    },
    NotElf {
        path: PathBuf,
    },
    UnsupportedElf {
        class: u8,
        data: u8,
    },
    ElfTruncated {
        what: &'static str,
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
            EmbedError::BinaryTooLarge { path, size } => write!(
                f,
                "{}: {size} bytes is larger than the {MAX_BINARY}-byte limit",
                path.display()
            ),
            EmbedError::NotElf { path } => write!(f, "{}: not an ELF file", path.display()),
            EmbedError::UnsupportedElf { class, data } => write!(
                f,
                "ELF class {class} / data encoding {data}: only 64-bit little-endian binaries are supported"
            ),
            EmbedError::ElfTruncated { what } => write!(f, "truncated ELF: {what} lies outside the file"),
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
    let file = File::open(path).map_err(io_err("open", path))?;
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if meta.len() > MAX_BINARY {
        return Err(EmbedError::BinaryTooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_BINARY + 1)
        .read_to_end(&mut data)
        .map_err(io_err("read", path))?;
    if data.len() as u64 > MAX_BINARY {
        return Err(EmbedError::BinaryTooLarge {
            path: path.to_path_buf(),
            size: data.len() as u64,
        });
    }
    Ok((data, meta.permissions().mode() & 0o7777))
}

fn get<'a>(data: &'a [u8], at: u64, len: u64, what: &'static str) -> Result<&'a [u8], EmbedError> {
    let start = usize::try_from(at).map_err(|_| EmbedError::ElfTruncated { what })?;
    let len = usize::try_from(len).map_err(|_| EmbedError::ElfTruncated { what })?;
    let end = start
        .checked_add(len)
        .ok_or(EmbedError::ElfTruncated { what })?;
    data.get(start..end)
        .ok_or(EmbedError::ElfTruncated { what })
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .unwrap_or(0)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// File offset and size of `.sealroot_trust`, or `None` when the ELF has no
/// section headers at all.
fn trust_section(path: &Path, data: &[u8]) -> Result<Option<(u64, u64)>, EmbedError> {
    const SHT_NOBITS: u32 = 8;
    let ident = get(data, 0, 64, "ELF header").map_err(|_| EmbedError::NotElf {
        path: path.to_path_buf(),
    })?;
    if &ident[..4] != b"\x7fELF" {
        return Err(EmbedError::NotElf {
            path: path.to_path_buf(),
        });
    }
    if ident[4] != 2 || ident[5] != 1 {
        return Err(EmbedError::UnsupportedElf {
            class: ident[4],
            data: ident[5],
        });
    }
    let shoff = le_u64(ident, 0x28);
    let shentsize = u64::from(le_u16(ident, 0x3a));
    let shnum = u64::from(le_u16(ident, 0x3c));
    let shstrndx = u64::from(le_u16(ident, 0x3e));
    if shoff == 0 || shnum == 0 {
        return Ok(None);
    }
    if shentsize < 64 {
        return Err(EmbedError::ElfTruncated {
            what: "section header entry",
        });
    }
    let headers = get(data, shoff, shnum * shentsize, "section header table")?;
    let header = |i: u64| -> &[u8] {
        let at = (i * shentsize) as usize;
        headers.get(at..at + 64).unwrap_or(&[])
    };
    if shstrndx >= shnum {
        return Err(EmbedError::ElfTruncated {
            what: "section name string table index",
        });
    }
    let strtab_header = header(shstrndx);
    let strtab = get(
        data,
        le_u64(strtab_header, 24),
        le_u64(strtab_header, 32),
        "section name string table",
    )?;
    for i in 0..shnum {
        let h = header(i);
        let name_at = le_u32(h, 0) as usize;
        let name = strtab.get(name_at..).unwrap_or(&[]);
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if name == SECTION_NAME.as_bytes() {
            let size = le_u64(h, 32);
            if le_u32(h, 4) == SHT_NOBITS || size < AREA_SIZE as u64 {
                return Err(EmbedError::SectionTooSmall {
                    size: if le_u32(h, 4) == SHT_NOBITS { 0 } else { size },
                });
            }
            return Ok(Some((le_u64(h, 24), size)));
        }
    }
    Err(EmbedError::SectionMissing)
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

/// Write `data` to `out` via a temporary file beside it, with `mode`.
fn write_atomic(out: &Path, data: &[u8], mode: u32) -> Result<(), EmbedError> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sealroot".into());
    let tmp = dir.join(format!(".{name}.tmp-embed-{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(data).map_err(io_err("write", &tmp))?;
        // Set after writing: umask must not strip the exec bits we copy.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, out).map_err(io_err("rename", out))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", &dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
    let tpm = TpmPolicy::new(args.tpm_pcr, args.require_tpm).map_err(policy_error)?;
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
    write_atomic(output, &data, mode)?;
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
