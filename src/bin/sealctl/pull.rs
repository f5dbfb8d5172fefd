//! `sealctl pull --from oci:DIR[:REF]|docker://HOST/REPO[:TAG] --repo R
//! --trusted-key PUB.pem...
//! [--seal FILE.json] [--floor N] [--use-epoch]`: fetch a sealed OCI image
//! into a repository.
//!
//! The seal (`--seal FILE.json` with `FILE.sig` beside it, or the seal
//! artifact stored beside the image) is verified against the trusted keys
//! and the floor before any layer is read; the image built from the layers
//! is accepted only if its digest is the sealed one, and only then do its
//! objects, image and seal appear in the repository (see
//! `sealroot::oci::pull`). Prints the digest and what was added. The flags
//! it shares with `sealctl update` are in pull_flags.rs.

use std::process::ExitCode;

use sealroot::oci::pull::pull;

use crate::pull_flags::PullFlags;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pull: PullFlags,
}

fn run_pull(args: Args) -> Result<(), String> {
    let report = args.pull.pull_with(|source, repo, options| {
        pull(source, repo, options).map_err(|e| e.to_string())
    })?;
    println!("{}", report.digest.to_hex());
    eprintln!(
        "pulled {} ({} layers, {} from the layer cache, manifest {}): serial {}, key {}; image {} bytes, {} objects added ({} bytes), {} already present; seal {}",
        args.pull.from,
        report.layers,
        report.layers_cached,
        report.manifest_digest,
        report.serial,
        report.key_fingerprint,
        report.image_size,
        report.objects_added,
        report.bytes_added,
        report.objects_existing,
        report.seal_paths.0.display()
    );
    Ok(())
}

pub fn run(args: Args) -> ExitCode {
    match run_pull(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail("pull", e),
    }
}
