//! `sealctl oci seal --image oci:DIR[:REF] --key KEY.pem [--serial N] [--repo R]
//! [--attach] [--out DIR]`: flatten an OCI image's layers, compute the
//! composefs digest of the result and sign a seal for it.
//!
//! Prints `digest <hex>`, `manifest <oci digest>`, the seal manifest line and
//! where the seal went: with `--repo`, the image, its objects and the seal
//! are published there (`sealctl pull` of the same image then finds
//! everything present); with `--attach`, the seal is stored in the layout
//! as an OCI artifact whose subject is the image manifest (what `sealctl
//! pull` looks for); with `--out DIR`, `<hex>.json` and `<hex>.sig` are
//! written there. `created` follows `sealctl sign` (now, `SOURCE_DATE_EPOCH`,
//! or none with `--no-created`).

use std::path::PathBuf;
use std::process::ExitCode;

use sealroot::image::repo::{MtimePolicy, Repo};
use sealroot::keys;
use sealroot::oci::layout::{attach_seal, LayoutSource};
use sealroot::oci::pull::{seal_image, ImageOptions};
use sealroot::oci::seal_artifact::Subject;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Seal the composefs image of an OCI image's flattened root.
    Seal(SealArgs),
}

#[derive(clap::Args)]
pub struct SealArgs {
    /// The image: oci:DIR[:REF] (an OCI image layout).
    #[arg(long)]
    image: String,
    /// Private key (PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
    #[command(flatten)]
    fields: crate::sign::SealFields,
    /// Also publish objects, image and seal into this repository.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Store the seal in the layout as an OCI artifact (subject: the image).
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
    }
}

fn seal(args: SealArgs) -> Result<(), String> {
    let source = LayoutSource::parse(&args.image).map_err(|e| e.to_string())?;
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
        mtimes: if args.use_epoch {
            MtimePolicy::Zero
        } else {
            MtimePolicy::AsFound
        },
        progress: true,
        ..Default::default()
    };
    let sealed =
        seal_image(&source, &key, &template, repo.as_ref(), &opts).map_err(|e| e.to_string())?;
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
        let art = attach_seal(&source, &subject, &sealed.seal).map_err(|e| e.to_string())?;
        println!("artifact {art}");
    }
    Ok(())
}
