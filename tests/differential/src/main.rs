//! Differential test of sealroot's composefs EROFS writer against an
//! independent implementation: composefs-rs's `composefs` crate (0.9.4,
//! which claims bit-compatibility with the C `mkcomposefs`).
//!
//! For every seed a random tree is generated (model.rs), written as a
//! composefs dumpfile, and:
//! - sealroot parses the text (`dumpfile::parse`, strict and lenient must
//!   agree: lenient is what `sealctl mkcomposefs --from-file` uses) and
//!   writes images with `--min-version=N --max-version=N` for N = 0 and 1;
//! - composefs-rs gets the same tree through its public tree API and writes
//!   `FormatVersion::V0` / `V1` (its V0 is C's version 0 without the
//!   whiteout bump, its V1 is `--min-version=1`);
//! - where composefs-rs's own dumpfile reader accepts the text, its image
//!   from the text must equal its image from the API tree;
//! - sealroot's default options (min 0, max 1) must give the V1 image when
//!   the tree has a whiteout and the V0 image otherwise, as C does.
//!
//! All image bytes must be identical. A mismatch prints the seed, the
//! differing ranges and what lives there, and leaves the dumpfile and both
//! images under the output directory; `--seed S --trees 1` reproduces it.
//!
//! # What the generator covers
//! Inline files of 0..5000 bytes (around 64, 512, half a block, a block),
//! external files (with and without fs-verity digest) and sparse files from 1
//! byte to 2^53 (1 to 1024 chunks), symlinks up to 4095 bytes, 255-byte and
//! odd names (spaces, escapes, non-UTF-8, `-`, stub-like `00`..`ff` at the
//! root), deep nesting up to ~4000-byte paths, wide directories and
//! directories filled to exact block and tail sizes, xattrs from empty to
//! 4000-byte values (shared pools so many are shared, ACLs, `trusted.overlay.*`
//! that must be escaped, prefix-less names), hard links of every
//! non-directory kind, char/block devices, fifos, sockets, whiteouts, modes
//! 0..07777, uid/gid up to 2^32-1, mtimes 0..i64::MAX with nanoseconds.
//!
//! # Where composefs-rs 0.9.4 departs from the C reference
//! The generator leaves out exactly these inputs, because there composefs-rs
//! (not sealroot) departs from libcomposefs 1.0.x. Each was checked against
//! the C sources (`libcomposefs/lcfs-writer-erofs.c`, `lcfs-writer.c`,
//! `tools/mkcomposefs.c`), and `deviations.rs` runs a fixed tree for each:
//! sealroot must follow C there, and composefs-rs must still differ.
//! - An input xattr whose (escaped) name is one of the markers the writer
//!   sets on a whiteout or its directory (`trusted.overlay.whiteout(s)`,
//!   `trusted.overlay.opaque`, `user.overlay.whiteout(s)`, `.opaque`): C
//!   replaces its value, composefs-rs stores the name twice
//!   (`model::avoid_marker_collisions`).
//! - An input whiteout at the root that looks exactly like one of the 256
//!   stubs: C escapes it like any whiteout, composefs-rs takes it for its own
//!   stub and leaves it a bare device (`model::avoid_stub_lookalikes`).
//! - NLINK of a non-directory other than its number of entries: C keeps the
//!   dumpfile's value, composefs-rs counts entries (the generator writes the
//!   count).
//! - More than 128 shared xattrs on one inode: C shares the first 128 and
//!   keeps the rest inline, composefs-rs shares all (the generator stays
//!   under 40 xattrs per inode).
//!
//! And these inputs composefs-rs's tree cannot express, so they are not
//! generated: a DIGEST whose object path differs from PAYLOAD, or a DIGEST
//! without PAYLOAD (probed on sealroot alone); hard-linked whiteouts
//! (composefs-rs refuses them). Its dumpfile reader is stricter than its
//! writer (inline content up to 512 bytes, symlinks up to 1024, no DIGEST on
//! inline files): trees beyond that go to it through the tree API only.

mod cfs;
mod deviations;
mod model;
mod report;

use std::path::PathBuf;
use std::time::Instant;

use composefs::erofs::format::FormatVersion;
use sealroot::image::dumpfile;
use sealroot::image::erofs::{write_image, WriteOptions};

use model::Model;

struct Args {
    seed: u64,
    trees: u64,
    out: PathBuf,
    keep_going: bool,
}

fn parse_args() -> Args {
    let env_u64 = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let mut a = Args {
        seed: env_u64("DIFFERENTIAL_SEED").unwrap_or(1),
        trees: env_u64("DIFFERENTIAL_TREES").unwrap_or(600),
        out: PathBuf::from("target/differential/failures"),
        keep_going: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--seed" => {
                a.seed = val("--seed")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --seed"))
            }
            "--trees" => {
                a.trees = val("--trees")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --trees"))
            }
            "--out" => a.out = PathBuf::from(val("--out")),
            "--keep-going" => a.keep_going = true,
            "--print" => {
                let s: u64 = val("--print")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --print"));
                print!("{}", model::dumpfile(&model::generate(s)));
                std::process::exit(0);
            }
            "-h" | "--help" => usage(""),
            _ => usage(&format!("unknown argument {arg}")),
        }
    }
    a
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("sealroot-differential: {msg}");
    }
    eprintln!(
        "usage: sealroot-differential [--seed S] [--trees N] [--out DIR] [--keep-going] | --print SEED\n\
         Trees use seeds S..S+N (env DIFFERENTIAL_SEED, DIFFERENTIAL_TREES; default 1 and 600).\n\
         --print SEED writes that tree's dumpfile to stdout."
    );
    std::process::exit(2)
}

/// What one tree exercised (for the summary line).
#[derive(Default)]
struct Stats {
    features: std::collections::BTreeMap<&'static str, u64>,
    inodes: usize,
    images: usize,
    parser_path: bool,
    whiteouts: bool,
}

struct Failure {
    what: String,
    files: Vec<(String, Vec<u8>)>,
}

fn fail(what: impl Into<String>) -> Failure {
    Failure {
        what: what.into(),
        files: Vec::new(),
    }
}

fn check_tree(m: &Model, text: &str) -> Result<Stats, Failure> {
    let mut st = Stats {
        inodes: m.nodes.len(),
        whiteouts: m.has_whiteout(),
        ..Stats::default()
    };
    let tree = dumpfile::parse(text.as_bytes(), false)
        .map_err(|e| fail(format!("sealroot refused the dumpfile (lenient): {e}")))?;
    let strict = dumpfile::parse(text.as_bytes(), true)
        .map_err(|e| fail(format!("sealroot refused the dumpfile (strict): {e}")))?;
    if strict != tree {
        return Err(fail("sealroot's strict and lenient parses differ"));
    }
    let parser_path = m.within_composefs_rs_parser_limits();
    st.parser_path = parser_path;
    let mut by_version = Vec::new();
    for (version, v) in [(FormatVersion::V0, 0u32), (FormatVersion::V1, 1u32)] {
        let opts = WriteOptions {
            min_version: v,
            max_version: v,
        };
        let ours = write_image(&tree, &opts)
            .map_err(|e| fail(format!("sealroot refused to write version {v}: {e}")))?;
        let theirs = cfs::image(cfs::filesystem(m), version).map_err(fail)?;
        st.images += 2;
        if ours != theirs {
            return Err(Failure {
                what: format!(
                    "version {v}: sealroot and composefs-rs images differ\n{}",
                    report::describe(&ours, &theirs)
                ),
                files: vec![
                    (format!("sealroot-v{v}.img"), ours),
                    (format!("composefs-rs-v{v}.img"), theirs),
                ],
            });
        }
        if parser_path {
            let from_text = cfs::filesystem_from_dumpfile(text).map_err(fail)?;
            let theirs2 = cfs::image(from_text, version).map_err(fail)?;
            st.images += 1;
            if theirs2 != theirs {
                return Err(Failure {
                    what: format!(
                        "version {v}: composefs-rs's image from the dumpfile differs from its image \
                         from the same tree built in memory (the harness's tree building is wrong)\n{}",
                        report::describe(&theirs, &theirs2)
                    ),
                    files: vec![
                        (format!("composefs-rs-tree-v{v}.img"), theirs),
                        (format!("composefs-rs-dumpfile-v{v}.img"), theirs2),
                    ],
                });
            }
        }
        if v == 1 {
            report::features(&ours, &mut st.features);
        }
        by_version.push(ours);
    }
    let default = write_image(&tree, &WriteOptions::default()).map_err(|e| {
        fail(format!(
            "sealroot refused to write with default options: {e}"
        ))
    })?;
    let want = &by_version[usize::from(st.whiteouts)];
    if &default != want {
        return Err(Failure {
            what: format!(
                "sealroot's default options (min 0, max 1) do not give the version {} image",
                u8::from(st.whiteouts)
            ),
            files: vec![("sealroot-default.img".into(), default)],
        });
    }
    Ok(st)
}

fn main() {
    let args = parse_args();
    let start = Instant::now();

    // Fixed trees for the documented composefs-rs deviations: sealroot must
    // keep the C behaviour there.
    let mut failed = 0u64;
    let mut passed = 0u64;
    for (name, result) in deviations::run() {
        match result {
            Ok(()) => passed += 1,
            Err(e) => {
                failed += 1;
                eprintln!("FAIL deviation probe {name}: {e}");
            }
        }
    }

    let (mut inodes, mut images, mut parser_trees, mut whiteout_trees) =
        (0usize, 0usize, 0u64, 0u64);
    let mut features = std::collections::BTreeMap::new();
    for seed in args.seed..args.seed + args.trees {
        let m = model::generate(seed);
        let text = model::dumpfile(&m);
        // A panic in either writer is a failure of this tree, not the run.
        let result = std::panic::catch_unwind(|| check_tree(&m, &text)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(fail(format!("panicked: {msg}")))
        });
        match result {
            Ok(st) => {
                passed += 1;
                inodes += st.inodes;
                images += st.images;
                parser_trees += u64::from(st.parser_path);
                whiteout_trees += u64::from(st.whiteouts);
                for (k, v) in st.features {
                    *features.entry(k).or_insert(0u64) += v;
                }
            }
            Err(f) => {
                failed += 1;
                let dir = args.out.join(format!("seed-{seed}"));
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(dir.join("tree.dump"), &text);
                for (name, bytes) in &f.files {
                    let _ = std::fs::write(dir.join(name), bytes);
                }
                eprintln!(
                    "FAIL seed {seed} ({} nodes): {}\n  reproduce: tests/differential/run --seed {seed} --trees 1\n  files: {}",
                    m.nodes.len(),
                    f.what.trim_end(),
                    dir.display()
                );
                if !args.keep_going {
                    break;
                }
            }
        }
    }
    println!(
        "differential: seeds {}..{}: {} model inodes, {} images compared byte for byte \
         ({} trees also through composefs-rs's dumpfile reader, {} with whiteouts) in {:.1} s",
        args.seed,
        args.seed + args.trees,
        inodes,
        images,
        parser_trees,
        whiteout_trees,
        start.elapsed().as_secs_f64()
    );
    let covered: Vec<String> = features.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "differential: covered (version 1 images): {}",
        covered.join(", ")
    );
    println!("differential: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
