//! `sealctl uki …` (to be written).

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print a UKI's sections and the digest its .cmdline seals.
    Inspect {},
}

pub fn run(_command: Command) -> ExitCode {
    crate::fail("uki", "not implemented yet")
}
