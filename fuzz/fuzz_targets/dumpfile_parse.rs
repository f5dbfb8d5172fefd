//! The dumpfile parser (untrusted text from `--from-file` / stdin): any input
//! must give `Ok` or a typed error; an accepted tree must print and the
//! printed text must parse again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroot::image::dumpfile;

fuzz_target!(|data: &[u8]| {
    let _ = dumpfile::parse(data, true);
    if let Ok(tree) = dumpfile::parse(data, false) {
        let mut out = Vec::new();
        dumpfile::write(&tree, &mut out).expect("printing to a Vec cannot fail");
        if let Err(e) = dumpfile::parse(&out, false) {
            panic!("printed dumpfile does not parse again: {e}");
        }
    }
});
