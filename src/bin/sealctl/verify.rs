//! `sealctl verify --repo REPO [--key PUB]... DIGEST`: recompute the image
//! digest, every referenced object and the seal, offline. Every problem is
//! printed as `<path>: <problem>`; the exit status is non-zero if there is
//! any. `--json` prints one JSON object for CI instead.
//!
//! Without `--key` the seal's signature is not checked (the manifest is
//! still parsed and its digest compared); the output says so.

use std::path::PathBuf;
use std::process::ExitCode;

use sealroot::image::repo;
use sealroot::keys;

#[derive(clap::Args)]
pub struct Args {
    /// Repository root (holds composefs/).
    #[arg(long)]
    repo: PathBuf,
    /// Trusted public key (SPKI PEM); repeat for several.
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
    /// Refuse seals with a serial below this.
    #[arg(long, default_value_t = 0)]
    serial_floor: u64,
    /// Print a JSON report instead of lines.
    #[arg(long)]
    json: bool,
    /// Image digest: <hex>, sha256:<hex> or v1-sha256-12:<hex>.
    digest: String,
}

pub fn run(args: Args) -> ExitCode {
    let digest = match repo::parse_digest_arg(&args.digest) {
        Ok(d) => d,
        Err(e) => return crate::fail("verify", e),
    };
    let mut trusted = Vec::new();
    for path in &args.keys {
        match keys::load_public_key(path) {
            Ok(k) => trusted.push(k),
            Err(e) => return crate::fail("verify", e),
        }
    }
    let r = repo::Repo::new(&args.repo);
    let progress = sealroot::image::progress::Progress::new("verify");
    let report = repo::verify(&r, &digest, &trusted, args.serial_floor, &progress);
    progress.finish();
    if args.json {
        let problems: Vec<_> = report
            .problems
            .iter()
            .map(|p| {
                serde_json::json!({
                    "path": p.path.display().to_string(),
                    "problem": p.kind.code(),
                    "message": p.kind.to_string(),
                })
            })
            .collect();
        let seal = report.seal.as_ref().map(|s| {
            serde_json::json!({
                "key": s.key_fingerprint,
                "serial": s.manifest.serial,
                "os": s.manifest.os,
                "version": s.manifest.version,
                "created": s.manifest.created,
            })
        });
        let out = serde_json::json!({
            "digest": digest.to_composefs(),
            "ok": report.problems.is_empty(),
            "objects": report.objects,
            "bytes": report.bytes,
            "signature_checked": !report.signature_unchecked,
            "seal": seal,
            "problems": problems,
        });
        println!("{out}");
    } else {
        for p in &report.problems {
            println!("{p}");
        }
        if report.problems.is_empty() {
            println!(
                "ok {} ({} objects, {} bytes)",
                digest.to_composefs(),
                report.objects,
                report.bytes
            );
            if let Some(s) = &report.seal {
                println!(
                    "sealed by {} serial {}",
                    s.key_fingerprint, s.manifest.serial
                );
            }
            if report.signature_unchecked {
                println!("signature not checked (no --key given)");
            }
        }
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        if !args.json {
            eprintln!("sealctl verify: {} problem(s)", report.problems.len());
        }
        ExitCode::FAILURE
    }
}
