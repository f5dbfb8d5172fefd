//! The Rust start-up baseline of the boot bench (tests/qemu/lib/bootbench.py):
//! an /init built as sealroot is (Rust std, the musl target, static-pie,
//! `-z separate-code`, `opt-level=s`, `panic=abort`) that only writes one
//! line to /dev/kmsg and then hands over to the C baseline (/bin/firstline,
//! helpers/firstline.c), which reports the records and powers off.
//!
//! Set beside the C init's line and sealroot's, it splits sealroot's
//! start-up into the kernel's exec of any static program, what Rust's
//! runtime adds before `main` (its stack-overflow handler, signal and file
//! descriptor set-up, relocating itself), and what sealroot does before its
//! first line. Built with rustc alone: no crates, no unsafe.
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::process::CommandExt;

fn main() {
    if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = kmsg.write_all(b"<6>bench: rust-line\n");
    }
    let err = std::process::Command::new("/bin/firstline").exec();
    eprintln!("firstline.rs: cannot run /bin/firstline: {err}");
}
