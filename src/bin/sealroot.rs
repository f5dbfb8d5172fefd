//! `sealroot`: the early-boot mounter. A thin `main` over [`sealroot::boot`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    sealroot::boot::main()
}
