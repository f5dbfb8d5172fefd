//! Boot orchestration (to be written).

/// Entry point of the `sealroot` binary.
pub fn main() -> std::process::ExitCode {
    eprintln!("sealroot: not yet implemented");
    std::process::ExitCode::FAILURE
}
