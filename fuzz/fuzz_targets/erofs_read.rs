//! The EROFS image reader (`sealctl dump`, verify, install read untrusted
//! images): never a panic, an accepted image is a valid tree that prints, and
//! referenced_objects agrees with read_image about accepting it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroot::erofs::reader::{read_image, referenced_objects};

fuzz_target!(|data: &[u8]| {
    let tree = read_image(data);
    let objects = referenced_objects(data);
    assert_eq!(tree.is_ok(), objects.is_ok(), "readers disagree");
    if let Ok(tree) = tree {
        tree.validate().expect("reader returned an invalid tree");
        let mut out = Vec::new();
        sealroot::dumpfile::write(&tree, &mut out).expect("printing to a Vec cannot fail");
    }
});
