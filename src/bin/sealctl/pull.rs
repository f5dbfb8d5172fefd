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
//! `sealroot::oci::pull`). Prints the digest and what was added.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sealroot::image::fileio;
use sealroot::image::repo::{MtimePolicy, Repo};
use sealroot::keys;
use sealroot::oci::layout::LayoutSource;
use sealroot::oci::pull::{pull, PullOptions};
use sealroot::oci::registry::Registry;
use sealroot::oci::seal_artifact::SealPair;
use sealroot::oci::source::ImageSource;
use sealroot::seal::{MAX_MANIFEST_SIZE, SIGNATURE_SIZE};

#[derive(clap::Args)]
pub struct Args {
    /// The image: oci:DIR[:REF] (an OCI image layout) or
    /// docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX] (a registry).
    #[arg(long)]
    from: String,
    #[command(flatten)]
    registry: crate::registry_flags::RegistryFlags,
    /// Repository root (holds composefs/).
    #[arg(long)]
    repo: PathBuf,
    /// Trusted public key (SPKI PEM); repeat for several.
    #[arg(long = "trusted-key", required = true)]
    trusted_keys: Vec<PathBuf>,
    /// The seal manifest (<hex>.json; the signature is read from <hex>.sig
    /// beside it). Without it, the seal stored beside the image is used.
    #[arg(long)]
    seal: Option<PathBuf>,
    /// Refuse seals with a serial below this.
    #[arg(long, default_value_t = 0)]
    floor: u64,
    /// Fetch every layer, ignoring (and not recording) the repository's
    /// layer cache (REPO/oci-cache/).
    #[arg(long)]
    no_layer_cache: bool,
    /// Record every mtime as 0 (as the sealer's `oci seal --use-epoch`).
    #[arg(long)]
    use_epoch: bool,
}

pub(crate) fn read_seal(path: &Path) -> Result<SealPair, String> {
    let sig_path = path.with_extension("sig");
    let manifest =
        fileio::read_bounded(path, MAX_MANIFEST_SIZE as u64).map_err(|e| e.to_string())?;
    let signature =
        fileio::read_bounded(&sig_path, SIGNATURE_SIZE as u64 + 1).map_err(|e| e.to_string())?;
    Ok(SealPair {
        manifest,
        signature,
    })
}

fn run_pull(args: Args) -> Result<(), String> {
    if args.from.starts_with("docker://") {
        let source =
            Registry::open(&args.from, &args.registry.options()).map_err(|e| e.to_string())?;
        pull_from(&source, args)
    } else {
        let source = LayoutSource::parse(&args.from).map_err(|e| e.to_string())?;
        pull_from(&source, args)
    }
}

fn pull_from<S: ImageSource>(source: &S, args: Args) -> Result<(), String> {
    let mut trusted = Vec::new();
    for path in &args.trusted_keys {
        trusted.push(keys::load_public_key(path).map_err(|e| e.to_string())?);
    }
    let seal = args.seal.as_deref().map(read_seal).transpose()?;
    let repo = Repo::new(&args.repo);
    let report = pull(
        source,
        &repo,
        PullOptions {
            keys: &trusted,
            floor: args.floor,
            seal,
            mtimes: if args.use_epoch {
                MtimePolicy::Zero
            } else {
                MtimePolicy::AsFound
            },
            progress: true,
            layer_cache: !args.no_layer_cache,
        },
    )
    .map_err(|e| e.to_string())?;
    println!("{}", report.digest.to_hex());
    eprintln!(
        "pulled {} ({} layers, {} from the layer cache, manifest {}): serial {}, key {}; image {} bytes, {} objects added ({} bytes), {} already present; seal {}",
        args.from,
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
