//! Sealing and pulling OCI images, written once for every [`ImageSource`].
//!
//! Contract:
//! - [`image_tree`] reads the manifest, fetches and checks the config blob
//!   (digest, size, at most 4 MiB), then applies the layers in order with
//!   [`crate::oci::flatten`], each blob checked for size and digest as it
//!   streams. With a store batch, file contents go into it; nothing is
//!   committed here.
//! - [`seal_image`] turns the flattened tree into the composefs image (the
//!   same writer `sealctl build` uses), signs a seal for its digest with
//!   [`crate::seal::sign`] (the one owner of the seal format) and returns
//!   the seal bytes; with a repository it also commits the objects and
//!   publishes image and seal there (objects, then image, then seal).
//! - [`pull`] checks the seal first: signature by one of the trusted keys,
//!   the key the manifest names, serial at or above the floor. Only then
//!   is any layer fetched. It builds the image with the objects in an
//!   uncommitted batch and compares the built digest with the sealed one;
//!   only if they are equal are the objects committed, then the image
//!   published, then the seal written. Any refusal or error before that
//!   drops the batch (its temporaries are removed), so the repository's
//!   objects, images and seals are as they were. (A new repository gets its
//!   `composefs/meta.json` at the start, as `sealctl build` does.)
//! - mtimes are the tar headers' (with PAX nanoseconds), directories a layer
//!   does not list get mtime 0; [`MtimePolicy::Zero`] zeroes all of them.
//!   The sealer and the puller must use the same policy, or the digests
//!   differ and the pull is refused.
//! - With `layer_cache`, a layer the repository's
//!   [`crate::oci::layer_cache`] has (all its objects still in the store) is
//!   replayed instead of fetched; the layers read are recorded after the
//!   image is published. A build that used cache entries and misses the
//!   sealed digest drops them and is redone reading every layer. Objects
//!   already in the repository are never written again either way.
//! - Each layer's uncompressed tar must hash to its config `diff_id`.

use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::digest::{Digest, HashAlgorithm};
use crate::image::erofs::writer::{write_image, WriteError, WriteOptions};
use crate::image::progress::Progress;
use crate::image::repo::{self, MtimePolicy, Repo, RepoError};
use crate::image::store::{Batch, ObjectStore, StoreError};
use crate::image::tree::Tree;
use crate::oci::flatten::Op;
use crate::oci::flatten::{
    read_small_blob, BlobError, FlattenError, FlattenOptions, Flattener, LayerInfo,
};
use crate::oci::layer_cache::LayerCache;
use crate::oci::seal_artifact::SealPair;
use crate::oci::source::{ImageSource, OciDigest};
use crate::seal::{self, SealError};

/// Largest config blob read.
pub const MAX_CONFIG: u64 = 4 << 20;

/// Why sealing or pulling an OCI image failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The store's own error names the store and reference.
    #[error("{error}")]
    Source {
        source_name: String,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{source_name}: manifest {digest} is not an OCI image manifest: {reason}")]
    BadManifest {
        source_name: String,
        digest: String,
        reason: String,
    },
    #[error("{source_name}: config {digest}: {reason}")]
    BadConfig {
        source_name: String,
        digest: String,
        reason: String,
    },
    #[error("{source_name}: config: {error}")]
    ConfigBlob {
        source_name: String,
        error: BlobError,
    },
    #[error("{source_name}: {error}")]
    Flatten {
        source_name: String,
        error: FlattenError,
    },
    #[error("{source_name}: no seal for manifest {digest} (give one with --seal)")]
    NoSeal { source_name: String, digest: String },
    #[error("seal refused: {0}")]
    Seal(SealError),
    #[error(
        "{source_name}: the image built from the layers has digest {}, but the seal is for {}; nothing was added",
        .built.to_hex(),
        .sealed.to_hex()
    )]
    DigestMismatch {
        source_name: String,
        sealed: Box<Digest>,
        built: Box<Digest>,
        /// Layers replayed from the layer cache in that build.
        cached_layers: usize,
    },
    #[error("cannot write the image: {0}")]
    WriteImage(Box<WriteError>),
    #[error("{0}")]
    Repo(Box<RepoError>),
    #[error("{0}")]
    Store(Box<StoreError>),
}

impl From<RepoError> for OciError {
    fn from(e: RepoError) -> Self {
        OciError::Repo(Box::new(e))
    }
}

impl From<StoreError> for OciError {
    fn from(e: StoreError) -> Self {
        OciError::Store(Box::new(e))
    }
}

fn source_err<S: ImageSource>(source: &S) -> impl FnOnce(S::Error) -> OciError + '_ {
    move |e| OciError::Source {
        source_name: source.describe(),
        error: Box::new(e),
    }
}

/// How the image is made from the layers.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageOptions {
    pub mtimes: MtimePolicy,
    pub hash: HashAlgorithm,
    /// Draw a progress line per layer on a terminal.
    pub progress: bool,
}

/// A parsed image manifest and its digest.
pub struct ImageManifest {
    pub bytes: Vec<u8>,
    pub digest: OciDigest,
    pub parsed: oci_spec::image::ImageManifest,
}

/// Fetch and parse the source's image manifest.
pub fn read_manifest<S: ImageSource>(source: &S) -> Result<ImageManifest, OciError> {
    let (bytes, digest) = source.manifest().map_err(source_err(source))?;
    let parsed: oci_spec::image::ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| OciError::BadManifest {
            source_name: source.describe(),
            digest: digest.clone(),
            reason: e.to_string(),
        })?;
    Ok(ImageManifest {
        bytes,
        digest,
        parsed,
    })
}

/// Fetch the config and apply every layer of `manifest` (module docs).
pub fn image_tree<S: ImageSource>(
    source: &S,
    manifest: &ImageManifest,
    batch: Option<&Batch<'_>>,
    opts: &ImageOptions,
) -> Result<Tree, OciError> {
    image_tree_cached(source, manifest, batch.map(|b| (b, None)), opts).map(|(t, _)| t)
}

/// Which layers came from the layer cache, and the operations of those
/// that were read (to record once the pull is accepted).
#[derive(Default)]
pub struct LayerUse {
    /// `(layer digest)` of each layer replayed from the cache.
    pub cached: Vec<String>,
    /// `(layer digest, diff_id, ops)` of each layer read from its blob.
    pub read: Vec<(String, String, Vec<Op>)>,
}

/// [`image_tree`], with a store batch and optionally a layer cache: a
/// layer the cache has (with all its objects in the store) is replayed
/// instead of fetched; the others are read and their operations returned.
pub fn image_tree_cached<S: ImageSource>(
    source: &S,
    manifest: &ImageManifest,
    store: Option<(&Batch<'_>, Option<&LayerCache>)>,
    opts: &ImageOptions,
) -> Result<(Tree, LayerUse), OciError> {
    let name = source.describe();
    let batch = store.map(|(b, _)| b);
    let cache = store.and_then(|(_, c)| c);
    let config = manifest.parsed.config();
    let config_digest = config.digest().to_string();
    let reader = source
        .open_blob(&config_digest, config.size())
        .map_err(source_err(source))?;
    let config_bytes =
        read_small_blob(reader, &config_digest, config.size(), MAX_CONFIG).map_err(|error| {
            OciError::ConfigBlob {
                source_name: name.clone(),
                error,
            }
        })?;
    let parsed: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| OciError::BadConfig {
            source_name: name.clone(),
            digest: config_digest.clone(),
            reason: e.to_string(),
        })?;
    let layers = manifest.parsed.layers();
    let diff_ids: Vec<String> = parsed
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| d.to_string())
        .collect();
    if diff_ids.len() != layers.len() {
        return Err(OciError::BadConfig {
            source_name: name,
            digest: config_digest,
            reason: format!("{} diff_ids for {} layers", diff_ids.len(), layers.len()),
        });
    }
    let mut used = LayerUse::default();
    let mut flattener =
        Flattener::new(FlattenOptions { hash: opts.hash }, batch).recording(cache.is_some());
    for (i, (layer, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
        let digest = layer.digest().to_string();
        let flatten_err = |error| OciError::Flatten {
            source_name: name.clone(),
            error,
        };
        if let (Some(c), Some(b)) = (cache, batch) {
            if let Some(ops) = c.load(&digest, diff_id, b) {
                flattener.replay_layer(&ops).map_err(flatten_err)?;
                used.cached.push(digest);
                continue;
            }
        }
        let media_type = layer.media_type().to_string();
        let info = LayerInfo {
            digest: &digest,
            size: layer.size(),
            media_type: &media_type,
            diff_id: Some(diff_id),
        };
        let progress = opts.progress.then(|| {
            let short: String = digest.chars().take(19).collect();
            let p = Arc::new(Progress::new(&format!(
                "layer {}/{} {short}",
                i + 1,
                layers.len()
            )));
            p.set_total(0, layer.size());
            p
        });
        let reader = source
            .open_blob(&digest, layer.size())
            .map_err(source_err(source))?;
        let result = flattener.apply_layer(&info, reader, progress.clone());
        if let Some(p) = progress {
            p.finish();
        }
        let ops = result.map_err(flatten_err)?;
        if cache.is_some() {
            used.read.push((digest, diff_id.clone(), ops));
        }
    }
    let mut tree = flattener.finish();
    repo::fix_mtimes(&mut tree, opts.mtimes);
    Ok((tree, used))
}

/// The composefs image bytes of `tree` and their digest.
pub fn image_of(tree: &Tree, hash: HashAlgorithm) -> Result<(Vec<u8>, Digest), OciError> {
    let image = write_image(tree, &WriteOptions::default())
        .map_err(|e| OciError::WriteImage(Box::new(e)))?;
    let digest = crate::image::fsverity::digest_bytes(hash, &image);
    Ok((image, digest))
}

/// What [`seal_image`] made.
#[derive(Clone, Debug)]
pub struct Sealed {
    pub digest: Digest,
    pub manifest_digest: OciDigest,
    pub manifest_size: u64,
    pub manifest_media_type: String,
    pub seal: SealPair,
    /// With a repository: the seal files written there.
    pub paths: Option<(PathBuf, PathBuf)>,
}

/// Flatten the source's image, compute its composefs digest and sign a
/// seal for it with `key` (`template` gives serial, os, version,
/// created; its digest is replaced). With `repo`, the objects, image and
/// seal are published there too.
pub fn seal_image<S: ImageSource>(
    source: &S,
    key: &SigningKey,
    template: &seal::Manifest,
    repo: Option<&Repo>,
    opts: &ImageOptions,
) -> Result<Sealed, OciError> {
    let manifest = read_manifest(source)?;
    let (digest, paths, seal) = match repo {
        None => {
            let tree = image_tree(source, &manifest, None, opts)?;
            let (_, digest) = image_of(&tree, opts.hash)?;
            let (json, sig) = sign(key, template, digest)?;
            (
                digest,
                None,
                SealPair {
                    manifest: json,
                    signature: sig.to_vec(),
                },
            )
        }
        Some(repo) => {
            let _lock = repo.lock_for_write()?;
            repo.prepare_meta_for_write(opts.hash)?;
            let store = ObjectStore::open(&repo.objects_dir())?;
            let batch = store.batch();
            let tree = image_tree(source, &manifest, Some(&batch), opts)?;
            let (image, digest) = image_of(&tree, opts.hash)?;
            drop(tree);
            let (json, sig) = sign(key, template, digest)?;
            batch.commit()?;
            repo::publish_image(repo, &image, opts.hash)?;
            let paths = repo::write_seal(repo, &digest, &json, &sig)?;
            (
                digest,
                Some(paths),
                SealPair {
                    manifest: json,
                    signature: sig.to_vec(),
                },
            )
        }
    };
    let media = manifest
        .parsed
        .media_type()
        .as_ref()
        .map(|t| t.to_string())
        .unwrap_or_else(|| crate::oci::seal_artifact::MANIFEST_MEDIA_TYPE.to_owned());
    Ok(Sealed {
        digest,
        manifest_size: manifest.bytes.len() as u64,
        manifest_digest: manifest.digest,
        manifest_media_type: media,
        seal,
        paths,
    })
}

fn sign(
    key: &SigningKey,
    template: &seal::Manifest,
    digest: Digest,
) -> Result<(Vec<u8>, [u8; seal::SIGNATURE_SIZE]), OciError> {
    let mut m = template.clone();
    m.digest = digest;
    // Fill the key field only to validate the rest before signing.
    let mut probe = m.clone();
    probe.key = crate::keys::fingerprint(&key.verifying_key());
    probe.validate().map_err(OciError::Seal)?;
    Ok(seal::sign(key, &m))
}

/// What to trust when pulling.
pub struct PullOptions<'a> {
    pub keys: &'a [VerifyingKey],
    pub floor: u64,
    /// The seal to use; `None` asks the source for the one stored beside
    /// the image.
    pub seal: Option<SealPair>,
    pub mtimes: MtimePolicy,
    pub progress: bool,
    /// Skip fetching layers the repository's layer cache has
    /// ([`crate::oci::layer_cache`]), and record the ones read.
    pub layer_cache: bool,
}

/// What [`pull`] added.
#[derive(Clone, Debug)]
pub struct PullReport {
    pub digest: Digest,
    pub manifest_digest: OciDigest,
    pub serial: u64,
    pub key_fingerprint: String,
    pub layers: usize,
    /// Layers replayed from the layer cache instead of fetched.
    pub layers_cached: usize,
    pub image_size: u64,
    pub objects_added: u64,
    pub objects_existing: u64,
    pub bytes_added: u64,
    pub seal_paths: (PathBuf, PathBuf),
}

/// Check a seal's signature, signer and floor without an image yet: the
/// digest it names is the one the built image must have.
pub fn check_seal_first(
    pair: &SealPair,
    keys: &[VerifyingKey],
    floor: u64,
) -> Result<seal::VerifiedSeal, SealError> {
    // The manifest is parsed before the signature check only to learn the
    // digest to compare with; verify_seal checks the signature before it
    // trusts anything in it, and the result is what the build is held to.
    let claimed = match seal::Manifest::parse(&pair.manifest) {
        Ok(m) => m.digest,
        Err(parse_error) => {
            // Let the signature check speak first (an unknown key is the
            // likelier story than a malformed manifest).
            let any = crate::image::fsverity::digest_bytes(HashAlgorithm::Sha256, b"");
            return Err(
                match seal::verify_seal(&pair.manifest, &pair.signature, keys, &any, floor) {
                    Err(SealError::DigestMismatch { .. }) | Ok(_) => parse_error,
                    Err(e) => e,
                },
            );
        }
    };
    seal::verify_seal(&pair.manifest, &pair.signature, keys, &claimed, floor)
}

/// Pull the source's image into `repo` (module docs).
pub fn pull<S: ImageSource>(
    source: &S,
    repo: &Repo,
    opts: PullOptions<'_>,
) -> Result<PullReport, OciError> {
    let manifest = read_manifest(source)?;
    let candidates = match opts.seal {
        Some(p) => vec![p],
        None => source.seals(&manifest.digest).map_err(source_err(source))?,
    };
    // Newest first; the first that the keys and floor accept is used. When
    // none is, the newest refusal of a seal a trusted key signed (below the
    // floor, say) is reported, else the newest refusal: "below the floor"
    // says more than "another vendor's key".
    let mut refusal = None;
    let mut accepted = None;
    for pair in candidates.into_iter().rev() {
        match check_seal_first(&pair, opts.keys, opts.floor) {
            Ok(v) => {
                accepted = Some((pair, v));
                break;
            }
            Err(e) => {
                let foreign = |e: &SealError| {
                    matches!(
                        e,
                        SealError::UnknownKey { .. } | SealError::SignatureInvalid
                    )
                };
                if refusal.as_ref().is_none_or(|r| foreign(r) && !foreign(&e)) {
                    refusal = Some(e);
                }
            }
        }
    }
    let (pair, verified) = match (accepted, refusal) {
        (Some(a), _) => a,
        (None, Some(e)) => return Err(OciError::Seal(e)),
        (None, None) => {
            return Err(OciError::NoSeal {
                source_name: source.describe(),
                digest: manifest.digest.clone(),
            })
        }
    };
    let sealed = verified.manifest.digest;
    let hash = sealed.algorithm();

    let _lock = repo.lock_for_write()?;
    repo.prepare_meta_for_write(hash)?;
    let image_opts = ImageOptions {
        mtimes: opts.mtimes,
        hash,
        progress: opts.progress,
    };
    let cache = opts.layer_cache.then(|| LayerCache::new(repo, hash));
    let mut built = build_checked(
        source,
        repo,
        &manifest,
        &image_opts,
        cache.as_ref(),
        &sealed,
    );
    if let Err(OciError::DigestMismatch { cached_layers, .. }) = &built {
        if *cached_layers > 0 {
            // A cache entry may be what made the difference (build_checked
            // removed the ones it used): read every layer.
            built = build_checked(source, repo, &manifest, &image_opts, None, &sealed);
        }
    }
    let (image, stats, used) = built?;
    repo::publish_image(repo, &image, hash)?;
    let seal_paths = repo::write_seal(repo, &sealed, &pair.manifest, &pair.signature)?;
    if let Some(c) = &cache {
        // Best effort: a cache that cannot be written only costs a fetch.
        for (digest, diff_id, ops) in &used.read {
            let _ = c.store(digest, diff_id, ops);
        }
    }
    Ok(PullReport {
        digest: sealed,
        manifest_digest: manifest.digest,
        serial: verified.manifest.serial,
        key_fingerprint: verified.key_fingerprint,
        layers: manifest.parsed.layers().len(),
        layers_cached: used.cached.len(),
        image_size: image.len() as u64,
        objects_added: stats.added,
        objects_existing: stats.existing,
        bytes_added: stats.bytes_added,
        seal_paths,
    })
}

/// Build the image into a batch, and commit the batch only if the image
/// has the sealed digest. On a mismatch after cache entries were used,
/// those entries are removed (the caller retries without the cache).
fn build_checked<S: ImageSource>(
    source: &S,
    repo: &Repo,
    manifest: &ImageManifest,
    opts: &ImageOptions,
    cache: Option<&LayerCache>,
    sealed: &Digest,
) -> Result<(Vec<u8>, crate::image::store::BatchStats, LayerUse), OciError> {
    let store = ObjectStore::open(&repo.objects_dir())?;
    let batch = store.batch();
    let (tree, used) = image_tree_cached(source, manifest, Some((&batch, cache)), opts)?;
    let (image, built) = image_of(&tree, opts.hash)?;
    drop(tree);
    if built != *sealed {
        if let Some(c) = cache {
            for layer in &used.cached {
                c.remove(layer);
            }
        }
        // The batch is dropped here: its temporaries go, nothing is published.
        return Err(OciError::DigestMismatch {
            source_name: source.describe(),
            sealed: Box::new(*sealed),
            built: Box::new(built),
            cached_layers: used.cached.len(),
        });
    }
    let stats = batch.commit()?;
    Ok((image, stats, used))
}
