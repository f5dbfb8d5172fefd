//! Kernel command-line parsing (the boot binary reads it from /proc/cmdline;
//! on GRUB/BLS systems anyone at the console can edit it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroot::boot::cmdline;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = cmdline::split(text);
        let _ = cmdline::parse(text);
    }
});
