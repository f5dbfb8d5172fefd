//! `sealctl oci push-seal --image docker://HOST/REPO[:TAG] --seal FILE.json`:
//! push a seal (the manifest file and the `.sig` beside it, as `sealctl
//! sign` or `sealctl oci seal` wrote them) to the registry as an OCI
//! artifact whose subject is the image's manifest; on a registry without
//! the referrers API the `sha256-<hex>` tag index is written too.
//!
//! The seal is checked for shape before anything is sent (a manifest the
//! format accepts, a 64-byte signature); it is not verified here (no key is
//! needed to push; `sealctl pull` verifies against the keys it trusts).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sealroot::oci::registry::Registry;
use sealroot::oci::seal_artifact::SealPair;
use sealroot::seal;

use crate::registry_flags::RegistryFlags;

#[derive(clap::Args)]
pub struct Args {
    /// The image the seal is for: docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX].
    #[arg(long)]
    image: String,
    /// The seal manifest (`<hex>.json`); the signature is read from `<hex>.sig` beside it.
    #[arg(long)]
    seal: PathBuf,
    /// The signature file, when it is not beside the manifest.
    #[arg(long)]
    signature: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryFlags,
}

const CMD: &str = "oci push-seal";

fn read_capped(path: &Path, cap: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(cap as u64 + 1).read_to_end(&mut out))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if out.len() > cap {
        return Err(format!("{}: larger than {cap} bytes", path.display()));
    }
    Ok(out)
}

pub fn run(a: Args) -> ExitCode {
    let sig_path = a
        .signature
        .clone()
        .unwrap_or_else(|| a.seal.with_extension("sig"));
    let pair = match (
        read_capped(&a.seal, seal::MAX_MANIFEST_SIZE),
        read_capped(&sig_path, seal::SIGNATURE_SIZE),
    ) {
        (Ok(manifest), Ok(signature)) => SealPair {
            manifest,
            signature,
        },
        (Err(e), _) | (_, Err(e)) => return crate::fail(CMD, e),
    };
    let manifest = match seal::Manifest::parse(&pair.manifest) {
        Ok(m) => m,
        Err(e) => return crate::fail(CMD, format!("{}: {e}", a.seal.display())),
    };
    if pair.signature.len() != seal::SIGNATURE_SIZE {
        return crate::fail(
            CMD,
            format!(
                "{}: {} bytes, a signature is {}",
                sig_path.display(),
                pair.signature.len(),
                seal::SIGNATURE_SIZE
            ),
        );
    }
    let registry = match Registry::open(&a.image, &a.registry.options()) {
        Ok(r) => r,
        Err(e) => return crate::fail(CMD, e),
    };
    match registry.push_seal(&pair) {
        Ok(p) => {
            let how = if p.referrers_api {
                "referrers API".to_string()
            } else {
                format!(
                    "tag {} (no referrers API)",
                    sealroot::oci::registry::referrers::fallback_tag(&p.subject)
                )
            };
            println!(
                "pushed seal {} (serial {}, image {}) as {} for manifest {} via {how}",
                a.seal.display(),
                manifest.serial,
                manifest.digest.to_hex(),
                p.artifact,
                p.subject
            );
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(CMD, e),
    }
}
