//! Differential proof for the boot policy's byte grammar: every command line
//! the `signed` policy accepts is split into exactly sealroot's words by every
//! other reader of the line (models in `tests/readers/mod.rs`: the kernel's
//! `next_arg`, x86 early option lookups, systemd, dracut's `getarg` and
//! dracut's shell splitting), and the lines that are split differently are
//! refused. The models themselves are checked here against the real systemd
//! generator and the real dracut library where the machine has them (a
//! visible SKIP elsewhere, a failure under `CI=true`).

mod common;
mod readers;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use readers::Word;
use sealroot::boot::policy::{BootPolicy, LOADER_INITRD_ENTRY};

const HEX: &str = "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95";

/// A small deterministic generator (xorshift64), so every run tests the
/// same lines.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a>(&mut self, items: &[&'a [u8]]) -> &'a [u8] {
        items[self.below(items.len())]
    }
}

fn show(line: &[u8]) -> String {
    line.escape_ascii().to_string()
}

/// Whether sealroot's boot accepts `line` under the default signed policy:
/// what `read_cmdline` checks (the raw bytes of `/proc/cmdline` less its
/// newline), and `check` on the text agrees.
fn accepted(line: &[u8]) -> bool {
    let checked = readers::sealroot_line(line);
    let policy = loader_initrd_policy();
    let by_bytes = policy.check_bytes(&checked).is_ok();
    let text = String::from_utf8_lossy(&checked);
    assert_eq!(
        by_bytes,
        policy.check(&text).is_ok(),
        "check_bytes and check disagree on {}",
        show(line)
    );
    by_bytes
}

/// The default policy plus the vendor's opt-in to systemd-boot's leading
/// `initrd=<EFI path>` words: a superset of the default, so every line it
/// accepts must read alike too.
fn loader_initrd_policy() -> BootPolicy {
    BootPolicy::new(vec![LOADER_INITRD_ENTRY.to_string()], None).expect("the entry is valid")
}

/// The check before the byte grammar: every word allowed, nothing else.
/// The harness must catch its mistakes, or it proves nothing.
fn accepted_by_words_only(line: &[u8]) -> bool {
    let policy = BootPolicy::default();
    readers::sealroot_words(&readers::sealroot_line(line))
        .iter()
        .all(|w| {
            let key = String::from_utf8_lossy(&w.key);
            let value = w.value.as_ref().map(|v| String::from_utf8_lossy(v));
            policy.allows(&key, value.as_deref())
        })
}

// ---- (1) the known attack lines ----

/// A line, a reader that sees a word sealroot does not, and that word.
struct Attack {
    line: &'static [u8],
    reader: &'static str,
    smuggled: &'static [u8],
}

const ATTACKS: &[Attack] = &[
    // 0xA0 is a space in the kernel's ctype table: a raw byte, and the
    // second byte of U+00A0's UTF-8.
    Attack {
        line: b"BOOT_IMAGE=x\xa0sysctl.kernel.domainname=evil",
        reader: "kernel",
        smuggled: b"sysctl.kernel.domainname=evil",
    },
    Attack {
        line: b"BOOT_IMAGE=x\xa0sysctl.kernel.domainname=evil",
        reader: "dracut-getarg",
        smuggled: b"sysctl.kernel.domainname=evil",
    },
    Attack {
        line: b"BOOT_IMAGE=x\xc2\xa0sysctl.kernel.domainname=evil",
        reader: "kernel",
        smuggled: b"sysctl.kernel.domainname=evil",
    },
    // x86 early lookups and the shell ignore double quotes.
    Attack {
        line: b"BOOT_IMAGE=\"x nokaslr y\"",
        reader: "x86",
        smuggled: b"nokaslr",
    },
    Attack {
        line: b"BOOT_IMAGE=\"x nokaslr y\"",
        reader: "dracut-shell",
        smuggled: b"nokaslr",
    },
    // Every byte <= 0x20 separates for x86.
    Attack {
        line: b"BOOT_IMAGE=x\x01nokaslr",
        reader: "x86",
        smuggled: b"nokaslr",
    },
    // systemd's single quotes: for the kernel the double quotes swallow it
    // all into one BOOT_IMAGE= value.
    Attack {
        line: b"BOOT_IMAGE='\"' 'systemd.unit=emergency.target' '\"'",
        reader: "systemd",
        smuggled: b"systemd.unit=emergency.target",
    },
    Attack {
        line: b"BOOT_IMAGE=\"x init=/var/evil y\"",
        reader: "x86",
        smuggled: b"init=/var/evil",
    },
    Attack {
        line: b"BOOT_IMAGE=\"x init=/var/evil y\"",
        reader: "dracut-shell",
        smuggled: b"init=/var/evil",
    },
];

fn reader(name: &str) -> &'static readers::Reader {
    readers::READERS
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no reader {name}"))
}

#[test]
fn attack_lines_are_read_differently_and_refused() {
    for a in ATTACKS {
        let ours = readers::sealroot_words(&readers::sealroot_line(a.line));
        let smuggled = Word::split(a.smuggled);
        assert!(
            !ours.contains(&smuggled),
            "{}: sealroot itself sees {smuggled:?}: {ours:?}",
            show(a.line)
        );
        let theirs = (reader(a.reader).read)(a.line)
            .unwrap_or_else(|| panic!("{}: {} has no reading", show(a.line), a.reader));
        assert!(
            theirs.contains(&smuggled),
            "{}: {} does not see {smuggled:?}: {theirs:?} (sealroot: {ours:?})",
            show(a.line),
            a.reader
        );
        assert!(
            readers::disagreeing(a.line)
                .iter()
                .any(|(name, _)| *name == a.reader),
            "{}: {} not listed as disagreeing",
            show(a.line),
            a.reader
        );
        // The policy before the byte grammar let it through: the reason
        // for the grammar.
        assert!(
            accepted_by_words_only(a.line),
            "{}: a words-only check refuses it already",
            show(a.line)
        );
        assert!(!accepted(a.line), "{} is accepted", show(a.line));
    }
}

/// A reader's words, or none (see `readers`).
type Reading = Option<Vec<Word>>;

/// Facts each model must reproduce (from the readers' sources); pins the
/// models so that a change to one shows up here first.
#[test]
fn models_follow_their_sources() {
    let w = |s: &[u8]| Word::split(s);
    let bare = |k: &[u8]| Word::new(k, None);
    let cases: &[(&str, &[u8], Reading)] = &[
        // kernel: quotes group and are removed at the ends only.
        (
            "kernel",
            b"  a=\"b c\" \"d e\" f\"g h\"i \"j=k l\"\x0bm",
            Some(vec![
                w(b"a=b c"),
                bare(b"d e"),
                bare(b"f\"g h\"i"),
                w(b"j=k l"),
                bare(b"m"),
            ]),
        ),
        // kernel: an '=' at index 0 is not the separator; a later one is.
        ("kernel", b"=a=b", Some(vec![Word::new(b"=a", Some(b"b"))])),
        ("kernel", b"\"=a\"", Some(vec![bare(b"=a")])),
        // kernel: a key with a quote right before '=' keeps it.
        (
            "kernel",
            b"\"a\"=",
            Some(vec![Word::new(b"a\"", Some(b""))]),
        ),
        // kernel: the lone trailing quote reads outside the string.
        ("kernel", b"quiet \"", None),
        ("kernel", b"\xa0a\xa0", Some(vec![bare(b"a")])),
        // x86: no quotes, every byte <= 0x20 separates, 0xA0 does not.
        (
            "x86",
            b"a=\"b c\"\x01d\x7fe\xa0f",
            Some(vec![w(b"a=\"b"), bare(b"c\""), bare(b"d\x7fe\xa0f")]),
        ),
        // systemd: both quotes anywhere, backslash is a plain byte, \x0b is
        // not a separator, '' is an empty word.
        (
            "systemd",
            b"a='b \"c' d\\ e\x0bf '' g\"h i",
            Some(vec![
                w(b"a=b \"c"),
                bare(b"d\\"),
                bare(b"e\x0bf"),
                bare(b""),
                bare(b"gh i"),
            ]),
        ),
        // systemd reads /proc/cmdline's first line only.
        ("systemd", b"a\rb c\nd", Some(vec![bare(b"a")])),
        // dracut-getarg: the kernel's next_arg over the joined lines.
        (
            "dracut-getarg",
            b"a\n\tb=\"c d\"\xa0e ",
            Some(vec![bare(b"a"), w(b"b=c d"), bare(b"e")]),
        ),
        ("dracut-getarg", b"a \"", None),
        // dracut-shell: IFS splitting, quotes are bytes, globs unknown.
        (
            "dracut-shell",
            b"a=\"b c\"\x0bd\xa0e\\",
            Some(vec![w(b"a=\"b"), bare(b"c\"\x0bd\xa0e\\")]),
        ),
        ("dracut-shell", b"root=/dev/vd?", None),
        ("dracut-shell", b"a[b]", None),
    ];
    for (name, line, want) in cases {
        assert_eq!(&(reader(name).read)(line), want, "{name} on {}", show(line));
    }
    assert_eq!(
        readers::dracut_cmdline(b" a \tb\t\n c\n"),
        b"   a \tb c ".to_vec()
    );
    assert_eq!(readers::boot_line(b"a b\0c"), b"a b");
    assert_eq!(
        readers::boot_line(&[b'a'; 3000]).len(),
        readers::COMMAND_LINE_SIZE - 1
    );
}

// ---- (2) every accepted line reads alike ----

/// Words the default policy accepts.
const ALLOWED_WORDS: &[&[u8]] = &[
    b"BOOT_IMAGE=/vmlinuz-6.12.9+bpo-cloud-amd64",
    b"BOOT_IMAGE=(hd0,gpt2)/vmlinuz",
    b"root=/dev/vda",
    b"root=UUID=0a1b-02",
    b"root=PARTUUID=0a1b-02",
    b"rootfstype=ext4",
    b"rootflags=noatime,commit=5",
    b"rootwait",
    b"rootdelay=3",
    b"ro",
    b"rw",
    b"quiet",
    b"console=ttyS0,115200n8",
    b"console=tty0",
    b"earlycon",
    b"earlycon=uart8250,io,0x3f8",
    b"earlyprintk=ttyS0",
    b"loglevel=3",
    b"panic=10",
    b"sealroot.wait=5",
    b"sealroot.debug",
    b"rd.shell=0",
    b"initrd=/EFI/x/initrd",
    // systemd-boot's form: allowed only in the leading run (random_line puts
    // some there); anywhere else the byte grammar refuses the backslash.
    b"initrd=\\sealroot\\3d248ca5\\initramfs.img",
    b"init=/sbin/init",
    b"init=/usr/lib/systemd/systemd",
];

/// `initrd=` words as systemd-boot 254 writes them (EFI paths), and near
/// misses a reader that took the backslash for an escape would split or
/// join differently.
const LOADER_INITRD_WORDS: &[&[u8]] = &[
    b"initrd=\\sealroot\\3d248ca5\\initramfs.img",
    b"initrd=\\EFI\\x\\initrd-6.12+bpo_amd64",
    b"initrd=\\a\\",
    b"initrd=\\a\\\\b",
    b"initrd=\\a\\ systemd.debug_shell",
    b"initrd=\\a\\'x systemd.debug_shell'",
];

/// Words some reader acts on and the policy must never pass.
const HOSTILE_WORDS: &[&[u8]] = &[
    b"nokaslr",
    b"nopti",
    b"systemd.unit=emergency.target",
    b"init=/var/evil",
    b"rd.break",
    b"--",
    b"sysctl.kernel.domainname=evil",
    b"single",
    b"s",
    b"LD_PRELOAD=/x.so",
    b"rd.emergency=reboot",
];

/// Bytes dropped into a line at random places: every byte class some reader
/// treats specially.
const FRAGMENTS: &[&[u8]] = &[
    b"\"",
    b"'",
    b"\\",
    b"*",
    b"?",
    b"[",
    b"]",
    b"=",
    b"x",
    b"/",
    b" ",
    b"  ",
    b"\t",
    b"\n",
    b"\r",
    b"\x0b",
    b"\x0c",
    b"\xa0",
    b"\xc2\xa0",
    b"\x01",
    b"\x1f",
    b"\x7f",
    b"\x85",
    b" nokaslr",
    b"\xa0init=/var/evil",
    b"\" systemd.unit=emergency.target \"",
    b"' systemd.unit=emergency.target '",
];

fn random_line(rng: &mut Rng) -> Vec<u8> {
    let digest_new = format!("composefs.digest=v1-sha256-12:{HEX}");
    let digest_old = format!("composefs={HEX}");
    let mut line = Vec::new();
    // What systemd-boot puts in front of a Type #1 entry's options.
    if rng.chance(25) {
        for _ in 0..1 + rng.below(2) {
            line.extend_from_slice(rng.pick(LOADER_INITRD_WORDS));
            line.push(b' ');
        }
    }
    if rng.chance(15) {
        line.extend_from_slice(rng.pick(&[b" ", b"   "]));
    }
    let n = 1 + rng.below(8);
    for i in 0..n {
        if i > 0 {
            line.extend_from_slice(rng.pick(&[b" ", b" ", b" ", b"  "]));
        }
        let word: &[u8] = match rng.below(20) {
            0 => rng.pick(HOSTILE_WORDS),
            1 => digest_new.as_bytes(),
            2 => digest_old.as_bytes(),
            _ => rng.pick(ALLOWED_WORDS),
        };
        line.extend_from_slice(word);
    }
    if rng.chance(15) {
        line.extend_from_slice(rng.pick(&[b" ", b"  "]));
    }
    if rng.chance(50) {
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(line.len() + 1);
            let frag = rng.pick(FRAGMENTS);
            line.splice(at..at, frag.iter().copied());
        }
    }
    line
}

#[test]
fn accepted_lines_read_alike_by_every_reader() {
    let mut rng = Rng::new(0x5ea1_2007);
    let (mut accepted_n, mut refused_split, mut weak_caught) = (0usize, 0usize, 0usize);
    let (mut multi_space, mut loader_initrd) = (0usize, 0usize);
    for _ in 0..20_000 {
        let line = random_line(&mut rng);
        let disagree = readers::disagreeing(&line);
        if accepted(&line) {
            accepted_n += 1;
            if line.windows(2).any(|w| w == b"  ") || line.first() == Some(&b' ') {
                multi_space += 1;
            }
            if line.contains(&b'\\') {
                loader_initrd += 1;
            }
            assert!(
                disagree.is_empty(),
                "accepted line {} is read differently: sealroot {:?}, {:?}",
                show(&line),
                readers::sealroot_words(&readers::sealroot_line(&line)),
                disagree
            );
        } else if !disagree.is_empty() {
            refused_split += 1;
        }
        if accepted_by_words_only(&line) && !disagree.is_empty() {
            weak_caught += 1;
        }
    }
    eprintln!(
        "{accepted_n} accepted ({multi_space} with extra spaces, {loader_initrd} with \
         systemd-boot's initrd= words), {refused_split} refused \
         lines read differently, {weak_caught} a words-only check would have let through"
    );
    // Not vacuous: many accepted lines, with spacing variety; many lines the
    // readers split differently (all refused); and the same harness catches
    // a policy without the byte grammar.
    assert!(accepted_n >= 1000, "only {accepted_n} lines accepted");
    assert!(
        multi_space >= 100,
        "only {multi_space} accepted lines with extra spaces"
    );
    assert!(
        loader_initrd >= 500,
        "only {loader_initrd} accepted lines with systemd-boot's initrd= words"
    );
    assert!(
        refused_split >= 1000,
        "only {refused_split} refused lines split differently"
    );
    assert!(
        weak_caught >= 100,
        "the words-only check was caught only {weak_caught} times"
    );
}

// ---- the models against the real readers ----

fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.exists())
}

/// What `systemd-debug-generator` wrote: masked units and `(target, unit)`
/// wants links.
#[derive(Debug, Default, PartialEq, Eq)]
struct Generated {
    masks: BTreeSet<Vec<u8>>,
    wants: BTreeSet<(Vec<u8>, Vec<u8>)>,
}

fn run_debug_generator(generator: &Path, line: &[u8]) -> Generated {
    let out = tempfile::tempdir().unwrap();
    let dirs = ["normal", "early", "late"].map(|d| out.path().join(d));
    for d in &dirs {
        std::fs::create_dir(d).unwrap();
    }
    let run = Command::new(generator)
        .args(&dirs)
        .env_clear()
        .env("SYSTEMD_PROC_CMDLINE", OsStr::from_bytes(line))
        // Hermetic: no SystemdOptions EFI variable, not in an initrd.
        .env("SYSTEMD_EFI_OPTIONS", "")
        .env("SYSTEMD_IN_INITRD", "0")
        .env("SYSTEMD_LOG_LEVEL", "crit")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{} failed on {}: {}",
        generator.display(),
        show(line),
        String::from_utf8_lossy(&run.stderr)
    );
    let mut g = Generated::default();
    for d in &dirs {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().as_bytes().to_vec();
            let ty = e.file_type().unwrap();
            if ty.is_symlink() && std::fs::read_link(e.path()).unwrap() == Path::new("/dev/null") {
                g.masks.insert(name);
            } else if ty.is_dir() && name.ends_with(b".wants") {
                let target = name[..name.len() - b".wants".len()].to_vec();
                for u in std::fs::read_dir(e.path()).unwrap() {
                    let u = u.unwrap().file_name().as_bytes().to_vec();
                    g.wants.insert((target.clone(), u));
                }
            } else {
                panic!("{}: unexpected output {}", show(line), e.path().display());
            }
        }
    }
    g
}

/// `unit_name_mangle` of a value: the value itself when it is already a
/// plain unit name, else what the real `systemd-escape --mangle` says
/// (`None`: mangling fails, and the generator stops parsing there).
fn mangle(escape: &Path, value: &[u8]) -> Option<Vec<u8>> {
    let plain = |suffix: &[u8]| {
        value.len() > suffix.len()
            && value.ends_with(suffix)
            && value[..value.len() - suffix.len()]
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if plain(b".service") || plain(b".target") {
        return Some(value.to_vec());
    }
    let out = Command::new(escape)
        .arg("--mangle")
        .arg("--")
        .arg(OsStr::from_bytes(value))
        .env("SYSTEMD_LOG_LEVEL", "crit")
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let mut name = out.stdout;
    assert_eq!(name.pop(), Some(b'\n'));
    Some(name)
}

/// What the debug generator must write for the model's words, in the
/// generator's terms (`src/debug-generator/debug-generator.c`): each
/// `systemd.mask=` and `systemd.wants=` value mangled into a unit name (a
/// failure ends the parse), the last `systemd.unit=` names the target whose
/// `.wants` gets the wants (default `default.target`); words without a value
/// are ignored.
fn expected_generated(escape: &Path, words: &[Word]) -> Generated {
    let mut g = Generated::default();
    let mut wants = Vec::new();
    let mut unit: Option<Vec<u8>> = None;
    for w in words {
        let Some(v) = &w.value else { continue };
        match w.key.as_slice() {
            b"systemd.mask" => match mangle(escape, v) {
                Some(n) => {
                    g.masks.insert(n);
                }
                None => break,
            },
            b"systemd.wants" => match mangle(escape, v) {
                Some(n) => wants.push(n),
                None => break,
            },
            b"systemd.unit" => unit = Some(v.clone()),
            _ => {}
        }
    }
    let target = unit.unwrap_or_else(|| b"default.target".to_vec());
    for n in wants {
        g.wants.insert((target.clone(), n));
    }
    g
}

/// Noise for the generator lines: quotes, backslashes and every byte class
/// that splits for some reader, but no letters that could make a runlevel
/// word (`s`, `1`, `rescue`, ...) or an `rd.` word.
const SYSTEMD_NOISE: &[&[u8]] = &[
    b"\"",
    b"'",
    b"\\",
    b" ",
    b"  ",
    b"\t",
    b"\n",
    b"\r",
    b"\x0b",
    b"\x0c",
    b"\xa0",
    b"\xc2\xa0",
    b"\x01",
    b"x",
    b"y=z",
    b"=",
    b"BOOT_IMAGE=",
    b"'\"'",
];

fn random_systemd_line(rng: &mut Rng) -> Vec<u8> {
    let mut line = Vec::new();
    for n in 0..2 + rng.below(7) {
        if rng.chance(50) {
            let probe = match rng.below(3) {
                0 => format!("systemd.mask=p{n}.service"),
                1 => format!("systemd.wants=w{n}.service"),
                _ => format!("systemd.unit=u{n}.target"),
            };
            line.extend_from_slice(probe.as_bytes());
        } else {
            line.extend_from_slice(rng.pick(SYSTEMD_NOISE));
        }
        if rng.chance(60) {
            line.push(b' ');
        }
    }
    line
}

#[test]
fn systemd_model_matches_the_real_debug_generator() {
    let generator = first_existing(&[
        "/usr/lib/systemd/system-generators/systemd-debug-generator",
        "/lib/systemd/system-generators/systemd-debug-generator",
    ]);
    let escape = first_existing(&["/usr/bin/systemd-escape", "/bin/systemd-escape"]);
    let (Some(generator), Some(escape)) = (generator, escape) else {
        common::missing("systemd-debug-generator and systemd-escape (package systemd)");
        return;
    };
    let mut lines: Vec<Vec<u8>> = [
        &b"BOOT_IMAGE='\"' 'systemd.unit=emergency.target' '\"' systemd.wants=probe.service"[..],
        b"x \"systemd.unit=rescue.target\" systemd.wants=probe.service",
        b"x systemd.unit=\"u1.target systemd.mask=p1.service\" systemd.wants=w.service",
        b"x\\ systemd.mask=p1.service \"q systemd.mask=p2.service\" systemd.mask=p3.service",
        b"systemd.mask=p1.service\x0bsystemd.mask=p2.service\tsystemd.mask=p3.service",
        b"systemd.mask=p1.service\xa0systemd.mask=p2.service",
        b"BOOT_IMAGE=x\rsystemd.mask=p1.service\nsystemd.mask=p2.service",
        b"systemd.mask='p1.service systemd.mask=p2.service",
        b"systemd.mask=p1.service systemd.mask= systemd.mask=p2.service",
        b"systemd.mask systemd.wants=w1.service",
    ]
    .iter()
    .map(|l| l.to_vec())
    .collect();
    let mut rng = Rng::new(0x5d_0254);
    lines.extend((0..200).map(|_| random_systemd_line(&mut rng)));
    let mut differs_from_kernel = 0;
    for line in &lines {
        let words = readers::systemd_split(line);
        let want = expected_generated(&escape, &words);
        let got = run_debug_generator(&generator, line);
        assert_eq!(
            got,
            want,
            "{}: the generator disagrees with the model's words {words:?}",
            show(line)
        );
        if readers::kernel(line).is_some_and(|k| k != words) {
            differs_from_kernel += 1;
        }
    }
    // The lines exercised systemd's own splitting, not only plain spaces.
    assert!(differs_from_kernel >= 50, "{differs_from_kernel}");
    // The first line: systemd really sees the quoted systemd.unit=.
    let first = run_debug_generator(&generator, &lines[0]);
    assert!(first
        .wants
        .contains(&(b"emergency.target".to_vec(), b"probe.service".to_vec())));
}

/// Directories holding a dracut (`modules.d/99base/dracut-lib.sh` and
/// `dracut-util`): the host's, and those `scripts/setup.d/55-dracut-readers`
/// unpacks under build/dracut-readers/.
fn dracut_roots() -> Vec<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/lib/dracut")];
    let unpacked = Path::new(env!("CARGO_MANIFEST_DIR")).join("build/dracut-readers");
    if let Ok(dir) = std::fs::read_dir(&unpacked) {
        let mut found: Vec<PathBuf> = dir
            .map(|e| e.unwrap().path().join("usr/lib/dracut"))
            .collect();
        found.sort();
        candidates.extend(found);
    }
    candidates
        .into_iter()
        .filter(|d| {
            d.join("modules.d/99base/dracut-lib.sh").is_file() && d.join("dracut-util").is_file()
        })
        .collect()
}

/// One dracut, set up to read a fake `/proc/cmdline`: a copy of
/// `dracut-lib.sh` whose `/proc/cmdline` is `cmdline` and whose
/// `/etc/cmdline` (and `.d`) do not exist, and `dracut-getarg` on `PATH`.
struct Dracut {
    _dir: tempfile::TempDir,
    lib: PathBuf,
    cmdline: PathBuf,
    cwd: PathBuf,
    path: String,
}

impl Dracut {
    fn new(root: &Path) -> Dracut {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(root.join("dracut-util"), bin.join("dracut-getarg")).unwrap();
        std::os::unix::fs::symlink(root.join("dracut-util"), bin.join("dracut-getargs")).unwrap();
        let text = std::fs::read(root.join("modules.d/99base/dracut-lib.sh")).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("done < /proc/cmdline"),
            "getcmdline no longer reads /proc/cmdline as expected"
        );
        let no_etc = dir.path().join("no-etc-cmdline");
        let text = text
            .replace("/proc/cmdline", cmdline.to_str().unwrap())
            .replace("/etc/cmdline", no_etc.to_str().unwrap());
        let lib = dir.path().join("dracut-lib.sh");
        std::fs::write(&lib, text).unwrap();
        // Pattern expansion runs here: one file, for the glob check.
        let cwd = dir.path().join("cwd");
        std::fs::create_dir(&cwd).unwrap();
        std::fs::write(cwd.join("rd.break"), "").unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Dracut {
            _dir: dir,
            lib,
            cmdline,
            cwd,
            path,
        }
    }

    /// The real `getcmdline`, the fields of `for _o in $CMDLINE` and, for
    /// each key, `getarg`'s exit status and output.
    fn read(&self, shell: &Path, line: &[u8], keys: &[Vec<u8>]) -> DracutReading {
        // PREFIX keeps the library from setting up /run/initramfs and
        // /var/log; DRACUT_SYSTEMD keeps warn/info off /dev/kmsg.
        const SCRIPT: &str = r#"
wait_for_dev() { :; }
PREFIX=/nonexistent DRACUT_SYSTEMD=1 NEWROOT=
lib=$1; shift
. "$lib"
printf 'C%s\0' "$(getcmdline)"
CMDLINE=$(getcmdline)
for _o in $CMDLINE; do printf 'F%s\0' "$_o"; done
for k in "$@"; do
  v=$(getarg "$k"); rc=$?
  printf 'K%s:%s\0' "$rc" "$v"
done
"#;
        std::fs::write(&self.cmdline, readers::proc_cmdline(line)).unwrap();
        let out = Command::new(shell)
            .arg("-c")
            .arg(SCRIPT)
            .arg("dracut-reader")
            .arg(&self.lib)
            .args(keys.iter().map(|k| OsStr::from_bytes(k)))
            .current_dir(&self.cwd)
            .env_clear()
            .env("PATH", &self.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} failed on {}: {}",
            shell.display(),
            show(line),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut r = DracutReading::default();
        for rec in out.stdout.split(|&b| b == 0).filter(|r| !r.is_empty()) {
            let (tag, body) = (rec[0], &rec[1..]);
            match tag {
                b'C' => r.cmdline = body.to_vec(),
                b'F' => r.fields.push(body.to_vec()),
                b'K' => {
                    let colon = body.iter().position(|&b| b == b':').unwrap();
                    let rc = std::str::from_utf8(&body[..colon])
                        .unwrap()
                        .parse()
                        .unwrap();
                    r.getarg.push((rc, body[colon + 1..].to_vec()));
                }
                _ => panic!("unexpected output {}", show(rec)),
            }
        }
        assert_eq!(r.getarg.len(), keys.len(), "{}", show(&out.stdout));
        r
    }
}

#[derive(Debug, Default)]
struct DracutReading {
    cmdline: Vec<u8>,
    fields: Vec<Vec<u8>>,
    getarg: Vec<(i32, Vec<u8>)>,
}

/// `getarg key` from the model's words (`dracut-util`'s `getarg`): the
/// last word with that key decides; with a value it is printed (exit 0),
/// without one it is a flag (exit 0, nothing printed); no such word, exit 1.
/// No reading (the crash): exit 1, nothing printed.
fn expected_getarg(words: Option<&[Word]>, key: &[u8]) -> (i32, Vec<u8>) {
    let Some(words) = words else {
        return (1, Vec::new());
    };
    match words.iter().rev().find(|w| w.key == key) {
        Some(w) => (0, w.value.clone().unwrap_or_default()),
        None => (1, Vec::new()),
    }
}

#[test]
fn dracut_models_match_real_dracut() {
    let roots = dracut_roots();
    if roots.is_empty() {
        common::missing(
            "dracut's dracut-lib.sh and dracut-util (/usr/lib/dracut, or build/dracut-readers/ \
             from scripts/setup.d/55-dracut-readers)",
        );
        return;
    }
    let mut shells = vec![PathBuf::from("/bin/sh")];
    shells.extend(first_existing(&["/bin/bash", "/usr/bin/bash"]));
    let mut lines: Vec<Vec<u8>> = ATTACKS.iter().map(|a| a.line.to_vec()).collect();
    lines.extend(
        [
            &b"quiet \""[..],
            b"a=1 \"",
            b"  a=1\t b \t",
            b"a=1\nb=2\n\n c=\"3 4\"",
            b"a=1\rb=2",
            b"x\x0binit=/e\x0cy",
            b"a=\"b c\" a d=e a=f",
            b"root=/dev/vda init=/sbin/init -- init=/bin/sh",
            b"\"init=/bin/sh x\"",
            b"BOOT_IMAGE=x\x01init=/e",
            b"BOOT_IMAGE=x rd.brea?",
        ]
        .iter()
        .map(|l| l.to_vec()),
    );
    let mut rng = Rng::new(0xd7ac_0059);
    lines.extend((0..60).map(|_| random_line(&mut rng)));
    let fixed_keys: &[&[u8]] = &[b"init", b"nokaslr", b"systemd.unit", b"rd.break", b"root"];
    let mut checked = BTreeMap::new();
    for root in &roots {
        let dracut = Dracut::new(root);
        for shell in &shells {
            let mut globbed = 0;
            for line in &lines {
                let getarg_words = readers::dracut_getarg(line);
                let mut keys: Vec<Vec<u8>> = fixed_keys.iter().map(|k| k.to_vec()).collect();
                for w in getarg_words.iter().flatten() {
                    // getarg cannot ask for an empty key, one with '='
                    // (its argument splits there) or one starting with '-'
                    // (an option).
                    let askable = !w.key.is_empty() && w.key[0] != b'-' && !w.key.contains(&b'=');
                    if askable && !keys.contains(&w.key) {
                        keys.push(w.key.clone());
                    }
                }
                keys.truncate(10);
                let real = dracut.read(shell, line, &keys);
                let what = format!(
                    "{} with {} on {}",
                    root.display(),
                    shell.display(),
                    show(line)
                );
                assert_eq!(
                    show(&real.cmdline),
                    show(&readers::dracut_cmdline(line)),
                    "getcmdline, {what}"
                );
                match readers::dracut_shell(line) {
                    Some(words) => {
                        let want: Vec<String> = words.iter().map(|w| show(&w.text())).collect();
                        let got: Vec<String> = real.fields.iter().map(|f| show(f)).collect();
                        assert_eq!(got, want, "for _o in $CMDLINE, {what}");
                    }
                    None => globbed += 1,
                }
                for (key, got) in keys.iter().zip(&real.getarg) {
                    let want = expected_getarg(getarg_words.as_deref(), key);
                    assert_eq!(
                        (got.0, show(&got.1)),
                        (want.0, show(&want.1)),
                        "getarg {}, {what}",
                        show(key)
                    );
                }
            }
            assert!(globbed > 0, "no line exercised pathname expansion");
            // The reason dracut-shell answers None for patterns: the shell
            // really turns `rd.brea?` into the file `rd.break`.
            let real = dracut.read(shell, b"BOOT_IMAGE=x rd.brea?", &[]);
            assert!(
                real.fields.contains(&b"rd.break".to_vec()),
                "{:?}",
                real.fields
            );
            checked.insert(
                format!("{} {}", root.display(), shell.display()),
                lines.len(),
            );
        }
    }
    eprintln!("checked against real dracut: {checked:?}");
}
