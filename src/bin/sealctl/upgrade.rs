//! `sealctl upgrade-repo --repo REPO [--hash-alg ALG]`: add the
//! `composefs/meta.json` that composefs-rs 0.8+ require to a repository an
//! older sealctl made. Never done implicitly: build and install refuse such
//! a repository and name this command. Run `sealctl install` afterwards on
//! the target to enable fs-verity on the new file.

use std::path::PathBuf;
use std::process::ExitCode;

use sealroot::digest::HashAlgorithm;
use sealroot::image::repo;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Alg {
    Sha256,
    Sha512,
}

#[derive(clap::Args)]
pub struct Args {
    /// Repository root (holds composefs/).
    #[arg(long)]
    repo: PathBuf,
    /// The repository's digest algorithm; default: what its image names imply.
    #[arg(long, value_enum)]
    hash_alg: Option<Alg>,
}

pub fn run(args: Args) -> ExitCode {
    let alg = args.hash_alg.map(|a| match a {
        Alg::Sha256 => HashAlgorithm::Sha256,
        Alg::Sha512 => HashAlgorithm::Sha512,
    });
    let r = repo::Repo::new(&args.repo);
    match repo::upgrade_repo(&r, alg) {
        Ok(alg) => {
            println!(
                "wrote {} ({})",
                r.meta_path().display(),
                sealroot::repo_meta::algorithm_name(alg)
            );
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail("upgrade-repo", e),
    }
}
