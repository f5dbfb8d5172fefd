//! `sealctl digest` against the real `fsverity digest` (fsverity-utils,
//! Debian package `fsverity`, installed by scripts/setup). Skips with a
//! message when that tool is absent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::sealctl_cmd as sealctl;

fn have_fsverity() -> bool {
    let ok = Command::new("fsverity")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        common::missing("`fsverity` (fsverity-utils; scripts/setup installs it)");
    }
    ok
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn run(mut c: Command) -> Output {
    c.output().expect("spawn")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

/// Files of the sizes the issue names, random content, multi-MiB (above the
/// parallel threshold) and a repetitive one.
fn make_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let sizes = [
        0usize,
        1,
        64,
        65,
        4095,
        4096,
        4097,
        (1 << 20) + 3,
        4096 * 128 + 1,
        (9 << 20) + 12345,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let p = dir.join(format!("f{i}-{n}"));
        std::fs::write(&p, pseudo_random(n, i as u64 + 1)).unwrap();
        v.push(p);
    }
    let p = dir.join("zeros-5MiB");
    std::fs::write(&p, vec![0u8; 5 << 20]).unwrap();
    v.push(p);
    let p = dir.join("name with spaces");
    std::fs::write(&p, b"Nobody inspects the spammish repetition").unwrap();
    v.push(p);
    v
}

#[test]
fn matches_fsverity_sha256_and_sha512() {
    if !have_fsverity() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = make_files(dir.path());
    for extra in [
        &[][..],
        &["--hash-alg=sha512"][..],
        &["--hash-alg=sha256"][..],
    ] {
        let mut ours = sealctl();
        ours.arg("digest").args(extra).args(&files);
        let mut theirs = Command::new("fsverity");
        theirs.arg("digest").args(extra).args(&files);
        let (a, b) = (run(ours), run(theirs));
        assert!(a.status.success(), "sealctl failed: {a:?}");
        assert!(b.status.success(), "fsverity failed: {b:?}");
        assert_eq!(stdout(&a), stdout(&b), "args {extra:?}");
        assert_eq!(stdout(&a).lines().count(), files.len());
    }
    // One file at a time, and --compact.
    for f in &files {
        let a = run({
            let mut c = sealctl();
            c.args(["digest", "--compact"]).arg(f);
            c
        });
        let b = run({
            let mut c = Command::new("fsverity");
            c.args(["digest", "--compact"]).arg(f);
            c
        });
        assert_eq!(stdout(&a), stdout(&b), "{}", f.display());
    }
}

#[test]
fn unreadable_file_is_named_and_others_still_reported() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, b"hello").unwrap();
    let missing = dir.path().join("missing");
    let subdir = dir.path().join("subdir");
    std::fs::create_dir(&subdir).unwrap();
    let o = run({
        let mut c = sealctl();
        c.arg("digest").arg(&missing).arg(&good).arg(&subdir);
        c
    });
    assert!(!o.status.success());
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(out.lines().count(), 1, "stdout: {out}");
    assert!(out.ends_with(&format!(" {}\n", good.display())), "{out}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains(&subdir.display().to_string()), "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        err.lines().all(|l| l.starts_with("sealctl digest: ")),
        "{err}"
    );
    if have_fsverity() {
        let b = run({
            let mut c = Command::new("fsverity");
            c.arg("digest").arg(&good);
            c
        });
        assert_eq!(out, stdout(&b));
    }
}

#[test]
fn bad_arguments_are_refused() {
    for args in [
        &["digest"][..],
        &["digest", "--hash-alg=md5", "x"][..],
        &["digest", "--block-size=1024", "x"][..],
    ] {
        let o = run({
            let mut c = sealctl();
            c.args(args);
            c
        });
        assert!(!o.status.success(), "{args:?}");
        assert!(o.stdout.is_empty());
    }
}
