//! `sealctl cmdline --repo REPO DIGEST`: print
//! `composefs.digest=v1-sha256-12:<hex>` (the composefs-rs grammar) for an
//! image present in the repository, for BLS entries and UKI `.cmdline`.

use std::path::PathBuf;
use std::process::ExitCode;

use sealroot::image::repo;

#[derive(clap::Args)]
pub struct Args {
    /// Repository root (holds composefs/).
    #[arg(long)]
    repo: PathBuf,
    /// Image digest: <hex>, sha256:<hex> or v1-sha256-12:<hex>.
    digest: String,
}

pub fn run(args: Args) -> ExitCode {
    let result = repo::parse_digest_arg(&args.digest)
        .and_then(|d| repo::cmdline(&repo::Repo::new(args.repo), &d));
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail("cmdline", e),
    }
}
