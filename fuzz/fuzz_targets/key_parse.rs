//! PEM key parsing (keys come from files an operator points sealctl at, and
//! from the build environment).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroot::keys;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = keys::parse_public_pem(data) {
        // A parsed key prints and parses back to the same key.
        let pem = keys::public_key_pem(&k);
        assert_eq!(keys::parse_public_pem(pem.as_bytes()).ok(), Some(k));
    }
    if let Ok(k) = keys::parse_private_pem(data) {
        let pem = keys::private_key_pem(&k);
        let back = keys::parse_private_pem(pem.as_bytes()).expect("printed key parses");
        assert_eq!(back.to_bytes(), k.to_bytes());
    }
});
