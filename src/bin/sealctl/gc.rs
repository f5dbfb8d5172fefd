//! `sealctl gc --repo REPO [--keep DIGEST]... [--dry-run]`: remove the
//! images, seals, state directories and objects no kept image needs (by
//! default every sealed image is kept), then the OCI layer-cache entries
//! that name removed objects. A progress line on a terminal, one summary
//! line on stdout (and one for the layer cache when it removed entries).
//! Crash-safe: rerun it after any interruption (see the library's `gc`
//! module for the order and why).

use std::path::PathBuf;
use std::process::ExitCode;

use sealroot::image::gc::{self, GcOptions};
use sealroot::image::repo;

#[derive(clap::Args)]
pub struct Args {
    /// Repository root (holds composefs/).
    #[arg(long)]
    repo: PathBuf,
    /// Keep exactly these images (<hex>, sha256:<hex> or v1-sha256-12:<hex>);
    /// default: every image with a seal.
    #[arg(long, value_name = "DIGEST", num_args = 1..)]
    keep: Vec<String>,
    /// Report what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: Args) -> ExitCode {
    let mut keep = Vec::new();
    for text in &args.keep {
        match repo::parse_digest_arg(text) {
            Ok(d) => keep.push(d),
            Err(e) => return crate::fail("gc", e),
        }
    }
    let opts = GcOptions {
        keep: (!args.keep.is_empty()).then_some(keep),
        dry_run: args.dry_run,
    };
    let progress = sealroot::image::progress::Progress::new("gc");
    let repo = repo::Repo::new(&args.repo);
    let result = gc::gc(&repo, &opts, &progress);
    progress.finish();
    match result {
        Ok(r) => {
            let (k, d, f, b) = (r.kept.len(), r.dropped.len(), r.files, r.bytes);
            if r.dry_run {
                println!(
                    "dry run: would keep {k} image(s), would drop {d} image(s), would remove {f} files, would free {b} bytes"
                );
            } else {
                println!(
                    "kept {k} image(s), dropped {d} image(s), removed {f} files, freed {b} bytes"
                );
                // The OCI layer cache outside composefs/: entries naming
                // objects gc just removed can never be used again.
                match sealroot::oci::layer_cache::prune(&repo) {
                    Ok(p) if p.removed > 0 => println!(
                        "layer cache: removed {} entr{} naming removed objects, kept {}",
                        p.removed,
                        if p.removed == 1 { "y" } else { "ies" },
                        p.kept
                    ),
                    Ok(_) => {}
                    Err(e) => return crate::fail("gc (layer cache)", e),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail("gc", e),
    }
}
