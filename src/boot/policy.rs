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
//! - **One byte grammar for the whole line, before any word**
//!   ([`check_line_bytes`]). The same bytes are read by several parsers that
//!   split words differently: the kernel's `next_arg` (its own ctype table
//!   counts 0xA0 as a space; double quotes group), x86 early-boot option
//!   lookups (`cmdline_find_option`: no quotes, every byte <= 0x20
//!   separates), systemd 252-254 (`'` and `"` open a quote anywhere in a
//!   word; a backslash is kept as an ordinary byte, `EXTRACT_RETAIN_ESCAPE`;
//!   only space, tab, LF, CR separate) and dracut (`getarg` runs
//!   `dracut-util`, a copy of the kernel's `next_arg`; `fs-lib.sh` and
//!   `for x in $(getargs …)` split in the shell, which ignores quotes and
//!   expands `*?[` into file names). A word hidden inside another word for one reader
//!   is a word of its own for the next. So under `signed` the line may hold
//!   only the space (0x20) and printable ASCII (0x21..=0x7E) other than `"`,
//!   `'` and `\` (a backslash is no separator today, but systemd's escape
//!   handling has changed before and no allowed word needs one): with
//!   those bytes every reader above splits the line at exactly the spaces, into the same words ([`PolicyError::ForbiddenByte`]
//!   names the first other byte and its offset). One exception, because
//!   systemd-boot makes it, and only for a vendor who opts in with the
//!   entry [`LOADER_INITRD_ENTRY`] (`initrd=\`): the line may *start* with
//!   `initrd=` words whose value is an EFI path
//!   (`initrd=\sealroot\<hex>\initramfs.img`, one per `initrd` line of a
//!   Type #1 `linux` entry, [`is_efi_initrd_path`]); there each backslash is
//!   followed by a path byte, never by a space, quote, backslash or the
//!   end, so even a reader that took it for an escape would split the line
//!   at the same places. `tests/cmdline_readers.rs`
//!   and the `cmdline_readers` fuzz target check that claim against models
//!   of each reader.
//! - Values of entries that accept any value (`key=`) may hold only
//!   [`SAFE_VALUE_BYTES`] (letters, digits and `._,:/=+@-()`): no shell
//!   pattern characters (`*?[` would make dracut's shell expand a word into
//!   file names) and nothing else any reader treats specially
//!   ([`PolicyError::UnsafeValue`]).
//! - `rootflags=` becomes mount options of the physical root (and, in a
//!   systemd initrd, `x-systemd.*` unit dependencies such as
//!   `x-systemd.requires=debug-shell.service`), so each comma-separated option
//!   must be one of [`ROOTFLAGS_ALLOWED`] ([`PolicyError::RootflagNotAllowed`]).
//! - The failure policy (halt, poweroff, reboot, shell) comes from the
//!   initramfs only: `rd.emergency=` on the command line is refused
//!   ([`PolicyError::FailurePolicyWord`]) whatever it names, and no vendor
//!   entry can allow it, because dracut reads the command line after its
//!   own `/etc/cmdline.d` and would let it override the vendor's choice
//!   (a `halt` policy turned into a reboot loop).
//! - Entry grammar: `word` matches exactly that bare word (no `=`);
//!   `key=` matches `key` with any value (from [`SAFE_VALUE_BYTES`]);
//!   `key=value` matches exactly. With the byte grammar in force the words
//!   are the space-separated runs ([`crate::boot::cmdline::words`]), and a
//!   bare `--` is a word like any other (the kernel would hand what follows
//!   to init).
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
/// - `rd.shell=0`: only takes an initrd's emergency shell *away* (dracut
///   initramfs).
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
    "BOOT_IMAGE=",
    "initrd=",
];

/// Bytes a value of an any-value entry (`key=`) may hold: ASCII letters and
/// digits and `. _ , : / = + @ - ( )`. Enough for device names
/// (`root=PARTUUID=…`, `/dev/disk/by-label/…`), consoles
/// (`console=ttyS0,115200n8`, `earlycon=uart8250,io,0x3f8`), digests
/// (`v1-sha256-12:…`) and GRUB's `BOOT_IMAGE=(hd0,gpt2)/vmlinuz-6.12`; none
/// of them is special to the kernel, x86 early parsing, systemd, or a shell
/// after expansion.
pub const SAFE_VALUE_BYTES: &str = "._,:/=+@-()";

/// Mount options `rootflags=` may name (the option's name, before any
/// `=value`). Each only tunes how ext4, btrfs or f2fs keep the physical
/// root; none makes a mount depend on a unit or a helper (`x-systemd.*`,
/// `x-initrd.*`, `_netdev`), names another device or file (ext4's
/// `journal_path=`, `journal_dev=`, `usrjquota=`), or sets a security
/// label (`context=`).
pub const ROOTFLAGS_ALLOWED: &[&str] = &[
    "ro",
    "rw",
    "defaults",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "lazytime",
    "nolazytime",
    "discard",
    "nodiscard",
    "commit",
    "data",
    "errors",
    "barrier",
    "nobarrier",
    "subvol",
    "subvolid",
    "compress",
    "compress-force",
    "ssd",
    "nossd",
    "space_cache",
    "nosuid",
    "nodev",
    "noexec",
];

/// Command-line keys that pick what happens after a refusal. The failure
/// policy is the initramfs's alone; these are refused whatever they say.
pub const FAILURE_POLICY_KEYS: &[&str] = &["rd.emergency"];

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
/// extended into, and whether a boot without a TPM is refused; and the
/// TPM serial floor ([`crate::tpm::nv`]): which NV counter holds it and
/// whether a boot that cannot read it is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpmPolicy {
    /// One of [`crate::tpm::ALLOWED_PCRS`]; default [`crate::tpm::DEFAULT_PCR`].
    pub pcr: u32,
    /// `true`: no TPM (or a failing one) refuses the boot.
    pub required: bool,
    /// The NV counter holding the serial floor, in
    /// [`crate::tpm::nv::NV_INDEX_RANGE`]; 0 = no TPM floor. Default
    /// [`crate::tpm::nv::DEFAULT_FLOOR_INDEX`].
    pub floor_index: u32,
    /// `true`: no TPM, an unreachable one, or no index at `floor_index`
    /// refuses the boot. `false`: those leave the TPM floor out. A TPM that
    /// answers with an index the floor rules refuse is a refusal either way.
    pub floor_required: bool,
}

impl Default for TpmPolicy {
    fn default() -> Self {
        TpmPolicy {
            pcr: crate::tpm::DEFAULT_PCR,
            required: false,
            floor_index: crate::tpm::nv::DEFAULT_FLOOR_INDEX,
            floor_required: false,
        }
    }
}

impl TpmPolicy {
    /// A checked policy (with the default floor settings).
    pub fn new(pcr: u32, required: bool) -> Result<Self, PolicyError> {
        if !crate::tpm::ALLOWED_PCRS.contains(&pcr) {
            return Err(PolicyError::BadTpmPcr { pcr });
        }
        Ok(TpmPolicy {
            pcr,
            required,
            ..TpmPolicy::default()
        })
    }

    /// The same policy with the TPM floor at `index` (0 = off), required or
    /// not. Requiring a floor that is off is refused.
    pub fn with_floor(self, index: u32, required: bool) -> Result<Self, PolicyError> {
        if index != 0 && !crate::tpm::nv::NV_INDEX_RANGE.contains(&index) {
            return Err(PolicyError::BadTpmFloorIndex { index, required });
        }
        if index == 0 && required {
            return Err(PolicyError::BadTpmFloorIndex { index, required });
        }
        Ok(TpmPolicy {
            floor_index: index,
            floor_required: required,
            ..self
        })
    }
}

/// Why a policy could not be built, or a command line or init was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// A command-line word no entry allows (signed policy).
    WordNotAllowed { word: String },
    /// A byte outside the command line's grammar (signed policy): anything
    /// but the space and printable ASCII, or a quote or backslash.
    ForbiddenByte { offset: usize, byte: u8 },
    /// An any-value entry whose value holds a byte outside
    /// [`SAFE_VALUE_BYTES`].
    UnsafeValue { word: String, byte: u8 },
    /// A `rootflags=` option not in [`ROOTFLAGS_ALLOWED`].
    RootflagNotAllowed { option: String },
    /// A word choosing the failure policy ([`FAILURE_POLICY_KEYS`]).
    FailurePolicyWord { word: String },
    /// A digest parameter with composefs's `?` "insecure" marker: named as
    /// such (the parser's own refusal) rather than as an unsafe value byte.
    InsecureDigest(cmdline::CmdlineError),
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
    /// A floor index outside [`crate::tpm::nv::NV_INDEX_RANGE`], or a
    /// required floor that is off (index 0).
    BadTpmFloorIndex { index: u32, required: bool },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::WordNotAllowed { word } => write!(
                f,
                "kernel command line word {word:?} is not allowed by the boot policy"
            ),
            PolicyError::ForbiddenByte { offset, byte } => write!(
                f,
                "kernel command line byte 0x{byte:02x} at offset {offset} is not allowed \
                 (only spaces and printable ASCII without quotes or backslashes)"
            ),
            PolicyError::UnsafeValue { word, byte } => write!(
                f,
                "kernel command line word {word:?} has {:?} in its value (values may hold \
                 only letters, digits and {SAFE_VALUE_BYTES})",
                char::from(*byte)
            ),
            PolicyError::RootflagNotAllowed { option } => write!(
                f,
                "rootflags option {option:?} is not allowed by the boot policy (allowed: {})",
                ROOTFLAGS_ALLOWED.join(",")
            ),
            PolicyError::FailurePolicyWord { word } => write!(
                f,
                "kernel command line word {word:?} would choose the failure policy, which \
                 comes only from the initramfs"
            ),
            PolicyError::InsecureDigest(e) => e.fmt(f),
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
            PolicyError::BadTpmFloorIndex { index: 0, .. } => write!(
                f,
                "a required TPM serial floor needs an NV index (the floor is off)"
            ),
            PolicyError::BadTpmFloorIndex { index, .. } => write!(
                f,
                "TPM floor index 0x{index:08x} is not an NV index handle (0x{:08x}..=0x{:08x}, or 0 for none)",
                crate::tpm::nv::NV_INDEX_RANGE.start(),
                crate::tpm::nv::NV_INDEX_RANGE.end()
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
    if entry == LOADER_INITRD_ENTRY {
        return Ok(());
    }
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
    if check_line_bytes(entry.as_bytes()).is_err() {
        return bad("contains a byte outside the command-line grammar (printable ASCII without quotes or backslashes)");
    }
    if entry
        .split_once('=')
        .is_some_and(|(_, v)| !v.bytes().all(safe_value_byte))
    {
        return bad("has a value with a byte outside letters, digits and ._,:/=+@-()");
    }
    if entry.bytes().any(|b| matches!(b, b'*' | b'?' | b'[')) {
        return bad("contains a shell pattern character (dracut would expand it)");
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
    let key = entry.split_once('=').map_or(entry, |(k, _)| k);
    if FAILURE_POLICY_KEYS.contains(&key) {
        return bad("chooses the failure policy, which only the initramfs config sets");
    }
    if key == "rootflags" && entry.len() > "rootflags=".len() {
        return bad("fixes rootflags= to one value; rootflags options are checked against the built-in list");
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
    if !init.bytes().all(safe_value_byte) {
        return bad("contains a byte outside letters, digits and ._,:/=+@-()");
    }
    if init.split('/').any(|c| c == "." || c == "..") {
        return bad("contains a '.' or '..' component");
    }
    Ok(())
}

/// The command line's byte grammar under `signed`: the first byte that is
/// neither the space nor printable ASCII, or is a quote or a backslash.
/// (A policy with [`LOADER_INITRD_ENTRY`] lets backslashes through in the
/// line's leading boot-loader `initrd=` words: [`BootPolicy::check_bytes`].)
pub fn check_line_bytes(line: &[u8]) -> Result<(), PolicyError> {
    forbidden_byte_from(line, 0)
}

fn forbidden_byte_from(line: &[u8], start: usize) -> Result<(), PolicyError> {
    match line[start..].iter().position(|&b| {
        !(b == b' ' || (0x21..=0x7e).contains(&b)) || matches!(b, b'"' | b'\'' | b'\\')
    }) {
        Some(i) => Err(PolicyError::ForbiddenByte {
            offset: start + i,
            byte: line[start + i],
        }),
        None => Ok(()),
    }
}

/// The allowlist entry by which a vendor accepts the `initrd=<EFI path>`
/// words systemd-boot puts at the start of a Type #1 `linux` entry's
/// options (one per `initrd` line, the path with backslashes:
/// `initrd=\sealroot\<hex>\initramfs.img`). Off by default: such entries
/// load an initramfs from the disk that nothing verifies, so a build meant
/// for UKIs gains nothing from it and keeps refusing a backslash anywhere
/// (should a future stub combine an entry's initrd with the UKI's own, the
/// byte grammar still refuses the boot). A build whose initramfs is started
/// from such entries (`sealctl update`'s kernel and initramfs form) needs it.
pub const LOADER_INITRD_ENTRY: &str = "initrd=\\";

/// Longest EFI path accepted in a boot loader's `initrd=` word.
pub const MAX_EFI_INITRD_PATH: usize = 256;

/// Whether `value` is an EFI file path as systemd-boot writes one into the
/// `initrd=` words it puts in front of a Type #1 entry's options: one or
/// more components, each a backslash followed by at least one of
/// `[A-Za-z0-9._+-]`. A backslash is therefore never followed by a space,
/// a quote, another backslash or the end of the word, so a reader that
/// took it for an escape would still see the same word boundaries.
pub fn is_efi_initrd_path(value: &[u8]) -> bool {
    let path_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-');
    value.len() <= MAX_EFI_INITRD_PATH
        && value.first() == Some(&b'\\')
        && value[1..]
            .split(|&b| b == b'\\')
            .all(|c| !c.is_empty() && c.iter().all(|&b| path_byte(b)))
}

/// The length of the line's leading run of `initrd=<EFI path>` words (each
/// with the space after it): systemd-boot 254 prepends one such word per
/// `initrd` line of a Type #1 entry (`initrd=\sealroot\<hex>\initramfs.img`,
/// the path with backslashes). Only these words, only at the start, and
/// only in that exact shape may carry a backslash; anywhere else the byte
/// grammar refuses it. Used only by a policy with [`LOADER_INITRD_ENTRY`].
fn loader_initrd_prefix(line: &[u8]) -> usize {
    let mut at = 0;
    while let Some(rest) = line[at..].strip_prefix(b"initrd=") {
        let len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        if !is_efi_initrd_path(&rest[..len]) {
            break;
        }
        at += "initrd=".len() + len;
        // The separating space(s) are checked by the grammar as usual.
        while line.get(at) == Some(&b' ') {
            at += 1;
        }
    }
    at
}

/// Whether `b` may appear in the value of an any-value entry.
pub fn safe_value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || SAFE_VALUE_BYTES.as_bytes().contains(&b)
}

/// Each comma-separated option of a `rootflags=` value must be on
/// [`ROOTFLAGS_ALLOWED`] (empty options, as in `a,,b`, are skipped the way
/// the kernel skips them).
fn check_rootflags(value: &str) -> Result<(), PolicyError> {
    for option in value.split(',').filter(|o| !o.is_empty()) {
        let name = option.split_once('=').map_or(option, |(n, _)| n);
        if !ROOTFLAGS_ALLOWED.contains(&name) {
            return Err(PolicyError::RootflagNotAllowed {
                option: cmdline::capped(option, None),
            });
        }
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

    /// Whether the vendor accepts systemd-boot's leading `initrd=<EFI
    /// path>` words ([`LOADER_INITRD_ENTRY`]).
    pub fn accepts_loader_initrd(&self) -> bool {
        self.extra_allow.iter().any(|e| e == LOADER_INITRD_ENTRY)
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

    /// Check a whole command line (signed policy): the byte grammar first
    /// ([`check_line_bytes`]), then each word in order; the first problem
    /// is the error.
    pub fn check(&self, text: &str) -> Result<(), PolicyError> {
        self.check_bytes(text.as_bytes())
    }

    /// [`BootPolicy::check`] on the raw bytes of `/proc/cmdline` (without
    /// the newline the kernel appends), so that an offset in
    /// [`PolicyError::ForbiddenByte`] is an offset in what the boot loader
    /// passed.
    pub fn check_bytes(&self, line: &[u8]) -> Result<(), PolicyError> {
        let start = if self.accepts_loader_initrd() {
            loader_initrd_prefix(line)
        } else {
            0
        };
        forbidden_byte_from(line, start)?;
        // All printable ASCII now, so this cannot fail.
        let text = std::str::from_utf8(line).map_err(|e| PolicyError::ForbiddenByte {
            offset: e.valid_up_to(),
            byte: line.get(e.valid_up_to()).copied().unwrap_or(0),
        })?;
        for p in cmdline::words(text) {
            self.check_word(p.key, p.value)?;
        }
        Ok(())
    }

    fn check_word(&self, key: &str, value: Option<&str>) -> Result<(), PolicyError> {
        if FAILURE_POLICY_KEYS.contains(&key) {
            return Err(PolicyError::FailurePolicyWord {
                word: cmdline::capped(key, value),
            });
        }
        if !self.allows(key, value) {
            return Err(PolicyError::WordNotAllowed {
                word: cmdline::capped(key, value),
            });
        }
        if let Some(v) = value {
            if let Some(e) = cmdline::insecure_marker(key, v) {
                return Err(PolicyError::InsecureDigest(e));
            }
            // An `initrd=` path in EFI form got past the byte grammar only
            // at the start of the line, in exactly that shape.
            let efi_initrd =
                key == "initrd" && self.accepts_loader_initrd() && is_efi_initrd_path(v.as_bytes());
            if let Some(b) = v.bytes().find(|&b| !safe_value_byte(b) && !efi_initrd) {
                return Err(PolicyError::UnsafeValue {
                    word: cmdline::capped(key, value),
                    byte: b,
                });
            }
            if key == "rootflags" {
                check_rootflags(v)?;
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
            format!("initrd=/EFI/x/initrd console=tty0 loglevel=3 rootwait rootfstype=ext4 rootflags=noatime,commit=5,data=ordered rw panic=10 composefs={HEX}"),
            "BOOT_IMAGE=(hd0,gpt2)/vmlinuz-6.12.9+bpo-cloud-amd64 root=PARTUUID=0a1b-02 rootflags=subvol=@root,compress=zstd:3".to_string(),
            "earlycon earlycon=uart8250,io,0x3f8 earlyprintk=ttyS0 rootdelay=3 sealroot.wait=5 sealroot.debug".to_string(),
            "rd.shell=0".to_string(),
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
            ("sealroot.failure=shell", "sealroot.failure=shell"),
            ("init", "init"),
            ("init=", "init="),
            ("init=/sbin/init/", "init=/sbin/init/"),
            ("quiet=1", "quiet=1"),
            ("console", "console"),
            ("Root=/dev/vda", "Root=/dev/vda"),
        ];
        for (line, word) in cases {
            assert_eq!(refused(&p, line), word, "{line}");
        }
    }

    /// Every route the readers' disagreement opened, as the attacker wrote
    /// it: refused by the byte grammar, naming the first offending byte.
    #[test]
    fn bytes_that_split_differently_for_another_reader_are_refused() {
        let p = BootPolicy::default();
        let cases: &[(&[u8], usize, u8)] = &[
            // The kernel's ctype counts 0xA0 as a space.
            (
                b"root=/dev/vda BOOT_IMAGE=x\xa0sysctl.kernel.domainname=evil",
                26,
                0xa0,
            ),
            // x86 early parsing splits at every byte <= 0x20.
            (b"BOOT_IMAGE=x\x01nokaslr", 12, 0x01),
            (b"BOOT_IMAGE=x\tnokaslr", 12, b'\t'),
            (b"BOOT_IMAGE=x\nnokaslr", 12, b'\n'),
            // ... and ignores double quotes.
            (b"BOOT_IMAGE=\"x nokaslr y\"", 11, b'"'),
            // systemd honours single quotes and backslashes.
            (
                b"BOOT_IMAGE='\"' 'systemd.unit=emergency.target' '\"'",
                11,
                b'\'',
            ),
            (
                b"console=ttyS0 BOOT_IMAGE=a\\ systemd.debug_shell",
                26,
                b'\\',
            ),
            // dracut's shell ignores quotes.
            (b"BOOT_IMAGE=\"x init=/var/evil y\"", 11, b'"'),
            (b"root=/dev/vda \"--\" x", 14, b'"'),
            (b"quiet \x7f", 6, 0x7f),
            (b"quiet \xc3\xa9", 6, 0xc3),
            (b"\x00", 0, 0),
        ];
        for &(line, offset, byte) in cases {
            assert_eq!(
                p.check_bytes(line),
                Err(PolicyError::ForbiddenByte { offset, byte }),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let e = p.check_bytes(b"BOOT_IMAGE=x\xa0y").unwrap_err().to_string();
        assert!(e.contains("0xa0 at offset 12"), "{e}");
    }

    /// systemd-boot 254 puts `initrd=<EFI path>` in front of a Type #1
    /// entry's options (the `%ls initrd=%ls` format in its binary): with the
    /// vendor's [`LOADER_INITRD_ENTRY`], those words, and only those, may
    /// carry backslashes.
    #[test]
    fn boot_loader_initrd_words_carry_backslashes_only_at_the_start() {
        let p = BootPolicy::new(vec![LOADER_INITRD_ENTRY.to_string()], None).unwrap();
        assert!(p.accepts_loader_initrd() && !BootPolicy::default().accepts_loader_initrd());
        let good = [
            format!("initrd=\\sealroot\\{HEX}\\initramfs.img root=/dev/vda composefs.digest=v1-sha256-12:{HEX}"),
            format!("initrd=\\a\\microcode.img initrd=\\sealroot\\{HEX}\\initramfs.img  quiet"),
            "initrd=\\EFI\\x\\initrd-6.12.9+bpo-cloud_amd64".to_string(),
            "initrd=\\initrd.img".to_string(),
        ];
        for line in &good {
            assert_eq!(p.check(line), Ok(()), "{line}");
            // Without the vendor's entry, the first backslash is refused.
            assert_eq!(
                BootPolicy::default().check(line),
                Err(PolicyError::ForbiddenByte {
                    offset: 7,
                    byte: b'\\'
                }),
                "{line}"
            );
        }
        // The entry is no pattern: it does not admit other backslashes.
        assert!(validate_entry(LOADER_INITRD_ENTRY).is_ok());
        for entry in ["initrd=\\a", "BOOT_IMAGE=\\", "initrd=\\\\"] {
            assert!(validate_entry(entry).is_err(), "{entry}");
        }
        let bad: &[(&str, usize)] = &[
            // Not at the start: after any other word the grammar is the usual one.
            ("quiet initrd=\\sealroot\\initramfs.img", 13),
            ("initrd=/x/y initrd=\\sealroot\\initramfs.img", 19),
            // A backslash before a space, the end, another backslash or a
            // quote: the whole word is not a path, so its first backslash is
            // refused.
            ("initrd=\\a\\ systemd.debug_shell", 7),
            ("initrd=\\a\\", 7),
            ("initrd=\\\\a", 7),
            ("initrd=\\a\\'x'", 7),
            ("initrd=\\a\\\"x", 7),
            // A key that only looks like it.
            ("Initrd=\\a", 7),
            ("initrd.x=\\a", 9),
            ("BOOT_IMAGE=\\vmlinuz", 11),
            // A byte outside the path bytes makes the word no path either.
            ("initrd=\\a*b", 7),
            ("initrd=\\a:b", 7),
        ];
        for &(line, offset) in bad {
            assert_eq!(
                p.check(line),
                Err(PolicyError::ForbiddenByte {
                    offset,
                    byte: b'\\'
                }),
                "{line}"
            );
        }
        let long = format!("initrd=\\{}", "a".repeat(MAX_EFI_INITRD_PATH));
        assert!(matches!(
            p.check(&long),
            Err(PolicyError::ForbiddenByte { offset: 7, .. })
        ));
    }

    #[test]
    fn any_value_entries_take_only_safe_bytes() {
        let p = BootPolicy::default();
        for (line, byte) in [
            ("BOOT_IMAGE=/boot/*", b'*'),
            ("console=tty?", b'?'),
            ("root=/dev/[v]da", b'['),
            ("BOOT_IMAGE=$(x)", b'$'),
            ("BOOT_IMAGE=a;b", b';'),
            ("BOOT_IMAGE=a|b", b'|'),
            ("loglevel=7`x`", b'`'),
            ("composefs.digest=v1-sha256-12:{x}", b'{'),
        ] {
            assert!(
                matches!(p.check(line), Err(PolicyError::UnsafeValue { byte: b, .. }) if b == byte),
                "{line}: {:?}",
                p.check(line)
            );
        }
    }

    #[test]
    fn insecure_digest_marker_is_named_as_such() {
        let p = BootPolicy::default();
        for line in [
            format!("composefs=?{HEX}"),
            format!("composefs.digest=?v1-sha256-12:{HEX}"),
            format!("composefs={HEX} composefs=?{HEX}"),
        ] {
            let e = p.check(&line).unwrap_err();
            assert!(matches!(e, PolicyError::InsecureDigest(_)), "{line}: {e:?}");
            assert!(e.to_string().contains("\"?\" insecure marker"), "{e}");
        }
    }

    #[test]
    fn rootflags_take_only_listed_mount_options() {
        let p = BootPolicy::default();
        assert_eq!(
            p.check("rootflags=noatime,,commit=5,errors=remount-ro"),
            Ok(())
        );
        for (line, option) in [
            (
                "rootflags=x-systemd.requires=debug-shell.service",
                "x-systemd.requires=debug-shell.service",
            ),
            ("rootflags=noatime,x-initrd.mount", "x-initrd.mount"),
            ("rootflags=journal_path=/dev/vdb", "journal_path=/dev/vdb"),
            (
                "rootflags=context=system_u:object_r:x:s0",
                "context=system_u:object_r:x:s0",
            ),
            ("rootflags=_netdev", "_netdev"),
        ] {
            assert_eq!(
                p.check(line),
                Err(PolicyError::RootflagNotAllowed {
                    option: option.to_string()
                }),
                "{line}"
            );
        }
        assert!(matches!(
            validate_entry("rootflags=x-systemd.requires=a"),
            Err(PolicyError::BadEntry { .. })
        ));
        assert_eq!(validate_entry("rootflags="), Ok(()));
    }

    #[test]
    fn failure_policy_words_are_refused_and_cannot_be_allowed() {
        let p = BootPolicy::default();
        for word in [
            "rd.emergency=reboot",
            "rd.emergency=halt",
            "rd.emergency=shell",
            "rd.emergency",
        ] {
            assert_eq!(
                p.check(&format!("quiet {word}")),
                Err(PolicyError::FailurePolicyWord {
                    word: word.to_string()
                })
            );
            assert!(matches!(
                validate_entry(word),
                Err(PolicyError::BadEntry { .. })
            ));
        }
        assert!(p
            .check("rd.emergency=reboot")
            .unwrap_err()
            .to_string()
            .contains("failure policy"));
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
            "a'b",
            "a\\b",
            "\u{a0}x",
            "BOOT_IMAGE=*",
            "x[1]",
            "rd.emergency=poweroff",
            "foo=a;b",
        ] {
            assert!(
                matches!(validate_entry(e), Err(PolicyError::BadEntry { .. })),
                "{e:?}"
            );
        }
        assert!(validate_entry(&"a".repeat(257)).is_err());
        for i in [
            "sbin/init",
            "",
            "/a b",
            "/a/../b",
            "/./x",
            "/bin/*",
            "/a'b",
            "/a\\b",
        ] {
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
        let w = refused(&p, &format!("x={}", "e".repeat(300)));
        assert!(w.len() <= cmdline::MAX_LOGGED + 3 && w.ends_with("..."));
    }
}
