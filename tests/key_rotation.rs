//! Key rotation and the serial floor (issue 19 item 3), through the seal
//! check every path shares (`sealroot::seal::verify_seal`: the boot calls it
//! through `check_repository_seal` with `serial_floor` = max(built-in,
//! config, TPM floor)).
//!
//! The vendor's sequence, README "Rollback protection" / "Key rotation":
//! 1. a transition initramfs/UKI trusts {old, new}; images sealed by the old
//!    key keep booting while the floor is at or below their serial;
//! 2. the first image sealed by the new key, at a higher serial, is blessed
//!    and the TPM floor rises to its serial: every old-key seal below it is
//!    refused, though the old key is still trusted;
//! 3. a later initramfs/UKI trusts {new} only: old-key seals are refused at
//!    any serial and any floor.
//!
//! And the limit: with the old key leaked, a seal it makes at a serial at
//! or above the floor passes step 2's check; only step 3 stops it.
//!
//! Keys: keys/test/sealroot-test.pem (old) and other-test.pem (new).

mod common;

use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::image::fsverity;
use sealroot::keys;
use sealroot::seal::{self, Manifest, SealError, VerifiedSeal};

struct Key {
    signing: ed25519_dalek::SigningKey,
    public: ed25519_dalek::VerifyingKey,
}

fn load(name: &str) -> Key {
    let signing = keys::load_private_key(std::path::Path::new(&common::key(name))).unwrap();
    let public = signing.verifying_key();
    Key { signing, public }
}

fn image(name: &str) -> Digest {
    fsverity::digest_bytes(HashAlgorithm::Sha256, name.repeat(1000).as_bytes())
}

/// (manifest bytes, signature) of a seal of DIGEST at SERIAL by KEY.
fn seal_of(key: &Key, digest: &Digest, serial: u64) -> (Vec<u8>, [u8; 64]) {
    let mut m = Manifest::new(*digest);
    m.serial = serial;
    seal::sign(&key.signing, &m)
}

fn check(
    s: &(Vec<u8>, [u8; 64]),
    trusted: &[&Key],
    digest: &Digest,
    floor: u64,
) -> Result<VerifiedSeal, SealError> {
    let keys: Vec<_> = trusted.iter().map(|k| k.public).collect();
    seal::verify_seal(&s.0, &s.1, &keys, digest, floor)
}

#[test]
fn old_key_seals_stop_booting_once_the_floor_passes_them() {
    let (old, new) = (load("sealroot-test.pem"), load("other-test.pem"));
    let (a, b) = (image("release 1, old key"), image("release 2, new key"));
    let seal_a = seal_of(&old, &a, 1);
    let seal_b = seal_of(&new, &b, 2);

    // 1. Transition build, floor 1 (B not yet blessed): both boot.
    let v = check(&seal_a, &[&old, &new], &a, 1).unwrap();
    assert_eq!((v.key_index, v.manifest.serial), (0, 1));
    let v = check(&seal_b, &[&old, &new], &b, 1).unwrap();
    assert_eq!((v.key_index, v.manifest.serial), (1, 2));

    // 2. B blessed, the floor is 2: A (old key, serial 1) is refused by the
    // floor although its key is still trusted; B still boots.
    match check(&seal_a, &[&old, &new], &a, 2) {
        Err(SealError::SerialBelowFloor {
            serial: 1,
            floor: 2,
        }) => {}
        other => panic!("old-key seal below the floor: {other:?}"),
    }
    assert!(check(&seal_b, &[&old, &new], &b, 2).is_ok());

    // 3. A build without the old key: A is refused at any floor, by name of
    // the untrusted key; B boots.
    for floor in [0, 1, 2] {
        match check(&seal_a, &[&new], &a, floor) {
            Err(SealError::UnknownKey { fingerprint }) => {
                assert_eq!(fingerprint, keys::fingerprint(&old.public))
            }
            other => panic!("old-key seal with only the new key trusted: {other:?}"),
        }
        assert!(check(&seal_b, &[&new], &b, floor.min(2)).is_ok());
    }
}

#[test]
fn a_leaked_old_key_beats_the_floor_but_not_a_build_without_it() {
    let (old, new) = (load("sealroot-test.pem"), load("other-test.pem"));
    let evil = image("attacker's image");
    // The attacker signs with the leaked key at a serial above any floor.
    let forged = seal_of(&old, &evil, 1_000_000);
    // The floor cannot help while the old key is trusted.
    assert!(check(&forged, &[&old, &new], &evil, 2).is_ok());
    // Only an initramfs/UKI that no longer embeds the old key refuses it.
    assert!(matches!(
        check(&forged, &[&new], &evil, 2),
        Err(SealError::UnknownKey { .. })
    ));
}

#[test]
fn the_floor_never_blocks_the_new_release_itself() {
    // The raise goes to the booted serial, never above it: the blessed
    // image stays bootable at the floor it raised.
    let new = load("other-test.pem");
    let b = image("release 2, new key");
    let seal_b = seal_of(&new, &b, 2);
    assert!(check(&seal_b, &[&new], &b, 2).is_ok());
    assert!(matches!(
        check(&seal_b, &[&new], &b, 3),
        Err(SealError::SerialBelowFloor {
            serial: 2,
            floor: 3
        })
    ));
}
