//! `sealctl mkcomposefs`: a drop-in for `mkcomposefs` 1.0.x.
//!
//! `SOURCE IMAGE`: SOURCE is a directory, or with `--from-file` a dumpfile
//! (`-` = stdin, parsed leniently as the reference does). IMAGE `-` is
//! stdout (refused on a terminal). As in the reference, `--print-digest-only`
//! takes no IMAGE, and giving either `--min-version` or `--max-version`
//! makes the other default to 0 (otherwise 0 and 1).
//!
//! The whole image is built in memory first, then written to a temporary
//! file beside IMAGE, synced and renamed over it: on any error nothing is
//! written. With `--digest-store`, objects are added in one crash-safe batch
//! committed before the image is published.
//!
//! One option the reference lacks: `--digest-cache FILE` (directory sources
//! only) reuses the fs-verity digests of files unchanged since the run that
//! wrote FILE, and updates it (`sealroot::image::digest_cache`).

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sealroot::digest::HashAlgorithm;
use sealroot::image::erofs::{write_image, WriteOptions};
use sealroot::image::scan::{scan_directory, scan_directory_cached, ScanOptions};
use sealroot::image::store::ObjectStore;

#[derive(clap::Args)]
pub struct Args {
    /// Source directory, or dumpfile with --from-file (`-` = stdin).
    source: OsString,
    /// Output image (`-` = stdout). Must be omitted with --print-digest-only.
    image: Option<OsString>,
    /// The source is a composefs dumpfile, not a directory.
    #[arg(long)]
    from_file: bool,
    /// Store file contents in this object directory, named by digest.
    #[arg(long, value_name = "DIR")]
    digest_store: Option<PathBuf>,
    /// Print the fs-verity digest of the image.
    #[arg(long)]
    print_digest: bool,
    /// Print the fs-verity digest of the image; do not write it.
    #[arg(long)]
    print_digest_only: bool,
    /// Minimum format version.
    #[arg(long, value_name = "N")]
    min_version: Option<u32>,
    /// Maximum format version (the version is raised up to it when needed).
    #[arg(long, value_name = "N")]
    max_version: Option<u32>,
    /// Use a zero mtime for all files.
    #[arg(long)]
    use_epoch: bool,
    /// Do not store xattrs.
    #[arg(long)]
    skip_xattrs: bool,
    /// Only store user.* xattrs.
    #[arg(long)]
    user_xattrs: bool,
    /// Leave out device nodes.
    #[arg(long)]
    skip_devices: bool,
    /// Threads for hashing (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Reuse the fs-verity digests of unchanged files from this cache file,
    /// and update it (not in the reference mkcomposefs).
    #[arg(long, value_name = "FILE")]
    digest_cache: Option<PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail("mkcomposefs", e),
    }
}

fn run_inner(args: Args) -> Result<(), String> {
    if args.source.is_empty() {
        return Err("empty source path".into());
    }
    let image = match (&args.image, args.print_digest_only) {
        (Some(_), true) => {
            return Err("cannot specify an image path with --print-digest-only".into())
        }
        (None, false) => return Err("no destination image specified".into()),
        (img, _) => img.clone(),
    };
    if args.threads == Some(0) {
        return Err("invalid threads count 0".into());
    }
    if args.from_file && args.digest_cache.is_some() {
        return Err("--digest-cache needs a directory source, not --from-file".into());
    }
    if args.skip_xattrs && args.user_xattrs {
        return Err("--skip-xattrs and --user-xattrs cannot be combined".into());
    }
    let opts = match (args.min_version, args.max_version) {
        (None, None) => WriteOptions::default(),
        (min, max) => WriteOptions {
            min_version: min.unwrap_or(0),
            max_version: max.unwrap_or(0),
        },
    };
    if image.as_deref() == Some(std::ffi::OsStr::new("-")) && std::io::stdout().is_terminal() {
        return Err("stdout is a tty, refusing to write the image to it".into());
    }

    let source = Path::new(&args.source);
    let store = match (&args.digest_store, args.from_file) {
        (Some(dir), false) => Some(ObjectStore::open(dir).map_err(|e| e.to_string())?),
        _ => None,
    };
    let batch = store.as_ref().map(|s| s.batch());
    // The cache loaded, and the scan's record, saved once all else worked.
    let mut cache_update = None;
    let tree = if args.from_file {
        let mut input = Vec::new();
        if args.source == "-" {
            std::io::stdin()
                .read_to_end(&mut input)
                .map_err(|e| format!("reading stdin: {e}"))?;
        } else {
            input = std::fs::read(source).map_err(|e| format!("{}: {e}", source.display()))?;
        }
        sealroot::image::dumpfile::parse(&input, false).map_err(|e| e.to_string())?
    } else {
        let scan_opts = ScanOptions {
            skip_xattrs: args.skip_xattrs,
            user_xattrs: args.user_xattrs,
            skip_devices: args.skip_devices,
            use_epoch: args.use_epoch,
            threads: args.threads.unwrap_or(0),
            hash: HashAlgorithm::Sha256,
        };
        match &args.digest_cache {
            Some(path) => {
                let loaded = crate::build::load_cache("mkcomposefs", path, scan_opts.hash);
                let (tree, record) =
                    scan_directory_cached(source, &scan_opts, batch.as_ref(), &loaded)
                        .map_err(|e| e.to_string())?;
                cache_update = Some((path, loaded, record));
                tree
            }
            None => {
                scan_directory(source, &scan_opts, batch.as_ref()).map_err(|e| e.to_string())?
            }
        }
    };
    let bytes = write_image(&tree, &opts).map_err(|e| e.to_string())?;
    drop(tree);
    if let Some(b) = batch {
        b.commit().map_err(|e| format!("digest store: {e}"))?;
    }
    if let Some(img) = &image {
        if img == "-" {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(|e| format!("writing stdout: {e}"))?;
        } else {
            sealroot::image::fileio::write_atomic(Path::new(img), &bytes, Some(0o644))
                .map_err(|e| e.to_string())?;
        }
    }
    if let Some((path, loaded, record)) = cache_update {
        crate::build::save_cache("mkcomposefs", path, &loaded, &record);
    }
    if args.print_digest || args.print_digest_only {
        let d = sealroot::image::fsverity::digest_bytes(HashAlgorithm::Sha256, &bytes);
        println!("{}", d.to_hex());
    }
    Ok(())
}
