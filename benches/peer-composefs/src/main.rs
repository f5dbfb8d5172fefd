//! `peer-composefs [--print-digest-only] [--digest-store DIR] [--threads N] SOURCE [IMAGE]`
//!
//! The same job as `sealctl mkcomposefs` (and C `mkcomposefs`) with the same
//! defaults, done by composefs-rs's `composefs` crate: scan SOURCE, hash (and
//! with --digest-store, store) every file over the inline limit, write the
//! EROFS image (format V0, the C tool's default; hard links broken, as the C
//! tool does), print its fs-verity digest when asked. Only for benchmarking.

use std::{path::PathBuf, sync::Arc};

use anyhow::{bail, Context, Result};
use composefs::{
    erofs::{
        format::FormatVersion,
        writer::{mkfs_erofs_versioned, ValidatedFileSystem},
    },
    fs::{read_filesystem_with_opts, FlatDigestStore, HardlinkBehavior, ObjectStore, ReadFilesystemOpts},
    fsverity::{compute_verity, FsVerityHashValue, Sha256HashValue},
};

struct Args {
    print_digest_only: bool,
    store: Option<PathBuf>,
    threads: Option<usize>,
    source: PathBuf,
    image: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut print_digest_only = false;
    let mut store = None;
    let mut threads = None;
    let mut pos = Vec::new();
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy().into_owned();
        if s == "--print-digest-only" {
            print_digest_only = true;
        } else if let Some(v) = s.strip_prefix("--digest-store=") {
            store = Some(PathBuf::from(v));
        } else if s == "--digest-store" {
            store = Some(PathBuf::from(it.next().context("--digest-store needs a value")?));
        } else if let Some(v) = s.strip_prefix("--threads=") {
            threads = Some(v.parse()?);
        } else if s.starts_with("--") {
            bail!("unknown option {s}");
        } else {
            pos.push(PathBuf::from(a));
        }
    }
    let mut pos = pos.into_iter();
    let source = pos.next().context("usage: peer-composefs [--print-digest-only] [--digest-store DIR] SOURCE [IMAGE]")?;
    let image = pos.next();
    if print_digest_only == image.is_some() {
        bail!("give IMAGE, or --print-digest-only without IMAGE");
    }
    Ok(Args { print_digest_only, store, threads, source, image })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .build()?;

    let store: Option<Arc<dyn ObjectStore<Sha256HashValue>>> = match &args.store {
        Some(dir) => Some(Arc::new(FlatDigestStore::open(dir, threads, true)?)),
        None => None,
    };
    let semaphore = Some(Arc::new(tokio::sync::Semaphore::new(threads)));
    let cwd: std::os::fd::OwnedFd = std::fs::File::open(".")?.into();
    let fs = rt.block_on(read_filesystem_with_opts::<Sha256HashValue>(
        cwd,
        args.source.clone(),
        ReadFilesystemOpts { store, semaphore, hardlinks: HardlinkBehavior::Break },
    ))?;

    let image = mkfs_erofs_versioned(&ValidatedFileSystem::new(fs)?, FormatVersion::V0);
    if let Some(path) = &args.image {
        std::fs::write(path, &image).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.print_digest_only {
        let id: Sha256HashValue = compute_verity(&image);
        println!("{}", id.to_hex());
    }
    Ok(())
}
