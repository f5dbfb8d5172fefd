//! Keys round-trip with openssl both ways: openssl-made keys load and sign
//! (checked by openssl), sealctl-made keys are read by `openssl pkey` and
//! sign/verify with `openssl pkeyutl -rawin`.

mod common;
use common::{openssl, openssl_sign, openssl_verify};

use ed25519_dalek::{Signer, Verifier};
use sealroot::keys;

#[test]
fn committed_test_keys_match_openssl() {
    for name in ["sealroot-test", "other-test"] {
        let priv_path = common::test_keys_dir().join(format!("{name}.pem"));
        let pub_path = common::test_keys_dir().join(format!("{name}.pub.pem"));
        let sk = keys::load_private_key(&priv_path).unwrap();
        let pk = keys::load_public_key(&pub_path).unwrap();
        assert_eq!(sk.verifying_key(), pk, "{name}: pair mismatch");
        // openssl's own derivation of the public key is byte-identical to ours.
        let out = openssl(&["pkey", "-in", priv_path.to_str().unwrap(), "-pubout"]);
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            keys::public_key_pem(&pk)
        );
        // And re-encoding the private key reproduces openssl's file exactly.
        assert_eq!(
            keys::private_key_pem(&sk).as_bytes(),
            std::fs::read(&priv_path).unwrap()
        );
    }
}

#[test]
fn openssl_keys_sign_and_verify_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("k.pem");
    let pubk = d.join("k.pub.pem");
    let msg = d.join("msg");
    let sig_openssl = d.join("sig.openssl");
    std::fs::write(&msg, b"a message signed by both tools\n").unwrap();
    assert!(openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        key.to_str().unwrap()
    ])
    .status
    .success());
    assert!(openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        pubk.to_str().unwrap()
    ])
    .status
    .success());
    let sk = keys::load_private_key(&key).unwrap();
    let pk = keys::load_public_key(&pubk).unwrap();
    // openssl signs, we verify strictly.
    assert!(openssl_sign(&key, &msg, &sig_openssl).status.success());
    let sig_bytes: [u8; 64] = std::fs::read(&sig_openssl).unwrap().try_into().unwrap();
    let sig = ed25519_dalek::Signature::from_bytes(&sig_bytes);
    let data = std::fs::read(&msg).unwrap();
    pk.verify_strict(&data, &sig).unwrap();
    // Ed25519 is deterministic: our signature equals openssl's.
    assert_eq!(sk.sign(&data).to_bytes(), sig_bytes);
    assert!(pk.verify(b"other message", &sig).is_err());
}

#[test]
fn sealctl_keygen_keys_work_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("vendor");
    let out = common::sealctl_cmd()
        .args(["keygen", "--output"])
        .arg(&prefix)
        .output()
        .unwrap();
    common::assert_success(&out);
    let key = dir.path().join("vendor.pem");
    let pubk = dir.path().join("vendor.pub.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let pk = keys::load_public_key(&pubk).unwrap();
    assert!(stdout.contains(&keys::fingerprint(&pk)), "{stdout}");

    // openssl parses both and derives the same public key file.
    let derived = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    common::assert_success(&derived);
    assert_eq!(derived.stdout, std::fs::read(&pubk).unwrap());
    let text = openssl(&[
        "pkey",
        "-pubin",
        "-in",
        pubk.to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("ED25519 Public-Key"));

    // openssl signs with the sealctl key and verifies with the sealctl pub key.
    let msg = dir.path().join("m");
    let sig = dir.path().join("m.sig");
    std::fs::write(&msg, b"hello").unwrap();
    assert!(openssl_sign(&key, &msg, &sig).status.success());
    let v = openssl_verify(&pubk, &msg, &sig);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));

    // keygen never overwrites.
    let again = common::sealctl_cmd()
        .args(["keygen", "--output"])
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.starts_with("sealctl keygen: ") && err.contains("already exists"),
        "{err}"
    );
}

#[test]
fn key_errors_from_openssl_made_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An RSA key: named as another algorithm.
    let rsa = d.join("rsa.pem");
    assert!(openssl(&[
        "genpkey",
        "-algorithm",
        "rsa",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        rsa.to_str().unwrap()
    ])
    .status
    .success());
    let e = keys::load_private_key(&rsa).unwrap_err();
    assert!(
        matches!(e, keys::KeyError::NotEd25519 { ref oid } if oid == "1.2.840.113549.1.1.1"),
        "{e}"
    );
    // An encrypted ed25519 key.
    let enc = d.join("enc.pem");
    assert!(openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-aes-128-cbc",
        "-pass",
        "pass:x",
        "-out",
        enc.to_str().unwrap()
    ])
    .status
    .success());
    let e = keys::load_private_key(&enc).unwrap_err();
    assert!(matches!(e, keys::KeyError::Encrypted), "{e}");
    // A public key where a private one is needed, and a missing file.
    let e =
        keys::load_private_key(&common::test_keys_dir().join("sealroot-test.pub.pem")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "PEM block is \"PUBLIC KEY\", expected \"PRIVATE KEY\""
    );
    let e = keys::load_public_key(&d.join("nope.pem")).unwrap_err();
    assert!(e.to_string().ends_with("nope.pem does not exist"), "{e}");
    // An oversized file is refused before reading it whole.
    let big = d.join("big.pem");
    std::fs::write(&big, vec![b'A'; keys::MAX_PEM_SIZE + 1]).unwrap();
    let e = keys::load_public_key(&big).unwrap_err();
    assert!(matches!(e, keys::KeyError::TooLarge { .. }), "{e}");
}
