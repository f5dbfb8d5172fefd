//! `sealctl embed-keys` on a prebuilt `sealroot`: a binary with key A
//! accepts A's seals and refuses B's, on the host, through
//! `sealroot check-seal` (the boot path's seal check against the binary's own
//! trust anchor; the image digest is computed in userspace because this
//! kernel has no fs-verity) and `sealroot --show-trust`.
//!
//! References independent of the code under test: key A is made by
//! `openssl genpkey`, its fingerprint computed from openssl's DER output; the
//! image is named by `fsverity digest` (fsverity-utils).
//!
//! The test binary is the `sealroot` cargo builds for this test run; the
//! size-tuned `boot` profile binary is checked when it has been built
//! (target/boot/sealroot) or when SEALROOT_TEST_BOOT_PROFILE=1 asks for the
//! build (it takes minutes on a busy machine).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{have, key as test_key, openssl_fingerprint, text};

const SEALROOT: &str = env!("CARGO_BIN_EXE_sealroot");
const SEALCTL: &str = env!("CARGO_BIN_EXE_sealctl");

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"))
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    key_a: PathBuf,
    key_a_pub: PathBuf,
    fp_a: String,
    fp_b: String,
    hex: String,
    repo_a: PathBuf,
    repo_b: PathBuf,
}

fn fixture() -> Option<Fixture> {
    if !have("openssl") || !have("fsverity") {
        common::missing("openssl or fsverity (fsverity-utils; scripts/setup installs them)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let key_a = root.join("a.pem");
    let key_a_pub = root.join("a.pub.pem");
    let o = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key_a)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key_a)
        .arg("-out")
        .arg(&key_a_pub)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let fp_a = openssl_fingerprint(&key_a_pub);
    let fp_b = openssl_fingerprint(Path::new(&test_key("other-test.pub.pem")));
    assert_ne!(fp_a, fp_b);

    // One image, named by fsverity-utils' digest, in two repositories:
    // sealed by A in one, by B in the other.
    let image: Vec<u8> = (0..20_000u32).map(|i| (i * 13 % 256) as u8).collect();
    let image_file = root.join("image");
    std::fs::write(&image_file, &image).unwrap();
    let hex = common::fsverity_utils_hex(&image_file);
    let mut repos = Vec::new();
    for (name, key) in [
        ("repo-a", key_a.to_string_lossy().into_owned()),
        ("repo-b", test_key("other-test.pem")),
    ] {
        let repo = root.join(name);
        std::fs::create_dir_all(repo.join("composefs/images")).unwrap();
        std::fs::write(repo.join("composefs/images").join(&hex), &image).unwrap();
        let o = run(
            SEALCTL,
            &[
                "sign",
                "--key",
                &key,
                "--repo",
                repo.to_str().unwrap(),
                &hex,
                "--serial",
                "3",
            ],
        );
        assert!(o.status.success(), "sealctl sign: {}", text(&o));
        repos.push(repo);
    }
    let repo_b = repos.pop().unwrap();
    let repo_a = repos.pop().unwrap();
    Some(Fixture {
        _dir: dir,
        root,
        key_a,
        key_a_pub,
        fp_a,
        fp_b,
        hex,
        repo_a,
        repo_b,
    })
}

fn embed(input: &str, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["embed-keys", "--binary", input, "--output"];
    args.push(output.to_str().unwrap());
    args.extend_from_slice(extra);
    run(SEALCTL, &args)
}

fn check(bin: &Path, repo: &Path, hex: &str) -> Output {
    run(
        bin.to_str().unwrap(),
        &["check-seal", "--repo", repo.to_str().unwrap(), hex],
    )
}

/// The whole accept/refuse matrix against one prebuilt sealroot binary.
fn matrix(f: &Fixture, base: &str) {
    let b_pub = test_key("other-test.pub.pem");
    let a_pub = f.key_a_pub.to_str().unwrap();

    // The unpatched binary in these builds has no keys: it refuses all.
    let o = check(Path::new(base), &f.repo_a, &f.hex);
    assert!(
        !o.status.success(),
        "unpatched binary accepted: {}",
        text(&o)
    );
    assert!(
        text(&o).contains("no compiled-in trusted keys"),
        "{}",
        text(&o)
    );

    // Key A embedded.
    let bin_a = f.root.join("sealroot-a");
    let o = embed(base, &bin_a, &["--key", a_pub]);
    assert!(o.status.success(), "embed A: {}", text(&o));
    let in_meta = std::fs::metadata(base).unwrap();
    let out_meta = std::fs::metadata(&bin_a).unwrap();
    assert_eq!(
        in_meta.permissions().mode() & 0o7777,
        out_meta.permissions().mode() & 0o7777
    );
    assert_eq!(in_meta.len(), out_meta.len());
    let before = std::fs::read(base).unwrap();
    let after = std::fs::read(&bin_a).unwrap();
    let changed: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    let span = changed.last().unwrap() - changed.first().unwrap();
    assert!(
        span < 8192,
        "bytes changed across {span} bytes, not one area"
    );

    let o = run(bin_a.to_str().unwrap(), &["--show-trust"]);
    let shown = text(&o);
    assert!(o.status.success(), "{shown}");
    assert!(shown.contains("policy: signed"), "{shown}");
    assert!(shown.contains(&format!("key: {}", f.fp_a)), "{shown}");
    assert!(!shown.contains(&f.fp_b), "{shown}");
    assert!(shown.contains("source: embedded"), "{shown}");
    let o = run(
        SEALCTL,
        &["embed-keys", "--binary", bin_a.to_str().unwrap(), "--show"],
    );
    assert!(text(&o).contains(&f.fp_a), "{}", text(&o));

    let o = check(&bin_a, &f.repo_a, &f.hex);
    assert!(
        o.status.success(),
        "A's binary refused A's seal: {}",
        text(&o)
    );
    assert!(text(&o).contains(&f.fp_a), "{}", text(&o));
    let o = check(&bin_a, &f.repo_b, &f.hex);
    assert!(
        !o.status.success(),
        "A's binary accepted B's seal: {}",
        text(&o)
    );
    assert!(
        text(&o).contains(&f.fp_b),
        "names the untrusted key: {}",
        text(&o)
    );

    // Re-embedding B into A's binary replaces the keys.
    let bin_b = f.root.join("sealroot-b");
    let o = embed(bin_a.to_str().unwrap(), &bin_b, &["--key", &b_pub]);
    assert!(o.status.success(), "embed B: {}", text(&o));
    assert!(check(&bin_b, &f.repo_b, &f.hex).status.success());
    assert!(!check(&bin_b, &f.repo_a, &f.hex).status.success());

    // Both keys: both seals.
    let bin_ab = f.root.join("sealroot-ab");
    let o = embed(base, &bin_ab, &["--key", a_pub, "--key", &b_pub]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(check(&bin_ab, &f.repo_a, &f.hex).status.success());
    assert!(check(&bin_ab, &f.repo_b, &f.hex).status.success());

    // Serial floor above the seals' serial 3: refused; at 3: accepted.
    let bin_floor = f.root.join("sealroot-floor");
    let o = embed(base, &bin_floor, &["--key", a_pub, "--serial-floor", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = check(&bin_floor, &f.repo_a, &f.hex);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("serial"), "{}", text(&o));
    let o = embed(base, &bin_floor, &["--key", a_pub, "--serial-floor", "3"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(check(&bin_floor, &f.repo_a, &f.hex).status.success());

    // sealed-digest: no keys, says so.
    let bin_sd = f.root.join("sealroot-sd");
    let o = embed(base, &bin_sd, &["--policy", "sealed-digest"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(bin_sd.to_str().unwrap(), &["--show-trust"]);
    assert!(text(&o).contains("policy: sealed-digest"), "{}", text(&o));
    assert!(!text(&o).contains("key:"), "{}", text(&o));

    // A tampered manifest is refused even with the right key.
    let tampered = f.root.join("repo-tampered");
    std::fs::create_dir_all(tampered.join("composefs")).unwrap();
    let o = Command::new("cp")
        .args(["-r"])
        .arg(f.repo_a.join("composefs/images"))
        .arg(f.repo_a.join("composefs/seals"))
        .arg(tampered.join("composefs"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let manifest = tampered
        .join("composefs/seals")
        .join(format!("{}.json", f.hex));
    let mut data = std::fs::read(&manifest).unwrap();
    let last = data.len() - 3;
    data[last] ^= 1;
    std::fs::write(&manifest, data).unwrap();
    let o = check(&bin_a, &tampered, &f.hex);
    assert!(!o.status.success(), "{}", text(&o));
}

/// `check-seal` runs the boot's own seal check (same beneath-fd opens):
/// seal files behind a symlink or replaced by a FIFO are refused the way the
/// boot refuses them, and the config's floor counts as at boot.
#[test]
fn check_seal_matrix_matches_the_boot() {
    let Some(f) = fixture() else { return };
    let bin = f.root.join("sealroot-matrix");
    let o = embed(SEALROOT, &bin, &["--key", f.key_a_pub.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let copy = |name: &str| {
        let repo = f.root.join(name);
        let o = Command::new("cp")
            .arg("-a")
            .arg(&f.repo_a)
            .arg(&repo)
            .output()
            .unwrap();
        assert!(o.status.success());
        repo
    };
    let hex = &f.hex;
    let expect_refused = |repo: &Path, line: &str| {
        let o = check(&bin, repo, hex);
        assert!(!o.status.success(), "accepted: {}", text(&o));
        assert!(text(&o).contains(line), "want {line:?}, got: {}", text(&o));
    };

    // A manifest that is a symlink (even to an identical file beside it).
    let linked = copy("repo-linked");
    let seals = linked.join("composefs/seals");
    std::fs::rename(seals.join(format!("{hex}.json")), seals.join("real.json")).unwrap();
    std::os::unix::fs::symlink("real.json", seals.join(format!("{hex}.json"))).unwrap();
    expect_refused(
        &linked,
        &format!("seal: composefs/seals/{hex}.json is a symlink or has one in its path"),
    );
    // The seals directory itself a symlink.
    let dirlinked = copy("repo-dirlinked");
    let c = dirlinked.join("composefs");
    std::fs::rename(c.join("seals"), c.join("real-seals")).unwrap();
    std::os::unix::fs::symlink("real-seals", c.join("seals")).unwrap();
    expect_refused(
        &dirlinked,
        &format!("seal: composefs/seals/{hex}.json is a symlink or has one in its path"),
    );
    // A FIFO in place of the signature: refused at once, never read (a
    // blocking read would hang the boot).
    let fifo = copy("repo-fifo");
    let sig = fifo.join(format!("composefs/seals/{hex}.sig"));
    std::fs::remove_file(&sig).unwrap();
    let o = Command::new("mkfifo").arg(&sig).output().unwrap();
    assert!(o.status.success());
    expect_refused(
        &fifo,
        &format!("seal: composefs/seals/{hex}.sig is not a regular file"),
    );
    // sealctl verify reads the same way and reports the same refusal.
    let o = run(
        SEALCTL,
        &[
            "verify",
            "--repo",
            fifo.to_str().unwrap(),
            "--key",
            f.key_a_pub.to_str().unwrap(),
            hex,
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("not a regular file"), "{}", text(&o));

    // The config's serial floor counts, as at boot: max(binary, config).
    let cfg = f.root.join("config.json");
    std::fs::write(&cfg, r#"{"serial_floor": 4}"#).unwrap();
    let with_config = |cfg: &Path| {
        run(
            bin.to_str().unwrap(),
            &[
                "check-seal",
                "--repo",
                f.repo_a.to_str().unwrap(),
                "--config",
                cfg.to_str().unwrap(),
                hex,
            ],
        )
    };
    let o = with_config(&cfg);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("seal serial 3 is below the minimum serial 4 (rollback refused)"),
        "{}",
        text(&o)
    );
    std::fs::write(&cfg, r#"{"serial_floor": 3}"#).unwrap();
    let o = with_config(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(floor 3)"), "{}", text(&o));
    // A broken config is refused, not skipped.
    std::fs::write(&cfg, r#"{"serial_floor": "x"}"#).unwrap();
    assert!(!with_config(&cfg).status.success());
}

/// The boot policy travels with the keys: embed extends the command-line
/// allowlist and replaces the init list; bad entries and a floor under
/// sealed-digest are refused before anything is written.
#[test]
fn boot_policy_is_embedded_and_shown() {
    let Some(f) = fixture() else { return };
    let a_pub = f.key_a_pub.to_str().unwrap();
    let bin = f.root.join("sealroot-policy");
    let o = embed(
        SEALROOT,
        &bin,
        &[
            "--key",
            a_pub,
            "--allow-cmdline",
            "no_timer_check",
            "--allow-cmdline",
            "systemd.firstboot=off",
            "--init",
            "/usr/bin/myinit",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(bin.to_str().unwrap(), &["--show-trust"]);
    let shown = text(&o);
    assert!(o.status.success(), "{shown}");
    for line in [
        "init: /usr/bin/myinit",
        "cmdline-allow: no_timer_check",
        "cmdline-allow: systemd.firstboot=off",
        "cmdline-allow: console=",
        "cmdline-allow: init=/usr/bin/myinit",
    ] {
        assert!(shown.lines().any(|l| l == line), "no {line:?} in:\n{shown}");
    }
    assert!(!shown.contains("init: /sbin/init"), "{shown}");
    // The default binary shows the default list.
    let o = embed(SEALROOT, &bin, &["--key", a_pub]);
    assert!(o.status.success(), "{}", text(&o));
    let shown = text(&run(bin.to_str().unwrap(), &["--show-trust"]));
    assert!(shown.contains("init: /sbin/init\n"), "{shown}");
    assert!(!shown.contains("no_timer_check"), "{shown}");

    for (extra, want) in [
        (vec!["--allow-cmdline", "a b"], "whitespace"),
        (vec!["--allow-cmdline", "init=/bin/sh"], "names init="),
        (vec!["--allow-cmdline=--"], "arguments to init"),
        (vec!["--init", "bin/sh"], "not an absolute path"),
    ] {
        let out = f.root.join("sealroot-bad");
        let mut args = vec!["--key", a_pub];
        args.extend(extra.iter().copied());
        let o = embed(SEALROOT, &out, &args);
        assert!(!o.status.success(), "{extra:?} accepted");
        assert!(text(&o).contains(want), "{extra:?}: {}", text(&o));
        assert!(!out.exists(), "{extra:?} wrote a binary");
    }
    let out = f.root.join("sealroot-sd-floor");
    let o = embed(
        SEALROOT,
        &out,
        &["--policy", "sealed-digest", "--serial-floor", "2"],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("cannot be enforced"), "{}", text(&o));
    assert!(!out.exists());
}

/// The TPM measurement policy travels with the keys too, and is shown.
#[test]
fn tpm_policy_is_embedded_and_shown() {
    let Some(f) = fixture() else { return };
    let a_pub = f.key_a_pub.to_str().unwrap();
    let bin = f.root.join("sealroot-tpm");
    let shown = |extra: &[&str]| {
        let mut args = vec!["--key", a_pub];
        args.extend_from_slice(extra);
        let o = embed(SEALROOT, &bin, &args);
        assert!(o.status.success(), "{}", text(&o));
        let o = run(bin.to_str().unwrap(), &["--show-trust"]);
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let s = shown(&[]);
    assert!(s.contains("\ntpm-pcr: 15\ntpm: optional\n"), "{s}");
    let s = shown(&["--tpm-pcr", "14", "--require-tpm"]);
    assert!(s.contains("\ntpm-pcr: 14\ntpm: required\n"), "{s}");
    let s = shown(&["--require-tpm"]);
    assert!(s.contains("\ntpm-pcr: 15\ntpm: required\n"), "{s}");
    for pcr in ["7", "16", "23", "0"] {
        let out = f.root.join("sealroot-bad-pcr");
        let o = embed(SEALROOT, &out, &["--key", a_pub, "--tpm-pcr", pcr]);
        assert!(!o.status.success(), "PCR {pcr} accepted");
        assert!(
            text(&o).contains(&format!("TPM PCR {pcr} is not allowed")),
            "{}",
            text(&o)
        );
        assert!(!out.exists());
    }
}

#[test]
fn key_a_binary_accepts_a_refuses_b() {
    let Some(f) = fixture() else { return };
    matrix(&f, SEALROOT);
}

#[test]
fn boot_profile_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("target/boot/sealroot");
    if std::env::var_os("SEALROOT_TEST_BOOT_PROFILE").is_some() {
        let o = Command::new(env!("CARGO"))
            .current_dir(root)
            .args([
                "build",
                "--profile",
                "boot",
                "--no-default-features",
                "--bin",
                "sealroot",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "cargo build: {}", text(&o));
    }
    if !bin.exists() {
        common::missing(&format!(
            "{} (set SEALROOT_TEST_BOOT_PROFILE=1 to build it here; scripts/test does)",
            bin.display()
        ));
        return;
    }
    let Some(f) = fixture() else { return };
    matrix(&f, bin.to_str().unwrap());
}

#[test]
fn refusals_leave_no_output() {
    let Some(f) = fixture() else { return };
    let out = f.root.join("out");
    let a_pub = f.key_a_pub.to_str().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        // signed without keys: every boot would be refused.
        (vec![], "no embedded trusted keys"),
        (
            vec![
                "--policy".into(),
                "sealed-digest".into(),
                "--key".into(),
                a_pub.into(),
            ],
            "sealed-digest uses no keys",
        ),
        // A private key is not a public key.
        (
            vec!["--key".into(), f.key_a.to_str().unwrap().into()],
            "key",
        ),
    ];
    for (extra, expect) in cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let o = embed(SEALROOT, &out, &extra);
        assert!(!o.status.success(), "{extra:?}: {}", text(&o));
        assert!(text(&o).contains(expect), "{extra:?}: {}", text(&o));
        assert!(text(&o).starts_with("sealctl embed-keys: "), "{}", text(&o));
        assert!(!out.exists());
    }

    // Not ELF; ELF without the section; two copies of the magic; a corrupt area.
    let not_elf = f.root.join("not-elf");
    std::fs::write(&not_elf, b"#!/bin/sh\n").unwrap();
    let o = embed(not_elf.to_str().unwrap(), &out, &["--key", a_pub]);
    assert!(text(&o).contains("not an ELF"), "{}", text(&o));
    if Path::new("/bin/true").exists() {
        let o = embed("/bin/true", &out, &["--key", a_pub]);
        assert!(
            text(&o).contains("no .sealroot_trust section"),
            "{}",
            text(&o)
        );
    }
    let mut data = std::fs::read(SEALROOT).unwrap();
    let magic_at = data
        .windows(16)
        .position(|w| w == b"SEALROOT-TRUST01")
        .unwrap();
    let mut doubled = data.clone();
    doubled.extend_from_slice(b"SEALROOT-TRUST01");
    let doubled_path = f.root.join("doubled");
    std::fs::write(&doubled_path, &doubled).unwrap();
    let o = embed(doubled_path.to_str().unwrap(), &out, &["--key", a_pub]);
    assert!(text(&o).contains("found 2 times"), "{}", text(&o));
    data[magic_at + 16..magic_at + 20].copy_from_slice(&9000u32.to_le_bytes());
    let corrupt = f.root.join("corrupt");
    std::fs::write(&corrupt, &data).unwrap();
    let o = embed(corrupt.to_str().unwrap(), &out, &["--key", a_pub]);
    assert!(text(&o).contains("does not decode"), "{}", text(&o));
    // And a binary carrying that corrupt area refuses to boot anything.
    std::fs::set_permissions(&corrupt, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run(corrupt.to_str().unwrap(), &["--show-trust"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("exceeds"), "{}", text(&o));
    assert!(!out.exists());
}
