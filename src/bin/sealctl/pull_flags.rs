//! The flags every subcommand that pulls a sealed image flattens in
//! (`sealctl pull`, `sealctl update`): the image (`--from` and the registry
//! flags), the repository it goes into (`--repo`), what to trust
//! (`--trusted-key`, `--seal`, `--floor`) and how to read it
//! (`--use-epoch`, `--no-layer-cache`).
//!
//! [`PullFlags::pull_with`] opens `--from` with `sealroot::oci::AnySource`
//! (the one reader of references) and makes the library's [`PullOptions`].

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use sealroot::image::fileio;
use sealroot::image::repo::{MtimePolicy, Repo};
use sealroot::keys;
use sealroot::oci::pull::PullOptions;
use sealroot::oci::seal_artifact::SealPair;
use sealroot::oci::AnySource;
use sealroot::seal::{MAX_MANIFEST_SIZE, SIGNATURE_SIZE};

use crate::registry_flags::RegistryFlags;

#[derive(clap::Args)]
pub struct PullFlags {
    /// The image: oci:DIR[:REF] (an OCI image layout) or
    /// docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX] (a registry).
    #[arg(long)]
    pub from: String,
    #[command(flatten)]
    pub registry: RegistryFlags,
    /// Repository root (holds composefs/); for `update`, the physical root
    /// (also holds state/), mounted read-write.
    #[arg(long)]
    pub repo: PathBuf,
    /// Trusted public key (SPKI PEM); repeat for several.
    #[arg(long = "trusted-key", required = true)]
    pub trusted_keys: Vec<PathBuf>,
    /// The seal manifest (<hex>.json; the signature is read from <hex>.sig
    /// beside it). Without it, the seal stored beside the image is used.
    #[arg(long)]
    pub seal: Option<PathBuf>,
    /// Refuse seals with a serial below this.
    #[arg(long, default_value_t = 0)]
    pub floor: u64,
    /// Fetch every layer, ignoring (and not recording) the repository's
    /// layer cache (REPO/oci-cache/).
    #[arg(long)]
    pub no_layer_cache: bool,
    /// Record every mtime as 0 (as the sealer's `oci seal --use-epoch`).
    #[arg(long)]
    pub use_epoch: bool,
}

impl PullFlags {
    /// Open `--from`, load the trusted keys and read `--seal` (in that
    /// order, the first failure ending it), and hand `f` the source, the
    /// repository `--repo` and the [`PullOptions`] they make.
    pub fn pull_with<T>(
        &self,
        f: impl FnOnce(&AnySource, &Repo, PullOptions<'_>) -> Result<T, String>,
    ) -> Result<T, String> {
        let source =
            AnySource::open(&self.from, &self.registry.options()).map_err(|e| e.to_string())?;
        let keys = self
            .trusted_keys
            .iter()
            .map(|path| keys::load_public_key(path).map_err(|e| e.to_string()))
            .collect::<Result<Vec<VerifyingKey>, String>>()?;
        let options = PullOptions {
            keys: &keys,
            floor: self.floor,
            seal: self.seal.as_deref().map(read_seal).transpose()?,
            mtimes: mtime_policy(self.use_epoch),
            progress: true,
            layer_cache: !self.no_layer_cache,
        };
        f(&source, &Repo::new(&self.repo), options)
    }
}

/// The mtime policy of `--use-epoch` (the sealer's and the puller's must match).
pub fn mtime_policy(use_epoch: bool) -> MtimePolicy {
    if use_epoch {
        MtimePolicy::Zero
    } else {
        MtimePolicy::AsFound
    }
}

/// A seal manifest file and the `.sig` beside it.
fn read_seal(path: &Path) -> Result<SealPair, String> {
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
