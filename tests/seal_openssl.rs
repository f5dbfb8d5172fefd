//! Seals written by `sealctl sign` verify with `openssl pkeyutl -rawin`,
//! and signatures openssl makes over a manifest verify with `verify_seal`.
//! Also: every bad input to `sign` / `cmdline` gets its own error line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{key, sealctl};

use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::image::fsverity;
use sealroot::{keys, seal};

/// A repository holding one (fake) image under its fs-verity digest.
fn repo_with_image(dir: &Path) -> (PathBuf, Digest) {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let digest = fsverity::digest_bytes(HashAlgorithm::Sha256, &data);
    let images = dir.join("composefs/images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join(digest.to_hex()), &data).unwrap();
    (dir.to_path_buf(), digest)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn sealctl_seal_verifies_with_openssl_and_library() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, digest) = repo_with_image(dir.path());
    let hex = digest.to_hex();
    let out = sealctl(&[
        "sign",
        "--key",
        &key("sealroot-test.pem"),
        "--repo",
        repo.to_str().unwrap(),
        "--serial",
        "42",
        "--os",
        "Debian GNU/Linux",
        "--os-version",
        "12",
        &hex,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json = repo.join(format!("composefs/seals/{hex}.json"));
    let sig = repo.join(format!("composefs/seals/{hex}.sig"));
    assert_eq!(std::fs::metadata(&sig).unwrap().len(), 64);

    let check = |pubkey: &str| common::openssl_verify(Path::new(&key(pubkey)), &json, &sig);
    let ok = check("sealroot-test.pub.pem");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("Signature Verified Successfully"));
    assert!(!check("other-test.pub.pem").status.success());

    let m = std::fs::read(&json).unwrap();
    let s = std::fs::read(&sig).unwrap();
    let pk = keys::load_public_key(Path::new(&key("sealroot-test.pub.pem"))).unwrap();
    let v = seal::verify_seal(&m, &s, &[pk], &digest, 42).unwrap();
    assert_eq!(v.manifest.serial, 42);
    assert_eq!(v.manifest.os.as_deref(), Some("Debian GNU/Linux"));
    assert_eq!(v.manifest.version.as_deref(), Some("12"));
    assert!(v.manifest.created.is_some());
    // The manifest text names the digest so a human can read it.
    assert!(String::from_utf8_lossy(&m).contains(&hex));

    // openssl signs our manifest bytes; the library accepts that signature.
    let osig = dir.path().join("openssl.sig");
    let o = common::openssl_sign(Path::new(&key("sealroot-test.pem")), &json, &osig);
    assert!(o.status.success());
    let osig = std::fs::read(&osig).unwrap();
    assert_eq!(osig, s, "Ed25519 is deterministic");
    seal::verify_seal(&m, &osig, &[pk], &digest, 0).unwrap();
}

#[test]
fn source_date_epoch_fixes_created() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, digest) = repo_with_image(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_sealctl"))
        .args([
            "sign",
            "--key",
            &key("sealroot-test.pem"),
            "--repo",
            repo.to_str().unwrap(),
        ])
        .arg(digest.to_composefs())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let m = std::fs::read_to_string(repo.join(format!("composefs/seals/{}.json", digest.to_hex())))
        .unwrap();
    assert!(m.contains("\"created\":\"2023-11-14T22:13:20Z\""), "{m}");
}

#[test]
fn sign_and_cmdline_errors_are_specific() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, digest) = repo_with_image(dir.path());
    let r = repo.to_str().unwrap();
    let hex = digest.to_hex();
    let missing = "ab".repeat(32);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "sign".into(),
                "--key".into(),
                key("sealroot-test.pub.pem"),
                "--repo".into(),
                r.into(),
                hex.clone(),
            ],
            "sealctl sign: PEM block is \"PUBLIC KEY\", expected \"PRIVATE KEY\"",
        ),
        (
            vec![
                "sign".into(),
                "--key".into(),
                key("sealroot-test.pem"),
                "--repo".into(),
                r.into(),
                missing.clone(),
            ],
            "image not found",
        ),
        (
            vec![
                "sign".into(),
                "--key".into(),
                key("sealroot-test.pem"),
                "--repo".into(),
                r.into(),
                hex[..60].to_string(),
            ],
            "is not a digest: digest has 60 hex characters; expected 64 (sha256) or 128 (sha512)",
        ),
        (
            vec![
                "sign".into(),
                "--key".into(),
                key("sealroot-test.pem"),
                "--repo".into(),
                r.into(),
                "--os".into(),
                "a\tb".into(),
                hex.clone(),
            ],
            "seal manifest field \"os\" is invalid: contains a control character",
        ),
        (
            vec![
                "sign".into(),
                "--key".into(),
                key("nope.pem"),
                "--repo".into(),
                r.into(),
                hex.clone(),
            ],
            "nope.pem does not exist",
        ),
        (
            vec!["cmdline".into(), "--repo".into(), r.into(), missing.clone()],
            "image not found",
        ),
        (
            vec![
                "cmdline".into(),
                "--repo".into(),
                r.into(),
                format!("{hex}x"),
            ],
            "is not a digest",
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sealctl(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // An image whose content does not match its name is not sealed.
    std::fs::write(repo.join("composefs/images").join(&hex), b"tampered").unwrap();
    let out = sealctl(&[
        "sign",
        "--key",
        &key("sealroot-test.pem"),
        "--repo",
        r,
        &hex,
    ]);
    assert!(
        stderr(&out).contains("image content has digest"),
        "{}",
        stderr(&out)
    );
    assert!(!repo.join(format!("composefs/seals/{hex}.json")).exists());
}

#[test]
fn cmdline_prints_composefs_grammar() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, digest) = repo_with_image(dir.path());
    let out = sealctl(&[
        "cmdline",
        "--repo",
        repo.to_str().unwrap(),
        &format!("sha256:{}", digest.to_hex()),
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("composefs.digest=v1-sha256-12:{}\n", digest.to_hex())
    );
    let _ = Digest::parse_composefs(&digest.to_composefs()).unwrap();
}
