//! `sealctl embed` (to be written).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> ExitCode {
    crate::fail("embed", "not implemented yet")
}
