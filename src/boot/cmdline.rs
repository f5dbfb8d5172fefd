//! Kernel command line parsing and selection of the digest parameter.
//!
//! Contract:
//! - Words are split the kernel's way (`lib/cmdline.c`, `next_arg`): runs of
//!   whitespace separate words, a double quote toggles "inside quotes" (where
//!   whitespace does not split), there are no escapes. In a `key=value` word a
//!   value starting with `"` loses that quote and a trailing `"`; a word that
//!   starts with `"` loses that quote and a trailing `"`. A bare `--` ends the
//!   kernel's parameters (what follows is for init) and ends parsing here too.
//! - The digest parameter is `composefs.digest=<v1-sha256-12:hex>` (the
//!   composefs-rs grammar, see [`Digest::parse_composefs`]) or the legacy
//!   `composefs=<hex>` (algorithm from the length). Whichever of the two
//!   comes FIRST is the one used. Every later occurrence of either is
//!   returned in [`Cmdline::ignored_digests`] so the caller can log it; it is
//!   never consulted, even when the first one is unusable (systemd-stub
//!   appends addon and SMBIOS strings after a UKI's own `.cmdline`, so a later
//!   value may come from someone other than the vendor).
//! - A first digest parameter that is malformed is an error
//!   ([`CmdlineError::MalformedDigest`]); one starting with `?` (composefs's
//!   "insecure, verity optional" marker) is [`CmdlineError::InsecureDigest`].
//! - `root=`, `rootfstype=`, `rootflags=`, `init=`: the last occurrence wins,
//!   as in the kernel. `ro`/`rw` are recorded (the last wins).
//! - `sealroot.*` options: only settings that cannot weaken the trust policy
//!   are read here: `sealroot.wait=<seconds>` (root device wait, 1..=600)
//!   and `sealroot.debug`. Anything else with the `sealroot.` prefix (e.g. an
//!   attempt to choose the failure policy, `/etc` mode or serial floor, which
//!   only the initramfs config may set) is returned in
//!   [`Cmdline::ignored_options`] to be logged, never honoured.

use std::fmt;

use crate::digest::{Digest, DigestParseError};

/// Longest command line accepted (the kernel's COMMAND_LINE_SIZE on x86-64
/// is 2048; UKIs and addons can make it longer, so leave generous room).
pub const MAX_CMDLINE: usize = 64 * 1024;

/// Longest text of a command-line word kept for a log line or an error.
pub const MAX_LOGGED: usize = 200;

/// Default wait for the root device, in seconds.
pub const DEFAULT_WAIT_SECONDS: u32 = 60;

/// Which spelling named the digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestKey {
    /// `composefs.digest=`
    ComposefsDigest,
    /// legacy `composefs=`
    Composefs,
}

impl DigestKey {
    pub fn name(self) -> &'static str {
        match self {
            DigestKey::ComposefsDigest => "composefs.digest",
            DigestKey::Composefs => "composefs",
        }
    }
}

/// What the boot needs from the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// The first digest parameter, parsed.
    pub digest: Option<(DigestKey, Digest)>,
    /// Later digest parameters, as `key=value` text (capped), for the log.
    pub ignored_digests: Vec<String>,
    /// `sealroot.*` options this program does not honour, for the log.
    pub ignored_options: Vec<String>,
    pub root: Option<String>,
    pub rootfstype: Option<String>,
    pub rootflags: Option<String>,
    pub init: Option<String>,
    /// `Some(true)` for `ro`, `Some(false)` for `rw`.
    pub read_only: Option<bool>,
    /// `sealroot.wait=`: seconds to wait for the root device.
    pub wait_seconds: Option<u32>,
    /// `sealroot.debug`
    pub debug: bool,
}

/// Why the command line was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdlineError {
    TooLong {
        len: usize,
        max: usize,
    },
    /// The first digest parameter starts with `?`.
    InsecureDigest {
        key: &'static str,
    },
    /// The first digest parameter does not parse.
    MalformedDigest {
        key: &'static str,
        error: DigestParseError,
    },
    /// A digest parameter without `=value`.
    DigestWithoutValue {
        key: &'static str,
    },
    /// `sealroot.wait=` that is not a whole number of seconds in range.
    BadWait {
        value: String,
    },
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::TooLong { len, max } => {
                write!(f, "kernel command line is {len} bytes, more than {max}")
            }
            CmdlineError::InsecureDigest { key } => write!(
                f,
                "{key}= has the \"?\" insecure marker; sealroot never boots without verity"
            ),
            CmdlineError::MalformedDigest { key, error } => {
                write!(f, "malformed {key}= parameter: {error}")
            }
            CmdlineError::DigestWithoutValue { key } => {
                write!(f, "{key} parameter has no value")
            }
            CmdlineError::BadWait { value } => write!(
                f,
                "sealroot.wait={value:?} is not a number of seconds from 1 to 600"
            ),
        }
    }
}

impl std::error::Error for CmdlineError {}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// One parameter: the key and, if there was an `=`, the value (quotes
/// removed the kernel's way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param<'a> {
    pub key: &'a str,
    pub value: Option<&'a str>,
}

/// Split `text` into parameters exactly as the kernel does. Stops at `--`.
pub fn split(text: &str) -> Vec<Param<'_>> {
    split_words(text, true)
}

/// Every word of `text`, split as [`split`] does, but without stopping at
/// `--`: a bare `--` is returned as a word and so is everything after it
/// (what the kernel would hand to init). Used by the boot policy, which must
/// see all of it.
pub fn words(text: &str) -> Vec<Param<'_>> {
    split_words(text, false)
}

fn split_words(text: &str, stop_at_dashes: bool) -> Vec<Param<'_>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        while pos < bytes.len() && is_space(bytes[pos]) {
            pos += 1;
        }
        if pos >= bytes.len() {
            break;
        }
        let mut start = pos;
        let mut quoted = false;
        let mut in_quote = false;
        if bytes[pos] == b'"' {
            start += 1;
            pos += 1;
            quoted = true;
            in_quote = true;
        }
        let mut equals = None;
        while pos < bytes.len() {
            let c = bytes[pos];
            if is_space(c) && !in_quote {
                break;
            }
            if equals.is_none() && c == b'=' {
                equals = Some(pos);
            }
            if c == b'"' {
                in_quote = !in_quote;
            }
            pos += 1;
        }
        // The word is bytes[start..pos]; quote and space are ASCII, so every
        // index used here is a char boundary.
        let mut end = pos;
        let ends_with_quote = end > start && bytes[end - 1] == b'"';
        let param = match equals {
            None => {
                if quoted && ends_with_quote {
                    end -= 1;
                }
                Param {
                    key: &text[start..end],
                    value: None,
                }
            }
            Some(eq) => {
                let key = &text[start..eq];
                let mut vstart = eq + 1;
                let mut vend = end;
                if vstart < vend && bytes[vstart] == b'"' {
                    vstart += 1;
                    if ends_with_quote && vend > vstart {
                        vend -= 1;
                    }
                } else if quoted && ends_with_quote && vend > vstart {
                    vend -= 1;
                }
                Param {
                    key,
                    value: Some(&text[vstart..vend.max(vstart)]),
                }
            }
        };
        if stop_at_dashes && param.key == "--" && param.value.is_none() && !quoted {
            break;
        }
        out.push(param);
    }
    out
}

/// A word as `key=value` (or `key`) for a log line or an error, cut at
/// [`MAX_LOGGED`] bytes with `...` (the command line is attacker input).
pub fn capped(key: &str, value: Option<&str>) -> String {
    let mut s = match value {
        Some(v) => format!("{key}={v}"),
        None => key.to_string(),
    };
    if s.len() > MAX_LOGGED {
        let mut cut = MAX_LOGGED;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// The digest key `key` names, if any.
fn digest_key(key: &str) -> Option<DigestKey> {
    match key {
        "composefs.digest" => Some(DigestKey::ComposefsDigest),
        "composefs" => Some(DigestKey::Composefs),
        _ => None,
    }
}

/// [`CmdlineError::InsecureDigest`] when `key=value` is a digest parameter
/// carrying composefs's `?` marker (for the boot policy, which meets every
/// digest word, later ones included, before [`parse`] does).
pub fn insecure_marker(key: &str, value: &str) -> Option<CmdlineError> {
    let dk = digest_key(key)?;
    value
        .starts_with('?')
        .then_some(CmdlineError::InsecureDigest { key: dk.name() })
}

fn parse_digest(key: DigestKey, value: Option<&str>) -> Result<Digest, CmdlineError> {
    let name = key.name();
    let value = value.ok_or(CmdlineError::DigestWithoutValue { key: name })?;
    if value.starts_with('?') {
        return Err(CmdlineError::InsecureDigest { key: name });
    }
    let parsed = match key {
        DigestKey::ComposefsDigest => Digest::parse_composefs(value),
        DigestKey::Composefs => Digest::parse_hex_any(value),
    };
    parsed.map_err(|error| CmdlineError::MalformedDigest { key: name, error })
}

/// Parse a whole command line.
pub fn parse(text: &str) -> Result<Cmdline, CmdlineError> {
    if text.len() > MAX_CMDLINE {
        return Err(CmdlineError::TooLong {
            len: text.len(),
            max: MAX_CMDLINE,
        });
    }
    let mut out = Cmdline::default();
    let mut seen_digest = false;
    for Param { key, value } in split(text) {
        if let Some(dk) = digest_key(key) {
            if seen_digest {
                out.ignored_digests.push(capped(key, value));
            } else {
                seen_digest = true;
                out.digest = Some((dk, parse_digest(dk, value)?));
            }
            continue;
        }
        match (key, value) {
            ("root", Some(v)) => out.root = Some(v.to_string()),
            ("rootfstype", Some(v)) => out.rootfstype = Some(v.to_string()),
            ("rootflags", Some(v)) => out.rootflags = Some(v.to_string()),
            ("init", Some(v)) => out.init = Some(v.to_string()),
            ("ro", None) => out.read_only = Some(true),
            ("rw", None) => out.read_only = Some(false),
            ("sealroot.debug", None) => out.debug = true,
            ("sealroot.wait", Some(v)) => {
                let secs = v
                    .parse::<u32>()
                    .ok()
                    .filter(|s| (1..=600).contains(s))
                    .ok_or_else(|| CmdlineError::BadWait {
                        value: capped(v, None),
                    })?;
                out.wait_seconds = Some(secs);
            }
            _ if key.starts_with("sealroot.") => out.ignored_options.push(capped(key, value)),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::HashAlgorithm;

    const A: &str = "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95";
    const B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn p<'a>(key: &'a str, value: Option<&'a str>) -> Param<'a> {
        Param { key, value }
    }

    #[test]
    fn splits_like_the_kernel() {
        assert_eq!(
            split("  a=1\tb \"c d\" e=\"f g\" h=i\"j k\"\n"),
            vec![
                p("a", Some("1")),
                p("b", None),
                p("c d", None),
                p("e", Some("f g")),
                p("h", Some("i\"j k\"")),
            ]
        );
        // A quote opening the word covers key and value; the kernel strips
        // the leading quote from the word and the trailing one from the end.
        assert_eq!(split("\"x=y z\""), vec![p("x", Some("y z"))]);
        // Unterminated quote runs to the end of the line.
        assert_eq!(split("a=\"b c"), vec![p("a", Some("b c"))]);
        assert_eq!(split("a= b="), vec![p("a", Some("")), p("b", Some(""))]);
        assert_eq!(split(""), vec![]);
        assert_eq!(split("   \n"), vec![]);
        assert_eq!(split("\""), vec![p("", None)]);
        assert_eq!(split("a -- composefs=x"), vec![p("a", None)]);
        assert_eq!(
            words("a -- composefs=x"),
            vec![p("a", None), p("--", None), p("composefs", Some("x"))]
        );
    }

    #[test]
    fn first_digest_wins_later_ones_reported() {
        let c = parse(&format!(
            "root=/dev/vda composefs.digest=v1-sha256-12:{A} composefs.digest=v1-sha256-12:{B} composefs={B} quiet"
        ))
        .unwrap();
        let (key, d) = c.digest.unwrap();
        assert_eq!(key, DigestKey::ComposefsDigest);
        assert_eq!(d.to_hex(), A);
        assert_eq!(
            c.ignored_digests,
            vec![
                format!("composefs.digest=v1-sha256-12:{B}"),
                format!("composefs={B}")
            ]
        );
    }

    #[test]
    fn legacy_form_first_wins_over_new_form() {
        let c = parse(&format!("composefs={B} composefs.digest=v1-sha256-12:{A}")).unwrap();
        let (key, d) = c.digest.unwrap();
        assert_eq!(key, DigestKey::Composefs);
        assert_eq!(d.to_hex(), B);
        assert_eq!(c.ignored_digests.len(), 1);
    }

    #[test]
    fn sha512_forms() {
        let long = format!("{A}{B}");
        let c = parse(&format!("composefs.digest=v1-sha512-12:{long}")).unwrap();
        assert_eq!(c.digest.unwrap().1.algorithm(), HashAlgorithm::Sha512);
        let c = parse(&format!("composefs={long}")).unwrap();
        assert_eq!(c.digest.unwrap().1.to_hex(), long);
    }

    #[test]
    fn insecure_marker_refused() {
        assert_eq!(
            parse(&format!("composefs=?{A}")),
            Err(CmdlineError::InsecureDigest { key: "composefs" })
        );
        assert_eq!(
            parse(&format!("composefs.digest=?v1-sha256-12:{A}")),
            Err(CmdlineError::InsecureDigest {
                key: "composefs.digest"
            })
        );
        // Even when a good one follows: the first is the only one consulted.
        assert!(matches!(
            parse(&format!("composefs=?{A} composefs={A}")),
            Err(CmdlineError::InsecureDigest { .. })
        ));
    }

    #[test]
    fn malformed_first_digest_is_an_error_never_skipped() {
        for bad in [
            format!("composefs={}", &A[..63]),
            format!("composefs={A}0"),
            format!("composefs={}", A.to_uppercase()),
            format!("composefs.digest=v1-sha256-12:{}", &A[..10]),
            format!("composefs.digest=v1-sha1-12:{A}"),
            format!("composefs.digest={A}"),
            "composefs=".to_string(),
            format!("\"composefs={A} x\""),
        ] {
            let line = format!("{bad} composefs={B}");
            assert!(
                matches!(parse(&line), Err(CmdlineError::MalformedDigest { .. })),
                "{line}: {:?}",
                parse(&line)
            );
        }
        assert_eq!(
            parse(&format!("composefs composefs={A}")),
            Err(CmdlineError::DigestWithoutValue { key: "composefs" })
        );
    }

    #[test]
    fn later_malformed_digest_is_only_logged() {
        let c = parse(&format!("composefs={A} composefs=?junk")).unwrap();
        assert_eq!(c.digest.unwrap().1.to_hex(), A);
        assert_eq!(c.ignored_digests, vec!["composefs=?junk".to_string()]);
    }

    #[test]
    fn quoted_digest_value_is_unquoted() {
        let c = parse(&format!("composefs.digest=\"v1-sha256-12:{A}\"")).unwrap();
        assert_eq!(c.digest.unwrap().1.to_hex(), A);
    }

    #[test]
    fn root_options_last_wins() {
        let c = parse(
            "root=/dev/sda root=/dev/vda rootfstype=ext4 rootflags=\"noatime,data=ordered\" ro rw init=/bin/x init=/lib/systemd/systemd",
        )
        .unwrap();
        assert_eq!(c.root.as_deref(), Some("/dev/vda"));
        assert_eq!(c.rootfstype.as_deref(), Some("ext4"));
        assert_eq!(c.rootflags.as_deref(), Some("noatime,data=ordered"));
        assert_eq!(c.init.as_deref(), Some("/lib/systemd/systemd"));
        assert_eq!(c.read_only, Some(false));
        assert!(c.digest.is_none());
    }

    #[test]
    fn sealroot_options() {
        let c = parse("sealroot.wait=5 sealroot.debug sealroot.failure=shell sealroot.etc=bind")
            .unwrap();
        assert_eq!(c.wait_seconds, Some(5));
        assert!(c.debug);
        assert_eq!(
            c.ignored_options,
            vec!["sealroot.failure=shell", "sealroot.etc=bind"]
        );
        for bad in [
            "sealroot.wait=0",
            "sealroot.wait=601",
            "sealroot.wait=x",
            "sealroot.wait=",
        ] {
            assert!(
                matches!(parse(bad), Err(CmdlineError::BadWait { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn too_long_refused() {
        let s = "a ".repeat(MAX_CMDLINE);
        assert!(matches!(parse(&s), Err(CmdlineError::TooLong { .. })));
    }

    #[test]
    fn ignored_parameters_are_capped() {
        let c = parse(&format!("composefs={A} composefs={}", "é".repeat(300))).unwrap();
        assert!(c.ignored_digests[0].len() <= MAX_LOGGED + 3);
        assert!(c.ignored_digests[0].ends_with("..."));
    }
}
