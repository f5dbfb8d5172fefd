//! `sealctl build ROOTFS --repo REPO [--sign KEY ...]`: objects + image into
//! the repository, digest (64 hex) on stdout, optionally sealed in the same
//! step. Reproducibility: entries are sorted by the writer; mtimes are
//! recorded as found, clamped to `SOURCE_DATE_EPOCH` when it is set, or all
//! zero with `--use-epoch` (see docs/sealing.md). On a terminal it
//! reports the phases and what was added.
//!
//! `--digest-cache FILE` makes the build incremental: files unchanged since
//! the build that wrote FILE keep their digests without being read (see
//! `sealroot::image::digest_cache`). A cache that cannot be used or saved
//! is a warning, never an error.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sealroot::digest::HashAlgorithm;
use sealroot::image::digest_cache::{self, CacheError, DigestCache, ScanRecord};
use sealroot::image::fileio::FileIoError;
use sealroot::image::repo;
use sealroot::keys;

#[derive(clap::Args)]
pub struct Args {
    /// The root tree to build.
    rootfs: PathBuf,
    /// Repository root (composefs/ is created inside).
    #[arg(long)]
    repo: PathBuf,
    /// Seal the image with this private key (PKCS#8 PEM).
    #[arg(long)]
    sign: Option<PathBuf>,
    #[command(flatten)]
    fields: crate::sign::SealFields,
    /// Record every mtime as 0 (as mkcomposefs --use-epoch).
    #[arg(long)]
    use_epoch: bool,
    /// Hashing threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// fs-verity hash algorithm of the image and objects: sha256 (composefs's
    /// default) or sha512.
    #[arg(long = "hash-alg", default_value = "sha256", value_parser = parse_hash_alg)]
    hash_alg: HashAlgorithm,
    /// Reuse the digests of unchanged files from this cache file and update
    /// it (incremental builds; keep it outside the repository).
    #[arg(long, value_name = "FILE")]
    digest_cache: Option<PathBuf>,
}

/// The cache at `path` for a build with `alg`; empty (with a warning on
/// stderr unless the file does not exist yet) when it cannot be used.
pub(crate) fn load_cache(command: &str, path: &Path, alg: HashAlgorithm) -> DigestCache {
    match DigestCache::load(path, alg) {
        Ok(c) => c,
        Err(CacheError::File(FileIoError::Missing { .. })) => DigestCache::empty(alg),
        Err(e) => {
            eprintln!("sealctl {command}: warning: digest cache not used: {e}");
            DigestCache::empty(alg)
        }
    }
}

/// Save the cache the scan leaves; a failure is a warning.
pub(crate) fn save_cache(command: &str, path: &Path, loaded: &DigestCache, record: &ScanRecord) {
    if let Err(e) = digest_cache::save_after_scan(path, loaded, record) {
        eprintln!("sealctl {command}: warning: digest cache not saved: {e}");
    }
}

fn parse_hash_alg(name: &str) -> Result<HashAlgorithm, String> {
    HashAlgorithm::from_name(name)
        .ok_or_else(|| format!("unknown hash algorithm {name:?}: expected sha256 or sha512"))
}

fn mtime_policy(use_epoch: bool) -> Result<repo::MtimePolicy, String> {
    if use_epoch {
        return Ok(repo::MtimePolicy::Zero);
    }
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse::<i64>()
            .ok()
            .filter(|&n| n >= 0)
            .map(repo::MtimePolicy::ClampTo)
            .ok_or_else(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(repo::MtimePolicy::AsFound),
    }
}

pub fn run(args: Args) -> ExitCode {
    let mtimes = match mtime_policy(args.use_epoch) {
        Ok(m) => m,
        Err(e) => return crate::fail("build", e),
    };
    // Load the key before any work, so a bad key costs nothing.
    let key = match &args.sign {
        Some(path) => match keys::load_private_key(path) {
            Ok(k) => Some(k),
            Err(e) => return crate::fail("build", e),
        },
        None => None,
    };
    let r = repo::Repo::new(&args.repo);
    // Held across build and sign, so `sealctl gc` cannot drop the image
    // between the two (unsealed, it is not kept by default).
    let _lock = match r.lock_for_write() {
        Ok(l) => l,
        Err(e) => return crate::fail("build", e),
    };
    let opts = repo::BuildOptions {
        mtimes,
        threads: args.threads,
        hash: args.hash_alg,
    };
    let tty = std::io::stderr().is_terminal();
    if tty {
        eprint!("build: scanning {} ...", args.rootfs.display());
    }
    let report = match &args.digest_cache {
        Some(path) => {
            let loaded = load_cache("build", path, args.hash_alg);
            repo::build_cached(&args.rootfs, &r, &opts, &loaded).map(|(report, record)| {
                save_cache("build", path, &loaded, &record);
                report
            })
        }
        None => repo::build(&args.rootfs, &r, &opts),
    };
    if tty {
        eprint!("\r\x1b[K");
    }
    let report = match report {
        Ok(rep) => rep,
        Err(e) => return crate::fail("build", e),
    };
    if tty {
        eprintln!(
            "build: image {} bytes, {} objects added ({} bytes), {} already present",
            report.image_size, report.objects_added, report.bytes_added, report.objects_existing
        );
        if args.digest_cache.is_some() {
            eprintln!(
                "build: {} file digests reused from the digest cache",
                report.digests_reused
            );
        }
    }
    if let Some(key) = key {
        let manifest = match args.fields.manifest(report.digest) {
            Ok(m) => m,
            Err(e) => return crate::fail("build", e),
        };
        match repo::sign_image(&r, &key, &manifest) {
            Ok((json, _)) => {
                if tty {
                    eprintln!(
                        "build: sealed {} by {}",
                        json.display(),
                        keys::fingerprint(&key.verifying_key())
                    );
                }
            }
            Err(e) => return crate::fail("build", e),
        }
    }
    println!("{}", report.digest.to_hex());
    ExitCode::SUCCESS
}
