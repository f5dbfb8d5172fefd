//! Unified kernel images: PE/COFF section parsing and the digest a UKI seals.
//!
//! Contract:
//! - [`parse_pe`] reads a PE/COFF file from a byte slice, checking every
//!   offset against the slice before use: the DOS header (`MZ`, `e_lfanew` at
//!   0x3c), the `PE\0\0` signature, the 20-byte COFF header, the optional
//!   header (magic 0x10b PE32 or 0x20b PE32+, size as the COFF header states)
//!   and the section table (40 bytes per section, at most [`MAX_SECTIONS`],
//!   the PE specification's loader limit). Malformed input is a typed
//!   [`PeError`], never a panic; allocation is bounded by the section count.
//! - A section's content is its raw data cut to the virtual size when that is
//!   smaller: the linker and ukify pad raw data to the file alignment, and the
//!   loader (systemd-stub) only sees `VirtualSize` bytes.
//! - A UKI (systemd's UAPI.5 format) is a PE whose sections include `.linux`
//!   and carry text in `.cmdline`, `.osrel` and `.uname`. Multi-profile UKIs
//!   repeat sections after `.profile`; the first occurrence is the base
//!   profile's, and that is the one reported.
//! - [`sealed_digest`] picks the digest the `.cmdline` seals with the boot
//!   side's own parser ([`crate::boot::cmdline`]): the first `composefs.digest=` or `composefs=` parameter
//!   on the command line (kernel word splitting), with later ones reported as
//!   ignored, `?`-prefixed ("insecure") values refused.

use std::fmt;

use crate::boot::cmdline::{CmdlineError, DigestKey};
use crate::digest::Digest;

/// The PE specification's limit on the number of sections.
pub const MAX_SECTIONS: usize = 96;

const DOS_HEADER_LEN: usize = 64;
const COFF_HEADER_LEN: usize = 20;
const SECTION_HEADER_LEN: usize = 40;
const SYMBOL_LEN: u64 = 18;
const PE32_MAGIC: u16 = 0x10b;
const PE32_PLUS_MAGIC: u16 = 0x20b;

/// Why a file is not a well-formed PE image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeError {
    /// A structure runs past the end of the file.
    Truncated {
        what: &'static str,
        offset: u64,
        needed: u64,
        file_len: usize,
    },
    /// The file does not start with `MZ`.
    NotMz { found: [u8; 2] },
    /// The 4 bytes at `e_lfanew` are not `PE\0\0`.
    NotPe { offset: u32, found: [u8; 4] },
    /// The optional header magic is neither PE32 nor PE32+.
    BadOptionalMagic { found: u16 },
    /// The COFF header declares an optional header too small for its magic.
    OptionalHeaderTooSmall { size: u16 },
    /// More sections than [`MAX_SECTIONS`].
    TooManySections { count: u16 },
    /// No sections at all.
    NoSections,
    /// A section's raw data lies outside the file.
    SectionOutOfBounds {
        name: String,
        offset: u32,
        size: u32,
        file_len: usize,
    },
    /// A text section (`.cmdline`, `.osrel`, `.uname`) is not UTF-8.
    NotText { section: String, offset: usize },
}

impl fmt::Display for PeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeError::Truncated {
                what,
                offset,
                needed,
                file_len,
            } => write!(
                f,
                "truncated PE: {what} needs {needed} bytes at offset {offset}, file is {file_len} bytes"
            ),
            PeError::NotMz { found } => write!(
                f,
                "not a PE file: starts with {:02x} {:02x}, expected \"MZ\"",
                found[0], found[1]
            ),
            PeError::NotPe { offset, found } => write!(
                f,
                "not a PE file: signature at {offset:#x} is {found:02x?}, expected \"PE\\0\\0\""
            ),
            PeError::BadOptionalMagic { found } => write!(
                f,
                "PE optional header magic is {found:#x}, expected 0x10b (PE32) or 0x20b (PE32+)"
            ),
            PeError::OptionalHeaderTooSmall { size } => {
                write!(f, "PE optional header size {size} is too small for its magic")
            }
            PeError::TooManySections { count } => write!(
                f,
                "PE declares {count} sections, more than the limit of {MAX_SECTIONS}"
            ),
            PeError::NoSections => write!(f, "PE file has no sections"),
            PeError::SectionOutOfBounds {
                name,
                offset,
                size,
                file_len,
            } => write!(
                f,
                "PE section {name}: raw data {size} bytes at offset {offset} lies outside the {file_len}-byte file"
            ),
            PeError::NotText { section, offset } => write!(
                f,
                "PE section {section} is not UTF-8 text (invalid byte at {offset})"
            ),
        }
    }
}

impl std::error::Error for PeError {}

/// One section table entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Section {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_offset: u32,
    pub characteristics: u32,
}

impl Section {
    /// Bytes of content in the file: raw data, cut to the virtual size.
    pub fn content_len(&self) -> u32 {
        if self.virtual_size == 0 {
            self.raw_size
        } else {
            self.virtual_size.min(self.raw_size)
        }
    }
}

/// A parsed PE image borrowing the file's bytes.
#[derive(Debug, Clone)]
pub struct PeFile<'a> {
    data: &'a [u8],
    pub machine: u16,
    /// PE32+ (64-bit optional header).
    pub pe32_plus: bool,
    pub sections: Vec<Section>,
}

fn slice<'a>(
    data: &'a [u8],
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<&'a [u8], PeError> {
    let truncated = || PeError::Truncated {
        what,
        offset,
        needed: len,
        file_len: data.len(),
    };
    let start = usize::try_from(offset).map_err(|_| truncated())?;
    let len_usize = usize::try_from(len).map_err(|_| truncated())?;
    let end = start.checked_add(len_usize).ok_or_else(truncated)?;
    data.get(start..end).ok_or_else(truncated)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    // Callers pass slices whose length they checked; a short slice reads 0
    // rather than panicking.
    match b.get(at..at + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

/// Parse the headers and section table of a PE file.
pub fn parse_pe(data: &[u8]) -> Result<PeFile<'_>, PeError> {
    let dos = slice(data, 0, DOS_HEADER_LEN as u64, "DOS header")?;
    if &dos[..2] != b"MZ" {
        return Err(PeError::NotMz {
            found: [dos[0], dos[1]],
        });
    }
    let pe_offset = u32_at(dos, 0x3c);
    let sig = slice(data, u64::from(pe_offset), 4, "PE signature")?;
    if sig != b"PE\0\0" {
        return Err(PeError::NotPe {
            offset: pe_offset,
            found: [sig[0], sig[1], sig[2], sig[3]],
        });
    }
    let coff_offset = u64::from(pe_offset) + 4;
    let coff = slice(data, coff_offset, COFF_HEADER_LEN as u64, "COFF header")?;
    let machine = u16_at(coff, 0);
    let section_count = u16_at(coff, 2);
    let symbol_table = u32_at(coff, 8);
    let symbol_count = u32_at(coff, 12);
    let optional_size = u16_at(coff, 16);

    let optional_offset = coff_offset + COFF_HEADER_LEN as u64;
    if optional_size < 2 {
        return Err(PeError::OptionalHeaderTooSmall {
            size: optional_size,
        });
    }
    let optional = slice(
        data,
        optional_offset,
        u64::from(optional_size),
        "optional header",
    )?;
    let magic = u16_at(optional, 0);
    // The standard fields plus the Windows-specific fields up to
    // NumberOfRvaAndSizes: 96 bytes for PE32, 112 for PE32+.
    let (pe32_plus, min_size) = match magic {
        PE32_MAGIC => (false, 96),
        PE32_PLUS_MAGIC => (true, 112),
        found => return Err(PeError::BadOptionalMagic { found }),
    };
    if optional_size < min_size {
        return Err(PeError::OptionalHeaderTooSmall {
            size: optional_size,
        });
    }

    if section_count == 0 {
        return Err(PeError::NoSections);
    }
    if usize::from(section_count) > MAX_SECTIONS {
        return Err(PeError::TooManySections {
            count: section_count,
        });
    }
    let table_offset = optional_offset + u64::from(optional_size);
    let table = slice(
        data,
        table_offset,
        u64::from(section_count) * SECTION_HEADER_LEN as u64,
        "section table",
    )?;
    let string_table = coff_string_table(data, symbol_table, symbol_count);

    let mut sections = Vec::with_capacity(usize::from(section_count));
    for raw in table.chunks_exact(SECTION_HEADER_LEN) {
        let name = section_name(&raw[..8], string_table);
        let section = Section {
            name,
            virtual_size: u32_at(raw, 8),
            virtual_address: u32_at(raw, 12),
            raw_size: u32_at(raw, 16),
            raw_offset: u32_at(raw, 20),
            characteristics: u32_at(raw, 36),
        };
        if section.raw_size != 0
            && slice(
                data,
                u64::from(section.raw_offset),
                u64::from(section.raw_size),
                "section data",
            )
            .is_err()
        {
            return Err(PeError::SectionOutOfBounds {
                name: section.name,
                offset: section.raw_offset,
                size: section.raw_size,
                file_len: data.len(),
            });
        }
        sections.push(section);
    }
    Ok(PeFile {
        data,
        machine,
        pe32_plus,
        sections,
    })
}

/// The COFF string table (long section names), if present and in bounds.
fn coff_string_table(data: &[u8], symbol_table: u32, symbol_count: u32) -> Option<&[u8]> {
    if symbol_table == 0 {
        return None;
    }
    let start = u64::from(symbol_table) + u64::from(symbol_count) * SYMBOL_LEN;
    let size_field = slice(data, start, 4, "string table").ok()?;
    let size = u32_at(size_field, 0);
    slice(data, start, u64::from(size), "string table").ok()
}

/// An 8-byte name, NUL padded; `/<decimal>` refers to the string table.
fn section_name(raw: &[u8], string_table: Option<&[u8]>) -> String {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let short = &raw[..len];
    if let (Some(rest), Some(table)) = (short.strip_prefix(b"/"), string_table) {
        let offset = std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse::<usize>().ok());
        if let Some(long) = offset.and_then(|o| table.get(o..)) {
            let end = long.iter().position(|&b| b == 0).unwrap_or(long.len());
            return printable(&long[..end.min(256)]);
        }
    }
    printable(short)
}

/// Names as text: bytes outside printable ASCII become `\xNN`.
fn printable(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x21..0x7f).contains(&b) && b != b'\\' {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

impl<'a> PeFile<'a> {
    /// The first section with this name.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// A section's content bytes (see [`Section::content_len`]).
    pub fn content(&self, section: &Section) -> &'a [u8] {
        if section.raw_size == 0 {
            return &[];
        }
        let start = section.raw_offset as usize;
        let end = start.saturating_add(section.content_len() as usize);
        // In bounds: parse_pe checked raw_offset + raw_size, and
        // content_len <= raw_size.
        self.data.get(start..end).unwrap_or(&[])
    }

    /// A text section, trailing NULs and whitespace removed. `Ok(None)` if
    /// the section is absent.
    pub fn text(&self, name: &str) -> Result<Option<String>, PeError> {
        let Some(section) = self.section(name) else {
            return Ok(None);
        };
        let bytes = self.content(section);
        let text = std::str::from_utf8(bytes).map_err(|e| PeError::NotText {
            section: name.to_string(),
            offset: e.valid_up_to(),
        })?;
        Ok(Some(
            text.trim_end_matches(|c: char| c == '\0' || c.is_ascii_whitespace())
                .to_string(),
        ))
    }
}

/// What a UKI carries, as far as sealing is concerned.
#[derive(Debug, Clone)]
pub struct UkiInfo {
    pub machine: u16,
    pub pe32_plus: bool,
    pub sections: Vec<Section>,
    pub cmdline: Option<String>,
    pub osrel: Option<String>,
    pub uname: Option<String>,
    /// Whether a `.linux` section is present (what makes a PE a UKI).
    pub has_linux: bool,
}

/// Parse a UKI's sections and its text sections.
pub fn inspect(data: &[u8]) -> Result<UkiInfo, PeError> {
    let pe = parse_pe(data)?;
    Ok(UkiInfo {
        machine: pe.machine,
        pe32_plus: pe.pe32_plus,
        cmdline: pe.text(".cmdline")?,
        osrel: pe.text(".osrel")?,
        uname: pe.text(".uname")?,
        has_linux: pe.section(".linux").is_some(),
        sections: pe.sections,
    })
}

/// `KEY=value` pairs of an os-release text (quotes removed), in order.
pub fn os_release_fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// The digest a command line seals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedDigest {
    pub digest: Digest,
    /// The parameter, e.g. `composefs.digest=v1-sha256-12:…` (normalized).
    pub parameter: String,
    /// Later digest parameters, which the boot side logs and ignores.
    pub ignored: Vec<String>,
}

/// Why a command line seals no usable digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineDigestError {
    /// No `composefs.digest=` or `composefs=` parameter.
    NoDigest,
    /// The boot side would refuse this command line (insecure `?` marker,
    /// malformed first digest, ...).
    Refused(CmdlineError),
}

impl fmt::Display for CmdlineDigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineDigestError::NoDigest => write!(
                f,
                "command line has no composefs.digest= or composefs= parameter"
            ),
            CmdlineDigestError::Refused(e) => {
                write!(f, "sealroot would refuse the command line: {e}")
            }
        }
    }
}

impl std::error::Error for CmdlineDigestError {}

/// The first digest parameter of a command line, and the ignored later ones,
/// decided by the boot side's own parser ([`crate::boot::cmdline::parse`]).
pub fn sealed_digest(cmdline: &str) -> Result<SealedDigest, CmdlineDigestError> {
    let parsed = crate::boot::cmdline::parse(cmdline).map_err(CmdlineDigestError::Refused)?;
    let (key, digest) = parsed.digest.ok_or(CmdlineDigestError::NoDigest)?;
    let parameter = match key {
        DigestKey::ComposefsDigest => format!("{}={}", key.name(), digest.to_composefs()),
        DigestKey::Composefs => format!("{}={}", key.name(), digest.to_hex()),
    };
    Ok(SealedDigest {
        digest,
        parameter,
        ignored: parsed.ignored_digests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95";

    /// A minimal PE32+ image assembled from the specification's offsets:
    /// DOS header with e_lfanew = 0x40, PE signature, COFF header, a 112-byte
    /// optional header and the given sections, data from 0x200.
    fn tiny_pe(sections: &[(&[u8; 8], &[u8])]) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[0..2].copy_from_slice(b"MZ");
        f[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        f[0x40..0x44].copy_from_slice(b"PE\0\0");
        f[0x44..0x46].copy_from_slice(&0x8664u16.to_le_bytes());
        f[0x46..0x48].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        f[0x54..0x56].copy_from_slice(&112u16.to_le_bytes());
        f[0x58..0x5a].copy_from_slice(&0x20bu16.to_le_bytes());
        let mut table = 0x58 + 112;
        for (name, content) in sections {
            let offset = f.len() as u32;
            let raw = content.len().div_ceil(0x200) * 0x200;
            f[table..table + 8].copy_from_slice(*name);
            f[table + 8..table + 12].copy_from_slice(&(content.len() as u32).to_le_bytes());
            f[table + 16..table + 20].copy_from_slice(&(raw as u32).to_le_bytes());
            f[table + 20..table + 24].copy_from_slice(&offset.to_le_bytes());
            f.extend_from_slice(content);
            f.resize(offset as usize + raw, 0);
            table += 40;
        }
        f
    }

    #[test]
    fn parses_hand_built_pe() {
        let cmdline = format!("console=ttyS0 composefs.digest=v1-sha256-12:{HEX}\0");
        let pe = tiny_pe(&[
            (b".osrel\0\0", b"ID=test\nPRETTY_NAME=\"Test OS\"\n"),
            (b".cmdline", cmdline.as_bytes()),
            (b".linux\0\0", &[0xcc; 700]),
        ]);
        let info = inspect(&pe).unwrap();
        assert_eq!(info.sections.len(), 3);
        assert_eq!(info.sections[2].name, ".linux");
        assert_eq!(info.sections[2].virtual_size, 700);
        assert_eq!(info.sections[2].raw_size, 1024);
        assert!(info.has_linux && info.pe32_plus);
        assert_eq!(info.machine, 0x8664);
        assert_eq!(
            info.cmdline.as_deref(),
            Some(format!("console=ttyS0 composefs.digest=v1-sha256-12:{HEX}").as_str())
        );
        let fields = os_release_fields(info.osrel.as_deref().unwrap());
        assert_eq!(fields[1], ("PRETTY_NAME".into(), "Test OS".into()));
        let sealed = sealed_digest(info.cmdline.as_deref().unwrap()).unwrap();
        assert_eq!(sealed.digest.to_hex(), HEX);
        assert!(info.uname.is_none());
    }

    #[test]
    fn every_truncation_fails_typed() {
        let pe = tiny_pe(&[(b".cmdline", b"quiet"), (b".linux\0\0", &[1; 10])]);
        assert!(parse_pe(&pe).is_ok());
        for len in 0..pe.len() {
            let err = parse_pe(&pe[..len]).unwrap_err();
            assert!(
                matches!(
                    err,
                    PeError::Truncated { .. } | PeError::SectionOutOfBounds { .. }
                ),
                "len {len}: {err:?}"
            );
        }
    }

    #[test]
    fn hostile_headers_fail_typed() {
        let good = tiny_pe(&[(b".cmdline", b"quiet")]);
        let mut pe = good.clone();
        pe[0] = b'Z';
        assert_eq!(parse_pe(&pe).unwrap_err(), PeError::NotMz { found: *b"ZZ" });
        let mut pe = good.clone();
        pe[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_pe(&pe),
            Err(PeError::Truncated {
                what: "PE signature",
                ..
            })
        ));
        let mut pe = good.clone();
        pe[0x42] = b'X';
        assert!(matches!(
            parse_pe(&pe),
            Err(PeError::NotPe { offset: 0x40, .. })
        ));
        let mut pe = good.clone();
        pe[0x58] = 0x07;
        assert!(matches!(
            parse_pe(&pe),
            Err(PeError::BadOptionalMagic { .. })
        ));
        let mut pe = good.clone();
        pe[0x54..0x56].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(
            parse_pe(&pe).unwrap_err(),
            PeError::OptionalHeaderTooSmall { size: 40 }
        );
        let mut pe = good.clone();
        pe[0x54..0x56].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            parse_pe(&pe),
            Err(PeError::Truncated {
                what: "optional header",
                ..
            })
        ));
        let mut pe = good.clone();
        pe[0x46..0x48].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(parse_pe(&pe).unwrap_err(), PeError::NoSections);
        let mut pe = good.clone();
        pe[0x46..0x48].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            parse_pe(&pe).unwrap_err(),
            PeError::TooManySections { count: u16::MAX }
        );
        let mut pe = good.clone();
        pe[0x46..0x48].copy_from_slice(&60u16.to_le_bytes());
        assert!(matches!(
            parse_pe(&pe),
            Err(PeError::Truncated {
                what: "section table",
                ..
            })
        ));
        // Section data pointing past the end, with offset + size overflowing u32.
        let mut pe = good.clone();
        let sec = 0x58 + 112;
        pe[sec + 20..sec + 24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_pe(&pe),
            Err(PeError::SectionOutOfBounds { .. })
        ));
        // Non-UTF-8 command line.
        let pe = tiny_pe(&[(b".cmdline", &[0x66, 0xff, 0x66])]);
        assert_eq!(
            inspect(&pe).unwrap_err(),
            PeError::NotText {
                section: ".cmdline".into(),
                offset: 1
            }
        );
    }

    #[test]
    fn long_and_odd_section_names() {
        let mut pe = tiny_pe(&[(b"/4\0\0\0\0\0\0", b"x"), (b"a\x01b\0\0\0\0\0", b"y")]);
        // A COFF string table after the data: size 4 + "xx" + ".verylongname\0".
        let table_at = pe.len() as u32;
        let mut table = Vec::new();
        table.extend_from_slice(&24u32.to_le_bytes());
        table.extend_from_slice(b".verylongname\0\0\0\0\0\0\0");
        table.truncate(24);
        pe.extend_from_slice(&table);
        pe[0x4c..0x50].copy_from_slice(&table_at.to_le_bytes());
        let parsed = parse_pe(&pe).unwrap();
        assert_eq!(parsed.sections[0].name, ".verylongname");
        assert_eq!(parsed.sections[1].name, "a\\x01b");
    }

    /// ukify, as scripts/setup.d/30-uki provides it: `$UKIFY`, `ukify` on
    /// PATH, or build/ukify/usr/bin/ukify run by /usr/bin/python3.
    fn ukify_command() -> Option<std::process::Command> {
        if let Some(path) = std::env::var_os("UKIFY") {
            return Some(std::process::Command::new(path));
        }
        let on_path = std::process::Command::new("ukify")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if on_path {
            return Some(std::process::Command::new("ukify"));
        }
        let local =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("build/ukify/usr/bin/ukify");
        if local.exists() {
            let mut c = std::process::Command::new("/usr/bin/python3");
            c.arg(local);
            return Some(c);
        }
        None
    }

    #[test]
    fn matches_pefile_on_a_ukify_built_uki() {
        const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
        let Some(mut ukify) = ukify_command() else {
            eprintln!("SKIP: ukify not found (run scripts/setup.d/30-uki)");
            return;
        };
        if !std::path::Path::new(STUB).exists() {
            eprintln!("SKIP: {STUB} missing (package systemd-boot-efi)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let linux = dir.path().join("linux");
        std::fs::write(
            &linux,
            (0..5000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        let out = dir.path().join("test.efi");
        let cmdline = format!("console=ttyS0 composefs.digest=v1-sha256-12:{HEX}");
        let status = ukify
            .args(["build", "--linux"])
            .arg(&linux)
            .args([
                "--cmdline",
                &cmdline,
                "--uname",
                "6.12.0-test",
                "--os-release",
            ])
            .arg("ID=sealtest\nPRETTY_NAME=\"Seal Test\"")
            .args(["--stub", STUB, "--output"])
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "ukify failed");
        let data = std::fs::read(&out).unwrap();
        let info = inspect(&data).unwrap();
        assert_eq!(info.cmdline.as_deref(), Some(cmdline.as_str()));
        assert_eq!(info.uname.as_deref(), Some("6.12.0-test"));
        assert!(info.has_linux);
        assert_eq!(sealed_digest(&cmdline).unwrap().digest.to_hex(), HEX);

        // The reference: python3-pefile's view of the same file.
        let script = "import pefile,sys\np=pefile.PE(sys.argv[1])\nfor s in p.sections: print(s.Name.rstrip(b'\\0').decode(), s.Misc_VirtualSize, s.VirtualAddress, s.SizeOfRawData, s.PointerToRawData)";
        let reference = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script])
            .arg(&out)
            .output()
            .unwrap();
        assert!(reference.status.success(), "pefile failed");
        let ours: String = info
            .sections
            .iter()
            .map(|s| {
                format!(
                    "{} {} {} {} {}\n",
                    s.name, s.virtual_size, s.virtual_address, s.raw_size, s.raw_offset
                )
            })
            .collect();
        assert_eq!(ours, String::from_utf8(reference.stdout).unwrap());
        let linux_section = info.sections.iter().find(|s| s.name == ".linux").unwrap();
        let pe = parse_pe(&data).unwrap();
        assert_eq!(pe.content(linux_section), std::fs::read(&linux).unwrap());

        // Every truncation of a real UKI is refused with a typed error; a
        // few hundred cut points cover every header and section boundary.
        let mut cuts: Vec<usize> = (0..1024).collect();
        for s in &info.sections {
            let o = s.raw_offset as usize;
            cuts.extend([o, o + 1, o + s.raw_size as usize - 1]);
        }
        for len in cuts.into_iter().filter(|&l| l < data.len()) {
            assert!(
                inspect(&data[..len]).is_err(),
                "truncated to {len} accepted"
            );
        }
    }

    #[test]
    fn first_digest_parameter_wins() {
        let other = "ab".repeat(32);
        let line = format!(
            "console=ttyS0 composefs.digest=v1-sha256-12:{HEX} quiet composefs.digest=v1-sha256-12:{other} composefs={other}"
        );
        let s = sealed_digest(&line).unwrap();
        assert_eq!(s.digest.to_hex(), HEX);
        assert_eq!(s.parameter, format!("composefs.digest=v1-sha256-12:{HEX}"));
        assert_eq!(
            s.ignored,
            vec![
                format!("composefs.digest=v1-sha256-12:{other}"),
                format!("composefs={other}")
            ]
        );
        // Legacy form, algorithm from the length; quotes as the kernel strips them.
        let s = sealed_digest(&format!("root=/dev/vda composefs=\"{HEX}\"")).unwrap();
        assert_eq!(s.digest.to_hex(), HEX);
        // A quoted word containing the parameter name is one word, not a parameter.
        assert_eq!(
            sealed_digest(&format!("x=\"a composefs={HEX}\"")),
            Err(CmdlineDigestError::NoDigest)
        );
        let sha512 = "cd".repeat(64);
        let s = sealed_digest(&format!("composefs.digest=v1-sha512-12:{sha512}")).unwrap();
        assert_eq!(s.digest.as_bytes().len(), 64);
    }

    #[test]
    fn refused_digest_parameters() {
        assert_eq!(sealed_digest("quiet"), Err(CmdlineDigestError::NoDigest));
        assert!(matches!(
            sealed_digest(&format!("composefs=?{HEX}")),
            Err(CmdlineDigestError::Refused(
                CmdlineError::InsecureDigest { .. }
            ))
        ));
        // A malformed first parameter is an error even when a good one follows.
        assert!(matches!(
            sealed_digest(&format!(
                "composefs.digest=v1-sha256-12:{} composefs.digest=v1-sha256-12:{HEX}",
                &HEX[1..]
            )),
            Err(CmdlineDigestError::Refused(_))
        ));
        assert!(matches!(
            sealed_digest(&format!(
                "composefs.digest=v1-sha256-12:{}",
                HEX.to_uppercase()
            )),
            Err(CmdlineDigestError::Refused(_))
        ));
        assert!(matches!(
            sealed_digest("composefs.digest="),
            Err(CmdlineDigestError::Refused(_))
        ));
    }
}
