//! `composefs/meta.json` as the boot reads it: the file is on the disk an
//! attacker writes. Besides "never panics": whatever parses and passes the
//! boot's check names the digest's algorithm and a version this build
//! understands, and its written form parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroot::digest::HashAlgorithm;
use sealroot::repo_meta::{algorithm_name, RepoMeta, FORMAT_VERSION};

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = RepoMeta::parse(data) else {
        return;
    };
    for alg in [HashAlgorithm::Sha256, HashAlgorithm::Sha512] {
        if meta.check_read(alg).is_ok() {
            assert!(meta.version <= FORMAT_VERSION, "accepted version {}", meta.version);
            assert_eq!(meta.algorithm, algorithm_name(alg), "accepted another algorithm");
        }
    }
    let again = RepoMeta::parse(&meta.to_bytes()).expect("written meta.json parses");
    assert_eq!(again, meta, "written form does not round-trip");
});
