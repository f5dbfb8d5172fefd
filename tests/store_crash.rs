//! Crash safety of the object store under `SIGKILL`.
//!
//! The test re-executes its own binary as a child (env `SEALROOT_STORE_CHILD`
//! names the store) that ingests batch after batch of objects, some from
//! files and some from memory, with several threads. The parent kills it at
//! random moments, 30 times (more while none has landed after a first
//! publish), and after each kill checks that every file under
//! a digest name has exactly that fs-verity digest (recomputed here), then
//! lets a final run complete and checks every one of its objects is present.
//!
//! What this cannot test here: power loss (the durability pass, `syncfs`,
//! only matters when the kernel itself goes away; SIGKILL leaves the page
//! cache intact).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::image::fsverity::{digest_bytes, digest_file};
use sealroot::image::store::{list_objects, ObjectStore, TEMP_DIR};

mod common;

const CHILD_ENV: &str = "SEALROOT_STORE_CHILD";
const ROUND_ENV: &str = "SEALROOT_STORE_ROUND";

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// Objects per round, ingested in batches of [`BATCH`].
const PER_ROUND: u64 = 200;
const BATCH: u64 = 25;

/// Objects `first..first + count` of one child round: sizes 0..48 KiB
/// (some span several Merkle blocks), content from the seed. Rounds overlap
/// (round r shares half its objects with round r-1) so publishing over
/// existing names is exercised.
fn objects_for(round: u64, first: u64, count: u64) -> Vec<Vec<u8>> {
    (first..first + count)
        .map(|i| {
            let id = round * (PER_ROUND / 2) + i;
            let mut r = rng(id + 1);
            let len = (r() % (48 * 1024)) as usize;
            let mut v = Vec::with_capacity(len);
            while v.len() < len {
                v.extend_from_slice(&r().to_le_bytes());
            }
            v.truncate(len);
            v
        })
        .collect()
}

/// Child body: ingest rounds `round..` forever (or just `round` when
/// `once`), in batches across 3 threads.
fn child(store_dir: &Path, round: u64, once: bool) {
    let src_dir = store_dir.with_extension("src");
    let _ = std::fs::create_dir_all(&src_dir);
    let mut round = round;
    loop {
        let store = ObjectStore::open(store_dir).expect("open store");
        for first in (0..PER_ROUND).step_by(BATCH as usize) {
            let chunk = objects_for(round, first, BATCH);
            let chunk = &chunk;
            let batch = store.batch();
            std::thread::scope(|s| {
                for t in 0..3usize {
                    let batch = &batch;
                    let src_dir = &src_dir;
                    s.spawn(move || {
                        for (i, data) in chunk.iter().enumerate().skip(t).step_by(3) {
                            let d = digest_bytes(HashAlgorithm::Sha256, data);
                            if i % 2 == 0 {
                                batch.add_bytes(data, &d).expect("add_bytes");
                            } else {
                                let p = src_dir.join(format!("{}-{t}-{i}", std::process::id()));
                                std::fs::write(&p, data).expect("write source");
                                batch.add_file(&p, &d).expect("add_file");
                                let _ = std::fs::remove_file(&p);
                            }
                        }
                    });
                }
            });
            batch.commit().expect("commit");
        }
        if once {
            return;
        }
        round += 1;
    }
}

/// Every file under a digest name has that digest; returns how many.
fn check_store(objects: &Path) -> usize {
    let files = list_objects(objects).expect("list objects");
    for path in &files {
        let dir = path.parent().and_then(|p| p.file_name()).unwrap();
        let name = path.file_name().unwrap();
        let hex = format!("{}{}", dir.to_str().unwrap(), name.to_str().unwrap());
        let want = Digest::parse_hex(HashAlgorithm::Sha256, &hex)
            .unwrap_or_else(|e| panic!("object with a non-digest name {}: {e}", path.display()));
        let f = std::fs::File::open(path).unwrap();
        let got = digest_file(HashAlgorithm::Sha256, &f).unwrap();
        assert_eq!(got, want, "object {} has the wrong content", path.display());
    }
    files.len()
}

fn spawn_child(objects: &Path, round: u64, once: bool) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, objects)
        .env(
            ROUND_ENV,
            format!("{round}{}", if once { ":once" } else { "" }),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

/// Not a test of its own: the child's entry point when re-executed.
#[test]
fn child_entry() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let spec = std::env::var(ROUND_ENV).unwrap_or_default();
    let (round, once) = match spec.strip_suffix(":once") {
        Some(r) => (r.parse().unwrap_or(0), true),
        None => (spec.parse().unwrap_or(0), false),
    };
    child(&PathBuf::from(dir), round, once);
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_wrong_object() {
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let mut r = rng(common::test_seed(0x5EA1));
    let (rounds, mut iteration, mut killed_with_objects) = (30, 0, 0);
    while common::more_kill_rounds(iteration, rounds, killed_with_objects) {
        let mut c = spawn_child(&objects, iteration as u64, false);
        // 10..1500 ms: from before the store is opened to mid-commit of a
        // later batch (a debug-build child publishes a batch every ~0.1 s).
        let delay = Duration::from_millis(10 + r() % 1490);
        let start = Instant::now();
        while start.elapsed() < delay {
            if let Some(status) = c.try_wait().unwrap() {
                panic!("child exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        let n = check_store(&objects);
        if n > 0 {
            killed_with_objects += 1;
        }
        iteration += 1;
    }
    assert!(
        killed_with_objects > 0,
        "the child never got as far as publishing; delays too short to test anything"
    );
    // A run to completion after all the crashes: opens (cleaning stale
    // temporaries), adds a round overlapping earlier ones, commits.
    let round = 1000;
    let status = spawn_child(&objects, round, true).wait().unwrap();
    assert!(status.success(), "final run failed: {status}");
    check_store(&objects);
    let store = ObjectStore::open(&objects).unwrap();
    for data in objects_for(round, 0, PER_ROUND) {
        let d = digest_bytes(HashAlgorithm::Sha256, &data);
        assert!(
            store.contains(&d),
            "object {} missing after final run",
            d.to_hex()
        );
    }
    assert!(
        !objects.join(TEMP_DIR).exists(),
        "stale temporaries (or their empty directory) not cleaned"
    );
}

/// Timing of the store alone on a real tree (not a pass/fail test):
/// `cargo test --release --test store_crash -- --ignored --nocapture ingest`
/// with env SEALROOT_BENCH_TREE (default /usr/share) and
/// SEALROOT_BENCH_STORE (default build/bench/store-api, emptied first).
#[test]
#[ignore]
fn ingest_tree_timing() {
    let tree =
        PathBuf::from(std::env::var_os("SEALROOT_BENCH_TREE").unwrap_or("/usr/share".into()));
    let store_dir = PathBuf::from(
        std::env::var_os("SEALROOT_BENCH_STORE").unwrap_or("build/bench/store-api".into()),
    );
    let _ = std::fs::remove_dir_all(&store_dir);
    let t0 = Instant::now();
    let mut files = Vec::new();
    let mut stack = vec![tree];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                files.push(e.path());
            }
        }
    }
    let t_walk = t0.elapsed();
    let store = ObjectStore::open(&store_dir).unwrap();
    let batch = store.batch();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let total = std::sync::atomic::AtomicU64::new(0);
    let t1 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
        {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(p) = files.get(i) else { return };
                let Ok(data) = std::fs::read(p) else { continue };
                if data.len() <= 64 {
                    continue;
                }
                total.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                batch
                    .add_bytes_hashed(HashAlgorithm::Sha256, &data)
                    .unwrap();
            });
        }
    });
    let t_add = t1.elapsed();
    let t2 = Instant::now();
    let stats = batch.commit().unwrap();
    let t_commit = t2.elapsed();
    eprintln!(
        "{} files, {} MB: walk {:.2?}, read+hash+write temps {:.2?}, commit (syncfs+publish+fsync dirs) {:.2?}; {stats:?}",
        files.len(),
        total.into_inner() / 1_000_000,
        t_walk,
        t_add,
        t_commit
    );
}
