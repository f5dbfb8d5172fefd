//! Boot counting on an EFI system partition, as systemd-boot implements the
//! Boot Loader Specification's "automatic boot assessment", and staging a
//! UKI under such a name.
//!
//! A Type #2 entry is a UKI in `ESP/EFI/Linux/`. Its file name may carry a
//! counter just before `.efi`: `NAME+LEFT.efi` or `NAME+LEFT-DONE.efi`
//! (decimal). Before starting such an entry, systemd-boot renames it to
//! `NAME+(LEFT-1)-(DONE+1).efi` and tells the booted system the new path in
//! the `LoaderBootCountPath` EFI variable; `systemd-bless-boot` renames it to
//! `NAME.efi` once the boot is judged good. An entry with `LEFT` = 0 is
//! "bad": systemd-boot sorts it after every other entry, so the default
//! falls back to the next one by itself. An entry without a counter is
//! "good" (never counted). `NAME.efi` identifies the entry in every state.
//!
//! [`stage`] writes a new UKI onto the ESP so that a crash leaves either no
//! entry or the complete one: a temporary name systemd-boot does not list,
//! `fsync`, `rename`, `fsync` of the directory.
//!
//! Type #1 entries (`ESP/loader/entries/NAME[+LEFT[-DONE]].conf`) carry the
//! same counter grammar; [`EntryName::parse_type1`] and [`type1_entries`]
//! read them (`sealroot::oci::update` writes them).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::image::fileio;

/// Where Type #2 entries live, relative to the ESP's root.
pub const TYPE2_DIR: &str = "EFI/Linux";

/// Where Type #1 entries (`*.conf`) live, relative to the ESP's root.
pub const TYPE1_DIR: &str = "loader/entries";

/// Longest accepted entry name (without counter and `.efi`); FAT long names
/// go to 255 UTF-16 units, leaving room for the counter and suffix.
pub const MAX_NAME: usize = 200;

/// One Type #2 entry file name, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    /// The name without counter and suffix: the entry is `<stem>.efi`.
    pub stem: String,
    /// Tries left, when the name carries a counter.
    pub left: Option<u32>,
    /// Tries done, when the counter has that part.
    pub done: Option<u32>,
}

/// What the counter says about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// No counter: blessed (or never counted).
    Good,
    /// Counter with tries left: being tried.
    Trying,
    /// Counter at zero tries left: systemd-boot sorts it last.
    Bad,
}

impl fmt::Display for EntryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryState::Good => "good",
            EntryState::Trying => "trying",
            EntryState::Bad => "bad",
        })
    }
}

impl EntryName {
    /// Parse a file name of `EFI/Linux/`. `None` for names that are not
    /// `*.efi` (systemd-boot ignores those). A `+` part that is not a
    /// well-formed counter is kept in the stem, as systemd-boot does.
    pub fn parse(file_name: &str) -> Option<EntryName> {
        Self::parse_base(strip_suffix_ci(file_name, ".efi")?)
    }

    /// Parse a file name of `loader/entries/` (a Type #1 entry): `*.conf`,
    /// the same counter grammar as [`EntryName::parse`].
    pub fn parse_type1(file_name: &str) -> Option<EntryName> {
        Self::parse_base(strip_suffix_ci(file_name, ".conf")?)
    }

    /// The Type #1 file name this entry has now (`<stem>[+L[-D]].conf`).
    pub fn type1_file_name(&self) -> String {
        let efi = self.file_name();
        format!("{}.conf", &efi[..efi.len() - 4])
    }

    /// A Type #1 entry's identity, the same in every counter state
    /// (`<stem>.conf`).
    pub fn type1_id(&self) -> String {
        format!("{}.conf", self.stem)
    }

    fn parse_base(base: &str) -> Option<EntryName> {
        if base.is_empty() || base.starts_with('.') {
            return None;
        }
        if let Some((stem, counter)) = base.rsplit_once('+') {
            let (left, done) = match counter.split_once('-') {
                Some((l, d)) => (l, Some(d)),
                None => (counter, None),
            };
            if let Some(left) = decimal(left) {
                let done = match done {
                    None => Some(None),
                    Some(d) => decimal(d).map(Some),
                };
                if let Some(done) = done {
                    if !stem.is_empty() {
                        return Some(EntryName {
                            stem: stem.to_string(),
                            left: Some(left),
                            done,
                        });
                    }
                }
            }
        }
        Some(EntryName {
            stem: base.to_string(),
            left: None,
            done: None,
        })
    }

    /// The file name this entry has now.
    pub fn file_name(&self) -> String {
        match (self.left, self.done) {
            (Some(l), Some(d)) => format!("{}+{l}-{d}.efi", self.stem),
            (Some(l), None) => format!("{}+{l}.efi", self.stem),
            _ => format!("{}.efi", self.stem),
        }
    }

    /// The entry's identity, the same in every counter state: the name
    /// without counter. (systemd-boot 254 reports the file name as found,
    /// counter included, in `LoaderEntrySelected`; later versions report this.)
    pub fn id(&self) -> String {
        format!("{}.efi", self.stem)
    }

    pub fn state(&self) -> EntryState {
        match self.left {
            None => EntryState::Good,
            Some(0) => EntryState::Bad,
            Some(_) => EntryState::Trying,
        }
    }
}

/// `suffix` (`.efi`, `.conf`) in any case (FAT names are case-insensitive;
/// systemd-boot compares the suffix case-insensitively too).
fn strip_suffix_ci<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = name.len().checked_sub(suffix.len())?;
    if !name.is_char_boundary(cut) || !name[cut..].eq_ignore_ascii_case(suffix) {
        return None;
    }
    Some(&name[..cut])
}

fn decimal(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Why staging (or listing) failed.
#[derive(Debug)]
pub enum StageError {
    /// The entry name is empty, too long, or has a character outside
    /// `[A-Za-z0-9._-]` (a `+` would be read as a counter), or starts with `.`.
    BadName(String),
    /// `--tries 0` would stage an entry that is bad from the start.
    ZeroTries,
    /// An entry with this identity is already on the ESP (in some state).
    Exists(PathBuf),
    /// A filesystem operation failed.
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    /// Writing the entry failed (see [`fileio`]).
    File(fileio::FileIoError),
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageError::BadName(n) => write!(
                f,
                "entry name {n:?} is not usable: 1 to {MAX_NAME} characters of \
                 [A-Za-z0-9._-], not starting with '.' (no '+': it starts a boot counter)"
            ),
            StageError::ZeroTries => write!(
                f,
                "--tries 0 would stage an entry that systemd-boot treats as bad from the start"
            ),
            StageError::Exists(p) => write!(
                f,
                "an entry with this name is already on the ESP: {} (remove it first, or pick another name)",
                p.display()
            ),
            StageError::File(e) => e.fmt(f),
            StageError::Io { op, path, error } => {
                write!(f, "{op} {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for StageError {}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StageError {
    let path = path.to_path_buf();
    move |error| StageError::Io { op, path, error }
}

/// Check an entry name (the stem, without counter and `.efi`).
pub fn check_stem(stem: &str) -> Result<(), StageError> {
    let ok = !stem.is_empty()
        && stem.len() <= MAX_NAME
        && !stem.starts_with('.')
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StageError::BadName(stem.to_string()))
    }
}

/// The Type #2 entries in `ESP/EFI/Linux/`, sorted by file name, with their
/// current file names. A missing directory is an empty list.
pub fn entries(esp: &Path) -> Result<Vec<(EntryName, PathBuf)>, StageError> {
    list(&esp.join(TYPE2_DIR), EntryName::parse)
}

/// The Type #1 entries in `ESP/loader/entries/`, as [`entries`] lists the
/// Type #2 ones.
pub fn type1_entries(esp: &Path) -> Result<Vec<(EntryName, PathBuf)>, StageError> {
    list(&esp.join(TYPE1_DIR), EntryName::parse_type1)
}

fn list(
    dir: &Path,
    parse: fn(&str) -> Option<EntryName>,
) -> Result<Vec<(EntryName, PathBuf)>, StageError> {
    let dir = dir.to_path_buf();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(io_err("list", &dir))?;
        let ft = ent.file_type().map_err(io_err("stat", &ent.path()))?;
        if !ft.is_file() {
            continue;
        }
        if let Some(name) = ent.file_name().to_str().and_then(parse) {
            out.push((name, ent.path()));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Write DATA (a UKI) as `ESP/EFI/Linux/<stem>[+<tries>].efi`, atomically:
/// into a `.tmp-sealctl-<pid>-<n>` temporary (not `*.efi`, so never listed
/// as an entry), `fsync`, rename to the final name, `fsync` the directory
/// ([`fileio::write_atomic`]). Refused when an
/// entry with the same identity exists in any counter state. Returns the
/// final path.
pub fn stage(
    esp: &Path,
    stem: &str,
    tries: Option<u32>,
    data: &[u8],
) -> Result<PathBuf, StageError> {
    check_stem(stem)?;
    if tries == Some(0) {
        return Err(StageError::ZeroTries);
    }
    let dir = esp.join(TYPE2_DIR);
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    for (name, path) in entries(esp)? {
        if name.stem.eq_ignore_ascii_case(stem) {
            return Err(StageError::Exists(path));
        }
    }
    let name = EntryName {
        stem: stem.to_string(),
        left: tries,
        done: None,
    };
    let dst = dir.join(name.file_name());
    // The tool's one atomic write: a `.tmp-sealctl-…` temporary (never
    // `*.efi`, so never listed as an entry), fsync, rename, directory fsync;
    // no chmod (FAT fixes the bits by mount options). Temporaries a killed
    // run left are removed first.
    fileio::remove_stale_temps(&dir).map_err(StageError::File)?;
    fileio::write_atomic(&dst, data, None).map_err(StageError::File)?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(stem: &str, left: Option<u32>, done: Option<u32>) -> EntryName {
        EntryName {
            stem: stem.into(),
            left,
            done,
        }
    }

    #[test]
    fn parses_counters() {
        assert_eq!(
            EntryName::parse("os-2+3.efi"),
            Some(n("os-2", Some(3), None))
        );
        assert_eq!(
            EntryName::parse("os-2+1-2.efi"),
            Some(n("os-2", Some(1), Some(2)))
        );
        assert_eq!(
            EntryName::parse("os-2+0-3.EFI"),
            Some(n("os-2", Some(0), Some(3)))
        );
        assert_eq!(EntryName::parse("os-2.efi"), Some(n("os-2", None, None)));
        assert_eq!(EntryName::parse("os-2.conf"), None);
        assert_eq!(EntryName::parse(".os-2.efi.staging"), None);
        assert_eq!(EntryName::parse(".efi"), None);
    }

    #[test]
    fn type1_names() {
        let e = EntryName::parse_type1("os-2+1-2.conf").unwrap();
        assert_eq!(e, n("os-2", Some(1), Some(2)));
        assert_eq!(e.type1_file_name(), "os-2+1-2.conf");
        assert_eq!(e.type1_id(), "os-2.conf");
        assert_eq!(
            EntryName::parse_type1("os-2.CONF"),
            Some(n("os-2", None, None))
        );
        assert_eq!(EntryName::parse_type1("os-2.efi"), None);
        assert_eq!(EntryName::parse_type1(".tmp-sealctl-1-2"), None);
        let esp = tempfile::tempdir().unwrap();
        let dir = esp.path().join(TYPE1_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["b+3.conf", "a.conf", "x.efi", ".tmp-sealctl-1-1"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let listed: Vec<_> = type1_entries(esp.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| (n.type1_file_name(), n.state()))
            .collect();
        assert_eq!(
            listed,
            [
                ("a.conf".to_string(), EntryState::Good),
                ("b+3.conf".to_string(), EntryState::Trying)
            ]
        );
    }

    #[test]
    fn malformed_counter_stays_in_the_name() {
        assert_eq!(EntryName::parse("a+b.efi"), Some(n("a+b", None, None)));
        assert_eq!(EntryName::parse("a+1-.efi"), Some(n("a+1-", None, None)));
        assert_eq!(EntryName::parse("+1.efi"), Some(n("+1", None, None)));
        assert_eq!(EntryName::parse("a+-1.efi"), Some(n("a+-1", None, None)));
    }

    #[test]
    fn states_and_names_round_trip() {
        for f in ["x+2.efi", "x+1-1.efi", "x+0-2.efi", "x.efi"] {
            assert_eq!(EntryName::parse(f).unwrap().file_name(), f);
            assert_eq!(EntryName::parse(f).unwrap().id(), "x.efi");
        }
        assert_eq!(
            EntryName::parse("x+0-2.efi").unwrap().state(),
            EntryState::Bad
        );
        assert_eq!(
            EntryName::parse("x+1-1.efi").unwrap().state(),
            EntryState::Trying
        );
        assert_eq!(EntryName::parse("x.efi").unwrap().state(), EntryState::Good);
    }

    #[test]
    fn stems_checked() {
        assert!(check_stem("sealroot-2.0_b").is_ok());
        for bad in ["", ".x", "a+b", "a/b", "a b", &"x".repeat(MAX_NAME + 1)] {
            assert!(check_stem(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stage_writes_atomically_and_refuses_duplicates() {
        let esp = tempfile::tempdir().unwrap();
        let p = stage(esp.path(), "os-2", Some(3), b"uki").unwrap();
        assert_eq!(p, esp.path().join("EFI/Linux/os-2+3.efi"));
        assert_eq!(std::fs::read(&p).unwrap(), b"uki");
        let names: Vec<_> = std::fs::read_dir(esp.path().join(TYPE2_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["os-2+3.efi"]);
        // Same identity in another counter state: refused.
        std::fs::rename(&p, esp.path().join("EFI/Linux/os-2+0-3.efi")).unwrap();
        assert!(matches!(
            stage(esp.path(), "OS-2", None, b"x"),
            Err(StageError::Exists(_))
        ));
        assert!(matches!(
            stage(esp.path(), "os-3", Some(0), b"x"),
            Err(StageError::ZeroTries)
        ));
        let p = stage(esp.path(), "os-1", None, b"a").unwrap();
        assert_eq!(p, esp.path().join("EFI/Linux/os-1.efi"));
        let listed: Vec<_> = entries(esp.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| (n.id(), n.state()))
            .collect();
        assert_eq!(
            listed,
            [
                ("os-1.efi".to_string(), EntryState::Good),
                ("os-2.efi".to_string(), EntryState::Bad)
            ]
        );
    }
}
