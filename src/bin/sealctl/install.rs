//! `sealctl install --repo REPO --sysroot TARGET DIGEST`: copy the image,
//! its objects and seal into `TARGET/composefs/…`, create
//! `TARGET/state/deploy/<hex>/{etc/upper,etc/work,var}`, then enable
//! fs-verity on every object and the image. Idempotent and crash-safe:
//! rerun it after any interruption. `--copy-only` stops before fs-verity
//! (for preparing a target on a machine whose kernel lacks it; run install
//! again where it has it).

use std::path::PathBuf;
use std::process::ExitCode;

use sealroot::image::repo;

#[derive(clap::Args)]
pub struct Args {
    /// Source repository root (holds composefs/).
    #[arg(long)]
    repo: PathBuf,
    /// Target root (the physical root filesystem, mounted).
    #[arg(long)]
    sysroot: PathBuf,
    /// Copy and check only; do not enable fs-verity.
    #[arg(long)]
    copy_only: bool,
    /// Image digest: <hex>, sha256:<hex> or v1-sha256-12:<hex>.
    digest: String,
}

pub fn run(args: Args) -> ExitCode {
    let digest = match repo::parse_digest_arg(&args.digest) {
        Ok(d) => d,
        Err(e) => return crate::fail("install", e),
    };
    let source = repo::Repo::new(&args.repo);
    let target = repo::Repo::new(&args.sysroot);
    let opts = repo::InstallOptions {
        copy_only: args.copy_only,
    };
    let progress = sealroot::image::progress::Progress::new("install");
    let result = repo::install(&source, &target, &digest, opts, &progress);
    progress.finish();
    match result {
        Ok(r) => {
            println!(
                "installed {} ({} objects, {} copied, {} bytes)",
                digest.to_composefs(),
                r.objects,
                r.objects_copied,
                r.bytes_copied
            );
            if !r.seal_installed {
                eprintln!(
                    "sealctl install: warning: no seal for this image in the source repository"
                );
            }
            if !r.verity_enabled {
                eprintln!("sealctl install: fs-verity not enabled (--copy-only); run install again on the target");
            }
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail("install", e),
    }
}
