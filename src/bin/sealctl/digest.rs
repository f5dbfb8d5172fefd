//! `sealctl digest [--hash-alg=sha256|sha512] [--compact] FILE...`: print each
//! file's fs-verity digest exactly as `fsverity digest` (fsverity-utils 1.5)
//! does: `<alg>:<hex> <path>` per line, or only `<hex>` with `--compact`.
//!
//! One difference on purpose: `fsverity digest` stops at the first file it
//! cannot read; this reports every other file too, prints one error line per
//! failure on stderr (naming the path), and exits 1 if any file failed.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sealroot::digest::HashAlgorithm;
use sealroot::image::fsverity;

#[derive(clap::Args)]
pub struct Args {
    /// Hash algorithm of the Merkle tree: sha256 or sha512.
    #[arg(long = "hash-alg", default_value = "sha256", value_parser = parse_alg)]
    hash_alg: HashAlgorithm,
    /// Merkle tree block size; only 4096 (what composefs uses) is supported.
    #[arg(long = "block-size", default_value_t = 4096, value_parser = parse_block_size)]
    block_size: u32,
    /// Print only the hex digest, without the algorithm and path.
    #[arg(long)]
    compact: bool,
    /// Files to digest.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn parse_alg(s: &str) -> Result<HashAlgorithm, String> {
    HashAlgorithm::from_name(s)
        .ok_or_else(|| format!("unknown hash algorithm {s:?} (expected sha256 or sha512)"))
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    match s {
        "4096" => Ok(4096),
        _ => Err(format!("block size {s:?} is not supported (only 4096)")),
    }
}

/// Why one file could not be digested. (The fields are not named `source`:
/// the message carries the I/O error, there is no `source()`.)
#[derive(Debug, thiserror::Error)]
enum DigestError {
    #[error("cannot open '{path}' for reading: {error}")]
    Open { path: PathBuf, error: io::Error },
    #[error("error reading '{path}': {error}")]
    Read { path: PathBuf, error: io::Error },
}

fn digest_one(alg: HashAlgorithm, path: &Path) -> Result<sealroot::digest::Digest, DigestError> {
    let file = std::fs::File::open(path).map_err(|error| DigestError::Open {
        path: path.to_owned(),
        error,
    })?;
    fsverity::digest_file(alg, &file).map_err(|error| DigestError::Read {
        path: path.to_owned(),
        error,
    })
}

pub fn run(args: Args) -> ExitCode {
    debug_assert_eq!(args.block_size, 4096);
    let mut failed = false;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for path in &args.files {
        match digest_one(args.hash_alg, path) {
            Ok(d) => {
                let line = if args.compact {
                    writeln!(out, "{}", d.to_hex())
                } else {
                    // Paths are printed byte for byte, as fsverity does.
                    use std::os::unix::ffi::OsStrExt;
                    write!(out, "{}:{} ", d.algorithm().name(), d.to_hex())
                        .and_then(|()| out.write_all(path.as_os_str().as_bytes()))
                        .and_then(|()| out.write_all(b"\n"))
                };
                // Flush per line so output and errors interleave in order.
                if let Err(e) = line.and_then(|()| out.flush()) {
                    return crate::fail("digest", format!("writing to stdout: {e}"));
                }
            }
            Err(e) => {
                failed = true;
                let _ = crate::fail("digest", e);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
