//! Runs the real `sealroot prepare` binary against repositories on the host.
//!
//! The host kernel has no fs-verity, so no run here can get past measuring:
//! these tests check that every bad input is refused with its specific line,
//! that measuring fails closed with the "not supported" line, and that
//! nothing gets mounted. Mounting with verity is exercised by the QEMU
//! harness (tests/qemu).

use std::path::{Path, PathBuf};
use std::process::Command;

const A: &str = "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95";
const B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

struct Run {
    code: Option<i32>,
    stderr: String,
}

/// A physical root with `composefs/{images,objects,seals}` and no config.
struct Sysroot {
    dir: tempfile::TempDir,
}

impl Sysroot {
    fn new() -> Sysroot {
        let dir = tempfile::tempdir().unwrap();
        for d in ["composefs/images", "composefs/objects", "composefs/seals"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Sysroot { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn image(&self, hex: &str) -> PathBuf {
        self.path().join("composefs/images").join(hex)
    }

    fn add_image(&self, hex: &str) {
        std::fs::write(self.image(hex), vec![0u8; 8192]).unwrap();
    }

    fn run(&self, cmdline: &str) -> Run {
        self.run_with_config(cmdline, &self.path().join("no-config.json"))
    }

    fn run_with_config(&self, cmdline: &str, config: &Path) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_sealroot"))
            .env("SEALROOT_LOG", "stderr")
            .arg("prepare")
            .arg("--sysroot")
            .arg(self.path())
            .arg("--cmdline")
            .arg(cmdline)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        Run {
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

/// Exit status 1, the exact refusal line, and no mount left behind.
fn assert_refused(sys: &Sysroot, run: &Run, line: &str) {
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    let want = format!("sealroot: refusing to boot: {line}");
    assert!(
        run.stderr.lines().any(|l| l == want),
        "missing line\n  {want}\nin stderr:\n{}",
        run.stderr
    );
    assert!(!run.stderr.contains("composed root ready"));
    let mi = mountinfo();
    let p = sys.path().to_str().unwrap();
    assert!(!mi.contains(p), "something is mounted under {p}:\n{mi}");
    assert!(
        !mi.contains("/run/sealroot/mnt"),
        "scratch mount left behind:\n{mi}"
    );
}

#[test]
fn measuring_fails_closed_without_fs_verity() {
    let sys = Sysroot::new();
    sys.add_image(A);
    let run = sys.run(&format!("root=/dev/vda composefs.digest=v1-sha256-12:{A}"));
    assert!(run.stderr.contains(&format!(
        "sealroot: expected digest v1-sha256-12:{A} (from kernel command line)"
    )));
    // ext4 without -O verity answers EOPNOTSUPP, tmpfs ENOTTY: both mean
    // "cannot measure here" and both must stop the boot.
    let errno = if run.stderr.contains("(ENOTTY)") {
        "ENOTTY"
    } else {
        "EOPNOTSUPP"
    };
    assert_refused(
        &sys,
        &run,
        &format!(
            "cannot measure image composefs/images/{A}: fs-verity not supported by this kernel or filesystem ({errno})"
        ),
    );
    assert!(!run.stderr.contains("sealroot: measured"));
}

#[test]
fn symlink_into_objects_is_followed_and_still_measured() {
    let sys = Sysroot::new();
    let obj_dir = sys.path().join("composefs/objects/3d");
    std::fs::create_dir_all(&obj_dir).unwrap();
    std::fs::write(obj_dir.join(&A[2..]), b"image bytes").unwrap();
    std::os::unix::fs::symlink(format!("../objects/3d/{}", &A[2..]), sys.image(A)).unwrap();
    let run = sys.run(&format!("composefs={A}"));
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("fs-verity not supported"),
        "{}",
        run.stderr
    );
}

#[test]
fn symlink_out_of_the_repository_is_refused() {
    let sys = Sysroot::new();
    std::fs::write(sys.path().join("outside"), b"x").unwrap();
    std::os::unix::fs::symlink("../../outside", sys.image(A)).unwrap();
    let run = sys.run(&format!("composefs={A}"));
    assert_refused(
        &sys,
        &run,
        &format!(
            "composefs/images/{A} resolves outside the repository (symlink escaping composefs/)"
        ),
    );
    std::fs::remove_file(sys.image(A)).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", sys.image(A)).unwrap();
    let run = sys.run(&format!("composefs={A}"));
    assert_refused(
        &sys,
        &run,
        &format!(
            "composefs/images/{A} resolves outside the repository (symlink escaping composefs/)"
        ),
    );
}

#[test]
fn missing_image() {
    let sys = Sysroot::new();
    let run = sys.run(&format!("composefs.digest=v1-sha256-12:{A}"));
    assert_refused(&sys, &run, &format!("composefs/images/{A} does not exist"));
}

#[test]
fn image_that_is_not_a_regular_file() {
    let sys = Sysroot::new();
    std::fs::create_dir(sys.image(A)).unwrap();
    let run = sys.run(&format!("composefs={A}"));
    assert_refused(
        &sys,
        &run,
        &format!("composefs/images/{A} is not a regular file"),
    );
    std::fs::remove_dir(sys.image(A)).unwrap();
    // A FIFO must be refused too, without hanging on open.
    let st = Command::new("mkfifo").arg(sys.image(A)).status().unwrap();
    assert!(st.success());
    let run = sys.run(&format!("composefs={A}"));
    assert_refused(
        &sys,
        &run,
        &format!("composefs/images/{A} is not a regular file"),
    );
}

#[test]
fn insecure_marker_refused() {
    let sys = Sysroot::new();
    sys.add_image(A);
    let run = sys.run(&format!("composefs=?{A}"));
    assert_refused(
        &sys,
        &run,
        "composefs= has the \"?\" insecure marker; sealroot never boots without verity",
    );
}

#[test]
fn malformed_digest_refused() {
    let sys = Sysroot::new();
    sys.add_image(A);
    let run = sys.run(&format!("composefs.digest=v1-sha256-12:{}", &A[..60]));
    assert_refused(
        &sys,
        &run,
        "malformed composefs.digest= parameter: digest has 60 hex characters, expected 64",
    );
    let run = sys.run(&format!(
        "composefs.digest=v1-sha256-12:{} composefs={A}",
        A.to_uppercase()
    ));
    assert_refused(
        &sys,
        &run,
        "malformed composefs.digest= parameter: digest has a character that is not lowercase hex at offset 1",
    );
}

#[test]
fn no_digest_refused() {
    let sys = Sysroot::new();
    let run = sys.run("root=/dev/vda ro quiet");
    assert_refused(
        &sys,
        &run,
        "no composefs.digest= on the kernel command line and no digest in /etc/sealroot/config.json",
    );
}

#[test]
fn second_digest_parameter_is_ignored_first_wins() {
    let sys = Sysroot::new();
    // Only the SECOND digest's image exists: sealroot must not fall back to it.
    sys.add_image(B);
    let run = sys.run(&format!(
        "composefs.digest=v1-sha256-12:{A} composefs.digest=v1-sha256-12:{B}"
    ));
    assert!(run.stderr.contains(&format!(
        "sealroot: ignoring later digest parameter composefs.digest=v1-sha256-12:{B}: only the first one counts"
    )));
    assert_refused(&sys, &run, &format!("composefs/images/{A} does not exist"));
}

#[test]
fn policy_options_on_the_command_line_are_refused() {
    // Under the signed policy a sealroot.* word that is not on the allowlist
    // is refused outright, not merely ignored.
    let sys = Sysroot::new();
    let run = sys.run(&format!(
        "sealroot.failure=shell sealroot.etc=bind composefs={A}"
    ));
    assert_refused(
        &sys,
        &run,
        "kernel command line word \"sealroot.failure=shell\" is not allowed by the boot policy",
    );
}

/// The words issue 9 names as routes around the seal: each is refused by
/// `prepare` (the systemd unit / dracut hooks) before the repository is
/// even looked at, with one line naming the word.
#[test]
fn command_line_routes_around_the_seal_are_refused() {
    let sys = Sysroot::new();
    sys.add_image(A);
    let digest = format!("composefs.digest=v1-sha256-12:{A}");
    for (extra, word) in [
        ("init=/sysroot/usr/bin/evil", "init=/sysroot/usr/bin/evil"),
        ("init=/etc/x", "init=/etc/x"),
        ("init=/var/x", "init=/var/x"),
        (
            "init=/bin/busybox -- sh /sysroot/evil.sh",
            "init=/bin/busybox",
        ),
        ("-- sh /sysroot/evil.sh", "--"),
        ("LD_PRELOAD=/etc/x.so", "LD_PRELOAD=/etc/x.so"),
        ("rdinit=/bin/sh", "rdinit=/bin/sh"),
        ("single", "single"),
        ("emergency", "emergency"),
        ("systemd.run=/sysroot/evil", "systemd.run=/sysroot/evil"),
        (
            "systemd.setenv=LD_PRELOAD=/etc/x.so",
            "systemd.setenv=LD_PRELOAD=/etc/x.so",
        ),
        (
            "systemd.unit=emergency.target",
            "systemd.unit=emergency.target",
        ),
        ("systemd.debug_shell", "systemd.debug_shell"),
        ("rd.break", "rd.break"),
        ("rd.shell=1", "rd.shell=1"),
    ] {
        let run = sys.run(&format!("root=/dev/vda {digest} {extra}"));
        assert_refused(
            &sys,
            &run,
            &format!("kernel command line word {word:?} is not allowed by the boot policy"),
        );
        assert!(
            !run.stderr.contains("expected digest"),
            "{extra}: got past the policy:\n{}",
            run.stderr
        );
    }
    // The allowed init spellings and ordinary words pass the policy (and
    // then fail at measuring here, as every host run does).
    let run = sys.run(&format!(
        "BOOT_IMAGE=/vmlinuz root=/dev/vda ro quiet console=ttyS0 {digest} init=/usr/lib/systemd/systemd rd.shell=0"
    ));
    assert!(
        run.stderr.contains("fs-verity not supported"),
        "{}",
        run.stderr
    );
}

#[test]
fn config_digest_conflict_refused() {
    let sys = Sysroot::new();
    sys.add_image(A);
    let cfg = sys.path().join("config.json");
    std::fs::write(&cfg, format!(r#"{{"digest":"v1-sha256-12:{B}"}}"#)).unwrap();
    let run = sys.run_with_config(&format!("composefs={A}"), &cfg);
    assert_refused(
        &sys,
        &run,
        &format!(
            "kernel command line names v1-sha256-12:{A} but /etc/sealroot/config.json names v1-sha256-12:{B}"
        ),
    );
    // Agreeing digests pass this step (and then fail at measuring here).
    std::fs::write(&cfg, format!(r#"{{"digest":"{A}"}}"#)).unwrap();
    let run = sys.run_with_config(&format!("composefs={A}"), &cfg);
    assert!(run
        .stderr
        .contains("(from kernel command line and initramfs config)"));
    assert!(run.stderr.contains("fs-verity not supported"));
    // The config alone can name the digest.
    let run = sys.run_with_config("root=/dev/vda", &cfg);
    assert!(run.stderr.contains("(from initramfs config)"));
}

#[test]
fn bad_config_refused() {
    let sys = Sysroot::new();
    let cfg = sys.path().join("config.json");
    std::fs::write(&cfg, r#"{"failure":"halt","trust":"none"}"#).unwrap();
    let run = sys.run_with_config(&format!("composefs={A}"), &cfg);
    assert_eq!(run.code, Some(1));
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("sealroot: refusing to boot: invalid config "))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(line.contains("unknown field `trust`"), "{line}");
}

#[test]
fn missing_repository_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sealroot"))
        .env("SEALROOT_LOG", "stderr")
        .args(["prepare", "--sysroot"])
        .arg(dir.path())
        .args(["--cmdline", &format!("composefs={A}")])
        .arg("--config")
        .arg(dir.path().join("none"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "sealroot: refusing to boot: repository: {}/composefs does not exist",
            dir.path().display()
        )),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [&["prepare", "--bogus"][..], &["prepare", "--sysroot"], &[]] {
        let out = Command::new(env!("CARGO_BIN_EXE_sealroot"))
            .env("SEALROOT_LOG", "stderr")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sealroot"))
        .env("SEALROOT_LOG", "stderr")
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sealroot {}", env!("CARGO_PKG_VERSION"))
    );
}
