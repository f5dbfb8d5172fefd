//! The boot policy: which kernel command-line words a `signed` boot accepts,
//! which programs may run as the sealed root's init, and the exact argv and
//! environment that init gets.
//!
//! Contract:
//! - The policy is fixed when the binary is made, like the keys: compiled in
//!   (`build.rs`: `SEALROOT_CMDLINE_ALLOW`, `SEALROOT_INITS`) or embedded by
//!   `sealctl embed-keys --allow-cmdline/--init` (carried in the trust
//!   payload, see [`crate::boot::trust`]). The command line never changes it.
//! - Under the `signed` trust policy the boot loader entry lives on the disk
//!   an attacker can write, so **every** word of `/proc/cmdline` is untrusted
//!   input: not only sealroot's own, but `init=`, the words the kernel hands
//!   to init as arguments (bare words, everything after `--`) or as
//!   environment (`KEY=value`), and the switches the initrd and the sealed
//!   root's systemd obey (`rd.break`, `systemd.run=`, ...). [`BootPolicy::check`]
//!   refuses the first word that no allowlist entry matches
//!   ([`PolicyError::WordNotAllowed`]). Under `sealed-digest` the command
//!   line is inside a signed UKI, i.e. the vendor's own, and is not checked.
//! - Entry grammar: `word` matches exactly that bare word (no `=`);
//!   `key=` matches `key` with any value; `key=value` matches exactly.
//!   The words are split the kernel's way ([`crate::boot::cmdline::words`]): quotes
//!   group and are removed, and a bare `--` is a word like any other (the
//!   kernel would hand what follows to init).
//! - [`DEFAULT_ALLOW`] holds only words that pick hardware, logging, the
//!   physical root or the sealed image and cannot make anything run; each is
//!   explained there. Vendors add entries; they cannot remove defaults.
//! - The init list (default [`DEFAULT_INITS`]) both names the `init=` values
//!   the command line may pick (`init=<path>` is implicitly allowed for each)
//!   and, with its first entry, the init used when there is no `init=`.
//! - PID 1 execs init with argv `[init]` and exactly [`INIT_ENVIRONMENT`]:
//!   nothing from the command line reaches the sealed init (the kernel would
//!   otherwise pass `LD_PRELOAD=...` words as environment and unknown words
//!   as arguments).

use std::fmt;

use crate::boot::cmdline;

/// Entries every `signed` boot accepts. Why each one cannot make anything
/// unverified run:
/// - `console=`, `earlycon`, `earlycon=`, `earlyprintk=`, `loglevel=`,
///   `quiet`: where and how much the kernel logs.
/// - `root=`, `rootfstype=`, `rootflags=`, `rootwait`, `rootdelay=`, `ro`,
///   `rw`: which device holds the physical root and how it is mounted; it
///   only ever supplies the repository, whose image is measured and sealed.
/// - `panic=`: reboot delay after a kernel panic.
/// - `composefs.digest=`, `composefs=`: which sealed image boots; the seal
///   decides whether it may.
/// - `sealroot.wait=`, `sealroot.debug`: root device wait and log detail.
/// - `rd.shell=0`, `rd.emergency=halt|poweroff|reboot`: these only take an
///   initrd's emergency shell *away* (dracut initramfs).
/// - `BOOT_IMAGE=` (GRUB prepends it), `initrd=` (the EFI stub's and
///   systemd-boot's initrd path, consumed before init runs): informational
///   by the time anything reads them; the environment of the sealed init is
///   fixed anyway.
pub const DEFAULT_ALLOW: &[&str] = &[
    "console=",
    "earlycon",
    "earlycon=",
    "earlyprintk=",
    "loglevel=",
    "quiet",
    "root=",
    "rootfstype=",
    "rootflags=",
    "rootwait",
    "rootdelay=",
    "ro",
    "rw",
    "panic=",
    "composefs.digest=",
    "composefs=",
    "sealroot.wait=",
    "sealroot.debug",
    "rd.shell=0",
    "rd.emergency=halt",
    "rd.emergency=poweroff",
    "rd.emergency=reboot",
    "BOOT_IMAGE=",
    "initrd=",
];

/// Programs that may run as the sealed root's init; the first is the default.
pub const DEFAULT_INITS: &[&str] = &[
    "/sbin/init",
    "/usr/lib/systemd/systemd",
    "/lib/systemd/systemd",
];

/// The whole environment of the sealed init (PID 1 mode).
pub const INIT_ENVIRONMENT: &[&str] = &[
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "TERM=linux",
];

/// Longest allowlist entry or init path accepted.
pub const MAX_ENTRY_LEN: usize = 256;

/// The command-line allowlist and the init list in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPolicy {
    /// Vendor entries on top of [`DEFAULT_ALLOW`].
    pub extra_allow: Vec<String>,
    /// Allowed inits, first = default. Never empty.
    pub inits: Vec<String>,
    /// Where the boot is measured and whether a TPM is required.
    pub tpm: TpmPolicy,
}

impl Default for BootPolicy {
    fn default() -> Self {
        BootPolicy {
            extra_allow: Vec::new(),
            inits: DEFAULT_INITS.iter().map(|s| s.to_string()).collect(),
            tpm: TpmPolicy::default(),
        }
    }
}

/// The measurement policy ([`crate::tpm`]): which PCR the record is
/// extended into, and whether a boot without a TPM is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpmPolicy {
    /// One of [`crate::tpm::ALLOWED_PCRS`]; default [`crate::tpm::DEFAULT_PCR`].
    pub pcr: u32,
    /// `true`: no TPM (or a failing one) refuses the boot.
    pub required: bool,
}

impl Default for TpmPolicy {
    fn default() -> Self {
        TpmPolicy {
            pcr: crate::tpm::DEFAULT_PCR,
            required: false,
        }
    }
}

impl TpmPolicy {
    /// A checked policy.
    pub fn new(pcr: u32, required: bool) -> Result<Self, PolicyError> {
        if !crate::tpm::ALLOWED_PCRS.contains(&pcr) {
            return Err(PolicyError::BadTpmPcr { pcr });
        }
        Ok(TpmPolicy { pcr, required })
    }
}

/// Why a policy could not be built, or a command line or init was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// A command-line word no entry allows (signed policy).
    WordNotAllowed { word: String },
    /// `init=` names a program not on the init list.
    InitNotAllowed { init: String, allowed: Vec<String> },
    /// An allowlist entry that cannot match a kernel word as written.
    BadEntry { entry: String, reason: &'static str },
    /// An init path that is not absolute, or otherwise unusable.
    BadInit { init: String, reason: &'static str },
    /// An empty init list.
    NoInits,
    /// A measurement PCR outside [`crate::tpm::ALLOWED_PCRS`].
    BadTpmPcr { pcr: u32 },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::WordNotAllowed { word } => write!(
                f,
                "kernel command line word {word:?} is not allowed by the boot policy"
            ),
            PolicyError::InitNotAllowed { init, allowed } => write!(
                f,
                "init={init} is not one of the boot policy's inits ({})",
                allowed.join(", ")
            ),
            PolicyError::BadEntry { entry, reason } => {
                write!(f, "command-line allowlist entry {entry:?} {reason}")
            }
            PolicyError::BadInit { init, reason } => write!(f, "init {init:?} {reason}"),
            PolicyError::NoInits => write!(f, "the boot policy names no init"),
            PolicyError::BadTpmPcr { pcr } => write!(
                f,
                "TPM PCR {pcr} is not allowed for measurement (use {}..={}: 0-7 are the \
                 firmware's, 16 and 23 are resettable, 17-22 need DRTM locality)",
                crate::tpm::ALLOWED_PCRS.start(),
                crate::tpm::ALLOWED_PCRS.end()
            ),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Check one allowlist entry's text.
pub fn validate_entry(entry: &str) -> Result<(), PolicyError> {
    let bad = |reason| {
        Err(PolicyError::BadEntry {
            entry: entry.to_string(),
            reason,
        })
    };
    if entry.is_empty() {
        return bad("is empty");
    }
    if entry.len() > MAX_ENTRY_LEN {
        return bad("is longer than 256 bytes");
    }
    if entry.bytes().any(|b| b.is_ascii_whitespace() || b == b'"') {
        return bad("contains whitespace or a quote (one kernel word per entry)");
    }
    if entry.bytes().any(|b| b.is_ascii_control()) {
        return bad("contains a control character");
    }
    if entry.starts_with('=') {
        return bad("has no key before '='");
    }
    if entry == "--" {
        return bad("would hand arguments to init");
    }
    if entry.split_once('=').is_some_and(|(k, _)| k == "init") {
        return bad("names init=; list inits with --init / SEALROOT_INITS instead");
    }
    Ok(())
}

/// Check one init path.
pub fn validate_init(init: &str) -> Result<(), PolicyError> {
    let bad = |reason| {
        Err(PolicyError::BadInit {
            init: init.to_string(),
            reason,
        })
    };
    if !init.starts_with('/') {
        return bad("is not an absolute path");
    }
    if init.len() > MAX_ENTRY_LEN {
        return bad("is longer than 256 bytes");
    }
    if init
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'"')
    {
        return bad("contains whitespace, a quote or a control character");
    }
    if init.split('/').any(|c| c == "." || c == "..") {
        return bad("contains a '.' or '..' component");
    }
    Ok(())
}

fn entry_matches(entry: &str, key: &str, value: Option<&str>) -> bool {
    match (entry.split_once('='), value) {
        (None, None) => entry == key,
        (Some((k, "")), Some(_)) => k == key,
        (Some((k, v)), Some(val)) => k == key && v == val,
        _ => false,
    }
}

impl BootPolicy {
    /// A policy from vendor entries and an init list (`None`: the default
    /// inits), each checked.
    pub fn new(extra_allow: Vec<String>, inits: Option<Vec<String>>) -> Result<Self, PolicyError> {
        for e in &extra_allow {
            validate_entry(e)?;
        }
        let inits = match inits {
            Some(list) => list,
            None => BootPolicy::default().inits,
        };
        if inits.is_empty() {
            return Err(PolicyError::NoInits);
        }
        for i in &inits {
            validate_init(i)?;
        }
        Ok(BootPolicy {
            extra_allow,
            inits,
            tpm: TpmPolicy::default(),
        })
    }

    /// The same policy with measurement policy `tpm`.
    pub fn with_tpm(self, tpm: TpmPolicy) -> Self {
        BootPolicy { tpm, ..self }
    }

    /// Whether the inits are exactly the defaults.
    pub fn default_inits(&self) -> bool {
        self.inits
            .iter()
            .map(String::as_str)
            .eq(DEFAULT_INITS.iter().copied())
    }

    /// Whether one word is allowed.
    pub fn allows(&self, key: &str, value: Option<&str>) -> bool {
        if key == "init" {
            return value.is_some_and(|v| self.inits.iter().any(|i| i == v));
        }
        DEFAULT_ALLOW
            .iter()
            .copied()
            .chain(self.extra_allow.iter().map(String::as_str))
            .any(|e| entry_matches(e, key, value))
    }

    /// Refuse the first word of `text` that nothing allows (signed policy).
    pub fn check(&self, text: &str) -> Result<(), PolicyError> {
        for p in cmdline::words(text) {
            if !self.allows(p.key, p.value) {
                return Err(PolicyError::WordNotAllowed {
                    word: cmdline::capped(p.key, p.value),
                });
            }
        }
        Ok(())
    }

    /// The init to exec: `requested` (the command line's `init=`) if it is on
    /// the list, the first list entry when there is none.
    pub fn choose_init<'a>(&'a self, requested: Option<&'a str>) -> Result<&'a str, PolicyError> {
        match requested {
            None => Ok(self
                .inits
                .first()
                .map(String::as_str)
                .unwrap_or("/sbin/init")),
            Some(r) if self.inits.iter().any(|i| i == r) => Ok(r),
            Some(r) => Err(PolicyError::InitNotAllowed {
                init: cmdline::capped(r, None),
                allowed: self.inits.clone(),
            }),
        }
    }

    /// Every entry in force, defaults first, then `init=<path>` per init.
    pub fn effective_allow(&self) -> Vec<String> {
        DEFAULT_ALLOW
            .iter()
            .map(|s| s.to_string())
            .chain(self.extra_allow.iter().cloned())
            .chain(self.inits.iter().map(|i| format!("init={i}")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &BootPolicy, line: &str) -> String {
        match p.check(line) {
            Err(PolicyError::WordNotAllowed { word }) => word,
            other => panic!("{line:?} not refused: {other:?}"),
        }
    }

    const HEX: &str = "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95";

    #[test]
    fn ordinary_boot_lines_pass() {
        let p = BootPolicy::default();
        for line in [
            format!("BOOT_IMAGE=/vmlinuz-6.12 root=UUID=1234 ro quiet console=ttyS0,115200 composefs.digest=v1-sha256-12:{HEX}"),
            format!("initrd=\\EFI\\x\\initrd console=tty0 loglevel=3 rootwait rootfstype=ext4 rootflags=\"noatime,commit=5\" rw panic=10 composefs={HEX}"),
            "earlycon earlycon=uart8250,io,0x3f8 earlyprintk=ttyS0 rootdelay=3 sealroot.wait=5 sealroot.debug".to_string(),
            "rd.shell=0 rd.emergency=poweroff rd.emergency=halt rd.emergency=reboot".to_string(),
            "init=/sbin/init init=/usr/lib/systemd/systemd init=/lib/systemd/systemd".to_string(),
            String::new(),
            "   ".to_string(),
        ] {
            assert_eq!(p.check(&line), Ok(()), "{line}");
        }
    }

    #[test]
    fn routes_to_code_execution_are_refused() {
        let p = BootPolicy::default();
        let cases = [
            (
                "root=/dev/vda init=/bin/busybox -- sh /sysroot/evil.sh",
                "init=/bin/busybox",
            ),
            ("root=/dev/vda -- sh /sysroot/evil.sh", "--"),
            ("root=/dev/vda \"--\" x", "--"),
            ("root=/dev/vda LD_PRELOAD=/etc/x.so", "LD_PRELOAD=/etc/x.so"),
            (
                "init=/lib64/ld-linux-x86-64.so.2 -- /sysroot/evil",
                "init=/lib64/ld-linux-x86-64.so.2",
            ),
            ("rdinit=/bin/sh", "rdinit=/bin/sh"),
            ("quiet single", "single"),
            ("emergency", "emergency"),
            ("rescue", "rescue"),
            ("-b", "-b"),
            ("s", "s"),
            ("1", "1"),
            ("systemd.run=/bin/sh", "systemd.run=/bin/sh"),
            (
                "systemd.run_success_action=none",
                "systemd.run_success_action=none",
            ),
            (
                "systemd.setenv=LD_PRELOAD=/etc/x.so",
                "systemd.setenv=LD_PRELOAD=/etc/x.so",
            ),
            ("systemd.unit=rescue.target", "systemd.unit=rescue.target"),
            ("systemd.debug_shell", "systemd.debug_shell"),
            ("systemd.debug_shell=1", "systemd.debug_shell=1"),
            ("rd.break", "rd.break"),
            ("rd.break=pre-pivot", "rd.break=pre-pivot"),
            ("rd.shell", "rd.shell"),
            ("rd.shell=1", "rd.shell=1"),
            ("rd.emergency=shell", "rd.emergency=shell"),
            ("sealroot.failure=shell", "sealroot.failure=shell"),
            ("init", "init"),
            ("init=", "init="),
            ("init=/sbin/init/", "init=/sbin/init/"),
            ("quiet=1", "quiet=1"),
            ("console", "console"),
            ("Root=/dev/vda", "Root=/dev/vda"),
            ("\"init=/bin/sh\"", "init=/bin/sh"),
        ];
        for (line, word) in cases {
            assert_eq!(refused(&p, line), word, "{line}");
        }
    }

    #[test]
    fn first_refused_word_is_named() {
        let p = BootPolicy::default();
        assert_eq!(refused(&p, "quiet single rdinit=/x"), "single");
    }

    #[test]
    fn vendor_entries_extend_never_replace() {
        let p = BootPolicy::new(
            vec![
                "no_timer_check".into(),
                "systemd.firstboot=off".into(),
                "net.ifnames=".into(),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            p.check("no_timer_check systemd.firstboot=off net.ifnames=0 quiet"),
            Ok(())
        );
        assert_eq!(refused(&p, "systemd.firstboot=on"), "systemd.firstboot=on");
        assert_eq!(refused(&p, "no_timer_check=1"), "no_timer_check=1");
        assert_eq!(refused(&p, "net.ifnames"), "net.ifnames");
        assert!(p.effective_allow().iter().any(|e| e == "console="));
    }

    #[test]
    fn init_list() {
        let p = BootPolicy::new(vec![], Some(vec!["/usr/bin/myinit".into()])).unwrap();
        assert_eq!(p.choose_init(None), Ok("/usr/bin/myinit"));
        assert_eq!(
            p.choose_init(Some("/usr/bin/myinit")),
            Ok("/usr/bin/myinit")
        );
        assert!(matches!(
            p.choose_init(Some("/sbin/init")),
            Err(PolicyError::InitNotAllowed { .. })
        ));
        assert_eq!(p.check("init=/usr/bin/myinit"), Ok(()));
        assert_eq!(refused(&p, "init=/sbin/init"), "init=/sbin/init");
        let d = BootPolicy::default();
        assert_eq!(d.choose_init(None), Ok("/sbin/init"));
        assert!(d.default_inits());
        assert!(!p.default_inits());
        assert!(d
            .effective_allow()
            .contains(&"init=/usr/lib/systemd/systemd".to_string()));
    }

    #[test]
    fn bad_entries_and_inits_refused() {
        for e in [
            "",
            "a b",
            "a\"",
            "=x",
            "--",
            "init=/bin/sh",
            "init=",
            "a\tb",
            "x\u{1}",
        ] {
            assert!(
                matches!(validate_entry(e), Err(PolicyError::BadEntry { .. })),
                "{e:?}"
            );
        }
        assert!(validate_entry(&"a".repeat(257)).is_err());
        for i in ["sbin/init", "", "/a b", "/a/../b", "/./x"] {
            assert!(
                matches!(validate_init(i), Err(PolicyError::BadInit { .. })),
                "{i:?}"
            );
        }
        assert_eq!(
            BootPolicy::new(vec![], Some(vec![])),
            Err(PolicyError::NoInits)
        );
        assert!(BootPolicy::new(vec!["rd.break".into(), "x y".into()], None).is_err());
    }

    #[test]
    fn long_words_are_capped_in_errors() {
        let p = BootPolicy::default();
        let w = refused(&p, &format!("x={}", "é".repeat(300)));
        assert!(w.len() <= cmdline::MAX_LOGGED + 3 && w.ends_with("..."));
    }
}
