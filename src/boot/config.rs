//! The initramfs configuration file, `/etc/sealroot/config.json`.
//!
//! Contract:
//! - The file is optional. Absent: every setting has its default. Present:
//!   it must be a JSON object of at most [`MAX_CONFIG`] bytes with only the
//!   fields below (unknown fields are refused, so a typo never silently
//!   leaves a default in force). An unreadable or invalid file stops the boot.
//! - It lives in the initramfs, which a UKI signs along with the kernel, so
//!   it may set what the command line may not: the failure policy, the serial
//!   floor (raising the compiled-in one, never lowering it) and the `/etc`
//!   and `/var` modes.
//!
//! ```json
//! { "digest": "v1-sha256-12:<hex>", "failure": "halt", "serial_floor": 0,
//!   "etc": "persistent", "var": "bind", "var_noexec": false }
//! ```
//!
//! - `etc` and `var` are the unverified, local part of the system: whatever
//!   their state directories hold is trusted by the sealed OS (units,
//!   `ld.so.preload`, fstab...). They are mounted `nosuid,nodev`
//!   (`var_noexec` adds `noexec` to `/var`); `etc: transient` + `var: none`
//!   keeps nothing from the disk.
//!
//! - `digest` (optional): the composefs-rs grammar, or bare hex. If the
//!   command line also names a digest the two must be equal
//!   ([`select_digest`]), otherwise the boot is refused.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::digest::{Digest, DigestParseError};

/// Where PID 1 and `prepare` look for the file.
pub const CONFIG_PATH: &str = "/etc/sealroot/config.json";

/// Largest accepted config file.
pub const MAX_CONFIG: u64 = 64 * 1024;

/// What to do as PID 1 after a refusal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Repeat the message on the console, then power off.
    #[default]
    Halt,
    /// Repeat the message, then reboot.
    Reboot,
    /// Exec `/bin/sh` if the initramfs has one (else halt).
    Shell,
}

/// How `/etc` is provided in the composed root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EtcMode {
    /// Overlay: image `/etc` below, `state/deploy/<hex>/etc/upper` above.
    #[default]
    Persistent,
    /// Overlay with a tmpfs upper: changes vanish at shutdown.
    Transient,
    /// Bind mount `state/deploy/<hex>/etc/upper` over `/etc`.
    Bind,
    /// The image's `/etc`, read-only.
    None,
}

/// How `/var` is provided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarMode {
    /// Bind mount `state/deploy/<hex>/var` over `/var`.
    #[default]
    Bind,
    /// The image's `/var`, read-only.
    None,
}

impl EtcMode {
    pub fn name(self) -> &'static str {
        match self {
            EtcMode::Persistent => "persistent",
            EtcMode::Transient => "transient",
            EtcMode::Bind => "bind",
            EtcMode::None => "none",
        }
    }
}

impl VarMode {
    pub fn name(self) -> &'static str {
        match self {
            VarMode::Bind => "bind",
            VarMode::None => "none",
        }
    }
}

impl FailurePolicy {
    pub fn name(self) -> &'static str {
        match self {
            FailurePolicy::Halt => "halt",
            FailurePolicy::Reboot => "reboot",
            FailurePolicy::Shell => "shell",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    digest: Option<String>,
    #[serde(default)]
    failure: FailurePolicy,
    #[serde(default)]
    serial_floor: u64,
    #[serde(default)]
    etc: EtcMode,
    #[serde(default)]
    var: VarMode,
    #[serde(default)]
    var_noexec: bool,
}

/// The parsed config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub digest: Option<Digest>,
    pub failure: FailurePolicy,
    pub serial_floor: u64,
    pub etc: EtcMode,
    pub var: VarMode,
    /// Mount the `/var` bind `noexec` too (it is always `nosuid,nodev`).
    pub var_noexec: bool,
}

#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: String,
        error: std::io::Error,
    },
    TooLarge {
        path: String,
        max: u64,
    },
    Invalid {
        path: String,
        error: String,
    },
    BadDigest {
        path: String,
        error: DigestParseError,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => write!(f, "cannot read config {path}: {error}"),
            ConfigError::TooLarge { path, max } => {
                write!(f, "config {path} is larger than {max} bytes")
            }
            ConfigError::Invalid { path, error } => write!(f, "invalid config {path}: {error}"),
            ConfigError::BadDigest { path, error } => {
                write!(f, "config {path} has a malformed digest: {error}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parse config bytes; `path` only names the file in errors.
pub fn parse(bytes: &[u8], path: &str) -> Result<Config, ConfigError> {
    if bytes.len() as u64 > MAX_CONFIG {
        return Err(ConfigError::TooLarge {
            path: path.to_string(),
            max: MAX_CONFIG,
        });
    }
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| ConfigError::Invalid {
        path: path.to_string(),
        error: e.to_string(),
    })?;
    let digest = match raw.digest.as_deref() {
        None => None,
        Some(text) => Some(
            Digest::parse_user(text).map_err(|error| ConfigError::BadDigest {
                path: path.to_string(),
                error,
            })?,
        ),
    };
    Ok(Config {
        digest,
        failure: raw.failure,
        serial_floor: raw.serial_floor,
        etc: raw.etc,
        var: raw.var,
        var_noexec: raw.var_noexec,
    })
}

/// Load the config at `path`: `Ok(None)` if there is no such file.
pub fn load(path: &Path) -> Result<Option<Config>, ConfigError> {
    let name = path.display().to_string();
    let bytes = match crate::boot::io::read_file_limited(path, MAX_CONFIG as usize) {
        Ok(b) => b,
        Err(Some(rustix::io::Errno::NOENT)) => return Ok(None),
        Err(Some(errno)) => {
            return Err(ConfigError::Read {
                path: name,
                error: std::io::Error::from_raw_os_error(errno.raw_os_error()),
            })
        }
        Err(None) => {
            return Err(ConfigError::TooLarge {
                path: name,
                max: MAX_CONFIG,
            })
        }
    };
    parse(&bytes, &name).map(Some)
}

/// Where the digest in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestSource {
    Cmdline,
    Config,
    /// Both named it, identically.
    Both,
}

impl DigestSource {
    pub fn name(self) -> &'static str {
        match self {
            DigestSource::Cmdline => "kernel command line",
            DigestSource::Config => "initramfs config",
            DigestSource::Both => "kernel command line and initramfs config",
        }
    }
}

/// Why no single digest could be chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectError {
    /// Neither source names a digest.
    NoDigest,
    /// Both do, and they differ.
    Conflict {
        cmdline: Box<Digest>,
        config: Box<Digest>,
    },
}

impl fmt::Display for SelectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectError::NoDigest => write!(
                f,
                "no composefs.digest= on the kernel command line and no digest in {CONFIG_PATH}"
            ),
            SelectError::Conflict { cmdline, config } => write!(
                f,
                "kernel command line names {} but {CONFIG_PATH} names {}",
                cmdline.to_composefs(),
                config.to_composefs()
            ),
        }
    }
}

impl std::error::Error for SelectError {}

/// The one digest to boot: from the command line, the config, or both if
/// they agree exactly (algorithm and every byte).
pub fn select_digest(
    cmdline: Option<Digest>,
    config: Option<Digest>,
) -> Result<(Digest, DigestSource), SelectError> {
    match (cmdline, config) {
        (None, None) => Err(SelectError::NoDigest),
        (Some(d), None) => Ok((d, DigestSource::Cmdline)),
        (None, Some(d)) => Ok((d, DigestSource::Config)),
        (Some(a), Some(b)) if a == b => Ok((a, DigestSource::Both)),
        (Some(cmdline), Some(config)) => Err(SelectError::Conflict {
            cmdline: Box::new(cmdline),
            config: Box::new(config),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::HashAlgorithm;

    const A: &str = "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95";

    #[test]
    fn defaults() {
        let c = parse(b"{}", "t").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.failure, FailurePolicy::Halt);
        assert_eq!(c.etc, EtcMode::Persistent);
        assert_eq!(c.var, VarMode::Bind);
        assert_eq!(c.serial_floor, 0);
    }

    #[test]
    fn all_fields() {
        let text = format!(
            r#"{{"digest":"v1-sha256-12:{A}","failure":"shell","serial_floor":7,"etc":"transient","var":"none"}}"#
        );
        let c = parse(text.as_bytes(), "t").unwrap();
        assert_eq!(c.digest.unwrap().to_hex(), A);
        assert_eq!(c.failure, FailurePolicy::Shell);
        assert_eq!(c.serial_floor, 7);
        assert_eq!(c.etc, EtcMode::Transient);
        assert_eq!(c.var, VarMode::None);
        let bare = format!(r#"{{"digest":"{A}"}}"#);
        assert_eq!(
            parse(bare.as_bytes(), "t")
                .unwrap()
                .digest
                .unwrap()
                .algorithm(),
            HashAlgorithm::Sha256
        );
    }

    #[test]
    fn strict() {
        for bad in [
            &br#"{"failur":"halt"}"#[..],
            br#"{"failure":"Halt"}"#,
            br#"{"etc":"overlay"}"#,
            br#"{"serial_floor":-1}"#,
            br#"{"serial_floor":"1"}"#,
            br#"[]"#,
            b"",
            br#"{} {}"#,
            br#"{"digest":null,"digest":null}"#,
        ] {
            assert!(
                matches!(parse(bad, "t"), Err(ConfigError::Invalid { .. })),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse(br#"{"digest":"v1-sha256-12:abc"}"#, "t"),
            Err(ConfigError::BadDigest { .. })
        ));
        assert!(matches!(
            parse(format!(r#"{{"digest":"?{A}"}}"#).as_bytes(), "t"),
            Err(ConfigError::BadDigest { .. })
        ));
        let big = vec![b' '; MAX_CONFIG as usize + 1];
        assert!(matches!(
            parse(&big, "t"),
            Err(ConfigError::TooLarge { .. })
        ));
    }

    #[test]
    fn load_missing_and_present() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(&dir.path().join("nope.json")).unwrap(), None);
        let p = dir.path().join("c.json");
        std::fs::write(&p, br#"{"failure":"reboot"}"#).unwrap();
        assert_eq!(load(&p).unwrap().unwrap().failure, FailurePolicy::Reboot);
        std::fs::write(&p, vec![b' '; MAX_CONFIG as usize + 10]).unwrap();
        assert!(matches!(load(&p), Err(ConfigError::TooLarge { .. })));
    }

    #[test]
    fn digest_selection() {
        let a = Digest::parse_hex_any(A).unwrap();
        let b = Digest::parse_hex_any(&"ab".repeat(32)).unwrap();
        let a512 = Digest::parse_hex_any(&format!("{A}{A}")).unwrap();
        assert_eq!(select_digest(None, None), Err(SelectError::NoDigest));
        assert_eq!(select_digest(Some(a), None), Ok((a, DigestSource::Cmdline)));
        assert_eq!(select_digest(None, Some(b)), Ok((b, DigestSource::Config)));
        assert_eq!(select_digest(Some(a), Some(a)), Ok((a, DigestSource::Both)));
        assert_eq!(
            select_digest(Some(a), Some(b)),
            Err(SelectError::Conflict {
                cmdline: Box::new(a),
                config: Box::new(b)
            })
        );
        assert!(select_digest(Some(a), Some(a512)).is_err());
    }
}
