//! `sealroot`: the early-boot mounter. A thin `main` over [`sealroot::boot`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    // `--show-trust` / `check-seal` (never as PID 1); see sealroot::trust.
    if let Some(code) = sealroot::trust::tool_main() {
        return code;
    }
    sealroot::boot::main()
}
