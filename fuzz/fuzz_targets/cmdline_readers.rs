//! Differential check of the boot policy's byte grammar: the input is the
//! kernel's command line as the boot loader passed it (arbitrary bytes, cut
//! the way the kernel keeps it: at the first NUL, at most 2047 bytes). If the
//! default `signed` policy accepts what sealroot reads of it (the raw bytes
//! of `/proc/cmdline` less the kernel's newline, checked with `check_bytes`,
//! as `read_cmdline` does), every other reader modelled in
//! `tests/readers/mod.rs` (the kernel's `next_arg`, x86 early lookups,
//! systemd, dracut's `getarg` and its shell splitting) must see exactly
//! sealroot's words; any difference panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroot::boot::policy::BootPolicy;

#[path = "../../tests/readers/mod.rs"]
mod readers;

fuzz_target!(|data: &[u8]| {
    let line = readers::boot_line(data);
    let checked = readers::sealroot_line(line);
    if BootPolicy::default().check_bytes(&checked).is_err() {
        return;
    }
    let ours = readers::sealroot_words(&checked);
    for reader in readers::READERS {
        let theirs = (reader.read)(line);
        assert!(
            theirs.as_ref() == Some(&ours),
            "accepted line {:?}: {} reads {:?}, sealroot {:?}",
            line.escape_ascii().to_string(),
            reader.name,
            theirs,
            ours
        );
    }
});
