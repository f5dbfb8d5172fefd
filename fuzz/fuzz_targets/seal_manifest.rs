//! Seal manifests and signatures (read from the physical root at boot, i.e.
//! attacker-controlled): parsing never panics and no fuzzed input verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::seal::{verify_seal, Manifest};

/// The committed test public key (keys/test/sealroot-test.pub.pem).
const TEST_PUB: &[u8] = include_bytes!("../../keys/test/sealroot-test.pub.pem");

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::parse(data);
    // First 64 bytes: signature; the rest: manifest.
    let (sig, manifest) = data.split_at(data.len().min(64));
    let key = sealroot::keys::parse_public_pem(TEST_PUB).expect("test key parses");
    let measured = match Manifest::parse(manifest) {
        Ok(m) => m.digest,
        Err(_) => Digest::from_bytes(HashAlgorithm::Sha256, &[0x5a; 32]).expect("32 bytes"),
    };
    if verify_seal(manifest, sig, &[key], &measured, 0).is_ok() {
        panic!("a fuzzed seal verified against the test key");
    }
});
