//! `sealctl sign --key KEY --repo REPO DIGEST`: write the seal
//! `composefs/seals/<hex>.json` + `.sig` for an image in the repository.
//!
//! `created` is the current UTC time, or `SOURCE_DATE_EPOCH` when set (so a
//! reproducible pipeline gets reproducible manifests), or absent with
//! `--no-created`.

use std::path::PathBuf;
use std::process::ExitCode;

use sealroot::image::repo;
use sealroot::{keys, seal};

#[derive(clap::Args)]
pub struct Args {
    /// Private key (PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
    /// Repository root (holds composefs/).
    #[arg(long)]
    repo: PathBuf,
    #[command(flatten)]
    fields: SealFields,
    /// Image digest: <hex>, sha256:<hex> or v1-sha256-12:<hex>.
    digest: String,
}

/// Manifest fields shared by `sign` and `build --sign`.
#[derive(clap::Args, Clone)]
pub struct SealFields {
    /// Rollback serial (compared against the boot binary's floor).
    #[arg(long, default_value_t = 0)]
    pub serial: u64,
    /// OS name recorded in the manifest.
    #[arg(long)]
    pub os: Option<String>,
    /// OS version recorded in the manifest.
    #[arg(long = "version", alias = "os-version")]
    pub version: Option<String>,
    /// Omit the creation time.
    #[arg(long)]
    pub no_created: bool,
}

impl SealFields {
    pub fn manifest(&self, digest: sealroot::digest::Digest) -> Result<seal::Manifest, String> {
        let mut m = seal::Manifest::new(digest);
        m.serial = self.serial;
        m.os = self.os.clone();
        m.version = self.version.clone();
        if !self.no_created {
            m.created = Some(seal::format_timestamp(created_time()?));
        }
        Ok(m)
    }
}

fn created_time() -> Result<u64, String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse::<u64>()
            .map_err(|_| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)),
    }
}

/// Load the key and seal `digest`; prints the two paths.
pub fn seal_in_repo(
    repo: &repo::Repo,
    key_path: &std::path::Path,
    fields: &SealFields,
    digest: sealroot::digest::Digest,
) -> Result<(), String> {
    let key = keys::load_private_key(key_path).map_err(|e| e.to_string())?;
    let manifest = fields.manifest(digest)?;
    let (json, sig) = repo::sign_image(repo, &key, &manifest).map_err(|e| e.to_string())?;
    println!("seal {}", json.display());
    println!("signature {}", sig.display());
    println!("key {}", keys::fingerprint(&key.verifying_key()));
    Ok(())
}

pub fn run(args: Args) -> ExitCode {
    let digest = match repo::parse_digest_arg(&args.digest) {
        Ok(d) => d,
        Err(e) => return crate::fail("sign", e),
    };
    let repo = repo::Repo::new(args.repo);
    match seal_in_repo(&repo, &args.key, &args.fields, digest) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail("sign", e),
    }
}
