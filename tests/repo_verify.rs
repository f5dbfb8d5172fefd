//! `sealctl verify` names each problem with its path: image bytes, seal
//! manifest, signature, missing seal, seal by another key; `--json`.
//!
//! These use a stand-in image (not EROFS), so every run also reports
//! `image-malformed` for it; the assertions look for the named problem
//! among the reported ones. Object-level checks through a real image are
//! in tests/repo_build.rs.

use std::fs;
use std::path::Path;
use std::process::Output;

mod common;
use common::key;

use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::image::fsverity;
use sealroot::image::repo::Repo;

fn sealctl(args: &[&str]) -> Output {
    common::sealctl_cmd().args(args).output().unwrap()
}

fn sealed_repo(dir: &Path, signer: &str) -> (Repo, Digest) {
    let r = Repo::new(dir);
    r.write_meta(HashAlgorithm::Sha256).unwrap();
    let image = b"stand-in image".repeat(500);
    let digest = fsverity::digest_bytes(HashAlgorithm::Sha256, &image);
    fs::create_dir_all(r.images_dir()).unwrap();
    fs::write(r.image_path(&digest), &image).unwrap();
    let out = sealctl(&[
        "sign",
        "--key",
        &key(signer),
        "--repo",
        dir.to_str().unwrap(),
        "--serial",
        "5",
        &digest.to_hex(),
    ]);
    common::assert_success(&out);
    (r, digest)
}

/// Run `verify --json` and return (exit ok, [(code, path)]).
fn verify_json(
    r: &Repo,
    digest: &Digest,
    extra: &[&str],
) -> (bool, Vec<(String, String)>, serde_json::Value) {
    let mut args = vec!["verify", "--json", "--repo", r.root().to_str().unwrap()];
    args.extend_from_slice(extra);
    let hex = digest.to_hex();
    args.push(&hex);
    let out = sealctl(&args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad json {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let problems = common::problems(&v);
    assert_eq!(v["ok"].as_bool().unwrap(), out.status.success());
    (out.status.success(), problems, v)
}

fn has(problems: &[(String, String)], code: &str, path: &Path) -> bool {
    problems
        .iter()
        .any(|(c, p)| c == code && Path::new(p) == path)
}

#[test]
fn seal_problems_are_named_with_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (r, digest) = sealed_repo(dir.path(), "sealroot-test.pem");
    let pubkey = key("sealroot-test.pub.pem");
    let (json, sig) = r.seal_paths(&digest);

    // The stand-in image is not EROFS: reported, and exit is non-zero.
    let (ok, problems, v) = verify_json(&r, &digest, &["--key", &pubkey]);
    assert!(!ok);
    assert_eq!(
        problems,
        vec![(
            "image-malformed".to_string(),
            r.image_path(&digest).display().to_string()
        )]
    );
    assert_eq!(v["seal"]["serial"], 5);
    assert_eq!(v["signature_checked"], true);

    // Flipped byte in the manifest.
    let orig = fs::read(&json).unwrap();
    let mut m = orig.clone();
    m[30] ^= 0x01;
    fs::write(&json, &m).unwrap();
    let (_, problems, _) = verify_json(&r, &digest, &["--key", &pubkey]);
    assert!(
        has(&problems, "seal-signature-invalid", &json),
        "{problems:?}"
    );
    fs::write(&json, &orig).unwrap();

    // Flipped byte in the signature.
    let orig_sig = fs::read(&sig).unwrap();
    let mut s = orig_sig.clone();
    s[10] ^= 0x40;
    fs::write(&sig, &s).unwrap();
    let (_, problems, _) = verify_json(&r, &digest, &["--key", &pubkey]);
    assert!(
        has(&problems, "seal-signature-invalid", &json),
        "{problems:?}"
    );
    // Truncated signature.
    fs::write(&sig, &orig_sig[..63]).unwrap();
    let (_, problems, _) = verify_json(&r, &digest, &["--key", &pubkey]);
    assert!(
        has(&problems, "seal-signature-wrong-size", &sig),
        "{problems:?}"
    );
    fs::write(&sig, &orig_sig).unwrap();

    // Serial floor.
    let (_, problems, _) = verify_json(&r, &digest, &["--key", &pubkey, "--serial-floor", "6"]);
    assert!(
        has(&problems, "seal-serial-below-floor", &json),
        "{problems:?}"
    );

    // A flipped byte in the image.
    let img = r.image_path(&digest);
    let orig_img = fs::read(&img).unwrap();
    let mut i = orig_img.clone();
    i[1234] ^= 0x02;
    fs::write(&img, &i).unwrap();
    let (_, problems, _) = verify_json(&r, &digest, &["--key", &pubkey]);
    assert!(
        has(&problems, "image-digest-mismatch", &img),
        "{problems:?}"
    );
    fs::write(&img, &orig_img).unwrap();

    // Missing seal.
    fs::remove_file(&json).unwrap();
    let (_, problems, _) = verify_json(&r, &digest, &["--key", &pubkey]);
    assert!(has(&problems, "seal-missing", &json), "{problems:?}");

    // Missing image.
    fs::remove_file(&img).unwrap();
    let (_, problems, _) = verify_json(&r, &digest, &["--key", &pubkey]);
    assert!(has(&problems, "image-missing", &img), "{problems:?}");
}

#[test]
fn seal_by_another_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (r, digest) = sealed_repo(dir.path(), "other-test.pem");
    let (json, _) = r.seal_paths(&digest);
    let (_, problems, _) = verify_json(&r, &digest, &["--key", &key("sealroot-test.pub.pem")]);
    assert!(has(&problems, "seal-unknown-key", &json), "{problems:?}");
    // The human-readable form names the path and the foreign key.
    let out = sealctl(&[
        "verify",
        "--repo",
        dir.path().to_str().unwrap(),
        "--key",
        &key("sealroot-test.pub.pem"),
        &digest.to_hex(),
    ]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let other = sealroot::keys::load_public_key(Path::new(&key("other-test.pub.pem"))).unwrap();
    let fp = sealroot::keys::fingerprint(&other);
    assert!(
        text.contains(&format!(
            "{}: seal is signed by an untrusted key {fp}",
            json.display()
        )),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("sealctl verify: "));
}

#[test]
fn verify_argument_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (r, digest) = sealed_repo(dir.path(), "sealroot-test.pem");
    let root = r.root().to_str().unwrap();
    let hex = digest.to_hex();
    for (args, want) in [
        (
            vec![
                "verify",
                "--repo",
                root,
                "--key",
                &key("sealroot-test.pem"),
                &hex,
            ][..]
                .to_vec(),
            "sealctl verify: PEM block is \"PRIVATE KEY\", expected \"PUBLIC KEY\"",
        ),
        (
            vec!["verify", "--repo", root, "zz"],
            "sealctl verify: \"zz\" is not a digest",
        ),
    ] {
        let out = sealctl(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with(want), "{err}");
    }
    // Without --key the signature is not checked, and the output says so.
    let (_, _, v) = verify_json(&r, &digest, &[]);
    assert_eq!(v["signature_checked"], false);
}
