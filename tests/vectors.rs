//! The composefs test vectors: every dumpfile must produce the image whose
//! SHA-256 the reference `mkcomposefs` recorded, and every `should-fail-*`
//! dumpfile must be refused (by the parser or the writer) with no image.
//!
//! The folder comes from env `SEALROOT_TESTDATA`, else
//! `CARGO_MANIFEST_DIR/../shared/testdata/composefs`, else
//! `/work/shared/testdata/composefs`; absent => the test prints why and passes.

use std::path::PathBuf;

mod common;

use sealroot::image::dumpfile;
use sealroot::image::erofs::{write_image, WriteOptions};
use sha2::{Digest as _, Sha256};

#[test]
fn vectors_reproduce_reference_images() {
    let Some(dir) = common::testdata_or_skip() else {
        return;
    };
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(base) = name.strip_suffix(".sha256") else {
            continue;
        };
        let expected = std::fs::read_to_string(e.path()).unwrap();
        let expected = expected.split_whitespace().next().unwrap().to_string();
        let src = dir.join(base);
        let input = common::read_vector(&src);
        let dump_name = base.trim_end_matches(".gz");
        let strict = !common::LENIENT.contains(&dump_name);
        let opts = common::vector_options(&dir, base);
        let Some(image) = common::vector_image(base, &input, strict, &opts, &mut failures) else {
            continue;
        };
        let got = sealroot::digest::hex_encode(&Sha256::digest(&image));
        if got != expected {
            if let Ok(d) = std::env::var("SEALROOT_VECTOR_OUT") {
                std::fs::write(PathBuf::from(d).join(format!("{base}.img")), &image).unwrap();
            }
            failures.push(format!("{base}: sha256 {got}, expected {expected}"));
        }
        checked += 1;
    }
    assert!(
        checked > 0 || !failures.is_empty(),
        "no vectors found in {}",
        dir.display()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{checked} vectors reproduced");
}

#[test]
fn should_fail_vectors_are_refused() {
    let Some(dir) = common::testdata_or_skip() else {
        return;
    };
    let mut n = 0;
    let mut accepted = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("should-fail-") || name.ends_with(".sha256") {
            continue;
        }
        n += 1;
        let input = std::fs::read(e.path()).unwrap();
        // Refused in both parser modes, or by the writer.
        for strict in [true, false] {
            if let Ok(tree) = dumpfile::parse(&input, strict) {
                if write_image(&tree, &WriteOptions::default()).is_ok() {
                    accepted.push(format!("{name} (strict={strict})"));
                }
            }
        }
    }
    assert!(n > 0);
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}

/// Run the writer over every file of a fuzz corpus (env
/// `SEALROOT_DUMPFILE_CORPUS`): whatever the parser accepts must be written
/// or refused with an error, never panic. Ignored by default (needs a corpus).
#[test]
#[ignore]
fn writer_survives_fuzz_corpus() {
    let Some(dir) = std::env::var_os("SEALROOT_DUMPFILE_CORPUS") else {
        eprintln!("SKIP: set SEALROOT_DUMPFILE_CORPUS");
        return;
    };
    let mut written = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let input = std::fs::read(e.path()).unwrap();
        if let Ok(tree) = dumpfile::parse(&input, false) {
            for opts in [
                WriteOptions::default(),
                WriteOptions {
                    min_version: 0,
                    max_version: 0,
                },
            ] {
                if write_image(&tree, &opts).is_ok() {
                    written += 1;
                }
            }
        }
    }
    eprintln!("{written} images written");
}
