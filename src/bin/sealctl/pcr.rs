//! `sealctl pcr`: the record a boot extends into the TPM and the PCR value
//! it leaves, computed on the host (for `systemd-cryptenroll --tpm2-pcrs=`,
//! pcrlock or an attestation server's policy).
//!
//! The record comes from the library's encoders (`sealroot::tpm`), the same
//! functions the boot binary calls:
//! - `--repo R --key PUB.pem… DIGEST`: the seal of DIGEST in R is verified
//!   with the given keys (as the boot would, serial floor `--serial-floor`);
//!   the record names the key that verified it and the seal's serial. The
//!   image bytes are not hashed here (`sealctl verify` does that);
//! - `--sealed-digest DIGEST`: the record of a sealed-digest build;
//! - `--refused CLASS [DIGEST]`: the record of a refused boot (CLASS is the
//!   word the boot logs, e.g. `seal`);
//! - `--replay`: no record; only the value the event log replays to.
//!
//! Start value: `--from HEX` (one bank, chosen by the length: 64 hex
//! SHA-256, 96 SHA-384, 128 SHA-512), or the replay of `--event-log FILE`
//! (systemd's JSON-SEQ `tpm2-measure.log`) for the PCR from zeros, or zeros.
//! Output: `record <record>` then `pcr <N> <bank> <hex>` per bank.

use std::path::PathBuf;
use std::process::ExitCode;

use sealroot::digest::{hex_decode_lower, hex_encode, Digest};
use sealroot::image::repo;
use sealroot::tpm::{self, Bank, RefusalClass};
use sealroot::{keys, seal};

#[derive(clap::Args)]
pub struct Args {
    /// Repository root (holds composefs/) whose seal of DIGEST is measured.
    #[arg(long, requires = "keys", conflicts_with_all = ["sealed_digest", "refused", "replay"])]
    repo: Option<PathBuf>,
    /// Trusted public key (SPKI PEM) the seal must verify with; repeatable.
    #[arg(long = "key", value_name = "PUB.pem")]
    keys: Vec<PathBuf>,
    /// Seals below this serial are refused (as the boot's floor would).
    #[arg(long, default_value_t = 0)]
    serial_floor: u64,
    /// The record of a sealed-digest build for DIGEST.
    #[arg(long, conflicts_with_all = ["refused", "replay"])]
    sealed_digest: bool,
    /// The record of a refused boot with this reason class.
    #[arg(long, value_name = "CLASS", conflicts_with = "replay")]
    refused: Option<String>,
    /// No record: print what --event-log replays to.
    #[arg(long, requires = "event_log")]
    replay: bool,
    /// The PCR (default 15, sealroot's default policy).
    #[arg(long, default_value_t = tpm::DEFAULT_PCR)]
    pcr: u32,
    /// Start value of the PCR in one bank (hex; the length picks the bank).
    #[arg(long, value_name = "HEX", conflicts_with = "event_log")]
    from: Option<String>,
    /// systemd's JSON-SEQ measurement log to replay for the start value.
    #[arg(long, value_name = "FILE")]
    event_log: Option<PathBuf>,
    /// Banks to print (sha256, sha384, sha512); default all three.
    #[arg(long = "bank", value_name = "BANK")]
    banks: Vec<String>,
    /// Image digest: <hex>, sha256:<hex> or v1-sha256-12:<hex>.
    digest: Option<String>,
}

/// Largest event log read.
const MAX_LOG: u64 = 16 << 20;

fn parse_digest(text: Option<&String>, needed: bool) -> Result<Option<Digest>, String> {
    match text {
        Some(t) => repo::parse_digest_arg(t)
            .map(Some)
            .map_err(|e| e.to_string()),
        None if needed => Err("an image DIGEST is required".into()),
        None => Ok(None),
    }
}

fn record(args: &Args) -> Result<Option<String>, String> {
    if args.replay {
        if args.digest.is_some() {
            return Err("--replay takes no DIGEST".into());
        }
        return Ok(None);
    }
    if let Some(class) = &args.refused {
        let class = RefusalClass::from_name(class).ok_or_else(|| {
            let all: Vec<&str> = RefusalClass::ALL.iter().map(|c| c.name()).collect();
            format!(
                "--refused {class:?} is not a refusal class ({})",
                all.join(", ")
            )
        })?;
        let d = parse_digest(args.digest.as_ref(), false)?;
        return Ok(Some(tpm::refused_record(d.as_ref(), class)));
    }
    let Some(d) = parse_digest(args.digest.as_ref(), true)? else {
        return Err("an image DIGEST is required".into());
    };
    if args.sealed_digest {
        return Ok(Some(tpm::sealed_digest_record(&d)));
    }
    let Some(root) = &args.repo else {
        return Err(
            "say where the record comes from: --repo R --key PUB.pem, --sealed-digest, --refused CLASS or --replay"
                .into(),
        );
    };
    let mut trusted = Vec::new();
    for path in &args.keys {
        trusted.push(keys::load_public_key(path).map_err(|e| e.to_string())?);
    }
    // The boot's own seal check (same beneath-fd reads, same verification),
    // so the record predicted is the one the boot would extend.
    let composefs = sealroot::boot::mount::open_repo(root).map_err(|e| e.to_string())?;
    let checked = seal::check_repository_seal(&composefs, &d, &trusted, args.serial_floor)
        .map_err(|e| e.to_string())?;
    let v = checked.verified;
    tpm::accepted_record(&d, &v.key_fingerprint, v.manifest.serial)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn banks(args: &Args) -> Result<Vec<Bank>, String> {
    if args.banks.is_empty() {
        return Ok(vec![Bank::Sha256, Bank::Sha384, Bank::Sha512]);
    }
    let mut out = Vec::new();
    for name in &args.banks {
        match Bank::from_name(name) {
            Some(b) if b.hash(&[]).is_some() => {
                if !out.contains(&b) {
                    out.push(b)
                }
            }
            _ => return Err(format!("--bank {name:?}: use sha256, sha384 or sha512")),
        }
    }
    Ok(out)
}

/// (bank, start value) per bank to print.
fn starts(args: &Args, banks: Vec<Bank>) -> Result<Vec<(Bank, Vec<u8>)>, String> {
    if let Some(hex) = &args.from {
        let bytes = hex_decode_lower(hex).map_err(|e| format!("--from: {e}"))?;
        let bank = [Bank::Sha256, Bank::Sha384, Bank::Sha512]
            .into_iter()
            .find(|b| b.digest_len() == bytes.len())
            .ok_or_else(|| {
                format!(
                    "--from is {} bytes; a SHA-256/384/512 PCR value is 32, 48 or 64",
                    bytes.len()
                )
            })?;
        if !args.banks.is_empty() && !banks.contains(&bank) {
            return Err(format!(
                "--from is a {} value but --bank does not name {}",
                bank.name(),
                bank.name()
            ));
        }
        return Ok(vec![(bank, bytes)]);
    }
    let zeros: Vec<(Bank, Vec<u8>)> = banks
        .into_iter()
        .map(|b| (b, vec![0; b.digest_len()]))
        .collect();
    let Some(path) = &args.event_log else {
        return Ok(zeros);
    };
    let data = read_limited(path)?;
    let entries =
        tpm::parse_log(&data).map_err(|e| format!("event log {}: {e}", path.display()))?;
    zeros
        .into_iter()
        .map(|(b, z)| {
            tpm::replay(&entries, args.pcr, b, &z)
                .map(|v| (b, v))
                .map_err(|i| {
                    format!(
                        "event log {}: record #{i} for PCR {} has no {} digest",
                        path.display(),
                        args.pcr,
                        b.name()
                    )
                })
        })
        .collect()
}

fn read_limited(path: &std::path::Path) -> Result<Vec<u8>, String> {
    sealroot::image::fileio::read_bounded(path, MAX_LOG).map_err(|e| e.to_string())
}

fn compute(args: &Args) -> Result<String, String> {
    if args.pcr > 23 {
        return Err(format!("--pcr {}: a TPM has PCRs 0..=23", args.pcr));
    }
    let record = record(args)?;
    let banks = banks(args)?;
    let starts = starts(args, banks)?;
    let mut out = String::new();
    if let Some(r) = &record {
        out.push_str(&format!("record {r}\n"));
    }
    for (bank, start) in starts {
        let value = match &record {
            Some(r) => tpm::predict(bank, &start, r.as_bytes())
                .ok_or_else(|| format!("cannot compute the {} bank", bank.name()))?,
            None => start,
        };
        out.push_str(&format!(
            "pcr {} {} {}\n",
            args.pcr,
            bank.name(),
            hex_encode(&value)
        ));
    }
    Ok(out)
}

pub fn run(args: Args) -> ExitCode {
    match compute(&args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail("pcr", e),
    }
}
