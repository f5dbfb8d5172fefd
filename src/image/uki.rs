//! Unified kernel images: PE/COFF section parsing and the digest a UKI seals.
//!
//! Contract:
//! - The `object` crate reads the PE headers from a byte slice
//!   ([`object::read::pe`], read-only, no allocation of its own): the DOS
//!   header (`MZ`, `e_lfanew`), the `PE\0\0` signature, the COFF header, the
//!   optional header (magic 0x10b PE32 or 0x20b PE32+, at least the fixed
//!   fields for that magic, data directories within its declared size), the
//!   section table, the COFF string table and section names (`/<decimal>`
//!   and `//<base64>` long names). Whatever it refuses is
//!   [`PeError::Malformed`], naming the structure and carrying its error.
//! - This module checks what `object` leaves to callers: at least one
//!   section and at most [`MAX_SECTIONS`] (the PE specification's loader
//!   limit, checked before the table is read, so allocation is bounded by
//!   it); every section's raw data (`PointerToRawData`, `SizeOfRawData`)
//!   inside the file; text sections are UTF-8. Malformed input is a typed
//!   [`PeError`], never a panic.
//! - A section's content is `object`'s PE view of it: raw data cut to
//!   `VirtualSize` (`min(VirtualSize, SizeOfRawData)`): the linker and
//!   ukify pad raw data to the file alignment, and the loader (systemd-stub)
//!   only sees `VirtualSize` bytes. A section with `VirtualSize` 0 has no
//!   content.
//! - Names are printable: bytes outside printable ASCII become `\xNN`; a long
//!   name whose string-table entry is missing or malformed is shown as its
//!   raw 8-byte form (`/4`), at most 256 bytes of a long name are shown.
//! - A UKI (systemd's UAPI.5 format) is a PE whose sections include `.linux`
//!   and carry text in `.cmdline`, `.osrel` and `.uname`. Multi-profile UKIs
//!   repeat sections after `.profile`; the first occurrence is the base
//!   profile's, and that is the one reported.
//! - [`sealed_digest`] picks the digest the `.cmdline` seals with the boot
//!   side's own parser ([`crate::boot::cmdline`]): the first `composefs.digest=` or `composefs=` parameter
//!   on the command line (kernel word splitting), with later ones reported as
//!   ignored, `?`-prefixed ("insecure") values refused.

use std::fmt;

use object::pe::{ImageDosHeader, ImageNtHeaders32, ImageNtHeaders64, ImageSectionHeader};
use object::read::pe::{ImageNtHeaders, SectionTable};
use object::{LittleEndian as LE, ReadRef};

use crate::boot::cmdline::{CmdlineError, DigestKey};
use crate::digest::Digest;

/// The PE specification's limit on the number of sections.
pub const MAX_SECTIONS: usize = 96;

/// Longest long section name shown, in bytes.
const MAX_NAME: usize = 256;

/// The PE structure `object` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeStructure {
    /// The 64-byte DOS header and its `MZ` magic.
    DosHeader,
    /// The `PE\0\0` signature, COFF header and optional header.
    NtHeaders,
    /// The section table.
    SectionTable,
}

impl fmt::Display for PeStructure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeStructure::DosHeader => "DOS header",
            PeStructure::NtHeaders => "PE headers",
            PeStructure::SectionTable => "section table",
        })
    }
}

/// Why a file is not a well-formed PE image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeError {
    /// `object` refused a header structure (bad magic or signature, too
    /// small, or running past the end of the file).
    Malformed {
        structure: PeStructure,
        error: object::read::Error,
    },
    /// The file ends before a header structure it declares.
    Truncated {
        structure: PeStructure,
        needed: u64,
        file_len: usize,
    },
    /// The optional header magic is neither PE32 nor PE32+.
    BadOptionalMagic { found: u16 },
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
            PeError::Malformed { structure, error } => {
                write!(f, "not a well-formed PE file: {structure}: {error}")
            }
            PeError::Truncated {
                structure,
                needed,
                file_len,
            } => write!(
                f,
                "truncated PE file: its {structure} end at byte {needed}, the file has {file_len} bytes"
            ),
            PeError::BadOptionalMagic { found } => write!(
                f,
                "PE optional header magic is {found:#x}, expected 0x10b (PE32) or 0x20b (PE32+)"
            ),
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
    /// Bytes of content in the file: raw data cut to the virtual size
    /// (`object`'s `pe_file_range`).
    pub fn content_len(&self) -> u32 {
        self.virtual_size.min(self.raw_size)
    }
}

/// A parsed PE image borrowing the file's bytes.
#[derive(Debug, Clone)]
pub struct PeFile<'a> {
    data: &'a [u8],
    table: SectionTable<'a>,
    pub machine: u16,
    /// PE32+ (64-bit optional header).
    pub pe32_plus: bool,
    pub sections: Vec<Section>,
}

fn malformed(structure: PeStructure) -> impl FnOnce(object::read::Error) -> PeError {
    move |error| PeError::Malformed { structure, error }
}

/// Where the headers a well-formed PE declares end, checked against the
/// file's length before `object` reads them, so that a cut-off file is
/// reported as truncated (object only says the structure is invalid).
/// Reads `e_lfanew`, `NumberOfSections` and `SizeOfOptionalHeader`.
fn check_not_truncated(data: &[u8]) -> Result<(), PeError> {
    let len = data.len();
    let truncated = |structure, needed: u64| PeError::Truncated {
        structure,
        needed,
        file_len: len,
    };
    let le16 = |at: u64| -> Option<u64> {
        let at = usize::try_from(at).ok()?;
        let b = data.get(at..at.checked_add(2)?)?;
        Some(u64::from(u16::from_le_bytes([b[0], b[1]])))
    };
    const DOS_HEADER: u64 = 64;
    if (len as u64) < DOS_HEADER || data.get(..2) != Some(b"MZ") {
        // Too short, or not a PE at all: object names which.
        return if (len as u64) < DOS_HEADER && data.starts_with(b"MZ") {
            Err(truncated(PeStructure::DosHeader, DOS_HEADER))
        } else {
            Ok(())
        };
    }
    let nt = u64::from(u32::from_le_bytes([
        data[0x3c], data[0x3d], data[0x3e], data[0x3f],
    ]));
    // Signature (4) and COFF file header (20).
    let coff_end = nt + 24;
    let (Some(sections), Some(optional)) = (le16(nt + 6), le16(nt + 20)) else {
        return Err(truncated(PeStructure::NtHeaders, coff_end));
    };
    let optional_end = coff_end + optional;
    if (len as u64) < optional_end {
        return Err(truncated(PeStructure::NtHeaders, optional_end));
    }
    let table_end = optional_end + 40 * sections;
    // Over the section limit is its own error (parse_as).
    if sections as usize <= MAX_SECTIONS && (len as u64) < table_end {
        return Err(truncated(PeStructure::SectionTable, table_end));
    }
    Ok(())
}

/// Parse the headers and section table of a PE file.
pub fn parse_pe(data: &[u8]) -> Result<PeFile<'_>, PeError> {
    check_not_truncated(data)?;
    let dos = object::pe::ImageDosHeader::parse(data).map_err(malformed(PeStructure::DosHeader))?;
    // The optional header's magic picks the header layout.
    let magic =
        object::read::pe::optional_header_magic(data).map_err(malformed(PeStructure::NtHeaders))?;
    match magic {
        object::pe::IMAGE_NT_OPTIONAL_HDR32_MAGIC => parse_as::<ImageNtHeaders32>(data, dos),
        object::pe::IMAGE_NT_OPTIONAL_HDR64_MAGIC => parse_as::<ImageNtHeaders64>(data, dos),
        found => Err(PeError::BadOptionalMagic { found }),
    }
}

fn parse_as<'a, Pe: ImageNtHeaders>(
    data: &'a [u8],
    dos: &ImageDosHeader,
) -> Result<PeFile<'a>, PeError> {
    let mut offset = u64::from(dos.nt_headers_offset());
    let (nt, _) = Pe::parse(data, &mut offset).map_err(malformed(PeStructure::NtHeaders))?;
    let header = nt.file_header();
    let count = header.number_of_sections.get(LE);
    if count == 0 {
        return Err(PeError::NoSections);
    }
    if usize::from(count) > MAX_SECTIONS {
        return Err(PeError::TooManySections { count });
    }
    let table = nt
        .sections(data, offset)
        .map_err(malformed(PeStructure::SectionTable))?;
    // As object's PeFile does: a broken COFF symbol table (deprecated in
    // images) means no long names, not a broken file.
    let strings = nt.symbols(data).map(|s| s.strings()).unwrap_or_default();

    let mut sections = Vec::with_capacity(table.len());
    for raw in table.iter() {
        // A long name object cannot resolve is shown in its raw form.
        let name = raw.name(strings).unwrap_or_else(|_| raw.raw_name());
        let name = printable(&name[..name.len().min(MAX_NAME)]);
        let section = Section {
            name,
            virtual_size: raw.virtual_size.get(LE),
            virtual_address: raw.virtual_address.get(LE),
            raw_size: raw.size_of_raw_data.get(LE),
            raw_offset: raw.pointer_to_raw_data.get(LE),
            characteristics: raw.characteristics.get(LE).0,
        };
        // object checks only the range it reads (cut to VirtualSize); the
        // whole raw extent must be in the file, or the file is truncated.
        if section.raw_size != 0
            && data
                .read_bytes_at(u64::from(section.raw_offset), u64::from(section.raw_size))
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
        table,
        machine: header.machine.get(LE).0,
        pe32_plus: nt.is_type_64(),
        sections,
    })
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
    /// The first section with this name, and its header.
    fn find(&self, name: &str) -> Option<(&Section, &'a ImageSectionHeader)> {
        self.sections
            .iter()
            .zip(self.table.iter())
            .find(|(s, _)| s.name == name)
    }

    /// The first section with this name.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.find(name).map(|(s, _)| s)
    }

    /// A section's content bytes (see [`Section::content_len`]); empty for a
    /// section not of this file.
    pub fn content(&self, section: &Section) -> &'a [u8] {
        self.sections
            .iter()
            .zip(self.table.iter())
            .find(|(s, _)| *s == section)
            .and_then(|(_, raw)| raw.pe_data(self.data).ok())
            .unwrap_or(&[])
    }

    /// A text section, trailing NULs and whitespace removed. `Ok(None)` if
    /// the section is absent.
    pub fn text(&self, name: &str) -> Result<Option<String>, PeError> {
        let Some((_, raw)) = self.find(name) else {
            return Ok(None);
        };
        // In bounds: parse_pe checked the whole raw extent.
        let bytes = raw.pe_data(self.data).unwrap_or(&[]);
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

    /// The structure a truncation names.
    fn truncated(err: PeError) -> PeStructure {
        match err {
            PeError::Truncated { structure, .. } => structure,
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    /// The structure and message of an error object reported.
    fn malformed(err: PeError) -> (PeStructure, String) {
        match err {
            PeError::Malformed { structure, error } => (structure, error.to_string()),
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn every_truncation_fails_typed() {
        let pe = tiny_pe(&[(b".cmdline", b"quiet"), (b".linux\0\0", &[1; 10])]);
        assert!(parse_pe(&pe).is_ok());
        // Where the section table (two entries) ends in tiny_pe.
        let nt = u32::from_le_bytes(pe[0x3c..0x40].try_into().unwrap()) as usize;
        let optional = u16::from_le_bytes(pe[nt + 20..nt + 22].try_into().unwrap()) as usize;
        let headers_end = nt + 24 + optional + 2 * 40;
        for len in 0..pe.len() {
            let err = parse_pe(&pe[..len]).unwrap_err();
            match len {
                // Not even "MZ": object's own DOS header error.
                0 | 1 => assert_eq!(malformed(err).0, PeStructure::DosHeader, "len {len}"),
                2..=63 => assert_eq!(truncated(err), PeStructure::DosHeader, "len {len}"),
                // Every cut inside the headers is named a truncation.
                _ if len < headers_end => {
                    assert!(
                        matches!(err, PeError::Truncated { .. }),
                        "len {len}: {err:?}"
                    )
                }
                _ => assert!(
                    matches!(err, PeError::SectionOutOfBounds { .. }),
                    "len {len}: {err:?}"
                ),
            }
        }
        assert!(parse_pe(&pe[..300.min(headers_end - 1)])
            .unwrap_err()
            .to_string()
            .starts_with("truncated PE file"));
    }

    #[test]
    fn hostile_headers_fail_typed() {
        let good = tiny_pe(&[(b".cmdline", b"quiet")]);
        let mut pe = good.clone();
        pe[0] = b'Z';
        assert_eq!(
            malformed(parse_pe(&pe).unwrap_err()),
            (PeStructure::DosHeader, "Invalid DOS magic".into())
        );
        // e_lfanew far past the end.
        let mut pe = good.clone();
        pe[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            truncated(parse_pe(&pe).unwrap_err()),
            PeStructure::NtHeaders
        );
        let mut pe = good.clone();
        pe[0x42] = b'X';
        assert_eq!(
            malformed(parse_pe(&pe).unwrap_err()),
            (PeStructure::NtHeaders, "Invalid PE magic".into())
        );
        let mut pe = good.clone();
        pe[0x58] = 0x07;
        assert_eq!(
            parse_pe(&pe).unwrap_err(),
            PeError::BadOptionalMagic { found: 0x207 }
        );
        // Smaller than PE32+'s fixed optional header fields (112 bytes).
        let mut pe = good.clone();
        pe[0x54..0x56].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(
            malformed(parse_pe(&pe).unwrap_err()),
            (
                PeStructure::NtHeaders,
                "PE optional header size is too small".into()
            )
        );
        // Larger than the file.
        let mut pe = good.clone();
        pe[0x54..0x56].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            truncated(parse_pe(&pe).unwrap_err()),
            PeStructure::NtHeaders
        );
        let mut pe = good.clone();
        pe[0x46..0x48].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(parse_pe(&pe).unwrap_err(), PeError::NoSections);
        let mut pe = good.clone();
        pe[0x46..0x48].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            parse_pe(&pe).unwrap_err(),
            PeError::TooManySections { count: u16::MAX }
        );
        // 60 declared sections do not fit before the end of the file.
        let mut pe = good.clone();
        pe[0x46..0x48].copy_from_slice(&60u16.to_le_bytes());
        assert_eq!(
            truncated(parse_pe(&pe).unwrap_err()),
            PeStructure::SectionTable
        );
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

    /// The loader sees `VirtualSize` bytes of a section, never more than its
    /// raw data: the padding up to the file alignment is not content.
    #[test]
    fn content_is_cut_to_virtual_size() {
        let good = tiny_pe(&[(b".cmdline", b"quiet splash"), (b".linux\0\0", &[7; 3])]);
        let sec = 0x58 + 112;
        let set_vsize = |pe: &mut Vec<u8>, v: u32| {
            pe[sec + 8..sec + 12].copy_from_slice(&v.to_le_bytes());
        };
        let pe = parse_pe(&good).unwrap();
        assert_eq!(pe.sections[0].raw_size, 512);
        assert_eq!(pe.content(&pe.sections[0]), b"quiet splash");
        assert_eq!(pe.content(&pe.sections[1]), &[7; 3]);

        // VirtualSize < the text: the rest of the raw data is not seen.
        let mut cut = good.clone();
        set_vsize(&mut cut, 5);
        assert_eq!(inspect(&cut).unwrap().cmdline.as_deref(), Some("quiet"));
        // VirtualSize > SizeOfRawData: only the raw data is in the file.
        let mut big = good.clone();
        set_vsize(&mut big, 4096);
        let pe = parse_pe(&big).unwrap();
        assert_eq!(pe.sections[0].content_len(), 512);
        assert_eq!(pe.content(&pe.sections[0]).len(), 512);
        // VirtualSize 0: nothing is loaded.
        let mut empty = good.clone();
        set_vsize(&mut empty, 0);
        assert_eq!(inspect(&empty).unwrap().cmdline.as_deref(), Some(""));
    }

    /// Multi-profile UKIs repeat sections after `.profile`; the first
    /// occurrence is the base profile's.
    #[test]
    fn first_occurrence_is_the_base_profile() {
        let pe = tiny_pe(&[
            (b".cmdline", b"base"),
            (b".linux\0\0", &[1; 4]),
            (b".profile", b"ID=second"),
            (b".cmdline", b"second"),
        ]);
        let info = inspect(&pe).unwrap();
        assert_eq!(info.cmdline.as_deref(), Some("base"));
        let parsed = parse_pe(&pe).unwrap();
        assert_eq!(parsed.content(&parsed.sections[3]), b"second");
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
        // Without a string table the long name stays in its raw form.
        pe[0x4c..0x50].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(parse_pe(&pe).unwrap().sections[0].name, "/4");
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
