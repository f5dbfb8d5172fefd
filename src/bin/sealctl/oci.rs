//! `sealctl oci seal --image oci:DIR[:REF]|docker://HOST/REPO[:TAG] --key
//! KEY.pem [--serial N] [--repo R] [--attach] [--out DIR]`: flatten an OCI
//! image's layers, compute the composefs digest of the result and sign a
//! seal for it.
//!
//! Prints `digest <hex>`, `manifest <oci digest>`, the seal manifest line and
//! where the seal went: with `--repo`, the image, its objects and the seal
//! are published there (`sealctl pull` of the same image then finds
//! everything present); with `--attach`, the seal is stored in the layout
//! (or pushed to the registry) as an OCI artifact whose subject is the
//! image manifest (what `sealctl pull` looks for); with `--out DIR`,
//! `<hex>.json` and `<hex>.sig` are written there. `sealctl oci push-seal`
//! (push_seal.rs) pushes a seal made earlier. `created` follows `sealctl
//! sign` (now, `SOURCE_DATE_EPOCH`, or none with `--no-created`).

use std::path::PathBuf;
use std::process::ExitCode;

use sealroot::image::repo::Repo;
use sealroot::keys;
use sealroot::oci::layout::attach_seal;
use sealroot::oci::pull::{seal_image, ImageOptions};
use sealroot::oci::registry::referrers::fallback_tag;
use sealroot::oci::seal_artifact::{SealPair, Subject};
use sealroot::oci::AnySource;

use crate::pull_flags::mtime_policy;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Seal the composefs image of an OCI image's flattened root.
    Seal(SealArgs),
    /// Push a seal to a registry beside its image (an OCI 1.1 referrer).
    PushSeal(crate::push_seal::Args),
}

#[derive(clap::Args)]
pub struct SealArgs {
    /// The image: oci:DIR[:REF] (an OCI image layout) or
    /// docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX] (a registry).
    #[arg(long)]
    image: String,
    #[command(flatten)]
    registry: crate::registry_flags::RegistryFlags,
    /// Private key (PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
    #[command(flatten)]
    fields: crate::sign::SealFields,
    /// Also publish objects, image and seal into this repository.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Store the seal beside the image as an OCI artifact (subject: the
    /// image): in the layout, or pushed to the registry.
    #[arg(long)]
    attach: bool,
    /// Write <hex>.json and <hex>.sig into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Record every mtime as 0 (`sealctl pull --use-epoch` must match).
    #[arg(long)]
    use_epoch: bool,
}

pub fn run(cmd: Command) -> ExitCode {
    match cmd {
        Command::Seal(a) => match seal(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => crate::fail("oci seal", e),
        },
        Command::PushSeal(a) => crate::push_seal::run(a),
    }
}

fn seal(args: SealArgs) -> Result<(), String> {
    let source =
        AnySource::open(&args.image, &args.registry.options()).map_err(|e| e.to_string())?;
    seal_from(&source, args, |subject, pair| match &source {
        AnySource::Registry(registry) => {
            let pushed = registry
                .push_seal_for(subject, pair)
                .map_err(|e| e.to_string())?;
            if !pushed.referrers_api {
                println!("referrers-tag {}", fallback_tag(&pushed.subject));
            }
            Ok(pushed.artifact)
        }
        AnySource::Layout(layout) => attach_seal(layout, subject, pair).map_err(|e| e.to_string()),
    })
}

/// Seal `source`'s image; `attach` stores the seal beside it (`--attach`).
fn seal_from(
    source: &AnySource,
    args: SealArgs,
    attach: impl FnOnce(&Subject<'_>, &SealPair) -> Result<String, String>,
) -> Result<(), String> {
    let key = keys::load_private_key(&args.key).map_err(|e| e.to_string())?;
    // The digest is a placeholder: seal_image fills in the computed one.
    let template = args
        .fields
        .manifest(sealroot::image::fsverity::digest_bytes(
            Default::default(),
            b"",
        ))?;
    let repo = args.repo.map(Repo::new);
    let opts = ImageOptions {
        mtimes: mtime_policy(args.use_epoch),
        progress: true,
        ..Default::default()
    };
    let sealed =
        seal_image(source, &key, &template, repo.as_ref(), &opts).map_err(|e| e.to_string())?;
    println!("digest {}", sealed.digest.to_hex());
    println!("manifest {}", sealed.manifest_digest);
    print!("seal {}", String::from_utf8_lossy(&sealed.seal.manifest));
    if let Some((json, sig)) = &sealed.paths {
        println!("seal-file {}", json.display());
        println!("signature-file {}", sig.display());
    }
    if let Some(dir) = &args.out {
        for (ext, bytes) in [
            ("json", &sealed.seal.manifest),
            ("sig", &sealed.seal.signature),
        ] {
            let path = dir.join(format!("{}.{ext}", sealed.digest.to_hex()));
            sealroot::image::fileio::write_atomic(&path, bytes, Some(0o644))
                .map_err(|e| e.to_string())?;
            println!("wrote {}", path.display());
        }
    }
    if args.attach {
        let subject = Subject {
            digest: &sealed.manifest_digest,
            size: sealed.manifest_size,
            media_type: &sealed.manifest_media_type,
        };
        let art = attach(&subject, &sealed.seal)?;
        println!("artifact {art}");
    }
    Ok(())
}
